#!/usr/bin/env bash
# Ensures the Prometheus server from Debian (bookworm: 2.42) is installed and prints the binary's
# path. Only the end-to-end tests need it, so it is installed on demand here and not in the shared
# hack/deps.sh. The package's own service is not used: tests start `prometheus` themselves with a
# rendered config, a temp storage dir and a free port.
#
# Cold: ~20-40 s (apt-get install). Warm: <0.1 s.
set -euo pipefail
log() { printf '[prometheus %s] %s\n' "$(date +%T)" "$*" >&2; }

if ! dpkg -s prometheus >/dev/null 2>&1 || ! [ -x /usr/bin/prometheus ]; then
  log "apt-get install prometheus"
  export DEBIAN_FRONTEND=noninteractive
  apt-get -o DPkg::Lock::Timeout=600 update -qq >/dev/null 2>&1 || true
  apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends prometheus >/dev/null
fi
echo /usr/bin/prometheus
