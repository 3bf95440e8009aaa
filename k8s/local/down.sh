#!/usr/bin/env bash
# Stop the cluster of k8s/local/up.sh: kubelet first, then every pod's container, then the
# control plane and etcd; remove its state (etcd data, kubelet dir). Safe to run twice.
set -uo pipefail
RUN="${PETARECON_K8S_RUN:-/tmp/petarecon-k8s}"

stop() {  # stop NAME: SIGTERM, then SIGKILL after 15 s
  local f="$RUN/pids/$1" pid
  [ -f "$f" ] || return 0
  pid="$(cat "$f")"
  kill "$pid" 2>/dev/null
  for _ in $(seq 1 30); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
  kill -9 "$pid" 2>/dev/null
  rm -f "$f"
}

stop kubelet
if [ -n "${DOCKER_HOST:-}" ] && docker version >/dev/null 2>&1; then
  ids="$(docker ps -aq --filter label=io.kubernetes.pod.name)"
  [ -n "$ids" ] && docker rm -f $ids >/dev/null
fi
for name in kube-scheduler kube-controller-manager kube-apiserver etcd; do stop "$name"; done
if [ -d "$RUN" ]; then
  grep -o " $RUN/kubelet[^ ]*" /proc/mounts | sort -r | xargs -r -n1 umount -l 2>/dev/null
  rm -rf "$RUN/etcd" "$RUN/kubelet" "$RUN/apiserver" "$RUN/pids"
fi
echo "local cluster down"
