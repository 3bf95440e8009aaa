#!/usr/bin/env bash
# Build the Kubernetes 1.20 control plane + kubelet from Debian's source package, once per
# machine. Binaries are cached under $PETARECON_CACHE (default ~/.cache/petarecon); a rerun with
# the cache present does nothing. Needs: dpkg-dev, golang-go and
# golang-github-modern-go-reflect2-dev (tests/infra/install.sh).
#
# Kubernetes 1.20 vendors github.com/modern-go/reflect2 v1.0.1, whose map iteration calls
# reflect.mapiterinit with the pre-Go-1.18 signature: built with Debian's Go 1.19 the API
# server segfaults (SIGSEGV in aeshashbody/mapiternext) when it encodes a map. So, as
# Debian's own build does, the vendored copy is replaced by Debian's reflect2 1.0.2 package.
set -euo pipefail
CACHE="${PETARECON_CACHE:-$HOME/.cache/petarecon}"
OUT="$CACHE/kubernetes/bin"
BINS="kube-apiserver kube-controller-manager kube-scheduler kubelet"
STAMP="$OUT/.built-with-reflect2-1.0.2"
REFLECT2=/usr/share/gocode/src/github.com/modern-go/reflect2
done_already=1
for b in $BINS pause; do [ -x "$OUT/$b" ] || done_already=0; done
[ -f "$STAMP" ] || done_already=0
[ "$done_already" = 1 ] && { echo "kubernetes binaries cached in $OUT"; exit 0; }
[ -f "$REFLECT2/go_above_118.go" ] || {
  echo "$REFLECT2 missing: apt-get install golang-github-modern-go-reflect2-dev" >&2; exit 1; }

SRC="$CACHE/kubernetes/src"
export GOCACHE="${GOCACHE:-$CACHE/kubernetes/go-build}"  # not under $HOME: CI may change it
mkdir -p "$SRC" "$OUT"
if ! ls -d "$SRC"/kubernetes-*/ >/dev/null 2>&1; then
  if ! grep -rqs '^Types:.*deb-src' /etc/apt/sources.list.d/; then
    sed 's/^Types: deb$/Types: deb-src/' /etc/apt/sources.list.d/debian.sources \
      > /etc/apt/sources.list.d/petarecon-src.sources
    apt-get update -qq
  fi
  (cd "$SRC" && apt-get source -qq kubernetes)
fi
TREE="$(ls -d "$SRC"/kubernetes-*/ | head -1)"; TREE="${TREE%/}"
VENDORED="$TREE/vendor/github.com/modern-go/reflect2"
if [ ! -f "$VENDORED/go_above_118.go" ]; then
  rm -rf "$VENDORED" && mkdir -p "$VENDORED"
  cp "$REFLECT2"/*.go "$VENDORED"/
  rm -f "$OUT"/kube-*  "$OUT"/kubelet
fi
mkdir -p "$TREE/.go/src/k8s.io"
ln -sfn "$TREE" "$TREE/.go/src/k8s.io/kubernetes"
echo "building $BINS from $TREE (about 17 min on 2 cores)"
(cd "$TREE/.go/src/k8s.io/kubernetes" && \
  GOPATH="$TREE/.go" GOPROXY=off \
  make WHAT="cmd/kube-apiserver cmd/kube-controller-manager cmd/kube-scheduler cmd/kubelet")
for b in $BINS; do
  cp "$(find "$TREE/_output" -type f -name "$b" -perm -u+x | head -1)" "$OUT/$b"
done
gcc -Os -static -o "$OUT/pause" "$TREE/build/pause/linux/pause.c" \
  -DVERSION="petarecon" 2>/dev/null || gcc -Os -static -o "$OUT/pause" "$TREE/build/pause/linux/pause.c"
touch "$STAMP"
echo "kubernetes binaries cached in $OUT"
