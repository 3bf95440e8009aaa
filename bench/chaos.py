"""Chaos and idempotency harness: every stage's waves, clean, under worker kills, or twice.

``run_stage`` runs one stage the way its DAG does (sanity check → start → prepare → waves and
the DAG's in-between steps → finish), in one of three modes:

* ``inline``: each task is called in this process (``repeat`` times in a row: 2 checks that
  tasks are idempotent). No queue, no workers: the reference output.
* ``workers``: each wave goes through the run's real queue to LocalCluster worker processes.
  With a :class:`Chaos`, a thread SIGKILLs a random ``fraction`` of the workers at random
  times, again and again, and scales the pool back up (as Kubernetes restarts pods); a
  killed worker's task is re-leased when its lease expires.
* ``workers`` with ``duplicate=True``: after each wave drains, every task of the wave is
  delivered again (run in this process), as a duplicate delivery would.

``snapshot`` reads a run's outputs as {relative path: bytes} (compressed files inflated;
status markers, provenance, queues and bookkeeping left out), so that two runs compare with
``==``. As a script it runs the chaos check at a larger size::

    .venv/bin/python bench/chaos.py [--stages ingest,segmentation] [--size 256] [--workers 5]
"""

from __future__ import annotations

import argparse
import gzip
import math
import random
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from pipeline import storage, waves  # noqa: E402
from pipeline.cluster import LocalCluster, cluster_for  # noqa: E402
from pipeline.config import RunConfig  # noqa: E402
from pipeline.geometry import Bbox  # noqa: E402

STAGES = ("ingest", "alignment", "inference", "segmentation", "synapses")
#: Files that record how a run went, not what it computed.
SKIP_PARTS = {"queue", "dead_letter", "status", "cluster", "report.json", "report.html",
              "progress", "provenance", storage.STATUS_FILE, "workers.log", "run.json"}

Step = tuple[str, str, Callable[[RunConfig], Any]]  # (kind "wave"|"call", name, function)


def _module(stage: str):
    import importlib

    name = {"alignment": "align"}.get(stage, stage)
    return importlib.import_module(f"pipeline.{name}.stage")


def plan(stage: str, config: RunConfig) -> list[Step]:
    """The stage's steps in DAG order: waves (tasks of config) and in-between calls."""
    m = _module(stage)
    if stage == "ingest":
        return [("wave", "ingest", m.ingest_tasks), ("wave", "pyramid", m.pyramid_tasks)]
    if stage == "inference":
        return [("wave", "inference", m.inference_tasks)]
    if stage == "alignment":
        steps: list[Step] = [("wave", "defects", lambda c: m.tasks(c, "defects")),
                             ("call", "sections", m.reduce_sections)]
        return steps + [("wave", w, lambda c, w=w: m.tasks(c, w))
                        for w in ("fields", "stitch", "compose", "render", "masks", "pyramid")]
    if stage == "segmentation":
        s = config.segmentation
        steps = []
        for name, make in m.wave_plan(config):
            steps.append(("wave", name, make))
            if name.endswith("remap"):
                layer = s.ws_layer if name.startswith("ws") else s.seg_layer
                steps.append(("call", f"finish {layer}",
                              lambda c, layer=layer: m.finish_layer(c, layer)))
        return [*steps, ("call", "tables", m.write_tables)]
    if stage == "synapses":
        waves_ = [("wave", w, lambda c, w=w: m.tasks(c, w))
                  for w in ("map", "reduce", "remap", "assign")]
        return [*waves_, ("call", "dedup", m.dedup),
                ("wave", "relabel", lambda c: m.tasks(c, "relabel"))]
    raise ValueError(f"unknown stage {stage!r}; one of {STAGES}")


