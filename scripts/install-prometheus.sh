#!/usr/bin/env bash
# Installs Prometheus and promtool from Debian for the monitoring tests (`make test` runs this).
#
# tests/monitoring checks the alert rules with `promtool check rules` / `promtool test rules` and
# runs every dashboard query against a real Prometheus that the tests start themselves on
# 127.0.0.1 (their own config, their own data folder). Debian's package is enough: the tests need
# the binaries only, never a service.
#
# Debian's package ships a systemd unit and a SysV script (/etc/init.d/prometheus), and its postinst
# asks invoke-rc.d to start it (9090, all interfaces). Containers usually deny that through
# /usr/sbin/policy-rc.d; we deny it ourselves for the install (scripts/apt-install-no-start.sh), and
# fail if anything listens on :9090 afterwards that did not before.
# Idempotent: does nothing when /usr/bin/prometheus and /usr/bin/promtool are already there.
set -euo pipefail

PROMETHEUS=/usr/bin/prometheus
PROMTOOL=/usr/bin/promtool

if [[ -x "$PROMETHEUS" && -x "$PROMTOOL" ]]; then
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "install-prometheus: no apt-get here; install Prometheus 2.x yourself so that" \
        "$PROMETHEUS and $PROMTOOL exist (the monitoring tests need both)" >&2
    exit 1
fi
if [[ $(id -u) -ne 0 ]]; then
    echo "install-prometheus: needs root for apt-get; run \`sudo $0\` once" \
        "(it installs Debian's prometheus package; no service is started)" >&2
    exit 1
fi

listening_9090() { (ss -Hltn 'sport = :9090' 2>/dev/null || true) | grep -c . || true; }
before=$(listening_9090)

"$(dirname "$0")/apt-install-no-start.sh" prometheus

for tool in "$PROMETHEUS" "$PROMTOOL"; do
    if [[ ! -x "$tool" ]]; then
        echo "install-prometheus: the prometheus package did not provide $tool" >&2
        exit 1
    fi
done
if [[ $(listening_9090) -gt $before ]]; then
    echo "install-prometheus: something now listens on :9090 after the install; stop that service" \
        "(the tests start their own Prometheus on a free loopback port)" >&2
    exit 1
fi
echo "install-prometheus: $("$PROMETHEUS" --version 2>&1 | head -n1)"
