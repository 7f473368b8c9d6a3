#!/usr/bin/env bash
# Server CPU per durable write: starts a standalone node on a fresh temp directory, runs W1 with
# N writers (default 256), and divides the node's CPU time (all threads, from /proc) by the writes.
# Usage: hack/bench-cpu.sh [writers] [seconds]
set -euo pipefail
cd "$(dirname "$0")/.."
writers=${1:-256}
seconds=${2:-8}
dir=$(mktemp -d /tmp/celer-bench-cpu-XXXXXX)
out=$(mktemp)
trap 'kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; rm -rf "$dir" "$out"' EXIT
bin/celer serve --standalone --data-dir "$dir" --shards 2 --listen 127.0.0.1:0 --grpc off >"$out" 2>/dev/null &
pid=$!
for _ in $(seq 1 600); do grep -q '^ready$' "$out" && break; sleep 0.1; done
addr=$(awk '/^listening native/ {print $3}' "$out")
[ -n "$addr" ] || { echo "bench-cpu: the node did not start" >&2; exit 1; }
bin/celer bench --addr "$addr" --writers "$writers" --duration-s 2 --warmup-s 0 >/dev/null   # warm up
ticks() { awk '{print $14 + $15}' "/proc/$pid/stat"; }
hz=$(getconf CLK_TCK)
a=$(ticks)
line=$(bin/celer bench --addr "$addr" --writers "$writers" --duration-s "$seconds" --warmup-s 0 | tail -1)
b=$(ticks)
writes=$(echo "$line" | sed -E 's/.*\(([0-9]+) durable writes.*/\1/')
echo "$line"
echo "server CPU per write: $(( (b - a) * 1000000 / hz / writes )) us ($writers writers)"
