#!/usr/bin/env bash
# Installs the Debian packages Celer needs. Idempotent: does nothing when they are present.
#   hack/deps.sh          what running a node needs: liburing-dev (the io_uring addon's build)
#   hack/deps.sh --test   plus what the tests need: prometheus (promtool; the Prometheus e2e),
#                         postgresql (the peer of `celer bench --vs postgres` and its test) and
#                         Ceph RGW (ceph-mon, ceph-osd, radosgw, ceph-common: hack/s3.sh, the S3
#                         server of the cluster tests) and iproute2 (the Kubernetes e2e pod network)
set -euo pipefail
packages=(liburing-dev)
if [ "${1:-}" = "--test" ]; then
  packages+=(prometheus postgresql ceph-mon ceph-osd radosgw ceph-common iproute2)
fi
need=()
for p in "${packages[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
  echo "installing: ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null 2>&1 || true
  apt-get install -y -qq "${need[@]}" >/dev/null
fi
