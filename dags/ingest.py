"""DAG `ingest`: image stack → precomputed image layer → igneous pyramid.

sanity_check → scale_up → ingest_wave → pyramid_wave → scale_down → report
"""

from __future__ import annotations

from airflow.sdk import dag, task

from dags.common import DEFAULT_ARGS, PARAMS, close, run_wave, stage_tasks


@dag(dag_id="ingest", schedule=None, catchup=False, params=PARAMS, default_args=DEFAULT_ARGS,
     tags=["petarecon"], doc_md=__doc__)
def ingest_dag():
    sanity_check, scale_up, scale_down, report = stage_tasks("ingest")

    @task
    def ingest_wave(conf: dict) -> dict:
        from pipeline.ingest import stage

        return run_wave(conf, "ingest", stage.ingest_tasks)

    @task
    def pyramid_wave(conf: dict) -> dict:
        from pipeline.ingest import stage

        return run_wave(conf, "pyramid", stage.pyramid_tasks)

    conf = sanity_check()
    last = pyramid_wave(conf)
    scale_up(conf) >> ingest_wave(conf) >> last
    close(conf, last, scale_down, report)


dag = ingest_dag()
