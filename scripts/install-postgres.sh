#!/usr/bin/env bash
# Installs PostgreSQL's server binaries from Debian for the tests (`make test` runs this).
#
# tests/helpers/postgres.py starts a private cluster of its own (initdb in a temporary folder,
# pg_ctl on 127.0.0.1 and a free port, a socket inside that folder) so that the registry, capture
# store, migrations and promotion tests run against PostgreSQL as well as SQLite. It needs the
# binaries only, never a service.
#
# Debian's package asks invoke-rc.d to start its own cluster (5432); we deny service starts for the
# install through /usr/sbin/policy-rc.d (scripts/apt-install-no-start.sh, as install-prometheus.sh).
# Idempotent: does nothing when initdb and pg_ctl are found (on PATH or in /usr/lib/postgresql/*/bin).
set -euo pipefail

have_binaries() {
    if command -v initdb >/dev/null 2>&1 && command -v pg_ctl >/dev/null 2>&1; then
        return 0
    fi
    local dir
    for dir in /usr/lib/postgresql/*/bin; do
        if [[ -x "$dir/initdb" && -x "$dir/pg_ctl" ]]; then
            return 0
        fi
    done
    return 1
}

if have_binaries; then
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "install-postgres: no apt-get here; install PostgreSQL (13 or later) yourself so that" \
        "initdb and pg_ctl are on PATH (the database tests start their own cluster)" >&2
    exit 1
fi
if [[ $(id -u) -ne 0 ]]; then
    echo "install-postgres: needs root for apt-get; run \`sudo $0\` once" \
        "(it installs Debian's postgresql package; no service is started)" >&2
    exit 1
fi

"$(dirname "$0")/apt-install-no-start.sh" postgresql

if ! have_binaries; then
    echo "install-postgres: the postgresql package did not provide initdb and pg_ctl" >&2
    exit 1
fi
echo "install-postgres: $(ls -d /usr/lib/postgresql/*/bin | tail -n1)"
