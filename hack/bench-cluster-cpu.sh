#!/usr/bin/env bash
# Where a two-node cluster's W1 time goes: starts the test S3 server (hack/s3.sh) and two cluster
# nodes on fresh temp directories, runs W1 with N writers (default 64) for S seconds (default 6),
# and prints, from /proc and the leader's /metrics over the measured run:
#   CPU per write on the leader and on the follower (all threads), replication rounds per second
#   (append frames the follower acknowledged), records and bytes per round.
# Usage: hack/bench-cluster-cpu.sh [writers] [seconds]
set -euo pipefail
cd "$(dirname "$0")/.."
writers=${1:-64}
seconds=${2:-6}
s3dir=${CELER_BENCH_S3_DIR:-/tmp/celer-bench-s3}
eval "$(bash hack/s3.sh start "$s3dir")"
work=$(mktemp -d /tmp/celer-bench-cluster-XXXXXX)
prefix="bench-$(date +%s)-$$"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
for i in 0 1; do
  bin/celer serve --node-id "n$i" --data-dir "$work/n$i" --listen "127.0.0.1:76${i}0" --grpc off \
    --peers 127.0.0.1:7603,127.0.0.1:7613 --s3-bucket "$CELER_S3_BUCKET" --s3-prefix "$prefix" --shards 2 \
    >"$work/n$i.log" 2>&1 &
  pids+=("$!")
done
leader=""
for _ in $(seq 1 300); do
  for i in 0 1; do
    if curl -sf "127.0.0.1:76${i}1/status" 2>/dev/null | grep -q '"role":"leader"'; then leader=$i; fi
  done
  [ -n "$leader" ] && break
  sleep 0.1
done
[ -n "$leader" ] || { echo "bench-cluster-cpu: no leader within 30 s" >&2; tail -5 "$work"/n*.log >&2; exit 1; }
follower=$((1 - leader))
addrs=127.0.0.1:7600,127.0.0.1:7610
bin/celer bench --addr "$addrs" --writers "$writers" --duration-s 2 --warmup-s 0 >/dev/null   # warm up
hz=$(getconf CLK_TCK)
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
fsyncs() { curl -sf "127.0.0.1:76${1}1/metrics" | awk '$1 == "celer_fsync_latency_seconds_sum" {s=$2} $1 == "celer_fsync_latency_seconds_count" {c=$2} END {printf "%d %.6f\n", c, s}'; }
metric() { curl -sf "127.0.0.1:76${leader}1/metrics" | awk -v m="$1" '$1 == m {print $2}'; }
la=$(ticks "${pids[$leader]}"); fa=$(ticks "${pids[$follower]}")
read -r lfc_a lfs_a < <(fsyncs "$leader"); read -r ffc_a ffs_a < <(fsyncs "$follower")
acks_a=$(metric celer_replication_acks_total); bytes_a=$(metric celer_replication_bytes_total); appends_a=$(metric celer_replication_appends_total)
line=$(bin/celer bench --addr "$addrs" --writers "$writers" --duration-s "$seconds" --warmup-s 0 | tail -1)
lb=$(ticks "${pids[$leader]}"); fb=$(ticks "${pids[$follower]}")
sleep 1.2   # the workers post their fsync samples every second
read -r lfc_b lfs_b < <(fsyncs "$leader"); read -r ffc_b ffs_b < <(fsyncs "$follower")
acks_b=$(metric celer_replication_acks_total); bytes_b=$(metric celer_replication_bytes_total); appends_b=$(metric celer_replication_appends_total)
writes=$(echo "$line" | sed -E 's/.*\(([0-9]+) durable writes.*/\1/')
echo "$line"
awk -v w="$writers" -v n="$writes" -v s="$seconds" -v hz="$hz" -v l=$((lb - la)) -v f=$((fb - fa)) \
  -v acks=$((acks_b - acks_a)) -v bytes=$((bytes_b - bytes_a)) -v appends=$((appends_b - appends_a)) \
  -v lfc=$((lfc_b - lfc_a)) -v lfs="$lfs_b" -v lfs0="$lfs_a" -v ffc=$((ffc_b - ffc_a)) -v ffs="$ffs_b" -v ffs0="$ffs_a" 'BEGIN {
  lfs -= lfs0; ffs -= ffs0
  printf "CPU per write: leader %.0f us, follower %.0f us (%d writers; leader %.0f%%, follower %.0f%% of one core)\n", l * 1e6 / hz / n, f * 1e6 / hz / n, w, l * 100 / hz / s, f * 100 / hz / s
  printf "fdatasync: leader %.0f/s (mean %.2f ms), follower %.0f/s (mean %.2f ms)\n", lfc / s, (lfc > 0 ? lfs * 1000 / lfc : 0), ffc / s, (ffc > 0 ? ffs * 1000 / ffc : 0)
  printf "replication: %.0f rounds/s (append frames acknowledged), %.1f records and %.0f bytes per frame\n", acks / s, n / (appends > 0 ? appends : 1), bytes / (appends > 0 ? appends : 1)
}'
