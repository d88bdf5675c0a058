#!/usr/bin/env bash
# Installs Debian packages without letting their maintainer scripts start any service:
#   scripts/apt-install-no-start.sh PACKAGE...
#
# Used by install-prometheus.sh and install-postgres.sh: the tests need those packages' binaries,
# never their services (Prometheus on :9090, a PostgreSQL cluster on 5432, on every interface).
# invoke-rc.d consults /usr/sbin/policy-rc.d; it answers 101 ("denied") for the install, and the
# previous policy (or none) is put back afterwards, whatever happens. Needs root and apt-get.
set -euo pipefail

policy=/usr/sbin/policy-rc.d
saved=""
if [[ -e "$policy" ]]; then
    saved=$(mktemp)
    cp -p "$policy" "$saved"
fi
restore_policy() {
    if [[ -n "$saved" ]]; then mv "$saved" "$policy"; else rm -f "$policy"; fi
}
trap restore_policy EXIT
printf '#!/bin/sh\nexit 101\n' > "$policy"
chmod 755 "$policy"

export DEBIAN_FRONTEND=noninteractive
apt-get update
apt-get install -y --no-install-recommends "$@"
