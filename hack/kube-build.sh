#!/usr/bin/env bash
# Builds kube-apiserver and kube-controller-manager v1.20.2 from Debian's `kubernetes` source
# package (the only route to a real apiserver on this machine: no Docker, no binary package).
# Result: ~/.cache/celer/kube/bin/{kube-apiserver,kube-controller-manager}. When both binaries are
# already there, this script only checks the runtime packages and returns (about a second).
# Prints the bin directory on its last line of stdout; progress goes to stderr.
#
# Cold: ~6-8 min on 2 cores (apt ~30 s, source 5 s, build ~5-6 min, peak ~1.4 GB RSS). Warm: <1 s.
set -euo pipefail

cache="${CELER_CACHE:-$HOME/.cache/celer}/kube"
bin="$cache/bin"
log() { printf '[kube-build %s] %s\n' "$(date +%T)" "$*" >&2; }

apt_install() {
  local need=() p
  for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || need+=("$p"); done
  [ ${#need[@]} -eq 0 ] && return 0
  log "apt-get install ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get -o DPkg::Lock::Timeout=600 update -qq >/dev/null 2>&1 || true
  apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${need[@]}" >/dev/null
}

# What kube-up.sh needs at run time (etcd, curl, openssl) is ensured even when the binaries are cached.
apt_install etcd-server curl openssl
# The Debian package starts an etcd service on :2379 when an init system lets it; we never use
# that one (kube-up.sh runs its own etcd on other ports).

if [ -x "$bin/kube-apiserver" ] && [ -x "$bin/kube-controller-manager" ]; then
  log "cached: $bin"
  echo "$bin"
  exit 0
fi

mkdir -p "$cache"
exec 9>"$cache/.build.lock"
log "waiting for the build lock (another build may be running)"
flock 9
if [ -x "$bin/kube-apiserver" ] && [ -x "$bin/kube-controller-manager" ]; then
  log "built meanwhile by another process: $bin"
  echo "$bin"
  exit 0
fi

# `apt-get source` needs a deb-src entry; Debian's default image only has binary entries.
src_list=/etc/apt/sources.list.d/celer-deb-src.sources
if ! grep -rqs '^Types:.*deb-src' /etc/apt/sources.list.d/ && ! grep -qs '^deb-src' /etc/apt/sources.list; then
  log "adding deb-src entry $src_list"
  cat >"$src_list" <<'SRC'
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
  apt-get -o DPkg::Lock::Timeout=600 update -qq >/dev/null 2>&1 || true
fi

apt_install golang-go dpkg-dev rsync make golang-github-modern-go-reflect2-dev

work="$cache/build"
rm -rf "$work"
mkdir -p "$work"
t0=$SECONDS
log "fetching Debian source package kubernetes"
(cd "$work" && apt-get source -qq kubernetes >/dev/null 2>&1) || {
  # Retry once after refreshing the package lists (a stale list names a file the mirror dropped).
  apt-get -o DPkg::Lock::Timeout=600 update -qq >/dev/null 2>&1 || true
  (cd "$work" && apt-get source -qq kubernetes >&2)
}
tree="$(find "$work" -mindepth 1 -maxdepth 1 -type d -name 'kubernetes-*' | head -n1)"
[ -n "$tree" ] || { log "no source tree unpacked under $work"; exit 1; }
log "source tree $tree ($((SECONDS - t0)) s)"

# The vendored reflect2 v1.0.1 crashes (SIGSEGV in mapiternext) under Go >= 1.18 on the first
# custom-object write; Debian's reflect2 1.0.2 is API-compatible with the vendored json-iterator.
log "replacing vendored github.com/modern-go/reflect2 with Debian's packaged version"
rm -rf "$tree/vendor/github.com/modern-go/reflect2"
cp -r /usr/share/gocode/src/github.com/modern-go/reflect2 "$tree/vendor/github.com/modern-go/reflect2"
rm -f "$tree/vendor/github.com/modern-go/reflect2/go.mod"

log "make WHAT='cmd/kube-apiserver cmd/kube-controller-manager' (about 5 minutes on 2 cores)"
(
  cd "$tree"
  export HOME="$work/home" KUBE_GIT_VERSION=v1.20.2 KUBE_GIT_MAJOR=1 KUBE_GIT_MINOR=20 \
    KUBE_GIT_TREE_STATE=clean GOLDFLAGS="-s -w" CGO_ENABLED=0
  mkdir -p "$HOME"
  make WHAT="cmd/kube-apiserver cmd/kube-controller-manager" >"$work/make.log" 2>&1 &
  pid=$!
  while kill -0 "$pid" 2>/dev/null; do
    sleep 30
    kill -0 "$pid" 2>/dev/null && log "still building ($((SECONDS - t0)) s): $(tail -n1 "$work/make.log" | cut -c1-100)"
  done
  wait "$pid" || { log "make failed; last lines of $work/make.log:"; tail -n 40 "$work/make.log" >&2; exit 1; }
)

tmpbin="$cache/bin.tmp.$$"
rm -rf "$tmpbin"
mkdir -p "$tmpbin"
cp "$tree/_output/bin/kube-apiserver" "$tree/_output/bin/kube-controller-manager" "$tmpbin/"
rm -rf "$bin"
mv "$tmpbin" "$bin"
"$bin/kube-apiserver" --version >&2
log "built in $((SECONDS - t0)) s; removing the 2 GB build tree"
rm -rf "$work"
echo "$bin"
