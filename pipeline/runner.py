"""Run a DAG on the embedded default, with rich progress bars for each wave."""

from __future__ import annotations

import contextlib
import importlib
import sys
from typing import Any

from cloudfiles import CloudFiles
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from pipeline.config import ConfigError, RunConfig
from pipeline.queue import DeadLetters, WaveProgress, default_reporter, log_reporter, use_reporter


@contextlib.contextmanager
def rich_waves(console: Console | None = None):
    """While active, every wave without its own reporter shows a rich bar with ETA."""
    console = console or Console(stderr=True)
    if not console.is_terminal:
        yield
        return
    progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(),
                        MofNCompleteColumn(), TimeRemainingColumn(), console=console)
    bars: dict[str, int] = {}

    def factory(wave: str):
        logger = log_reporter()

        def report(p: WaveProgress) -> None:
            if wave not in bars:
                bars[wave] = progress.add_task(f"wave {wave}", total=p.total)
            progress.update(bars[wave], completed=p.done, total=p.total)
            logger(p)
        return report

    use_reporter(factory)
    try:
        with progress:
            yield
    finally:
        use_reporter(default_reporter)


STAGES = {"ingest": "pipeline.ingest.stage", "segmentation": "pipeline.segmentation.stage",
          "synapses": "pipeline.synapses.stage", "inference": "pipeline.inference.stage",
          "alignment": "pipeline.align.stage", "postprocess": "pipeline.postprocess.stage",
          "reconstruction": "pipeline.chain"}
"""The module behind each DAG id (imported only when that DAG runs: torch is heavy)."""


def sanity_check_for(dag_id: str):
    """The sanity check (validation without side effects) of DAG ``dag_id``."""
    if dag_id not in STAGES:
        raise ConfigError([("dag", f"unknown DAG {dag_id!r}; one of {sorted(STAGES)}")])
    if dag_id == "reconstruction":
        from pipeline.chain import preflight as chain_preflight

        return chain_preflight
    return importlib.import_module(STAGES[dag_id]).sanity_check


def dag_for(config: RunConfig) -> str:
    """The DAG a config asks for: `reconstruction` for a chain (a ``chain`` section or
    several stage sections), else the one named by its stage section."""
    from pipeline import chain

    if config.chain is not None or len(chain.stages(config)) - (
            "postprocess" in chain.stages(config)) >= 2:
        return "reconstruction"
    if config.segmentation is not None:
        return "segmentation"
    if config.synapses is not None:
        return "synapses"
    if config.alignment is not None:
        return "alignment"
    if config.inference is not None:
        return "inference"
    return "ingest"


def preflight(config: RunConfig, dag_id: str) -> RunConfig:
    """The DAG's sanity check without side effects, so user errors show before Airflow starts
    (with ``cluster.backend: kubernetes``, the cluster's too: API server, Deployments, Secret)."""
    checked = sanity_check_for(dag_id)(config)
    if config.cluster.backend == "kubernetes":
        from pipeline.cluster_k8s import check

        check(config, secret=config.cluster.secret)
    return checked


def run_embedded(config: RunConfig, dag_id: str, verbose: bool = False) -> dict[str, Any]:
    """Run ``dag_id`` on ``config`` through Airflow in this process; return the run report.

    Airflow's own logs show only with ``verbose``; wave progress shows as rich bars on a
    terminal. A failed run raises DagRunFailed with the first dead-lettered task's error.
    """
    from dags.embedded import DagRunFailed, run_dag

    preflight(config, dag_id)
    try:
        with rich_waves(Console(stderr=True, file=sys.stderr)):
            run_dag(dag_id, config.to_dict(), verbose=verbose)
    except DagRunFailed as e:
        from pipeline.status import cancel_requested

        if cancel_requested(config):
            raise DagRunFailed(f"run {config.name} was cancelled (petarecon cancel); "
                               f"{str(e).split('; ', 1)[-1]}") from None
        dead = DeadLetters(config.dead_letter_path).list()
        if dead:
            raise DagRunFailed(f"{e}\n{len(dead)} dead-lettered task(s); first error: "
                               f"{dead[0]['error']}") from None
        raise
    return CloudFiles(config.scratch_path).get_json("report.json")
