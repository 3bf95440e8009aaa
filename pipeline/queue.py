"""Task queues: enqueue a wave, watch it drain with progress and ETA, and keep dead letters.

A *wave* is a set of independent tasks (python-task-queue ``@queueable`` functions or igneous
``RegisteredTask`` objects) put on the run's queue at once. The queue is any taskqueue URL:
``fq://`` on one machine, ``sqs://`` or ``pubsub://`` in the cloud.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import orjson
from cloudfiles import CloudFiles
from taskqueue import TaskQueue

log = logging.getLogger("petarecon.queue")


class WaveFailed(RuntimeError):
    """A wave cannot finish: a task was dead-lettered, or no worker is running."""


def open_queue(url: str) -> TaskQueue:
    """A TaskQueue client for ``url`` with progress bars off."""
    return TaskQueue(url, green=False, progress=False)


def task_payload(task: Any) -> Any:
    """The task's JSON-able content without its queue-assigned id."""
    if hasattr(task, "key") and hasattr(task, "kwargs"):  # FunctionTask
        return [list(task.key), task.args, task.kwargs]
    payload = dict(task.payload())
    payload.pop("id", None)
    return payload


def task_key(task: Any) -> str:
    """A stable id for a task's content: the same task gets the same key on every delivery."""
    options = orjson.OPT_SORT_KEYS | orjson.OPT_SERIALIZE_NUMPY
    blob = orjson.dumps(task_payload(task), option=options)
    return hashlib.sha1(blob).hexdigest()[:20]


class DeadLetters:
    """Failure counts and dead-letter records under a cloud path.

    ``failures/<key>.json`` lists each failed attempt of a task; once a task has failed
    ``max_attempts`` times, ``dead/<key>.json`` records it with its last error and traceback.
    """

    def __init__(self, cloudpath: str) -> None:
        self.path = cloudpath
        self.cf = CloudFiles(cloudpath)

    def record_failure(self, task: Any, error: BaseException) -> int:
        """Append one failed attempt of ``task``; return how many attempts have failed."""
        key = task_key(task)
        attempts = self.cf.get_json(f"failures/{key}.json") or []
        attempts.append({"error": f"{type(error).__name__}: {error}", "time": time.time()})
        self.cf.put_json(f"failures/{key}.json", attempts)
        return len(attempts)

    def bury(self, task: Any, error: BaseException) -> None:
        """Record ``task`` as dead: it will not be retried."""
        key = task_key(task)
        attempts = self.cf.get_json(f"failures/{key}.json") or []
        self.cf.put_json(f"dead/{key}.json", {
            "task": task_payload(task),
            "error": f"{type(error).__name__}: {error}",
            "traceback": "".join(traceback.format_exception(error)),
            "attempts": len(attempts),
        })

    def list(self) -> list[dict]:
        """Every dead-letter record."""
        names = [n for n in self.cf.list(prefix="dead/") if n.endswith(".json")]
        return [json.loads(b) for b in self.cf.get(names, return_dict=True).values() if b]

    def clear(self) -> None:
        """Forget all failures and dead letters (at the start of a run)."""
        self.cf.delete(list(self.cf.list()))


@dataclass
class WaveProgress:
    """A snapshot of a wave: ``done`` of ``total`` tasks after ``elapsed`` seconds."""

    wave: str
    done: int
    total: int
    elapsed: float

    @property
    def eta(self) -> float | None:
        """Seconds left at the average rate so far; None before the first task finishes."""
        if self.done <= 0 or self.done >= self.total:
            return None if self.done <= 0 else 0.0
        return self.elapsed / self.done * (self.total - self.done)

    def __str__(self) -> str:
        pct = 100.0 * self.done / max(self.total, 1)
        eta = "?" if self.eta is None else time.strftime("%H:%M:%S", time.gmtime(self.eta))
        return f"wave {self.wave}: {self.done}/{self.total} ({pct:.0f}%) ETA {eta}"


Reporter = Callable[[WaveProgress], None]


def log_reporter(every: float = 5.0) -> Reporter:
    """A reporter that logs a progress line when progress changes or every ``every`` seconds."""
    last: dict[str, Any] = {"done": -1, "t": 0.0}

    def report(p: WaveProgress) -> None:
        now = time.monotonic()
        if p.done != last["done"] or now - last["t"] >= every:
            log.info("%s", p)
            last.update(done=p.done, t=now)

    return report


def default_reporter(wave: str) -> Reporter:
    return log_reporter()


_reporter_factory: Callable[[str], Reporter] = default_reporter


def use_reporter(factory: Callable[[str], Reporter]) -> None:
    """Make ``factory(wave)`` the reporter of waves that are given none (e.g. rich bars)."""
    global _reporter_factory
    _reporter_factory = factory


def enqueue_wave(queue_url: str, tasks: Iterable[Any], total: int | None = None) -> int:
    """Put ``tasks`` on the queue; return how many were inserted."""
    tasks = list(tasks)
    if not tasks:
        return 0
    tq = open_queue(queue_url)
    tq.insert(tasks, total=len(tasks) if total is None else total)
    return len(tasks)


def wait_for_wave(queue_url: str, wave: str, total: int, dead_letters: DeadLetters,
                  reporter: Reporter | None = None, poll: float = 0.5,
                  alive: Callable[[], int] | None = None, no_worker_grace: float = 60.0,
                  timeout: float | None = None) -> WaveProgress:
    """Block until the queue is empty, reporting progress; return the final progress.

    Raise :class:`WaveFailed` as soon as a dead letter appears (naming the task and its error),
    when ``alive()`` reports no workers for ``no_worker_grace`` seconds while tasks remain, or
    after ``timeout`` seconds.
    """
    tq = open_queue(queue_url)
    reporter = reporter or _reporter_factory(wave)
    start = time.monotonic()
    idle_since: float | None = None
    while True:
        remaining = tq.enqueued
        progress = WaveProgress(wave, max(0, total - remaining), total, time.monotonic() - start)
        reporter(progress)
        dead = dead_letters.list()
        if dead:
            first = dead[0]
            raise WaveFailed(f"wave {wave}: {len(dead)} task(s) failed {first['attempts']} "
                             f"times; first: {first['error']} (task {first['task']}); "
                             f"dead letters in {dead_letters.path}/dead")
        if remaining == 0:
            return progress
        if alive is not None:
            if alive() > 0:
                idle_since = None
            elif idle_since is None:
                idle_since = time.monotonic()
            elif time.monotonic() - idle_since > no_worker_grace:
                raise WaveFailed(f"wave {wave}: {remaining} task(s) left but no worker has "
                                 f"been running for {no_worker_grace:.0f} s")
        if timeout is not None and time.monotonic() - start > timeout:
            raise WaveFailed(f"wave {wave}: not drained after {timeout:.0f} s "
                             f"({remaining} task(s) left)")
        time.sleep(poll)
