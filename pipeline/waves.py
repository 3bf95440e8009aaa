"""What every DAG node does, whatever the stage: start a run, scale a pool, run a wave, report.

DAG files call these and nothing else heavy; the CLI calls the same functions, so a run through
Airflow and a run from the command line do the same work.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

from cloudfiles import CloudFiles

from pipeline import queue
from pipeline.cluster import Cluster, OOMKill, cluster_for
from pipeline.config import RunConfig
from pipeline.queue import (
    DeadLetters,
    Reporter,
    WaveFailed,
    WaveProgress,
    enqueue_wave,
    open_queue,
    wait_for_wave,
)

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
    :class:`pipeline.queue.WaveFailed` when a task is dead-lettered, no worker runs, or the
    pool's workers were OOMKilled ``config.max_attempts`` times during the wave (see
    :class:`OOMWatch`). Return ``{"wave", "tasks", "seconds"}``.
    """
    t0 = time.monotonic()
    started = datetime.now(UTC)
    tasks = list(tasks)
    n = enqueue_wave(config.queue_url, tasks)
    log.info("wave %s: %d task(s) enqueued on %s", wave, n, config.queue_url)
    pool_ = cluster(config, pool)
    # The reporter wait_for_wave would pick itself (queue.use_reporter), wrapped in the watch.
    base = reporter or queue.reporter_for(wave)
    watch = OOMWatch(pool_, wave, config.max_attempts, started, base,
                     dead_letter=config.dead_letter_path)
    wait_for_wave(config.queue_url, wave, n, DeadLetters(config.dead_letter_path), watch,
                  alive=pool_.size)
    seconds = time.monotonic() - t0
    log.info("wave %s: done, %d task(s) in %.1f s", wave, n, seconds)
    return {"wave": wave, "tasks": n, "seconds": round(seconds, 3)}


class OOMWatch:
    """A wave's progress reporter that also fails the wave on repeated OOM kills.

    A worker killed for exceeding its memory limit dies without recording a failure: its task
    is re-leased when the lease expires, the restarted worker leases it again and is killed
    again, forever. So on every progress report (at most every ``every`` seconds) the pool is
    asked for OOM kills since the wave started; once ``max_attempts`` distinct kills are seen
    (the same count after which a raising task is dead-lettered), a dead-letter record naming
    the pods is written under ``dead_letter`` and :class:`WaveFailed` is raised, naming
    OOMKilled, the pod and the pool. Progress is passed on to ``reporter`` first.
    """

    def __init__(self, cluster: Cluster, wave: str, max_attempts: int, since: datetime,
                 reporter: Reporter, dead_letter: str | None = None, every: float = 2.0) -> None:
        self.cluster = cluster
        self.wave = wave
        self.max_attempts = max(1, max_attempts)
        # k8s reports termination times in whole seconds; don't miss a kill in the first one
        self.since = since.replace(microsecond=0) - timedelta(seconds=1)
        self.reporter = reporter
        self.dead_letter = dead_letter
        self.every = every
        self.kills: dict[tuple, OOMKill] = {}
        self._last = float("-inf")

    def __call__(self, progress: WaveProgress) -> None:
        self.reporter(progress)
        now = time.monotonic()
        if now - self._last < self.every:
            return
        self._last = now
        try:
            found = self.cluster.oom_kills(self.since)
        except Exception as e:  # a hiccup of the cluster API must not fail the wave
            log.warning("wave %s: could not read pool %s's pods: %s", self.wave,
                        self.cluster.pool, e)
            return
        for kill in found:
            key = (kill.pod, kill.container, kill.finished_at)
            if key not in self.kills:
                self.kills[key] = kill
                log.warning("wave %s: %s in pool %s; its task is re-leased when its lease "
                            "expires (%d/%d)", self.wave, kill, self.cluster.pool,
                            len(self.kills), self.max_attempts)
        if len(self.kills) >= self.max_attempts:
            self.fail(progress)

    def fail(self, progress: WaveProgress) -> None:
        """Record the OOM kills as a dead letter and raise WaveFailed."""
        kills = list(self.kills.values())
        pods = sorted({k.pod for k in kills})
        limit = kills[-1].memory_limit or "?"
        error = (f"OOMKilled: worker pod {kills[-1].pod} of pool {self.cluster.pool} exceeded "
                 f"its memory limit {limit}; {len(kills)} OOM kill(s) during wave "
                 f"{self.wave} (pods {', '.join(pods)})")
        if self.dead_letter:
            CloudFiles(self.dead_letter).put_json(
                f"dead/oom-{self.cluster.pool}.json",
                {"task": {"wave": self.wave, "pool": self.cluster.pool, "pods": pods},
                 "error": error, "traceback": "", "attempts": len(kills)})
        raise WaveFailed(f"wave {self.wave}: {error}; {progress.total - progress.done} "
                         f"task(s) left. Raise the pool's memory limit or use smaller chunks.")
