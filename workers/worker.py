"""One worker: lease → run → delete, with lease renewal, dead letters and a SIGTERM drain.

A task is deleted from the queue only after it has returned, i.e. after its output is written.
A worker that dies mid-task leaves the task leased; it becomes visible again when the lease
expires and another worker runs it. Tasks are idempotent, so that rerun is harmless.

On ``pubsub://`` queues a lease is the message's ack deadline and deleting is acknowledging.
Pub/Sub cannot count what is left, so there the worker also writes a completion record per task
(after its output, before the ack) that the wave's waiter counts.
"""

from __future__ import annotations

import importlib
import logging
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

from taskqueue import QueueEmptyError

from pipeline.queue import (
    Completions,
    DeadLetters,
    QueueUnreachable,
    is_pubsub,
    open_queue,
    task_key,
)

log = logging.getLogger("petarecon.worker")


class Worker:
    """Drains ``queue_url`` until told to stop.

    ``max_attempts`` failures of the same task (counted across all workers, under
    ``dead_letter``) move it to the dead letters and delete it from the queue. A failed attempt
    below that count is released again after ``retry_delay`` seconds. While the queue's
    service is unreachable the worker retries; after ``give_up`` seconds of it, it stops with
    :class:`~pipeline.queue.QueueUnreachable`.
    """

    def __init__(self, queue_url: str, dead_letter: str, lease_seconds: int = 600,
                 max_attempts: int = 3, retry_delay: int = 1, poll: float = 0.5,
                 give_up: float = 300.0) -> None:
        self.queue_url = queue_url
        self.tq = open_queue(queue_url)
        self.dead = DeadLetters(dead_letter)
        self.completions = (Completions.for_dead_letters(dead_letter)
                            if is_pubsub(queue_url) else None)
        self.give_up = give_up
        self.lease_seconds = lease_seconds
        self.max_attempts = max_attempts
        self.retry_delay = retry_delay
        self.poll = poll
        self.stopping = threading.Event()
        self.executed = 0

    def install_signal_handlers(self) -> None:
        """SIGTERM/SIGINT: finish the current task, then exit."""
        def drain(signum: int, _frame: Any) -> None:
            log.info("worker %d: signal %d, draining after the current task", os.getpid(), signum)
            self.stopping.set()

        signal.signal(signal.SIGTERM, drain)
        signal.signal(signal.SIGINT, drain)

    def run(self, max_tasks: int | None = None, idle_exit: float | None = None) -> int:
        """Run tasks until stopped, ``max_tasks`` have run, or the queue stayed empty for
        ``idle_exit`` seconds. Return the number of tasks run."""
        idle_since = time.monotonic()
        unreachable_since: float | None = None
        while not self.stopping.is_set():
            if max_tasks is not None and self.executed >= max_tasks:
                break
            try:
                task = self.tq.lease(seconds=self.lease_seconds)
                unreachable_since = None
            except QueueUnreachable as e:
                now = time.monotonic()
                unreachable_since = unreachable_since or now
                if now - unreachable_since > self.give_up:
                    raise
                log.warning("worker %d: %s; retrying", os.getpid(), e)
                self.stopping.wait(max(self.poll, 2.0))
                continue
            except QueueEmptyError:
                if idle_exit is not None and time.monotonic() - idle_since > idle_exit:
                    break
                self.stopping.wait(self.poll)
                continue
            self.run_one(task)
            idle_since = time.monotonic()
        return self.executed

    def run_one(self, task: Any) -> None:
        """Run one leased task, renewing its lease, and delete or retry it."""
        done = threading.Event()
        renewer = threading.Thread(target=self._renew, args=(task, done), daemon=True)
        renewer.start()
        try:
            _import_task_module(task)
            task.execute()
        except Exception as e:  # a task's failure must not kill the worker
            done.set()
            self._failed(task, e)
            return
        finally:
            done.set()
            renewer.join()
        if self.completions is not None:
            self.completions.mark(task)
        self.tq.delete(task)
        if self.queue_url.startswith("fq://"):
            _drop_fq_leftovers(self.queue_url, task)
        self.executed += 1

    def _renew(self, task: Any, done: threading.Event) -> None:
        half = max(1.0, self.lease_seconds / 2)
        while not done.wait(half):
            try:
                self.tq.renew(task, self.lease_seconds)
                log.debug("renewed lease of %s", task_key(task))
            except Exception as e:  # a lost renewal only risks a duplicate run
                log.warning("could not renew lease of task %s: %s", task_key(task), e)

    def _failed(self, task: Any, error: Exception) -> None:
        attempts = self.dead.record_failure(task, error)
        log.error("task %s failed (attempt %d/%d): %s: %s", task_key(task), attempts,
                  self.max_attempts, type(error).__name__, error)
        if attempts >= self.max_attempts:
            self.dead.bury(task, error)
            self.tq.delete(task)
            log.error("task %s dead-lettered after %d attempts", task_key(task), attempts)
        else:
            self.tq.renew(task, self.retry_delay)


def _drop_fq_leftovers(queue_url: str, task: Any) -> None:
    """Remove any queue file still holding a finished task.

    task-queue's fq insert writes a task's movement record after its queue file; a worker that
    leases the task in between has its lease record overwritten, so delete() misses the leased
    file and the wave waits for the lease (600 s) to expire before the task runs again.
    """
    ident = getattr(task, "id", None)
    if isinstance(ident, str) and ident:
        for leftover in (Path(queue_url[len("fq://"):]) / "queue").glob(f"*--{ident}.json"):
            leftover.unlink(missing_ok=True)


def _import_task_module(task: Any) -> None:
    """Make sure a queueable function's module is imported so taskqueue can find it."""
    key = getattr(task, "key", None)
    if key:
        importlib.import_module(key[0])


def run_worker(queue_url: str, dead_letter: str, lease_seconds: int = 600,
               max_attempts: int = 3, max_tasks: int | None = None,
               idle_exit: float | None = None) -> int:
    """Run a worker in this process with signal handlers installed; return tasks run."""
    import igneous.tasks  # noqa: F401  (registers igneous' RegisteredTask classes)

    worker = Worker(queue_url, dead_letter, lease_seconds, max_attempts)
    worker.install_signal_handlers()
    log.info("worker %d on %s", os.getpid(), queue_url)
    n = worker.run(max_tasks=max_tasks, idle_exit=idle_exit)
    log.info("worker %d stopped after %d task(s)", os.getpid(), n)
    return n
