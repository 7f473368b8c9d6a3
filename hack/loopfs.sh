#!/usr/bin/env bash
# A small, real ext4 filesystem on a loop device, for tests that need a disk that fills up.
#
#   hack/loopfs.sh mount DIR SIZE_MB   # image file DIR.img, ext4, mounted on DIR (created if missing)
#   hack/loopfs.sh umount DIR          # unmount, detach the loop device, delete DIR.img
#
# Both are idempotent: mounting a DIR that already holds our filesystem does nothing, and
# unmounting a DIR that is not mounted only removes a leftover image. Needs root (mount, losetup).
# Fails with a message saying what is missing rather than skipping: a test that needs a full disk
# must not pass quietly on a machine that cannot make one.
set -euo pipefail

die() {
  echo "loopfs.sh: $*" >&2
  exit 1
}

usage() {
  echo "usage: hack/loopfs.sh mount DIR SIZE_MB | umount DIR" >&2
  exit 2
}

need_root() {
  [ "$(id -u)" -eq 0 ] || die "needs root (losetup and mount); run it as root, as CI does"
  for t in truncate mkfs.ext4 losetup mount umount findmnt; do
    command -v "$t" >/dev/null || die "$t is missing (util-linux, e2fsprogs)"
  done
}

# Makes sure the kernel can hand out a loop device and that its device node exists. Containers
# often have /dev without udev: the kernel then allocates /dev/loopN but nobody creates the node.
ensure_loop_support() {
  if [ ! -e /dev/loop-control ]; then
    modprobe loop 2>/dev/null || true
    # loop-control is misc device 10:237 on every Linux since 3.1.
    [ -e /dev/loop-control ] || mknod -m 0600 /dev/loop-control c 10 237 2>/dev/null || true
    [ -e /dev/loop-control ] || die "/dev/loop-control is missing and could not be created: no loop device support (is the loop module loaded? is /dev writable?)"
  fi
  local next
  next=$(losetup -f 2>&1) || die "losetup -f failed, no free loop device: $next"
  if [ ! -b "$next" ]; then
    # Loop block devices are major 7, minor N for /dev/loopN.
    local n=${next#/dev/loop}
    [[ $n =~ ^[0-9]+$ ]] || die "losetup -f answered '$next', not a /dev/loopN name"
    mknod -m 0600 "$next" b 7 "$n" 2>/dev/null || die "$next does not exist and mknod could not create it (is /dev writable? is the device cgroup allowing block major 7?)"
  fi
}

# The loop device (or other source) mounted exactly on DIR, or nothing.
source_of() {
  findmnt -n -o SOURCE --mountpoint "$1" 2>/dev/null || true
}

do_mount() {
  local dir=$1 size_mb=$2
  [[ $size_mb =~ ^[0-9]+$ ]] && [ "$size_mb" -ge 16 ] || die "SIZE_MB must be a whole number of at least 16, got '$size_mb'"
  need_root
  mkdir -p "$dir"
  dir=$(cd "$dir" && pwd -P)
  local img="$dir.img"
  local src
  src=$(source_of "$dir")
  if [ -n "$src" ]; then
    local back
    back=$(losetup -n -O BACK-FILE "$src" 2>/dev/null || true)
    [ "$back" = "$img" ] || die "$dir is already a mount point of $src, not of $img; refusing to touch it"
    echo "already mounted: $src ($img) on $dir"
    return
  fi
  ensure_loop_support
  truncate -s "${size_mb}M" "$img"
  # -m 0: no blocks reserved for root, so "full" means the same for every user (the tests run as
  # root, who could otherwise keep writing into the 5% reserve). -b 4096: mke2fs picks 1 KiB blocks
  # for small filesystems; real disks, and the 4 KiB O_DIRECT writes of the engine, use 4 KiB.
  mkfs.ext4 -q -F -m 0 -b 4096 "$img" || die "mkfs.ext4 of $img failed"
  local dev
  dev=$(losetup --show -f "$img" 2>&1) || die "losetup could not attach $img: $dev"
  if ! out=$(mount -t ext4 "$dev" "$dir" 2>&1); then
    losetup -d "$dev" 2>/dev/null || true
    die "mount of $dev on $dir failed (no CAP_SYS_ADMIN in this container?): $out"
  fi
  echo "mounted $dev (${size_mb} MB ext4, image $img) on $dir"
}

do_umount() {
  local dir=$1
  need_root
  [ -d "$dir" ] || {
    rm -f "$dir.img"
    echo "not mounted: $dir does not exist"
    return
  }
  dir=$(cd "$dir" && pwd -P)
  local img="$dir.img"
  local src
  src=$(source_of "$dir")
  if [ -n "$src" ]; then
    # A process still holding a file there (a node that did not stop) makes umount fail: say so.
    out=$(umount "$dir" 2>&1) || die "umount $dir failed: $out"
    # Our own device, also when its image was deleted meanwhile (losetup -j no longer finds it).
    case "$src" in /dev/loop*) losetup -d "$src" 2>/dev/null || true ;; esac
  fi
  # Detach every other loop device still backed by our image (ones a crashed run left behind).
  local dev
  while read -r dev; do
    [ -n "$dev" ] && losetup -d "$dev" 2>/dev/null || true
  done < <(losetup -n -O NAME -j "$img" 2>/dev/null || true)
  rm -f "$img"
  echo "unmounted $dir${src:+ ($src)}"
}

case "${1:-}" in
  mount)
    [ $# -eq 3 ] || usage
    do_mount "$2" "$3"
    ;;
  umount)
    [ $# -eq 2 ] || usage
    do_umount "$2"
    ;;
  *) usage ;;
esac
