"""Queueable tasks for worker tests: slow, failing and flaky variants around real ingest."""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

from taskqueue import queueable

from pipeline.ingest.tasks import ingest_chunk


def _mark(folder: str, kind: str, name: str) -> None:
    d = Path(folder) / kind
    d.mkdir(parents=True, exist_ok=True)
    (d / f"{name}--{os.getpid()}--{uuid.uuid4().hex[:6]}").touch()


@queueable
def slow_ingest(marks: str, delay: float, source: str, layer: str, bbox: list[int]) -> None:
    """Record a start, sleep ``delay`` s, ingest ``bbox``, record a completion."""
    name = "_".join(map(str, bbox))
    _mark(marks, "started", name)
    time.sleep(delay)
    ingest_chunk(source, None, "zyx", layer, bbox)
    _mark(marks, "done", name)


@queueable
def always_fails(message: str) -> None:
    raise RuntimeError(message)


@queueable
def fails_once(marks: str, name: str) -> None:
    """Fail the first attempt, succeed on the next."""
    started = Path(marks) / "started"
    if not started.exists() or not list(started.glob(name + "--*")):
        _mark(marks, "started", name)
        raise RuntimeError("first attempt fails")
    _mark(marks, "done", name)


@queueable
def sleeper(marks: str, name: str, delay: float) -> None:
    _mark(marks, "started", name)
    time.sleep(delay)
    _mark(marks, "done", name)


@queueable
def slow_call(module: str, name: str, delay: float, marks: str, args: list) -> None:
    """Run queueable ``module.name(*args)`` after ``delay`` s, recording start and end."""
    import importlib

    tag = f"{name}_{abs(hash(str(args))) % 10**8}"
    _mark(marks, "started", tag)
    time.sleep(delay)
    getattr(importlib.import_module(module), name)(*args)
    _mark(marks, "done", tag)
