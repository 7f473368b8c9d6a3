#!/usr/bin/env bash
# A real S3 server for the tests: Ceph RGW (Debian's radosgw 16.2) on a one-node cluster made of a
# monitor and a memstore OSD, on 127.0.0.1, with every file (config, keyring, mon store, logs,
# pids, ports, credentials) under DIR.
#
#   hack/s3.sh start DIR   # start (or find running) and print `export NAME=value` lines on stdout
#   hack/s3.sh stop DIR    # stop the daemons and wait until they have exited
#
# start prints AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION and
# CELER_S3_BUCKET, and nothing else on stdout (progress goes to stderr), so
#   eval "$(bash hack/s3.sh start /tmp/s3)"
# works. Calling start on a DIR whose server runs prints the same lines without a restart. Ports are
# random in 20000-32000, checked free, and kept in DIR/ports, so several DIRs can run at once.
# Installs ceph-mon, ceph-osd, radosgw and ceph-common with apt when missing (needs root then).
# CELER_S3_EXTRA_BIND=ADDR (at start) makes RGW also listen on ADDR, e.g. the bridge address of the
# Kubernetes e2e's pod network namespaces, which cannot reach the host's 127.0.0.1.
# Objects live in the OSD's memory (memstore): a stop loses them, and the next start begins empty.
set -Eeuo pipefail

# Bounds on each step (seconds). The whole cold start takes about 12 s on an idle 2-core machine.
MON_DEADLINE=60
OSD_DEADLINE=60
RGW_DEADLINE=90
BUCKET_DEADLINE=60
STOP_DEADLINE=10
REGION=us-east-1
EMPTY_SHA256=e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855
BUCKET=celer-test

# Everything but the export lines goes to stderr.
exec 3>&1 1>&2

log() { echo "s3.sh: [${SECONDS}s] $*"; }
die() {
  echo "s3.sh: $*"
  exit 1
}
usage() {
  echo "usage: hack/s3.sh start DIR | stop DIR"
  exit 2
}

