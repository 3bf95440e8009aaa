"""DAG `segmentation`: affinities → supervoxels (`ws`) → agglomerated segments (`seg`).

sanity_check → scale_up → ws_level_0 … ws_level_15 → ws_remap → agg_level_0 … agg_level_15
→ agg_remap → tables → seg_pyramid → seg_meshes → seg_manifests → scale_down → report

One task instance per octree level, so an operator can watch and retry each level; levels
above this run's octree top are skipped. The shape is static; parameters come from the
DAG-run conf.
"""

from __future__ import annotations

import itertools

from airflow.sdk import dag, task
from airflow.sdk.exceptions import AirflowSkipException

from dags.common import DEFAULT_ARGS, PARAMS, close, config_of, run_wave, stage_tasks

MAX_LEVELS = 16  # pipeline.segmentation.stage.MAX_LEVELS, without importing it at parse time
AFTER_SKIPS = "none_failed"  # run when nothing upstream failed; skipped levels are fine


@dag(dag_id="segmentation", schedule=None, catchup=False, params=PARAMS,
     default_args=DEFAULT_ARGS, tags=["petarecon"], doc_md=__doc__, max_active_tasks=1)
def segmentation_dag():
    sanity_check, scale_up, scale_down, report = stage_tasks("segmentation")

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
            return [run_wave(conf, f"{prefix} level {level} {w}",
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
            out = run_wave(conf, f"{prefix} remap", lambda c: make(c, "remap"))
            s = config.segmentation
            stage.finish_layer(config, s.ws_layer if prefix == "ws" else s.seg_layer)
            return out
        return work

    def tables(conf: dict) -> dict:
        from pipeline.segmentation import stage

        return stage.write_tables(config_of(conf))

    def pyramid(conf: dict) -> dict:
        from pipeline.segmentation import stage

        return run_wave(conf, "seg pyramid", stage.pyramid_tasks)

    def meshes(wave: str):
        def work(conf: dict) -> dict:
            from pipeline.segmentation import stage

            return run_wave(conf, f"seg {wave}", lambda c: stage.mesh_tasks(c, wave))
        return work

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
    close(conf, chain[-1], scale_down, report)


dag = segmentation_dag()
