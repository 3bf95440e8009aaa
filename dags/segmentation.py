"""DAG `segmentation`: affinities → supervoxels (`ws`) → agglomerated segments (`seg`).

sanity_check → scale_up → ws_level_0 … ws_level_15 → ws_remap → agg_level_0 … agg_level_15
→ agg_remap → tables → seg_pyramid → seg_meshes → seg_manifests → scale_down → report

One task instance per octree level, so an operator can watch and retry each level; levels
above this run's octree top are skipped. The shape is static; parameters come from the
DAG-run conf.
"""

from __future__ import annotations

import itertools

from airflow.sdk import dag, get_current_context, task
from airflow.sdk.exceptions import AirflowSkipException

from dags.common import DEFAULT_ARGS, PARAMS, config_of

MAX_LEVELS = 16  # pipeline.segmentation.stage.MAX_LEVELS, without importing it at parse time
AFTER_SKIPS = "none_failed"  # run when nothing upstream failed; skipped levels are fine


def _wave(conf: dict, name: str, tasks_of) -> dict:
    from pipeline import waves

    config = config_of(conf)
    return waves.run_wave(config, name, tasks_of(config))


@dag(dag_id="segmentation", schedule=None, catchup=False, params=PARAMS,
     default_args=DEFAULT_ARGS, tags=["petarecon"], doc_md=__doc__, max_active_tasks=1)
def segmentation_dag():
    @task
    def sanity_check() -> dict:
        from pipeline import waves
        from pipeline.segmentation import stage

        config = stage.sanity_check(config_of(get_current_context()))
        waves.start_run(config)
        stage.prepare(config)
        return config.to_dict()

    @task
    def scale_up(conf: dict) -> int:
        from pipeline import waves

        return waves.scale(config_of(conf))

    def level_task(prefix: str, level: int):
        @task(task_id=f"{prefix}_level_{level}", trigger_rule=AFTER_SKIPS)
        def run_level(conf: dict) -> list:
            from pipeline.segmentation import stage

            config = config_of(conf)
            if level > stage.top_level(config):
                raise AirflowSkipException(f"level {level} is above this run's octree top")
            make = stage.watershed_tasks if prefix == "ws" else stage.agglomeration_tasks
            waves = ["chunks", "faces"] if (prefix, level) == ("ws", 0) else \
                ["chunks"] if level == 0 else ["nodes"]
            return [_wave(conf, f"{prefix} level {level} {w}",
                          lambda c, w=w: make(c, w, level)) for w in waves]
        return run_level

    def stage_task(task_id: str, work):
        @task(task_id=task_id, trigger_rule=AFTER_SKIPS)
        def run(conf: dict) -> dict:
            return work(conf)
        return run

    def remap(prefix: str):
        def work(conf: dict) -> dict:
            from pipeline.segmentation import stage

            config = config_of(conf)
            make = stage.watershed_tasks if prefix == "ws" else stage.agglomeration_tasks
            out = _wave(conf, f"{prefix} remap", lambda c: make(c, "remap"))
            s = config.segmentation
            stage.finish(config, s.ws_layer if prefix == "ws" else s.seg_layer)
            return out
        return work

    def tables(conf: dict) -> dict:
        from pipeline.segmentation import stage

        return stage.write_tables(config_of(conf))

    def pyramid(conf: dict) -> dict:
        from pipeline.segmentation import stage

        return _wave(conf, "seg pyramid", stage.pyramid_tasks)

    def meshes(wave: str):
        def work(conf: dict) -> dict:
            from pipeline.segmentation import stage

            return _wave(conf, f"seg {wave}", lambda c: stage.mesh_tasks(c, wave))
        return work

    @task(trigger_rule="all_done")
    def scale_down(conf: dict) -> int:
        from pipeline import waves

        return waves.scale(config_of(conf), n=0)

    @task
    def report(conf: dict) -> dict:
        from pipeline import report as report_
        from pipeline.segmentation import stage

        config = config_of(conf)
        return report_.write_report(config, stage.layers(config))

    conf = sanity_check()
    chain = [scale_up(conf)]
    for prefix in ("ws", "agg"):
        for level in range(MAX_LEVELS):
            chain.append(level_task(prefix, level)(conf))
        chain.append(stage_task(f"{prefix}_remap", remap(prefix))(conf))
    chain += [stage_task("tables", tables)(conf), stage_task("seg_pyramid", pyramid)(conf),
              stage_task("seg_meshes", meshes("meshes"))(conf),
              stage_task("seg_manifests", meshes("manifests"))(conf)]
    for up, down in itertools.pairwise(chain):
        up >> down
    last = chain[-1]
    down = scale_down(conf)
    last >> down
    [last, down] >> report(conf)


dag = segmentation_dag()
