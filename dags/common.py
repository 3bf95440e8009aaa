"""What every petarecon DAG shares: the run-config param, conf → RunConfig, waves as DAG
nodes, and the task groups a stage runs in, standalone or inside the reconstruction chain.

A stage DAG file defines ``body(stage, conf)``: its waves as a list of DAG nodes in order,
made with :meth:`Stage.wave` / :meth:`Stage.node`. :func:`stage_dag` wraps a body in
sanity check → scale up → body → scale down → report; :func:`chain_group` wraps the same
body in the reconstruction chain's begin → scale up → body → scale down → end, whose nodes
skip themselves when the chain does not run that stage (skipped or complete and verified).
"""

from __future__ import annotations

import importlib
import itertools
import logging
from collections.abc import Callable
from typing import Any

from airflow.sdk import Param, TaskGroup, dag, get_current_context, task
from airflow.sdk.exceptions import AirflowSkipException

from pipeline.config import RunConfig, load_config

DEFAULT_ARGS = {"owner": "petarecon", "retries": 0}
PARAMS = {"config": Param({}, type="object",
                          description="the RunConfig document (see README: run config)")}
MODULES = {"ingest": "pipeline.ingest.stage", "alignment": "pipeline.align.stage",
           "inference": "pipeline.inference.stage",
           "segmentation": "pipeline.segmentation.stage",
           "synapses": "pipeline.synapses.stage", "postprocess": "pipeline.postprocess.stage"}
IN_CHAIN = "none_failed"  # chain nodes run after skipped upstream nodes, not after failed ones

Body = Callable[["Stage", Any], list]


def config_of(context_or_conf: dict[str, Any]) -> RunConfig:
    """The RunConfig of the DAG run: from a task's params, or an upstream XCom dict."""
    conf = context_or_conf.get("params", {}).get("config", context_or_conf)
    logging.getLogger("petarecon").setLevel(logging.INFO)
    return load_config(conf)


def run_wave(conf: dict, name: str, tasks_of: Callable[[RunConfig], list],
             pool: str = "cpu", stage: str = "", chain: bool = False) -> dict:
    """Enqueue ``tasks_of(config)`` as wave ``name`` and wait for it, recording progress
    under the run's scratch path (for `petarecon status`) and stopping on a cancel. In the
    chain, a wave an interrupted attempt of the stage finished is skipped (resume)."""
    from pipeline import chain as chain_
    from pipeline import status, waves

    config = config_of(conf)
    done = chain_.wave_done(config, stage, name) if chain else None
    if done is not None:
        logging.getLogger("petarecon").info("wave %s: finished before the interruption, "
                                            "skipped", name)
        status.mark_wave(config, stage, name, done)
        return {**done, "stage": stage, "resumed": True}
    reporter = status.progress_reporter(config, stage, name)
    try:
        out = waves.run_wave(config, name, tasks_of(config), pool=pool, reporter=reporter)
    except BaseException as e:
        status.mark_wave(config, stage, name, None, e)
        raise
    status.mark_wave(config, stage, name, out)
    if chain:
        chain_.mark_wave_done(config, stage, out)
    return {**out, "stage": stage}


class Stage:
    """Makes the DAG nodes of one stage. ``pool`` names the worker pool or picks it from the
    config; ``chain`` makes every node skip itself unless the chain runs the stage."""

    def __init__(self, name: str, pool: str | Callable[[RunConfig], str] = "cpu",
                 chain: bool = False) -> None:
        self.name = name
        self.pool = pool
        self.chain = chain

    def module(self):
        """The stage's pipeline module (imported when a task runs, not at parse time)."""
        return importlib.import_module(MODULES[self.name])

    def pool_of(self, config: RunConfig) -> str:
        return self.pool(config) if callable(self.pool) else self.pool

    def node(self, task_id: str, work: Callable[[dict], Any], trigger_rule: str | None = None):
        """A DAG node running ``work(conf)``; in the chain it skips unless the stage runs."""
        stage, chain = self.name, self.chain
        rule = IN_CHAIN if chain else (trigger_rule or "all_success")

        @task(task_id=task_id, trigger_rule=rule)
        def run(conf: dict) -> Any:
            if chain:
                from pipeline import chain as chain_

                if not chain_.runs(config_of(conf), stage):
                    raise AirflowSkipException(f"stage {stage} does not run in this chain run")
            return work(conf)
        return run

    def wave(self, task_id: str, wave: str, tasks_of: Callable[[RunConfig], list],
             trigger_rule: str | None = None):
        """A node running one wave: enqueue ``tasks_of(config)``, scale check, wait."""
        def work(conf: dict) -> dict:
            return run_wave(conf, wave, tasks_of, self.pool_of(config_of(conf)), self.name,
                            self.chain)
        return self.node(task_id, work, trigger_rule)

    def scale_up(self):
        def work(conf: dict) -> int:
            from pipeline import waves

            config = config_of(conf)
            return waves.scale(config, self.pool_of(config))
        return self.node("scale_up", work)

    def scale_down(self):
        """Scale the pool to 0; runs whatever happened upstream."""
        @task(task_id="scale_down", trigger_rule="all_done")
        def scale_down(conf: dict | None) -> int:
            from pipeline import chain, waves
            from pipeline.cluster import cluster_for

            # the stage's first node may have failed before returning its config
            config = config_of(conf) if conf else \
                chain.load(get_current_context()["params"]["config"])
            waves.scale(config, self.pool_of(config), n=0)
            # wait for draining workers to exit, so the next stage's scale-up counts none
            cluster_for(config, self.pool_of(config)).shutdown(timeout=120)
            return 0
        return scale_down


