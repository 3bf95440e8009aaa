"""`petarecon cost`: project core-hours, GPU-hours and storage of a run from measured rates.

Rates are per stage: voxels per core-second (wave wall time × workers, one core per worker)
and stored bytes per voxel per output layer. They come either from the records a finished
run left under its scratch path (``chain/<stage>.json``, see :mod:`pipeline.chain`), or from
the table shipped with petarecon (``pipeline/cost_rates.json``), itself measured by a demo
run whose machine and load it names. The projection always says which source it used.

GPU-hours are projected only for a stage measured on a GPU (``device`` in the rates); with
no GPU measurement, a cuda inference is projected in CPU core-hours and the projection says so.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from cloudfiles import CloudFiles

from pipeline.config import RunConfig

SHIPPED = Path(__file__).with_name("cost_rates.json")


def measure(scratch: str) -> dict[str, Any]:
    """Per-stage rates from a finished chain run's records under ``scratch``.

    Raise FileNotFoundError when the run left no complete stage records."""
    cf = CloudFiles(f"{scratch}/chain")
    names = [n for n in cf.list() if n.endswith(".json")]
    stages = {}
    for rec in (r for r in cf.get_json(names) if r):
        if rec.get("state") != "complete" or rec.get("resumed") or not rec.get("voxels"):
            continue
        core_s = float(rec["seconds"]) * int(rec.get("workers") or 1)
        layers = {n: round(v["bytes"] / rec["voxels"], 4) for n, v in rec["layers"].items()
                  if v.get("bytes") is not None}
        stages[rec["stage"]] = {"voxels": rec["voxels"], "seconds": rec["seconds"],
                                "workers": rec.get("workers"), "core_seconds": core_s,
                                "voxels_per_core_second": round(rec["voxels"] / core_s, 1),
                                "bytes_per_voxel": layers, "device": "cpu"}
    if not stages:
        raise FileNotFoundError(f"{scratch}: no complete stage records to measure rates from")
    return {"source": f"measured by the run whose records are in {scratch}",
            "measured": time.strftime("%Y-%m-%d", time.gmtime()), "stages": stages}


def shipped() -> dict[str, Any]:
    """The shipped rate table (see the module doc)."""
    return json.loads(SHIPPED.read_text())


def voxels_of(config: RunConfig, extent_nm: tuple[float, float, float] | None = None) -> int:
    """Voxels the run covers: ``extent_nm`` at the config's resolution, else its bbox, else
    the input layer's bounds."""
    if extent_nm is not None:
        res = config.resolution
        return math.prod(math.ceil(e / r) for e, r in zip(extent_nm, res, strict=True))
    if config.bounds is not None:
        return config.bounds.volume
    from pipeline import storage

    path = config.input or (config.alignment.image if config.alignment else None)
    if path is None:
        raise ValueError("cannot size the run: give bbox or input in the config, or "
                         "--extent-nm")
    return storage.layer_bounds(path, config.mip).volume


def project(config: RunConfig, rates: dict[str, Any],
            extent_nm: tuple[float, float, float] | None = None) -> dict[str, Any]:
    """Core-hours, GPU-hours and storage (bytes) per stage of ``config`` at ``rates``.

    A stage of the config that the rates lack is listed under ``unmeasured``."""
    from pipeline import chain

    n = voxels_of(config, extent_nm)
    rows, unmeasured, notes = {}, [], []
    for stage in chain.enabled(config) or chain.stages(config):
        r = rates["stages"].get(stage)
        if r is None:
            unmeasured.append(stage)
            continue
        hours = n / r["voxels_per_core_second"] / 3600.0
        gpu = stage == "inference" and config.inference is not None \
            and config.inference.device == "cuda"
        row = {"core_hours": 0.0 if gpu and r.get("device") == "cuda" else hours,
               "gpu_hours": hours if gpu and r.get("device") == "cuda" else 0.0,
               "storage_bytes": n * sum(r.get("bytes_per_voxel", {}).values())}
        if gpu and r.get("device") != "cuda":
            notes.append("inference asks for cuda but the rates hold no GPU measurement: "
                         "projected as CPU core-hours")
        rows[stage] = row
    total = {k: sum(row[k] for row in rows.values())
             for k in ("core_hours", "gpu_hours", "storage_bytes")}
    return {"voxels": n, "source": rates["source"], "measured": rates.get("measured"),
            "stages": rows, "total": total, "unmeasured": unmeasured, "notes": notes}