@dataclass
class Chaos:
    """Kill ``fraction`` of a pool's workers (at least one) every ``min_gap``–``max_gap`` s.

    ``kills`` counts the workers killed so far. Used as a context manager around a stage run:
    the killing thread runs inside it.
    """

    fraction: float = 0.2
    min_gap: float = 0.5
    max_gap: float = 2.0
    seed: int = 0
    kills: int = 0
    cluster: LocalCluster | None = None
    workers: int = 5
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def _loop(self) -> None:
        rng = random.Random(self.seed)
        while not self._stop.wait(rng.uniform(self.min_gap, self.max_gap)):
            if self.cluster is None:
                continue
            pids = self.cluster.pids()
            n = max(1, math.ceil(self.fraction * len(pids))) if pids else 0
            for pid in rng.sample(pids, n):
                self.cluster.stop(pid, signal.SIGKILL)
                self.kills += 1
            self.cluster.scale(self.workers)

    def start(self, cluster: LocalCluster, workers: int) -> None:
        self.cluster, self.workers = cluster, workers
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="chaos", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None


def run_stage(stage: str, conf: dict[str, Any], mode: str = "inline", repeat: int = 1,
              workers: int = 5, chaos: Chaos | None = None,
              duplicate: bool = False) -> RunConfig:
    """Run ``stage`` on ``conf`` (see the module docstring); return the resolved config.

    Raise whatever a step raises (WaveFailed when a wave dead-letters a task).
    """
    m = _module(stage)
    config = m.sanity_check(conf)
    waves.start_run(config)
    m.prepare(config)
    cluster = None
    if mode == "workers":
        pool = m.pool(config) if hasattr(m, "pool") else "cpu"
        cluster = cluster_for(config, pool)
        cluster.scale(workers)
        if chaos is not None:
            chaos.start(cluster, workers)
    try:
        for kind, name, fn in plan(stage, config):
            if kind == "call":
                fn(config)
                continue
            tasks = list(fn(config))
            if mode == "inline":
                for task in tasks:
                    for _ in range(repeat):
                        task()
                continue
            waves.run_wave(config, f"{stage} {name}", tasks, pool=pool,
                           reporter=lambda p: None)
            if duplicate:
                for task in tasks:
                    task()
    finally:
        if chaos is not None:
            chaos.stop()
        if cluster is not None:
            cluster.shutdown()
    m.finish(config)
    return config


def snapshot(output: str | Path) -> dict[str, bytes]:
    """Every computed file under ``output``: {relative path: bytes}, compressed files inflated
    (and named without their suffix), bookkeeping (``SKIP_PARTS``) left out."""
    root = Path(str(output).removeprefix("file://"))
    out: dict[str, bytes] = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if not path.is_file() or SKIP_PARTS & set(rel.parts):
            continue
        data = path.read_bytes()
        name = rel.as_posix()
        if name.endswith(".gz"):
            data, name = gzip.decompress(data), name[:-3]
        elif name.endswith(".br"):
            from cloudfiles import compression

            data, name = compression.decompress(data, "br"), name[:-3]
        out[name] = data
    return out


def diff(a: dict[str, bytes], b: dict[str, bytes]) -> list[str]:
    """Paths that differ between two snapshots (missing on either side, or other bytes)."""
    return sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))


# -- inputs ------------------------------------------------------------------------------------


def make_inputs(root: Path, size: int = 64, depth: int = 8) -> dict[str, str]:
    """Synthetic inputs for every stage under ``root``: {name: path}."""
    from pipeline.models.checkpoint import save_checkpoint
    from pipeline.models.rsunet import ModelSpec, RSUNet
    from pipeline.synth import synthesize
    from pipeline.synth.io import write_synthetic

    res = (8.0, 8.0, 40.0)
    layers = {k: v[0] for k, v in write_synthetic(str(root / "syn"), (size, size, depth), 3,
                                                  res).items()}
    vol = synthesize((size, size, depth), seed=3, resolution=res)
    np.save(root / "stack.npy", vol.image.transpose(2, 1, 0))
    gt = vol.segmentation
    edge = np.zeros(gt.shape, bool)
    for axis in range(3):
        a = np.swapaxes(gt, 0, axis)
        e = np.swapaxes(edge, 0, axis)
        e[1:] |= a[1:] != a[:-1]
    noise = np.random.default_rng(0).random(gt.shape, dtype=np.float32) * 0.2
    boundary = np.where(edge, 0.8, 0.05).astype(np.float32) + noise
    path = f"file://{root}/boundary"
    box = Bbox.from_shape(gt.shape)
    storage.create_layer(path, "probability", box, res, (32, 32, 4))
    storage.write(path, box, boundary)
    storage.set_status(path, "complete")
    spec = ModelSpec(widths=(4, 8), pool=(2, 2, 2))
    import torch

    torch.manual_seed(0)
    save_checkpoint(str(root / "net.pt"), spec, RSUNet(spec).state_dict())
    misaligned = write_synthetic(str(root / "mis"), (size, size, depth), 4, res,
                                 misalign=True, folds=1)["image"][0]
    return {"image": layers["image"], "gt": layers["gt"], "cleft": layers["cleft_probability"],
            "boundary": path, "stack": str(root / "stack.npy"), "checkpoint": str(root / "net.pt"),
            "misaligned": misaligned}


