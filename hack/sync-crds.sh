#!/usr/bin/env bash
# Copies the CRDs from crds/ (the source of truth) into the Helm chart's crds/ directory.
# Run after editing a CRD; operator/api/crd.test.ts fails while the copies differ.
#   bash hack/sync-crds.sh          copy
#   bash hack/sync-crds.sh --check  exit 1 (and name the files) when a copy differs
set -euo pipefail
cd "$(dirname "$0")/.."
src=crds
dst=charts/celer-operator/crds
mode=${1:-copy}
status=0
for f in "$src"/*.yaml; do
  name=$(basename "$f")
  if [ "$mode" = "--check" ]; then
    if ! cmp -s "$f" "$dst/$name"; then echo "differs: $dst/$name (run hack/sync-crds.sh)"; status=1; fi
  else
    mkdir -p "$dst"
    cp "$f" "$dst/$name"
  fi
done
# A CRD removed from crds/ must not linger in the chart.
for f in "$dst"/*.yaml; do
  [ -e "$f" ] || continue
  name=$(basename "$f")
  if [ ! -e "$src/$name" ]; then
    if [ "$mode" = "--check" ]; then echo "stale: $f"; status=1; else rm "$f"; fi
  fi
done
exit $status
