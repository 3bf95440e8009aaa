"""DAG `alignment`: raw image → defects → block fields → stitch → final fields → aligned image
→ inference masks → pyramid.

sanity_check → scale_up → defects → fields → stitch → compose → render → masks → pyramid →
scale_down → report
"""

from __future__ import annotations

import itertools

from airflow.sdk import dag, get_current_context, task

from dags.common import DEFAULT_ARGS, PARAMS, config_of


def _wave(conf: dict, wave: str) -> dict:
    from pipeline import waves
    from pipeline.align import stage

    config = config_of(conf)
    return waves.run_wave(config, f"alignment {wave}", stage.tasks(config, wave))


@dag(dag_id="alignment", schedule=None, catchup=False, params=PARAMS, default_args=DEFAULT_ARGS,
     tags=["petarecon"], doc_md=__doc__, max_active_tasks=1)
def alignment_dag():
    @task
    def sanity_check() -> dict:
        from pipeline import waves
        from pipeline.align import stage

        config = stage.sanity_check(config_of(get_current_context()))
        waves.start_run(config)
        stage.prepare(config)
        return config.to_dict()

    @task
    def scale_up(conf: dict) -> int:
        from pipeline import waves

        return waves.scale(config_of(conf))

    @task
    def defects(conf: dict) -> dict:
        from pipeline.align import stage

        out = _wave(conf, "defects")
        return {**out, "sections": stage.reduce_sections(config_of(conf))}

    def wave_task(wave: str):
        @task(task_id=wave)
        def run(conf: dict) -> dict:
            return _wave(conf, wave)
        return run

    @task(trigger_rule="all_done")
    def scale_down(conf: dict) -> int:
        from pipeline import waves

        return waves.scale(config_of(conf), n=0)

    @task
    def report(conf: dict) -> dict:
        from pipeline import report as report_
        from pipeline.align import stage

        config = config_of(conf)
        stage.finish(config)
        return report_.write_report(config, stage.layers(config))

    conf = sanity_check()
    chain = [scale_up(conf), defects(conf)] + \
        [wave_task(w)(conf) for w in ("fields", "stitch", "compose", "render", "masks",
                                      "pyramid")]
    for up, down in itertools.pairwise(chain):
        up >> down
    down = scale_down(conf)
    chain[-1] >> down
    [chain[-1], down] >> report(conf)


dag = alignment_dag()
