# The GPU worker: same entrypoint on a CUDA runtime base (python3.11 installed by the base or
# by BASE_IMAGE's own package manager); torch from the host-built wheels.
ARG BASE_IMAGE=nvidia/cuda:12.6.3-cudnn-runtime-ubuntu22.04
FROM ${BASE_IMAGE}
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 VIRTUAL_ENV=/opt/petarecon \
    PATH=/opt/petarecon/bin:$PATH NUMBA_CACHE_DIR=/tmp/numba HOME=/tmp
COPY wheels /tmp/wheels
RUN python3.11 -m venv /opt/petarecon \
 && /opt/petarecon/bin/pip install --no-index --find-links /tmp/wheels petarecon \
 && rm -rf /tmp/wheels /root/.cache \
 && useradd --uid 10001 --create-home --shell /usr/sbin/nologin petarecon
USER 10001:10001
WORKDIR /tmp
ENTRYPOINT ["python", "-m", "workers"]
