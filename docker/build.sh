#!/usr/bin/env bash
# Build the petarecon images offline: `docker/build.sh [BASE_IMAGE] [TAG]`.
#
# 1. Wheels are built on the host with `pip wheel`: all dependencies once per pyproject.toml
#    (cached under $PETARECON_CACHE/wheels/<hash>), petarecon itself on every call.
# 2. `docker build --network none` of the targets worker, airflow and worker-gpu of
#    docker/Dockerfile. They share the dependency layers, so a rebuild with nothing changed is
#    all cache hits, and a code change only rebuilds petarecon's own small layer.
#
# BASE_IMAGE (worker, airflow) defaults to python:3.11-slim-bookworm; tests use the local
# Debian base from docker/base-image.sh. The GPU worker uses $PETARECON_GPU_BASE (default:
# a CUDA runtime base); one without python3.11 gets it from apt, which needs the network, so
# only then is that build not --network none. PETARECON_IMAGES limits which images are built.
# Needs DOCKER_HOST (docker/engine.sh start).
set -euo pipefail
cd "$(dirname "$0")/.."
BASE="${1:-python:3.11-slim-bookworm}"
TAG="${2:-latest}"
GPU_BASE="${PETARECON_GPU_BASE:-nvidia/cuda:12.6.3-cudnn-runtime-ubuntu22.04}"
IMAGES="${PETARECON_IMAGES:-worker airflow worker-gpu}"
CACHE="${PETARECON_CACHE:-$HOME/.cache/petarecon}"
PY="${PYTHON:-$(pwd)/.venv/bin/python}"
[ -x "$PY" ] || PY="$(command -v python3.11 || command -v python3)"
export DOCKER_BUILDKIT=0  # the classic builder: no buildx plugin needed, `--network none` works

quiet_pip() {  # pip's noise about absent extra indexes hides real errors
  "$PY" -m pip "$@" 2>&1 | grep -v -e "is ignored: it is neither" -e "BuildBackendWarning" \
    -e "^ *!!$" -e "^ *\*\*\*" -e "corresp(dist" -e "^ *$" -e "SPDX" -e "Please use" \
    -e "By 20" -e "See https" -e "or your builds" >&2 || true
}

# Keyed by the dependency list only, so other edits of pyproject.toml keep the cache.
KEY="$("$PY" -c 'import tomllib, hashlib; d = tomllib.load(open("pyproject.toml", "rb"))
print(hashlib.sha1(repr(d["project"]["dependencies"]).encode()).hexdigest()[:16])')"
DEPS="$CACHE/wheels/$KEY"
if [ ! -f "$DEPS/.complete" ]; then
  echo "building dependency wheels into $DEPS (once per dependency list)" >&2
  rm -rf "$DEPS" && mkdir -p "$DEPS"
  quiet_pip wheel --quiet --wheel-dir "$DEPS" .
  rm -f "$DEPS"/petarecon-*.whl
  ls "$DEPS"/*.whl >/dev/null 2>&1 || { echo "pip wheel produced no wheels" >&2; exit 1; }
  touch "$DEPS/.complete"
fi

CTX="$CACHE/docker/context"  # a stable path, so the build cache keys stay the same
rm -rf "$CTX" && mkdir -p "$CTX/wheels/app"
cp -al "$DEPS" "$CTX/wheels/deps" 2>/dev/null || cp -r "$DEPS" "$CTX/wheels/deps"
rm -f "$CTX/wheels/deps/.complete"
quiet_pip wheel --quiet --no-deps --wheel-dir "$CTX/wheels/app" .
ls "$CTX"/wheels/app/petarecon-*.whl >/dev/null
# A wheel's bytes carry file times; rebuild it byte-identically when the code is unchanged.
"$PY" - "$CTX"/wheels/app/petarecon-*.whl <<'PY'
import sys, zipfile
src = sys.argv[1]
with zipfile.ZipFile(src) as z:
    items = sorted((i.filename, z.read(i.filename), i.external_attr) for i in z.infolist())
with zipfile.ZipFile(src, "w", zipfile.ZIP_DEFLATED) as z:
    for name, data, attr in items:
        info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
        info.external_attr, info.compress_type = attr, zipfile.ZIP_DEFLATED
        z.writestr(info, data)
PY
rsync -a --delete --exclude __pycache__ dags/ "$CTX/dags/"
find "$CTX" -exec touch -h -d @0 {} +

build() {  # build TARGET BASE [--network none]
  local target="$1" base="$2"; shift 2
  echo "building petarecon-$target:$TAG from $base" >&2
  local log
  if ! log="$(docker build --quiet "$@" --build-arg BASE_IMAGE="$base" --target "$target" \
      -f docker/Dockerfile -t "petarecon-$target:$TAG" "$CTX" 2>&1 >/dev/null)"; then
    echo "$log" >&2
    echo "docker build of petarecon-$target failed" >&2
    exit 1
  fi
}

for image in $IMAGES; do
  case "$image" in
    worker|airflow) build "$image" "$BASE" --network none ;;
    worker-gpu)
      if docker run --rm --network none --entrypoint python3.11 "$GPU_BASE" -V >/dev/null 2>&1
      then build worker-gpu "$GPU_BASE" --network none
      else build worker-gpu "$GPU_BASE"  # apt-get python3.11 into the base: needs a network
      fi ;;
    *) echo "unknown image $image (worker, airflow, worker-gpu)" >&2; exit 2 ;;
  esac
done
docker images --format '{{.Repository}}:{{.Tag}} {{.Size}}' | grep "^petarecon-" | grep ":$TAG " >&2
