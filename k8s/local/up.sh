#!/usr/bin/env bash
# A one-node Kubernetes 1.20 cluster on this machine: `k8s/local/up.sh`, undone by down.sh.
#
# etcd (Debian's etcd-server), kube-apiserver on https://127.0.0.1:$PETARECON_K8S_PORT,
# controller-manager, scheduler and a kubelet on the Docker engine of docker/engine.sh (node
# IP = docker0's address), all with openssl-made certificates. The binaries come from
# k8s/local/build.sh (cached); the pause image is built from its static pause binary.
# Writes an admin kubeconfig to $PETARECON_K8S_RUN/kubeconfig, waits until the node is Ready,
# and prints `KUBECONFIG=...`. Idempotent: a cluster already up is reused.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
CACHE="${PETARECON_CACHE:-$HOME/.cache/petarecon}"
BIN="$CACHE/kubernetes/bin"
RUN="${PETARECON_K8S_RUN:-/tmp/petarecon-k8s}"
PORT="${PETARECON_K8S_PORT:-16443}"
ETCD_PORT="${PETARECON_ETCD_PORT:-12379}"
NODE="${PETARECON_K8S_NODE:-petarecon-node}"
PAUSE_IMAGE="petarecon-pause:3.4"
PKI="$RUN/pki"
SERVER="https://127.0.0.1:$PORT"
: "${DOCKER_HOST:?DOCKER_HOST unset: run docker/engine.sh start first}"

for b in kube-apiserver kube-controller-manager kube-scheduler kubelet pause; do
  [ -x "$BIN/$b" ] || { echo "$BIN/$b missing: run k8s/local/build.sh first" >&2; exit 1; }
done
command -v etcd >/dev/null || { echo "etcd missing: run tests/infra/install.sh" >&2; exit 1; }
mkdir -p "$RUN/pids" "$RUN/logs" "$PKI"

api() {  # api PATH: GET from the API server as admin (curl); fails if it does not answer
  curl -sf --max-time 5 --cacert "$PKI/ca.crt" --cert "$PKI/admin.crt" --key "$PKI/admin.key" \
    "$SERVER$1"
}

node_ready() {
  local doc
  doc="$(api "/api/v1/nodes/$NODE" 2>/dev/null)" || return 1
  python3 -c '
import json, sys
node = json.loads(sys.argv[1])
ok = any(c["type"] == "Ready" and c["status"] == "True"
         for c in node.get("status", {}).get("conditions", []))
sys.exit(0 if ok else 1)' "$doc" 2>/dev/null
}

if [ -f "$RUN/kubeconfig" ] && node_ready; then echo "KUBECONFIG=$RUN/kubeconfig"; exit 0; fi

running() { [ -f "$RUN/pids/$1" ] && kill -0 "$(cat "$RUN/pids/$1")" 2>/dev/null; }

launch() {  # launch NAME CMD...: run in the background (own session), log and pid under $RUN
  local name="$1"; shift
  running "$name" && return 0
  setsid "$@" >"$RUN/logs/$name.log" 2>&1 < /dev/null &
  echo $! > "$RUN/pids/$name"
}

wait_for() {  # wait_for WHAT SECONDS CMD...
  local what="$1" secs="$2"; shift 2
  for _ in $(seq 1 $((secs * 2))); do "$@" && return 0; sleep 0.5; done
  echo "$what did not come up in ${secs}s; logs in $RUN/logs:" >&2
  for f in "$RUN/logs/"*.log; do echo "== $f" >&2; tail -n 8 "$f" >&2; done
  exit 1
}

# --- certificates ---------------------------------------------------------------------------
NODE_IP="$(ip -4 -o addr show docker0 2>/dev/null | awk '{split($4, a, "/"); print a[1]; exit}')"
[ -n "$NODE_IP" ] || { echo "no docker0 address: is the Docker engine up?" >&2; exit 1; }
cert() {  # cert NAME SUBJECT [SANS]: a client/server certificate signed by the cluster CA
  local name="$1" subj="$2" sans="${3:-}"
  [ -s "$PKI/$name.crt" ] && return 0
  openssl req -new -newkey rsa:2048 -nodes -keyout "$PKI/$name.key" -subj "$subj" \
    -out "$PKI/$name.csr" 2>/dev/null
  local ext="$PKI/$name.ext"
  printf 'basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\n' > "$ext"
  printf 'extendedKeyUsage=serverAuth,clientAuth\n' >> "$ext"
  [ -n "$sans" ] && echo "subjectAltName=$sans" >> "$ext"
  openssl x509 -req -in "$PKI/$name.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" \
    -CAcreateserial -days 3650 -extfile "$ext" -out "$PKI/$name.crt" 2>/dev/null
}
if [ ! -s "$PKI/ca.crt" ]; then
  openssl req -x509 -new -newkey rsa:2048 -nodes -keyout "$PKI/ca.key" -days 3650 \
    -subj "/CN=petarecon-local-ca" -out "$PKI/ca.crt" 2>/dev/null
fi
cert apiserver "/CN=kube-apiserver" \
  "IP:127.0.0.1,IP:10.0.0.1,IP:$NODE_IP,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc"
