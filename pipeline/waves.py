"""What every DAG node does, whatever the stage: start a run, scale a pool, run a wave, report.

DAG files call these and nothing else heavy; the CLI calls the same functions, so a run through
Airflow and a run from the command line do the same work.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

from pipeline.cluster import Cluster, cluster_for
from pipeline.config import RunConfig
from pipeline.queue import DeadLetters, Reporter, enqueue_wave, open_queue, wait_for_wave

log = logging.getLogger("petarecon.waves")


def start_run(config: RunConfig) -> None:
    """Check the cluster can be used (Kubernetes: API server, Deployments, Secret), then clear
    the run's queue and dead letters so that an earlier run's leftovers don't count."""
    if config.cluster.backend == "kubernetes":
        from pipeline.cluster_k8s import check

        check(config, secret=config.cluster.secret)
    DeadLetters(config.dead_letter_path).clear()
    try:
        open_queue(config.queue_url).purge()
    except Exception as e:  # SQS allows one purge a minute; an empty queue needs none
        log.warning("could not purge %s (%s); continuing", config.queue_url, e)


def scale(config: RunConfig, pool: str = "cpu", n: int | None = None) -> int:
    """Scale ``pool`` to ``n`` workers (default: the config's size for that pool)."""
    target = config.cluster.size_for(pool) if n is None else n
    got = cluster_for(config, pool).scale(target)
    log.info("pool %s scaled to %d worker(s)", pool, got)
    return got


def run_wave(config: RunConfig, wave: str, tasks: Iterable[Any], pool: str = "cpu",
             reporter: Reporter | None = None,
             cluster: Callable[[RunConfig, str], Cluster] = cluster_for) -> dict[str, Any]:
    """Enqueue ``tasks`` as wave ``wave`` and block until the queue drains.

    Progress goes to ``reporter`` (default: log lines with done/total and ETA). Raise
    :class:`pipeline.queue.WaveFailed` when a task is dead-lettered or no worker runs.
    Return ``{"wave", "tasks", "seconds"}``.
    """
    t0 = time.monotonic()
    tasks = list(tasks)
    n = enqueue_wave(config.queue_url, tasks)
    log.info("wave %s: %d task(s) enqueued on %s", wave, n, config.queue_url)
    pool_ = cluster(config, pool)
    wait_for_wave(config.queue_url, wave, n, DeadLetters(config.dead_letter_path), reporter,
                  alive=pool_.size)
    seconds = time.monotonic() - t0
    log.info("wave %s: done, %d task(s) in %.1f s", wave, n, seconds)
    return {"wave": wave, "tasks": n, "seconds": round(seconds, 3)}
