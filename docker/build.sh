#!/usr/bin/env bash
# Build the worker, worker-gpu and airflow images offline: wheels are built on the host, then
# `docker build --network none`. Usage: docker/build.sh [BASE_IMAGE] [TAG]
#   BASE_IMAGE defaults to python:3.11-slim-bookworm (a locally imported Debian base in tests).
set -euo pipefail
cd "$(dirname "$0")/.."
BASE="${1:-python:3.11-slim-bookworm}"
TAG="${2:-latest}"
CTX="$(mktemp -d)"
trap 'rm -rf "$CTX"' EXIT
python3 -m pip wheel --quiet --wheel-dir "$CTX/wheels" .
cp -r dags "$CTX/dags"
for image in worker airflow; do
  docker build --network none --build-arg BASE_IMAGE="$BASE" \
    -f "docker/$image.Dockerfile" -t "petarecon-$image:$TAG" "$CTX"
done
if [ "${PETARECON_GPU_BASE:-}" ]; then
  docker build --network none --build-arg BASE_IMAGE="$PETARECON_GPU_BASE" \
    -f docker/worker-gpu.Dockerfile -t "petarecon-worker-gpu:$TAG" "$CTX"
fi
