# Airflow with petarecon and its DAGs baked in (for the official Helm chart, k8s/airflow/).
ARG BASE_IMAGE=python:3.11-slim-bookworm
FROM ${BASE_IMAGE}
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 VIRTUAL_ENV=/opt/petarecon \
    PATH=/opt/petarecon/bin:$PATH AIRFLOW_HOME=/opt/airflow \
    AIRFLOW__CORE__LOAD_EXAMPLES=False AIRFLOW__CORE__DAGS_FOLDER=/opt/airflow/dags
COPY wheels /tmp/wheels
COPY dags /opt/airflow/dags
RUN python3 -m venv /opt/petarecon \
 && /opt/petarecon/bin/pip install --no-index --find-links /tmp/wheels petarecon \
 && rm -rf /tmp/wheels /root/.cache \
 && useradd --uid 50000 --home-dir /opt/airflow --shell /usr/sbin/nologin airflow \
 && chown -R airflow /opt/airflow
USER 50000
WORKDIR /opt/airflow
ENTRYPOINT ["airflow"]
