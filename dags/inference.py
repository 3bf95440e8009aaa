"""DAG `inference`: image layer → RSUNet affinities (and myelin), chunk by chunk.

sanity_check → scale_up → inference_wave → scale_down → report

The workers come from the "gpu" pool when ``inference.device`` is cuda, else from "cpu" (a
hint: the LocalCluster runs both pools the same way); the DAG's shape stays static.
"""

from __future__ import annotations

from airflow.sdk import dag, task

from dags.common import DEFAULT_ARGS, PARAMS, close, config_of, run_wave, stage_tasks


def _pool(config) -> str:
    from pipeline.inference import stage

    return stage.pool(config)


@dag(dag_id="inference", schedule=None, catchup=False, params=PARAMS,
     default_args=DEFAULT_ARGS, tags=["petarecon"], doc_md=__doc__)
def inference_dag():
    sanity_check, scale_up, scale_down, report = stage_tasks("inference", pool=_pool)

    @task
    def inference_wave(conf: dict) -> dict:
        from pipeline.inference import stage

        return run_wave(conf, "inference", stage.inference_tasks, _pool(config_of(conf)))

    conf = sanity_check()
    last = inference_wave(conf)
    scale_up(conf) >> last
    close(conf, last, scale_down, report)


dag = inference_dag()
