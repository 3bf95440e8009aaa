"""Task queues: enqueue a wave, watch it drain with progress and ETA, and keep dead letters.

A *wave* is a set of independent tasks (python-task-queue ``@queueable`` functions or igneous
``RegisteredTask`` objects) put on the run's queue at once. The queue is any taskqueue URL:
``fq://`` on one machine, ``sqs://`` or ``pubsub://`` in the cloud.

How a wave's progress is counted depends on the queue. ``fq://`` and ``sqs://`` count the
tasks left on the queue. Pub/Sub cannot count a subscription's messages, so on ``pubsub://``
the worker writes a completion record per task after the task's output is written
(:class:`Completions`), and :func:`wait_for_wave` counts the records of the wave's tasks.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
import traceback
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from cloudfiles import CloudFiles
from taskqueue import TaskQueue
from taskqueue.file_queue_api import FileQueueAPI, nowfn, write_file
from taskqueue.lib import jsonify, toiter

from pipeline.queue_pubsub import PubSubQueue, QueueUnreachable, decode_task, encode_task

Queue = TaskQueue | PubSubQueue

log = logging.getLogger("petarecon.queue")


class WaveFailed(RuntimeError):
    """A wave cannot finish: a task was dead-lettered, or no worker is running."""


def is_pubsub(url: str) -> bool:
    """True for ``pubsub://`` queue URLs."""
    return url.startswith("pubsub://")


class WholeFileQueue(FileQueueAPI):
    """taskqueue's ``fq://`` queue, except that a task file enters the queue folder only once
    it is whole. (``FileQueueAPI.insert`` writes it in place: a worker that leases it
    mid-write reads broken JSON, and the task stays leased, unrun, until its lease expires.)"""

    def insert(self, tasks: Any, delay_seconds: int = 0) -> int:
        staging = os.path.join(self.path, "staging")            # same filesystem: rename
        os.makedirs(staging, exist_ok=True)
        timestamp = nowfn() + delay_seconds if delay_seconds > 0 else 0
        total = 0
        for task in toiter(tasks):
            identifier = str(uuid.uuid4())
            filename = f"{timestamp}--{identifier}.json"
            task["id"] = identifier
            write_file(os.path.join(self.movement_path, identifier), filename + "\n")
            write_file(os.path.join(staging, filename), jsonify(task))
            os.rename(os.path.join(staging, filename), os.path.join(self.queue_path, filename))
            total += 1
        return total


def open_queue(url: str) -> Queue:
    """A client for queue ``url``: a TaskQueue with progress bars off (``fq://`` through
    :class:`WholeFileQueue`), or for ``pubsub://`` a :class:`~pipeline.queue_pubsub.PubSubQueue`,
    which creates the topic and subscription if missing. Raise :class:`QueueUnreachable` (one
    line) when the service cannot be used."""
    if is_pubsub(url):
        return PubSubQueue(url)
    tq = TaskQueue(url, green=False, progress=False)
    if isinstance(tq.api, FileQueueAPI):
        tq.api = WholeFileQueue(tq.api.path)
    return tq


def check_queue(url: str) -> None:
    """Make sure queue ``url`` can be used now: its service answers, and a cloud queue exists
    (``pubsub://`` topics and subscriptions are created). Raise :class:`QueueUnreachable` with a
    one-line message otherwise, after at most a few seconds' wait."""
    if url.startswith("fq://"):
        return
    if is_pubsub(url):
        open_queue(url)
        return
    try:
        open_queue(url).enqueued  # noqa: B018  (the call is the check)
    except Exception as e:
        first = (str(e).strip() or type(e).__name__).splitlines()[0]
        raise QueueUnreachable(f"{url}: cannot use the queue: {first}") from None


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


class Completions:
    """Completion records of tasks, ``<cloudpath>/<task key>``, one per task whose output is
    written. Workers write them on ``pubsub://`` queues; :func:`wait_for_wave` counts them.
    A record stays valid across redeliveries: tasks are idempotent."""

    def __init__(self, cloudpath: str) -> None:
        self.path = cloudpath
        self.cf = CloudFiles(cloudpath)

    @classmethod
    def for_dead_letters(cls, dead_letter_path: str) -> Completions:
        """The records kept beside a run's dead letters (cleared with them at a run's start)."""
        return cls(f"{dead_letter_path.rstrip('/')}/done")

    def mark(self, task: Any) -> None:
        """Record that ``task`` has finished and its output is written."""
        self.cf.put(task_key(task), b"", compress=None)

    def done(self) -> set[str]:
        """Keys of every recorded task."""
        return set(self.cf.list())

    def count(self, keys: Sequence[str]) -> int:
        """How many of ``keys`` (with repeats) have a record."""
        done = self.done()
        return sum(1 for k in keys if k in done)


