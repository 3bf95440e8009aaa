"""What every petarecon DAG shares: the run-config param and conf → RunConfig."""

from __future__ import annotations

import logging
from typing import Any

from airflow.sdk import Param

from pipeline.config import RunConfig, load_config

DEFAULT_ARGS = {"owner": "petarecon", "retries": 0}
PARAMS = {"config": Param({}, type="object",
                          description="the RunConfig document (see README: run config)")}


def config_of(context_or_conf: dict[str, Any]) -> RunConfig:
    """The RunConfig of the DAG run: from a task's params, or an upstream XCom dict."""
    conf = context_or_conf.get("params", {}).get("config", context_or_conf)
    logging.getLogger("petarecon").setLevel(logging.INFO)
    return load_config(conf)
