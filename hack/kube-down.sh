#!/usr/bin/env bash
# Stops what hack/kube-up.sh RUN_DIR started: controller-manager and apiserver first, etcd last.
# SIGTERM, then SIGKILL after a bounded wait. Logs and data stay in RUN_DIR (pass --clean to remove
# the etcd data and certs too). Safe to call twice or after a partial start.
set -uo pipefail
R="${1:?usage: kube-down.sh RUN_DIR [--clean]}"
stop() {
  local f="$R/$1.pid" pid i
  [ -f "$f" ] || return 0
  pid="$(cat "$f")"
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null
    for i in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null
  fi
  rm -f "$f"
}
stop kcm
stop apiserver
stop etcd
if [ "${2:-}" = "--clean" ]; then rm -rf "$R/etcd" "$R/certs" "$R/sa.key" "$R/sa.pub" "$R/tokens.csv"; fi
exit 0