def stage_conf(stage: str, inputs: dict[str, str], out: Path, lease: int = 5) -> dict:
    """A small config of ``stage`` over ``make_inputs`` writing under ``out``."""
    common = {"name": f"chaos-{stage}", "output": str(out), "resolution": [8, 8, 40],
              "lease_seconds": lease, "max_attempts": 20, "cluster": {"workers": 5}}
    if stage == "ingest":
        return {**common, "chunk_size": [32, 32, 4], "storage_chunk_size": [32, 32, 4],
                "ingest": {"source": inputs["stack"], "downsample_mips": 1}}
    if stage == "alignment":
        return {**common, "input": inputs["misaligned"], "chunk_size": [32, 32, 4],
                "storage_chunk_size": [32, 32, 4],
                "alignment": {"block_size": 4, "overlap": 2, "margin": 16, "tile_size": 16,
                              "search_radius": 4, "levels": 2, "refine_iterations": 3,
                              "downsample_mips": 1}}
    if stage == "inference":
        return {**common, "input": inputs["image"], "chunk_size": [32, 32, 8],
                "storage_chunk_size": [32, 32, 4],
                "inference": {"checkpoints": [inputs["checkpoint"]], "patch_size": [16, 16, 8],
                              "overlap": [4, 4, 2], "device": "cpu"}}
    if stage == "segmentation":
        return {**common, "chunk_size": [32, 32, 4], "storage_chunk_size": [32, 32, 4],
                "segmentation": {"boundary": inputs["boundary"], "ws_high": 0.9, "ws_low": 0.1,
                                 "ws_size": 20, "ws_dust": 5, "agg_threshold": 0.5,
                                 "mesh": False, "downsample_mips": 0}}
    if stage == "synapses":
        return {**common, "input": inputs["image"], "chunk_size": [32, 32, 4],
                "storage_chunk_size": [32, 32, 4],
                "synapses": {"cleft": inputs["cleft"], "segmentation": inputs["gt"],
                             "size_threshold": 5}}
    raise ValueError(stage)


def main(argv: list[str] | None = None) -> int:
    """Chaos at a larger size: every stage clean (inline) vs. under kills; print the result."""
    import tempfile

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--stages", default=",".join(STAGES))
    p.add_argument("--size", type=int, default=128, help="x and y voxels")
    p.add_argument("--depth", type=int, default=16, help="z voxels")
    p.add_argument("--workers", type=int, default=5)
    p.add_argument("--fraction", type=float, default=0.2)
    args = p.parse_args(argv)
    failed = 0
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        inputs = make_inputs(root / "in", args.size, args.depth)
        for i, stage in enumerate(args.stages.split(",")):
            t0 = time.monotonic()
            clean = run_stage(stage, stage_conf(stage, inputs, root / f"{stage}-clean"))
            t1 = time.monotonic()
            chaos = Chaos(fraction=args.fraction, seed=i)
            run_stage(stage, stage_conf(stage, inputs, root / f"{stage}-chaos"), "workers",
                      workers=args.workers, chaos=chaos)
            t2 = time.monotonic()
            bad = diff(snapshot(clean.output), snapshot(root / f"{stage}-chaos"))
            failed += bool(bad)
            print(f"{stage:13s} clean {t1 - t0:6.1f} s  chaos {t2 - t1:6.1f} s  "
                  f"kills {chaos.kills:3d}  {'IDENTICAL' if not bad else f'DIFFERS: {bad[:5]}'}",
                  flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
