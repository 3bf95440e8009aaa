#!/usr/bin/env bash
# Install the system packages the test tiers need, only those missing (Debian/Ubuntu, root):
#   docker.io     the Docker engine of docker/engine.sh
#   debootstrap   the local base image (docker/base-image.sh)
#   etcd-server   the local cluster's etcd (k8s/local/up.sh)
#   golang-go, dpkg-dev, golang-github-modern-go-reflect2-dev   building Kubernetes 1.20
#                 from Debian's source (k8s/local/build.sh)
#   rsync         docker/build.sh's build context
#   chromium      the headless-browser viewer test
# Safe to rerun: with everything present it does nothing, not even `apt-get update`.
set -euo pipefail
PACKAGES="docker.io debootstrap etcd-server golang-go golang-github-modern-go-reflect2-dev dpkg-dev
  rsync chromium"
missing=""
for p in $PACKAGES; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" \
    || missing="$missing $p"
done
if [ -z "$missing" ]; then echo "test infrastructure packages present"; exit 0; fi
SUDO=""
[ "$(id -u)" = 0 ] || SUDO="sudo"
echo "installing:$missing"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $missing
