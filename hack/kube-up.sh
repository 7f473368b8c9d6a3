#!/usr/bin/env bash
# Starts a local Kubernetes control plane for the end-to-end tests: etcd, kube-apiserver
# (static-token auth, RBAC authorization) and kube-controller-manager (so StatefulSets create
# Pods and PVCs, garbage collection and the disruption controller run). There is no scheduler and
# no kubelet; test/agent plays both.
#
#   hack/kube-up.sh RUN_DIR      # builds or reuses the binaries (hack/kube-build.sh) first
#
# RUN_DIR receives: kubeconfig (JSON, CA-verified TLS, admin token), env (shell-sourceable: ports,
# pids, KUBECONFIG), logs etcd.log apiserver.log kcm.log, the etcd data and the serving certs.
# Ports are picked at random in 20000-32000 (below the ephemeral range) and checked free.
# Every wait is bounded; on failure the log tails are printed and whatever started is stopped.
# Stop with hack/kube-down.sh RUN_DIR.
#
# Warm start (binaries cached): ~5-8 s. Cold: hack/kube-build.sh first (~6-8 min).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
R="${1:?usage: kube-up.sh RUN_DIR}"
mkdir -p "$R"
R="$(cd "$R" && pwd)"
log() { printf '[kube-up %s] %s\n' "$(date +%T)" "$*" >&2; }

BIN="$(bash "$here/kube-build.sh" | tail -n1)"
command -v etcd >/dev/null || { log "etcd missing (hack/kube-build.sh installs etcd-server)"; exit 1; }

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
taken=" "
pick_port() {
  local p i
  for i in $(seq 1 200); do
    p=$((20000 + RANDOM % 12000))
    case "$taken" in *" $p "*|*" $((p + 1)) "*) continue ;; esac
    if port_free "$p" && port_free $((p + 1)); then taken="$taken$p $((p + 1)) "; echo "$p"; return 0; fi
  done
  log "no free port found"; return 1
}

ETCD_PORT=$(pick_port)   # client; peer is ETCD_PORT+1
API_PORT=$(pick_port)
KCM_PORT=$(pick_port)

rm -rf "$R/etcd" "$R/certs"
mkdir -p "$R/certs"
if [ ! -f "$R/sa.key" ]; then
  openssl genrsa -out "$R/sa.key" 2048 2>/dev/null
  openssl rsa -in "$R/sa.key" -pubout -out "$R/sa.pub" 2>/dev/null
fi
TOKEN="$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')"
echo "$TOKEN,admin,admin,system:masters" >"$R/tokens.csv"
chmod 600 "$R/tokens.csv" "$R/sa.key"

started=()
fail() {
  log "FAILED: $*"
  for f in etcd apiserver kcm; do
    [ -f "$R/$f.log" ] && { echo "--- last lines of $R/$f.log" >&2; tail -n 25 "$R/$f.log" >&2; }
  done
  bash "$here/kube-down.sh" "$R" >&2 || true
  exit 1
}
# wait_until SECONDS PID DESCRIPTION COMMAND...: polls COMMAND until it succeeds; fails early when
# PID has exited, and after SECONDS.
wait_until() {
  local limit=$1 pid=$2 what=$3; shift 3
  local deadline=$((SECONDS + limit))
  until "$@" >/dev/null 2>&1; do
    kill -0 "$pid" 2>/dev/null || fail "$what exited"
    [ $SECONDS -lt $deadline ] || fail "$what not healthy after ${limit}s"
    sleep 0.2
  done
}

t0=$SECONDS
etcd --name celer-e2e --data-dir "$R/etcd" \
  --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
  --listen-peer-urls "http://127.0.0.1:$((ETCD_PORT + 1))" --initial-advertise-peer-urls "http://127.0.0.1:$((ETCD_PORT + 1))" \
  --initial-cluster "celer-e2e=http://127.0.0.1:$((ETCD_PORT + 1))" --log-level warn \
  --quota-backend-bytes $((2 * 1024 * 1024 * 1024)) >"$R/etcd.log" 2>&1 </dev/null &
