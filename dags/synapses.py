"""DAG `synapses`: cleft probability → clefts → partners → deduplicated synapse table.

sanity_check → scale_up → map → reduce → remap → assign → dedup → relabel → scale_down → report
"""

from __future__ import annotations

import itertools

from airflow.sdk import dag, task

from dags.common import DEFAULT_ARGS, PARAMS, close, config_of, run_wave, stage_tasks


@dag(dag_id="synapses", schedule=None, catchup=False, params=PARAMS, default_args=DEFAULT_ARGS,
     tags=["petarecon"], doc_md=__doc__, max_active_tasks=1)
def synapses_dag():
    sanity_check, scale_up, scale_down, report = stage_tasks("synapses")

    def wave_task(wave: str):
        @task(task_id=wave)
        def run(conf: dict) -> dict:
            from pipeline.synapses import stage

            return run_wave(conf, f"synapses {wave}", lambda c: stage.tasks(c, wave))
        return run

    @task
    def dedup(conf: dict) -> dict:
        from pipeline.synapses import stage

        return stage.dedup(config_of(conf))

    conf = sanity_check()
    chain = [scale_up(conf), wave_task("map")(conf), wave_task("reduce")(conf),
             wave_task("remap")(conf), wave_task("assign")(conf), dedup(conf),
             wave_task("relabel")(conf)]
    for up, down in itertools.pairwise(chain):
        up >> down
    close(conf, chain[-1], scale_down, report)


dag = synapses_dag()
