#!/usr/bin/env bash
# A local Debian base image (there is no registry here): `docker/base-image.sh [NAME]`.
#
# debootstrap --variant=minbase --include=python3,python3-venv bookworm into a rootfs, cached as
# a tarball under $PETARECON_CACHE/docker/ (built once per machine), then `docker import` it as
# NAME (default petarecon-base:bookworm) unless the engine already has that image.
# Needs DOCKER_HOST (docker/engine.sh start) and debootstrap (tests/infra/install.sh).
set -euo pipefail
NAME="${1:-petarecon-base:bookworm}"
CACHE="${PETARECON_CACHE:-$HOME/.cache/petarecon}"
TARBALL="$CACHE/docker/bookworm-minbase-python3.tar"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"

if docker image inspect "$NAME" >/dev/null 2>&1; then echo "$NAME"; exit 0; fi
if [ ! -s "$TARBALL" ]; then
  mkdir -p "$(dirname "$TARBALL")"
  ROOT="$(mktemp -d "$CACHE/docker/rootfs.XXXXXX")"
  trap 'rm -rf "$ROOT"' EXIT
  echo "debootstrap bookworm into $ROOT (a few minutes, once per machine)" >&2
  debootstrap --variant=minbase --include=python3,python3-venv bookworm "$ROOT" "$MIRROR" >&2
  rm -rf "$ROOT"/var/cache/apt/archives/*.deb "$ROOT"/var/lib/apt/lists/*
  tar -C "$ROOT" -cf "$TARBALL.part" .
  mv "$TARBALL.part" "$TARBALL"
fi
docker import "$TARBALL" "$NAME" >/dev/null
echo "$NAME"