class Enqueued(int):
    """The number of tasks :func:`enqueue_wave` inserted. On ``pubsub://`` queues it also
    carries ``keys``, the wave's task keys, which :func:`wait_for_wave` needs to count progress
    there; pass it on as ``total``."""

    keys: tuple[str, ...] | None

    def __new__(cls, n: int, keys: Sequence[str] | None = None) -> Enqueued:
        obj = super().__new__(cls, n)
        obj.keys = None if keys is None else tuple(keys)
        return obj


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


_factory: Callable[[str], Reporter] = default_reporter


def use_reporter(factory: Callable[[str], Reporter]) -> None:
    """Make ``factory(wave)`` the reporter of waves that are given none (e.g. rich bars)."""
    global _factory
    _factory = factory


def reporter_for(wave: str) -> Reporter:
    """The reporter a wave without its own gets (see :func:`use_reporter`)."""
    return _factory(wave)


def enqueue_wave(queue_url: str, tasks: Iterable[Any], total: int | None = None) -> Enqueued:
    """Put ``tasks`` on the queue; return how many were inserted (an int; on ``pubsub://`` it
    also carries the tasks' keys, see :class:`Enqueued`)."""
    tasks = list(tasks)
    if not tasks:
        return Enqueued(0, [] if is_pubsub(queue_url) else None)
    tq = open_queue(queue_url)
    if isinstance(tq, PubSubQueue):
        bodies = [encode_task(t) for t in tasks]
        # keys of the decoded bodies: exactly what a worker computes for the delivered task
        keys = [task_key(decode_task(b)) for b in bodies]
        tq.insert_bodies(bodies)
        return Enqueued(len(bodies), keys)
    tq.insert(tasks, total=len(tasks) if total is None else total)
    return Enqueued(len(tasks))


def wait_for_wave(queue_url: str, wave: str, total: int, dead_letters: DeadLetters,
                  reporter: Reporter | None = None, poll: float = 0.5,
                  alive: Callable[[], int] | None = None, no_worker_grace: float = 60.0,
                  timeout: float | None = None,
                  keys: Sequence[str] | None = None) -> WaveProgress:
    """Block until the wave is done, reporting progress; return the final progress.

    Done means: the queue is empty (``fq://``, ``sqs://``), or every one of the wave's tasks
    has a completion record (``pubsub://``; the wave's ``keys`` come from ``keys`` or from the
    :class:`Enqueued` that :func:`enqueue_wave` returned, passed as ``total``).

    Raise :class:`WaveFailed` as soon as a dead letter appears (naming the task and its error),
    when ``alive()`` reports no workers for ``no_worker_grace`` seconds while tasks remain, or
    after ``timeout`` seconds.
    """
    remaining_now = _remaining_counter(queue_url, total, dead_letters, keys)
    reporter = reporter or reporter_for(wave)
    start = time.monotonic()
    idle_since: float | None = None
    while True:
        remaining = remaining_now()
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


def _remaining_counter(queue_url: str, total: int, dead_letters: DeadLetters,
                       keys: Sequence[str] | None) -> Callable[[], int]:
    """A function returning how many of the wave's tasks are not done yet."""
    if not is_pubsub(queue_url):
        tq = open_queue(queue_url)
        return lambda: tq.enqueued
    keys = keys if keys is not None else getattr(total, "keys", None)
    if keys is None:
        raise ValueError(f"wait_for_wave on {queue_url}: Pub/Sub cannot count queued tasks; "
                         "pass the wave's task keys (keys=, or the value enqueue_wave returned "
                         "as total)")
    if len(keys) != total:
        raise ValueError(f"wait_for_wave: {len(keys)} task keys for a wave of {total} tasks")
    records = Completions.for_dead_letters(dead_letters.path)
    return lambda: len(keys) - records.count(keys)
