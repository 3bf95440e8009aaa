"""DAG `reconstruction`: the whole chain from one RunConfig.

start → alignment → inference → segmentation → synapses → postprocess → report

Each stage is a task group made from the same body as its own DAG (dags/stages.py,
wrapped by dags/common.py): begin → scale_up → waves → scale_down → end. A stage that the
config skips, or whose outputs are complete and verified from an earlier run, has its nodes
skipped; the next stage still runs. Wiring, resume and verification: :mod:`pipeline.chain`.
"""

from __future__ import annotations

from airflow.sdk import dag, get_current_context, task

from dags import stages
from dags.common import (
    DEFAULT_ARGS,
    IN_CHAIN,
    PARAMS,
    chain_group,
    config_of,
    on_run_failed,
)

STAGES = (("alignment", stages.alignment_body, "cpu"),
          ("inference", stages.inference_body, stages.inference_pool),
          ("segmentation", stages.segmentation_body, "cpu"),
          ("synapses", stages.synapses_body, "cpu"),
          ("postprocess", stages.postprocess_body, "cpu"))


@dag(dag_id="reconstruction", schedule=None, catchup=False, params=PARAMS,
     default_args=DEFAULT_ARGS, tags=["petarecon"], doc_md=__doc__, max_active_tasks=1,
     on_failure_callback=on_run_failed)
def reconstruction_dag():
    @task
    def start() -> dict:
        from pipeline import chain, status

        conf = get_current_context()["params"]["config"]
        config = chain.preflight(chain.load(conf))
        status.record_run(config, "reconstruction")
        return config.to_dict()

    @task(trigger_rule=IN_CHAIN)
    def report(conf: dict) -> dict:
        from pipeline import report as report_

        path = report_.write_run_report(config_of(conf))
        print(f"run report: {path}")
        return {"report": path}

    conf = start()
    last = conf
    for name, body, pool in STAGES:
        last = chain_group(name, body, conf, last, pool)
    last >> report(conf)


dag = reconstruction_dag()