cert admin "/O=system:masters/CN=petarecon-admin"
cert kubelet "/O=system:nodes/CN=system:node:$NODE"
cert controller-manager "/CN=system:kube-controller-manager"
cert scheduler "/CN=system:kube-scheduler"
[ -s "$PKI/sa.key" ] || openssl genrsa -out "$PKI/sa.key" 2048 2>/dev/null
openssl rsa -in "$PKI/sa.key" -pubout -out "$PKI/sa.pub" 2>/dev/null

kubeconfig() {  # kubeconfig NAME: a kubeconfig using certificate NAME
  cat > "$RUN/$1.kubeconfig" <<KC
apiVersion: v1
kind: Config
clusters:
- name: petarecon-local
  cluster: {server: "$SERVER", certificate-authority: "$PKI/ca.crt"}
users:
- name: $1
  user: {client-certificate: "$PKI/$1.crt", client-key: "$PKI/$1.key"}
contexts:
- name: petarecon-local
  context: {cluster: petarecon-local, user: $1, namespace: petarecon}
current-context: petarecon-local
KC
}
for n in admin kubelet controller-manager scheduler; do kubeconfig "$n"; done

# --- control plane --------------------------------------------------------------------------
launch etcd etcd --name petarecon --data-dir "$RUN/etcd" \
  --listen-client-urls "http://127.0.0.1:$ETCD_PORT" \
  --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
  --listen-peer-urls "http://127.0.0.1:$((ETCD_PORT + 1))" \
  --initial-advertise-peer-urls "http://127.0.0.1:$((ETCD_PORT + 1))" \
  --initial-cluster "petarecon=http://127.0.0.1:$((ETCD_PORT + 1))"
wait_for etcd 30 curl -sf --max-time 2 "http://127.0.0.1:$ETCD_PORT/health" -o /dev/null

launch kube-apiserver "$BIN/kube-apiserver" --etcd-servers "http://127.0.0.1:$ETCD_PORT" \
  --bind-address=127.0.0.1 --secure-port="$PORT" --insecure-port=0 \
  --advertise-address=127.0.0.1 --endpoint-reconciler-type=none \
  --service-cluster-ip-range=10.0.0.0/24 --cert-dir="$RUN/apiserver" \
  --client-ca-file="$PKI/ca.crt" --tls-cert-file="$PKI/apiserver.crt" \
  --tls-private-key-file="$PKI/apiserver.key" \
  --service-account-key-file="$PKI/sa.pub" --service-account-signing-key-file="$PKI/sa.key" \
  --service-account-issuer=https://kubernetes.default.svc \
  --authorization-mode=Node,RBAC --enable-admission-plugins=NodeRestriction \
  --kubelet-client-certificate="$PKI/admin.crt" --kubelet-client-key="$PKI/admin.key" \
  --kubelet-preferred-address-types=InternalIP
api_ready() { api /readyz >/dev/null; }
wait_for kube-apiserver 90 api_ready

launch kube-controller-manager "$BIN/kube-controller-manager" \
  --kubeconfig="$RUN/controller-manager.kubeconfig" --leader-elect=false \
  --bind-address=127.0.0.1 --port=0 --secure-port=0 \
  --service-account-private-key-file="$PKI/sa.key" --root-ca-file="$PKI/ca.crt" \
  --use-service-account-credentials=true --controllers='*,-nodeipam,-cloud-node-lifecycle'
launch kube-scheduler "$BIN/kube-scheduler" --kubeconfig="$RUN/scheduler.kubeconfig" \
  --leader-elect=false --bind-address=127.0.0.1 --port=0 --secure-port=0

# --- node -----------------------------------------------------------------------------------
if ! docker image inspect "$PAUSE_IMAGE" >/dev/null 2>&1; then
  ctx="$(mktemp -d)"
  cp "$BIN/pause" "$ctx/pause"
  printf 'FROM scratch\nCOPY pause /pause\nENTRYPOINT ["/pause"]\n' > "$ctx/Dockerfile"
  DOCKER_BUILDKIT=0 docker build --quiet --network none -t "$PAUSE_IMAGE" "$ctx" >/dev/null 2>&1
  rm -rf "$ctx"
fi
launch kubelet "$BIN/kubelet" --kubeconfig="$RUN/kubelet.kubeconfig" \
  --container-runtime=docker --docker-endpoint="$DOCKER_HOST" \
  --cgroup-driver=cgroupfs --fail-swap-on=false \
  --hostname-override="$NODE" --node-ip="$NODE_IP" --address="$NODE_IP" \
  --pod-infra-container-image="$PAUSE_IMAGE" \
  --root-dir="$RUN/kubelet" --cert-dir="$RUN/kubelet/pki" \
  --read-only-port=0 --healthz-bind-address=127.0.0.1 --max-pods=30 \
  --eviction-hard='memory.available<100Mi,nodefs.available<2%,imagefs.available<2%' \
  --image-gc-high-threshold=100 --image-gc-low-threshold=99 \
  --enforce-node-allocatable='' --serialize-image-pulls=false \
  --client-ca-file="$PKI/ca.crt" --authorization-mode=Webhook --anonymous-auth=false \
  --authentication-token-webhook
wait_for "node $NODE Ready" 120 node_ready
cp "$RUN/admin.kubeconfig" "$RUN/kubeconfig"
echo "KUBECONFIG=$RUN/kubeconfig"