echo $! >"$R/etcd.pid"
wait_until 30 "$(cat "$R/etcd.pid")" etcd curl -sf "http://127.0.0.1:$ETCD_PORT/health"
log "etcd healthy on :$ETCD_PORT ($((SECONDS - t0)) s)"

"$BIN/kube-apiserver" --etcd-servers="http://127.0.0.1:$ETCD_PORT" \
  --bind-address=127.0.0.1 --advertise-address=127.0.0.1 --secure-port="$API_PORT" --insecure-port=0 \
  --cert-dir="$R/certs" --token-auth-file="$R/tokens.csv" --authorization-mode=RBAC \
  --service-account-key-file="$R/sa.pub" --service-account-signing-key-file="$R/sa.key" \
  --service-account-issuer=https://kubernetes.default.svc --api-audiences=https://kubernetes.default.svc \
  --service-cluster-ip-range=10.0.0.0/24 --allow-privileged=true \
  --disable-admission-plugins=ServiceAccount --enable-priority-and-fairness=false \
  >"$R/apiserver.log" 2>&1 </dev/null &
echo $! >"$R/apiserver.pid"
wait_until 90 "$(cat "$R/apiserver.pid")" kube-apiserver \
  curl -sf --cacert "$R/certs/apiserver.crt" -H "Authorization: Bearer $TOKEN" "https://127.0.0.1:$API_PORT/readyz"
log "kube-apiserver ready on :$API_PORT ($((SECONDS - t0)) s)"

# JSON is YAML, so kubectl, helm and @kubernetes/client-node read this; test/agent parses it as JSON.
ca="$(base64 -w0 <"$R/certs/apiserver.crt")"
cat >"$R/kubeconfig" <<KC
{
  "apiVersion": "v1",
  "kind": "Config",
  "clusters": [{ "name": "celer-e2e", "cluster": { "server": "https://127.0.0.1:$API_PORT", "certificate-authority-data": "$ca" } }],
  "users": [{ "name": "admin", "user": { "token": "$TOKEN" } }],
  "contexts": [{ "name": "celer-e2e", "context": { "cluster": "celer-e2e", "user": "admin", "namespace": "default" } }],
  "current-context": "celer-e2e"
}
KC
chmod 600 "$R/kubeconfig"

# Everything but the controllers that need a cloud, a scheduler's node IPAM or real volumes
# (test/agent binds PVCs itself, so the PV binder must not race it).
"$BIN/kube-controller-manager" --kubeconfig="$R/kubeconfig" \
  --authentication-kubeconfig="$R/kubeconfig" --authorization-kubeconfig="$R/kubeconfig" \
  --bind-address=127.0.0.1 --secure-port="$KCM_PORT" --port=0 --leader-elect=false \
  --service-account-private-key-file="$R/sa.key" --root-ca-file="$R/certs/apiserver.crt" \
  --use-service-account-credentials=false \
  --controllers='*,-nodeipam,-nodelifecycle,-cloud-node-lifecycle,-service,-route,-attachdetach,-persistentvolume-binder,-persistentvolume-expander,-ttl' \
  >"$R/kcm.log" 2>&1 </dev/null &
echo $! >"$R/kcm.pid"
wait_until 30 "$(cat "$R/kcm.pid")" kube-controller-manager \
  curl -sfk "https://127.0.0.1:$KCM_PORT/healthz"
log "kube-controller-manager healthy on :$KCM_PORT ($((SECONDS - t0)) s)"

cat >"$R/env" <<ENV
KUBECONFIG=$R/kubeconfig
KUBE_SERVER=https://127.0.0.1:$API_PORT
KUBE_API_PORT=$API_PORT
KUBE_ETCD_PORT=$ETCD_PORT
KUBE_KCM_PORT=$KCM_PORT
KUBE_BIN=$BIN
KUBE_RUN_DIR=$R
ENV
log "up in $((SECONDS - t0)) s; export KUBECONFIG=$R/kubeconfig"
echo "$R/kubeconfig"
