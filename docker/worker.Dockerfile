# The CPU worker: `python -m workers QUEUE_URL`. Built offline from wheels made on the host
# (docker/build.sh), so `docker build --network none` works; BASE_IMAGE needs python3.11.
ARG BASE_IMAGE=python:3.11-slim-bookworm
FROM ${BASE_IMAGE}
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 VIRTUAL_ENV=/opt/petarecon \
    PATH=/opt/petarecon/bin:$PATH NUMBA_CACHE_DIR=/tmp/numba HOME=/tmp
COPY wheels /tmp/wheels
RUN python3 -m venv /opt/petarecon \
 && /opt/petarecon/bin/pip install --no-index --find-links /tmp/wheels petarecon \
 && rm -rf /tmp/wheels /root/.cache \
 && useradd --uid 10001 --create-home --shell /usr/sbin/nologin petarecon
USER 10001:10001
WORKDIR /tmp
ENTRYPOINT ["python", "-m", "workers"]
