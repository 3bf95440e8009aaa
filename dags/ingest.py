"""DAG `ingest`: image stack → precomputed image layer → igneous pyramid.

sanity_check → scale_up → ingest_wave → pyramid_wave → scale_down → report
"""

from __future__ import annotations

from airflow.sdk import dag, get_current_context, task

from dags.common import DEFAULT_ARGS, PARAMS, config_of


@dag(dag_id="ingest", schedule=None, catchup=False, params=PARAMS, default_args=DEFAULT_ARGS,
     tags=["petarecon"], doc_md=__doc__)
def ingest_dag():
    @task
    def sanity_check() -> dict:
        from pipeline import waves
        from pipeline.ingest import stage

        config = stage.sanity_check(config_of(get_current_context()))
        waves.start_run(config)
        stage.prepare(config)
        return config.to_dict()

    @task
    def scale_up(conf: dict) -> int:
        from pipeline import waves

        return waves.scale(config_of(conf))

    @task
    def ingest_wave(conf: dict, _workers: int) -> dict:
        from pipeline import waves
        from pipeline.ingest import stage

        config = config_of(conf)
        return waves.run_wave(config, "ingest", stage.ingest_tasks(config))

    @task
    def pyramid_wave(conf: dict, _previous: dict) -> dict:
        from pipeline import waves
        from pipeline.ingest import stage

        config = config_of(conf)
        return waves.run_wave(config, "pyramid", stage.pyramid_tasks(config))

    @task(trigger_rule="all_done")
    def scale_down(conf: dict) -> int:
        from pipeline import waves

        return waves.scale(config_of(conf), n=0)

    @task
    def report(conf: dict) -> dict:
        from pipeline import report
        from pipeline.ingest import stage

        config = config_of(conf)
        return report.write_report(config, stage.finish(config))

    conf = sanity_check()
    pyramid = pyramid_wave(conf, ingest_wave(conf, scale_up(conf)))
    down = scale_down(conf)
    pyramid >> down
    [pyramid, down] >> report(conf)  # the run fails if a wave failed, after scaling down


dag = ingest_dag()
