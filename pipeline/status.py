"""Run records under the run's scratch path, and what `petarecon status` / `cancel` do.

Layout under ``{scratch}``:

- ``run.json``: the run (name, dag, config with secrets redacted, start time);
- ``progress/<wave>.json``: one per wave, rewritten as it drains: stage, wave, done, total,
  elapsed, eta, state (running / done / failed / cancelled), start and end times;
- ``chain/<stage>.json``: the reconstruction chain's stage records (see :mod:`pipeline.chain`);
- ``cancel.json``: present while a cancel is requested; waves stop at their next poll;
- ``dead_letter/``: the queue's dead letters (:class:`pipeline.queue.DeadLetters`).
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

from cloudfiles import CloudFiles

from pipeline import queue as queue_
from pipeline.config import ConfigError, RunConfig, load_config, to_cloudpath
from pipeline.queue import DeadLetters, WaveFailed, WaveProgress

SECRET_KEYS = re.compile(r"secret|token|password|passwd|credential|api_?key|private", re.I)
URL_CREDS = re.compile(r"(://)([^/@:\s]+):([^/@\s]+)@")


class RunCancelled(WaveFailed):
    """The run was cancelled (``petarecon cancel``) while a wave was draining."""


def redact(value: Any) -> Any:
    """``value`` with secrets replaced by ``"***"``: values of keys that name a secret, and
    passwords inside URLs (``scheme://user:pass@host``)."""
    if isinstance(value, dict):
        return {k: "***" if SECRET_KEYS.search(str(k)) and v not in (None, "") else redact(v)
                for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact(v) for v in value]
    if isinstance(value, str):
        return URL_CREDS.sub(r"\1\2:***@", value)
    return value


def _slug(wave: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", wave.lower()).strip("-")


def record_run(config: RunConfig, dag_id: str) -> None:
    """Write ``run.json`` and clear the progress records and any cancel request."""
    cf = CloudFiles(config.scratch_path)
    cf.delete([n for n in cf.list(prefix="progress/")] + ["cancel.json"])
    cf.put_json("run.json", {"run": config.name, "dag": dag_id, "started": time.time(),
                             "config": redact(config.to_dict())})


def cancel_requested(config: RunConfig) -> bool:
    """True when ``petarecon cancel`` asked this run to stop."""
    return CloudFiles(config.scratch_path).exists("cancel.json")


def progress_reporter(config: RunConfig, stage: str, wave: str, every: float = 2.0):
    """A wave reporter that also writes ``progress/<wave>.json`` (when progress changes or
    every ``every`` s) and raises :class:`RunCancelled` once a cancel is requested. It
    forwards each snapshot to the reporter waves use by default (log lines or rich bars)."""
    cf = CloudFiles(config.scratch_path)
    inner = queue_.reporter_for(wave)
    key = f"progress/{_slug(wave)}.json"
    started = time.time()
    last = {"done": -1, "t": 0.0}

    def write(p: WaveProgress, state: str) -> None:
        cf.put_json(key, {"stage": stage, "wave": wave, "done": p.done, "total": p.total,
                          "elapsed": round(p.elapsed, 3), "eta": p.eta, "state": state,
                          "started": started, "updated": time.time()})

    def report(p: WaveProgress) -> None:
        inner(p)
        now = time.monotonic()
        if p.done != last["done"] or now - last["t"] >= every:
            if cancel_requested(config):
                write(p, "cancelled")
                raise RunCancelled(f"wave {wave}: run {config.name} was cancelled")
            write(p, "done" if p.total and p.done >= p.total else "running")
            last.update(done=p.done, t=now)

    report.write = write  # type: ignore[attr-defined]
    return report


def mark_wave(config: RunConfig, stage: str, wave: str, result: dict | None,
              error: BaseException | None = None) -> None:
    """Record the end of a wave: done with its seconds, or failed with the error."""
    cf = CloudFiles(config.scratch_path)
    key = f"progress/{_slug(wave)}.json"
    rec = cf.get_json(key) or {"stage": stage, "wave": wave, "started": time.time()}
    if error is None:
        n = (result or {}).get("tasks", rec.get("total", 0))
        rec.update(done=n, total=n, eta=0.0, state="done",
                   elapsed=(result or {}).get("seconds", rec.get("elapsed")))
    else:
        rec.update(state="cancelled" if isinstance(error, RunCancelled) else "failed",
                   error=str(error).splitlines()[0])
    rec["updated"] = time.time()
    cf.put_json(key, rec)


def resolve_scratch(run: str) -> str:
    """The scratch path of RUN: a config file, a scratch path, or a run's output path."""
    p = Path(run)
    if p.is_file():
        from pipeline.chain import load

        return load(p).scratch_path
    path = to_cloudpath(run).rstrip("/")
    for cand in (path, f"{path}/scratch"):
        if CloudFiles(cand).exists("run.json"):
            return cand
    raise FileNotFoundError(f"{run}: no run records (run.json) there or under scratch/; give "
                            "the run's config file, output or scratch path")


def run_config(scratch: str) -> RunConfig:
    """The config a run recorded in ``run.json`` (secrets redacted)."""
    rec = CloudFiles(scratch).get_json("run.json")
    if rec is None:
        raise FileNotFoundError(f"{scratch}: no run.json")
    try:
        return load_config(rec["config"])
    except ConfigError as e:
        raise ValueError(f"{scratch}/run.json holds an invalid config: {e}") from None


def run_status(scratch: str) -> dict[str, Any]:
    """Everything `petarecon status` shows: run, stages (chain records), waves in start
    order with done/total/ETA/state, failures and dead letters."""
    cf = CloudFiles(scratch)
    run = cf.get_json("run.json") or {}
    names = [n for n in cf.list(prefix="progress/") if n.endswith(".json")]
    waves = sorted((w for w in cf.get_json(names) if w), key=lambda w: w.get("started", 0)) \
        if names else []
    chain_names = [n for n in cf.list(prefix="chain/") if n.endswith(".json")]
    stages = [s for s in cf.get_json(chain_names) if s] if chain_names else []
    stages.sort(key=lambda s: s.get("order", 0))
    dead = DeadLetters(f"{scratch}/dead_letter").list()
    fail_names = [n for n in CloudFiles(f"{scratch}/dead_letter").list(prefix="failures/")]
    return {"run": run.get("run"), "dag": run.get("dag"), "started": run.get("started"),
            "cancel_requested": cf.exists("cancel.json"), "stages": stages, "waves": waves,
            "failed_attempts": len(fail_names),
            "dead_letters": [{"error": d["error"], "attempts": d.get("attempts")}
                             for d in dead]}


def cancel(scratch: str, reason: str = "operator", request: bool = True) -> dict[str, Any]:
    """Cancel the run whose records are in ``scratch``: request the stop (waves raise
    RunCancelled at their next poll; not with ``request=False``, used once the DAG run has
    ended), scale every pool of the run to zero and purge its queue. Return what was done."""
    from pipeline.cluster import cluster_for

    config = run_config(scratch)
    if request:
        CloudFiles(scratch).put_json("cancel.json", {"time": time.time(), "reason": reason})
    scaled = {}
    for pool in ("cpu", "gpu"):
        cluster = cluster_for(config, pool)
        cluster.shutdown(timeout=30)
        scaled[pool] = cluster.size()
    try:
        queue_.open_queue(config.queue_url).purge()
        purged = True
    except Exception:  # an SQS purge may be rate limited; the stop request holds
        purged = False
    return {"run": config.name, "workers_left": scaled, "queue_purged": purged}