def on_run_failed(context: dict) -> None:
    """DAG-level failure callback: a run that failed or was marked failed in Airflow (its
    running tasks killed, so its scale-down nodes may never run) has its pools scaled to
    zero and its queue purged. Never raises."""
    try:
        from pipeline import chain, status

        config = chain.load(context["params"]["config"])
        status.cancel(config.scratch_path, reason="DAG run failed", request=False)
    except Exception:  # a callback must not fail; the run has failed already
        logging.getLogger("petarecon").exception("could not scale the failed run's pools down")


def _chain_pairs(nodes: list) -> None:
    for up, down in itertools.pairwise(nodes):
        up >> down


def stage_dag(dag_id: str, body: Body, pool: str | Callable[[RunConfig], str] = "cpu",
              doc: str | None = None, **dag_kwargs):
    """The standalone DAG of stage ``dag_id``: sanity check → scale up → body → scale down
    → report (the report runs after scale down; the run fails if the body did)."""
    st = Stage(dag_id, pool)

    @dag(dag_id=dag_id, schedule=None, catchup=False, params=PARAMS,
         default_args=DEFAULT_ARGS, tags=["petarecon"], doc_md=doc,
         on_failure_callback=on_run_failed, **dag_kwargs)
    def build():
        @task
        def sanity_check() -> dict:
            from pipeline import status, waves

            config = st.module().sanity_check(config_of(get_current_context()))
            status.record_run(config, dag_id)
            waves.start_run(config)
            st.module().prepare(config)
            return config.to_dict()

        @task
        def report(conf: dict) -> dict:
            from pipeline import report as report_

            config = config_of(conf)
            mod = st.module()
            layers = mod.finish(config) or mod.layers(config)
            return report_.write_report(config, layers)

        conf = sanity_check()
        nodes = [st.scale_up()(conf), *body(st, conf)]
        _chain_pairs(nodes)
        down = st.scale_down()(conf)
        nodes[-1] >> down
        [nodes[-1], down] >> report(conf)

    return build()


def chain_group(name: str, body: Body, chain_conf, after,
                pool: str | Callable[[RunConfig], str] = "cpu"):
    """Stage ``name`` as a task group of the reconstruction chain, started after node
    ``after``: begin (plan: run / skip / resume; sanity check and prepare when it runs) →
    scale up → body → scale down → end (finish and the stage's record). Return its end."""
    st = Stage(name, pool, chain=True)
    with TaskGroup(group_id=name):
        @task(task_id="begin", trigger_rule=IN_CHAIN)
        def begin(conf: dict) -> dict:
            from pipeline import chain, waves

            config = config_of(conf)
            checked = chain.begin(config, name)
            if chain.runs(config, name):
                waves.start_run(checked)
            return checked.to_dict()

        def finish(conf: dict) -> dict:
            from pipeline import chain

            return chain.complete(config_of(conf), name)

        conf = begin(chain_conf)
        after >> conf
        nodes = [st.scale_up()(conf), *body(st, conf)]
        _chain_pairs(nodes)
        down = st.scale_down()(conf)
        end = st.node("end", finish)(conf)
        nodes[-1] >> down
        [nodes[-1], down] >> end
    return end
