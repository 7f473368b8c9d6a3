#!/usr/bin/env bash
# Installs the Debian packages the build and tests need. Idempotent: does nothing when present.
set -euo pipefail
need=()
for p in liburing-dev prometheus postgresql; do
  dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
  echo "installing: ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null 2>&1 || true
  apt-get install -y -qq "${need[@]}" >/dev/null
fi
