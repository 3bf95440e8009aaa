"""What every petarecon DAG shares: the run-config param, conf → RunConfig, and the tasks
each stage DAG starts and ends with (sanity check, scale up, scale down, report)."""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from typing import Any

from airflow.sdk import Param, get_current_context, task

from pipeline.config import RunConfig, load_config

DEFAULT_ARGS = {"owner": "petarecon", "retries": 0}
PARAMS = {"config": Param({}, type="object",
                          description="the RunConfig document (see README: run config)")}


def config_of(context_or_conf: dict[str, Any]) -> RunConfig:
    """The RunConfig of the DAG run: from a task's params, or an upstream XCom dict."""
    conf = context_or_conf.get("params", {}).get("config", context_or_conf)
    logging.getLogger("petarecon").setLevel(logging.INFO)
    return load_config(conf)


def run_wave(conf: dict, name: str, tasks_of: Callable[[RunConfig], list],
             pool: str = "cpu") -> dict:
    """Enqueue ``tasks_of(config)`` as wave ``name`` and wait for it (with progress logs)."""
    from pipeline import waves

    config = config_of(conf)
    return waves.run_wave(config, name, tasks_of(config), pool=pool)


def stage_tasks(stage: str, pool: str | Callable[[RunConfig], str] = "cpu"):
    """(sanity_check, scale_up, scale_down, report) for ``pipeline.<stage>.stage``, whose
    module provides ``sanity_check(conf)``, ``prepare(config)`` and ``finish(config)`` (marks
    the outputs complete and returns {name: (path, kind)}). ``pool`` names the worker pool,
    or picks it from the run's config."""

    def module():
        return importlib.import_module(f"pipeline.{stage}.stage")

    def pool_of(config: RunConfig) -> str:
        return pool(config) if callable(pool) else pool

    @task
    def sanity_check() -> dict:
        from pipeline import waves

        config = module().sanity_check(config_of(get_current_context()))
        waves.start_run(config)
        module().prepare(config)
        return config.to_dict()

    @task
    def scale_up(conf: dict) -> int:
        from pipeline import waves

        config = config_of(conf)
        return waves.scale(config, pool_of(config))

    @task(trigger_rule="all_done")
    def scale_down(conf: dict) -> int:
        from pipeline import waves

        config = config_of(conf)
        return waves.scale(config, pool_of(config), n=0)

    @task
    def report(conf: dict) -> dict:
        from pipeline import report as report_

        config = config_of(conf)
        return report_.write_report(config, module().finish(config))

    return sanity_check, scale_up, scale_down, report


def close(conf, last, scale_down, report) -> None:
    """Scale down after ``last`` (even when it failed), then report; the run fails if
    ``last`` did, after scaling down."""
    down = scale_down(conf)
    last >> down
    [last, down] >> report(conf)