[ $# -eq 2 ] || usage
cmd=$1
mkdir -p "$2"
D=$(cd "$2" && pwd)
C=(-c "$D/ceph.conf")

install_packages() {
  local need=() p
  for p in ceph-mon ceph-osd radosgw ceph-common curl uuid-runtime; do
    dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
  done
  [ ${#need[@]} -eq 0 ] && return 0
  [ "$(id -u)" -eq 0 ] || die "needs root to install: ${need[*]}"
  log "installing: ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null 2>&1 || true
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
}

# The pid of daemon NAME (mon.a, osd.0, client.rgw.a) if it runs, else nothing.
daemon_pid() {
  local f="$D/run/$1.pid" pid
  [ -s "$f" ] || return 1
  pid=$(cat "$f")
  # Guard against a recycled pid: it must still be a ceph daemon.
  [ -r "/proc/$pid/cmdline" ] && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qE 'ceph-mon|ceph-osd|radosgw' || return 1
  echo "$pid"
}

print_exports() {
  # shellcheck disable=SC1091
  . "$D/env"
  {
    echo "export AWS_ENDPOINT_URL=http://127.0.0.1:$RGW_PORT"
    echo "export AWS_ACCESS_KEY_ID=$ACCESS_KEY"
    echo "export AWS_SECRET_ACCESS_KEY=$SECRET_KEY"
    echo "export AWS_REGION=$REGION"
    echo "export CELER_S3_BUCKET=$BUCKET"
  } >&3
}

tail_logs() {
  local f
  for f in "$D"/log/*.log; do
    [ -s "$f" ] || continue
    echo "----- last lines of $f"
    tail -n 15 "$f"
  done
}

# Fails the start: prints why and the log tails, stops whatever started.
fail() {
  echo "s3.sh: $*"
  tail_logs
  stop_daemons
  exit 1
}

# Polls `$@` every 0.2 s until it succeeds or DEADLINE seconds pass.
wait_for() {
  local deadline=$1 what=$2
  shift 2
  local until=$((SECONDS + deadline))
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -lt $until ] || fail "$what did not come up within ${deadline}s (logs in $D/log)"
    sleep 0.2
  done
}

# Whether pid runs (a zombie does not: a container's init may be slow to reap it).
alive() {
  [ -e "/proc/$1" ] && ! awk '{ exit ($3 == "Z") ? 0 : 1 }' "/proc/$1/stat" 2>/dev/null
}

# SIGKILL, then waits until every daemon has exited. Nothing here outlives a stop anyway (objects
# are in the OSD's memory, and start wipes the rest), and a graceful stop takes 2 s per daemon,
# one after the other: radosgw hangs in its shutdown if the OSD leaves first.
stop_daemons() {
  local name pid pids=()
  for name in client.rgw.a osd.0 mon.a; do
    pid=$(daemon_pid "$name") || continue
    kill -9 "$pid" 2>/dev/null || true
    pids+=("$pid")
  done
  local until=$((SECONDS + STOP_DEADLINE))
  for pid in ${pids[@]+"${pids[@]}"}; do
    while alive "$pid"; do
      [ $SECONDS -lt $until ] || die "pid $pid did not exit within ${STOP_DEADLINE}s of SIGKILL"
      sleep 0.05
    done
  done
  rm -f "$D"/run/*.pid
}

port_free() {
  [ -z "$(ss -Htan "( sport = :$1 )" 2>/dev/null)" ]
}

# Sets the variable named $1 to a random free port in 20000-32000 (below the ephemeral range).
pick_port() {
  local p i
  for i in $(seq 1 200); do
    p=$((20000 + RANDOM % 12000))
    # Not one this start already took, and nothing listening or connected on it.
    case " $taken " in *" $p "*) continue ;; esac
    if port_free "$p"; then
      taken="$taken $p"
      printf -v "$1" %s "$p"
      return 0
    fi
  done
  die "no free port found in 20000-32000"
}

# Runs a daemon (it forks into the background itself) without our stdout, stderr and lock: a
# caller reading our stdout through a pipe would otherwise wait for the daemon's exit.
daemon() {
  "$@" </dev/null >>"$D/log/daemons.out" 2>&1 3>&- 9>&-
}

rgw_up() {
  curl -sf -o /dev/null --max-time 2 "http://127.0.0.1:$RGW_PORT/"
}

running() {
  [ -s "$D/env" ] || return 1
  # shellcheck disable=SC1091
  . "$D/env"
  daemon_pid mon.a >/dev/null && daemon_pid osd.0 >/dev/null && daemon_pid client.rgw.a >/dev/null && rgw_up
}

write_conf() {
  cat >"$D/ceph.conf" <<EOF
[global]
fsid = $FSID
mon host = [v2:127.0.0.1:$MON_V2_PORT,v1:127.0.0.1:$MON_V1_PORT]
mon initial members = a
public addr = 127.0.0.1
# cephx with one shared keyring: radosgw does not start with auth = none.
auth cluster required = cephx
auth service required = cephx
auth client required = cephx
keyring = $D/keyring
run dir = $D/run
admin socket = $D/run/\$name.asok
pid file = $D/run/\$name.pid
log file = $D/log/\$name.log
mon data = $D/mon/\$cluster-\$id
osd data = $D/osd/\$cluster-\$id
osd objectstore = memstore
memstore device bytes = 1073741824
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
mon allow pool size one = true
mon warn on pool no redundancy = false
# The monitor warns below 30 % free disk and stops below 5 %; a CI disk is often fuller than that,
# and nothing here stores much on disk (objects are in memory).
mon data avail warn = 1
mon data avail crit = 0
osd crush chooseleaf type = 0
# radosgw creates its pools one map change at a time at first start; the monitor's default of one
# proposal per second makes that take ~10 s.
paxos propose interval = 0.05
paxos min wait = 0.01
ms bind ipv6 = false
client mount timeout = 30
[client.rgw.a]
# tcp_nodelay: without it beast's Nagle holds the body of every GET/LIST answer until the client
# ACKs the headers, which Linux delays by 40 ms on a busy keep-alive connection: ~47 ms per GET
# or LIST instead of ~6 (PUT answers have no body). AWS S3 does not do this; the failover suite
# measured it in every promotion's catch-up LIST.
rgw frontends = beast endpoint=127.0.0.1:$RGW_PORT${CELER_S3_EXTRA_BIND:+ endpoint=$CELER_S3_EXTRA_BIND:$RGW_PORT} tcp_nodelay=1
EOF
}

start() {
  trap 'fail "start failed at line $LINENO: $BASH_COMMAND"' ERR
  install_packages
  exec 9>"$D/.lock"
  flock -w 300 9 || die "another s3.sh holds $D/.lock"
  if running; then
    log "already running on port $RGW_PORT ($D)"
    print_exports
    return 0
  fi
  # Leftovers of a server that died or was half started: stop them and begin afresh.
  stop_daemons
  rm -rf "$D/mon" "$D/osd" "$D/run" "$D/log" "$D/keyring" "$D/monmap" "$D/ceph.conf" "$D/env" "$D/ports"
  mkdir -p "$D/mon" "$D/osd" "$D/run" "$D/log"
  # Unix socket paths are limited to 107 bytes.
  [ ${#D} -le 80 ] || die "DIR path is too long for the admin sockets (${#D} > 80 bytes): $D"

  local used
  used=$(df -P "$D" | awk 'NR==2 { sub("%", "", $5); print $5 }')
  if [ "${used:-0}" -gt 70 ]; then
    log "the disk of $D is ${used}% full; the monitor's free-space warning and stop are turned off"
  fi

  taken=""
  pick_port MON_V2_PORT
  pick_port MON_V1_PORT
  pick_port RGW_PORT
  ACCESS_KEY=CELER$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n' | tr a-f A-F)
  SECRET_KEY=$(od -An -N20 -tx1 /dev/urandom | tr -d ' \n')
  FSID=$(uuidgen)
  printf 'MON_V2_PORT=%s\nMON_V1_PORT=%s\nRGW_PORT=%s\n' "$MON_V2_PORT" "$MON_V1_PORT" "$RGW_PORT" >"$D/ports"
  write_conf

  log "starting ceph-mon on 127.0.0.1:$MON_V2_PORT/$MON_V1_PORT ($D)"
  ceph-authtool --create-keyring "$D/keyring" --gen-key -n mon. --cap mon 'allow *' >/dev/null
  ceph-authtool "$D/keyring" --gen-key -n client.admin --cap mon 'allow *' --cap osd 'allow *' --cap mgr 'allow *' >/dev/null
  ceph-authtool "$D/keyring" --gen-key -n osd.0 --cap mon 'allow profile osd' --cap osd 'allow *' --cap mgr 'allow profile osd' >/dev/null
  ceph-authtool "$D/keyring" --gen-key -n client.rgw.a --cap mon 'allow rw' --cap osd 'allow rwx' >/dev/null
  # --addv with both addresses: --add on a port other than 6789 records only a v2 address, and
  # clients that try v1 then hang for minutes.
  monmaptool --create --fsid "$FSID" --addv a "[v2:127.0.0.1:$MON_V2_PORT,v1:127.0.0.1:$MON_V1_PORT]" "$D/monmap" >/dev/null
  ceph-mon "${C[@]}" --mkfs -i a --monmap "$D/monmap" --keyring "$D/keyring" >"$D/log/mkfs.log" 2>&1 ||
    fail "ceph-mon --mkfs failed: $(cat "$D/log/mkfs.log")"
  daemon ceph-mon "${C[@]}" -i a || fail "ceph-mon did not start"
  wait_for "$MON_DEADLINE" "ceph-mon" timeout 10 ceph "${C[@]}" --connect-timeout 5 mon stat

  log "starting ceph-osd (memstore)"
  local uuid id
  uuid=$(uuidgen)
  id=$(timeout "$OSD_DEADLINE" ceph "${C[@]}" --connect-timeout 30 osd new "$uuid" 0) || fail "ceph osd new failed"
  [ "$id" = 0 ] || fail "ceph osd new returned id '$id', expected 0"
  mkdir -p "$D/osd/ceph-0"
  ceph-osd "${C[@]}" -i 0 --mkfs --osd-uuid "$uuid" >>"$D/log/mkfs.log" 2>&1 || fail "ceph-osd --mkfs failed: $(tail -n 20 "$D/log/mkfs.log")"
  daemon ceph-osd "${C[@]}" -i 0 || fail "ceph-osd did not start"
  osd_up() { timeout 10 ceph "${C[@]}" --connect-timeout 5 osd dump 2>/dev/null | grep -q '^osd\.0 up'; }
  wait_for "$OSD_DEADLINE" "ceph-osd" osd_up

  log "starting radosgw on 127.0.0.1:$RGW_PORT"
  daemon radosgw "${C[@]}" -n client.rgw.a || fail "radosgw did not start"
  wait_for "$RGW_DEADLINE" "radosgw" rgw_up

  timeout 60 radosgw-admin "${C[@]}" -n client.admin user create --uid=celer --display-name=celer \
    --access-key="$ACCESS_KEY" --secret="$SECRET_KEY" >/dev/null 2>"$D/log/user-create.log" ||
    fail "radosgw-admin user create failed: $(tail -n 20 "$D/log/user-create.log")"

  # The first bucket create also makes the data pools, which takes a few seconds.
  log "creating bucket $BUCKET"
  make_bucket() {
    local code
    code=$(curl -s -o "$D/log/bucket.out" -w '%{http_code}' --max-time 20 -X PUT \
      -H "x-amz-content-sha256: $EMPTY_SHA256" --aws-sigv4 "aws:amz:$REGION:s3" --user "$ACCESS_KEY:$SECRET_KEY" "http://127.0.0.1:$RGW_PORT/$BUCKET")
    [ "$code" = 200 ] || [ "$code" = 409 ]
  }
  wait_for "$BUCKET_DEADLINE" "bucket $BUCKET" make_bucket

  printf 'RGW_PORT=%s\nACCESS_KEY=%s\nSECRET_KEY=%s\n' "$RGW_PORT" "$ACCESS_KEY" "$SECRET_KEY" >"$D/env"
  log "ready: http://127.0.0.1:$RGW_PORT bucket $BUCKET (${SECONDS}s)"
  print_exports
}

stop() {
  exec 9>"$D/.lock"
  flock -w 300 9 || die "another s3.sh holds $D/.lock"
  stop_daemons
  rm -f "$D/env"
  log "stopped ($D)"
}

case "$cmd" in
  start) start ;;
  stop) stop ;;
  *) usage ;;
esac
