"""The embedded default: run a DAG in this process with `dag.test()` on a throwaway SQLite DB."""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

log = logging.getLogger("petarecon.embedded")


class DagRunFailed(RuntimeError):
    """The DAG run ended in a state other than success; the message names the failed tasks."""


def airflow_env(home: Path, verbose: bool = True) -> dict[str, str]:
    """Environment for an embedded Airflow: own home, SQLite DB, no examples, low parallelism."""
    return {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__PARALLELISM": "2",
        "AIRFLOW__CORE__DAGS_FOLDER": str(Path(__file__).parent),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home}/airflow.db",
        "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO" if verbose else "WARNING",
    }


@contextlib.contextmanager
def embedded_airflow(home: str | Path | None = None, verbose: bool = True):
    """Point Airflow at a migrated SQLite DB in ``home`` (a temp dir by default)."""
    tmp = None
    if home is None:
        tmp = tempfile.TemporaryDirectory(prefix="petarecon-airflow-")
        home = tmp.name
    home = Path(home)
    home.mkdir(parents=True, exist_ok=True)
    env = airflow_env(home, verbose)
    os.environ.update(env)
    if not (home / "airflow.db").exists():
        airflow = Path(sys.executable).with_name("airflow")
        subprocess.run([str(airflow), "db", "migrate"], check=True, env={**os.environ, **env},
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        yield home
    finally:
        if tmp is not None:
            tmp.cleanup()


def run_dag(dag_id: str, conf: dict[str, Any], home: str | Path | None = None,
            verbose: bool = True) -> str:
    """Run DAG ``dag_id`` with run conf ``{"config": conf}`` in-process; return its state.

    Raise :class:`DagRunFailed` naming the failed task instances unless the run succeeded.
    """
    with embedded_airflow(home, verbose), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Using `httpx`")
        module = importlib.import_module(f"dags.{dag_id}")
        dagrun = module.dag.test(run_conf={"config": conf})
        state = str(dagrun.state)
        if state != "success":
            failed = [ti.task_id for ti in dagrun.get_task_instances()
                      if str(ti.state) in ("failed", "upstream_failed")]
            raise DagRunFailed(f"DAG {dag_id} run {state}; failed tasks: {', '.join(failed)}")
        return state
