"""`petarecon demo`: the main job on the embedded default.

It ingests the gala FIB-SEM cutout and a synthetic EM volume through the `ingest` DAG (Airflow
in-process, an fq:// queue, local worker processes), builds their pyramids, writes the
synthetic ground truth beside them, and returns each run's report.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pipeline.config import load_config
from pipeline.runner import run_embedded

REPO = Path(__file__).resolve().parents[1]
GALA_DIRS = (REPO / "tests" / "data" / "gala_fibsem_example",
             REPO.parent / "shared" / "data" / "gala_fibsem_example")
SYNTH_SHAPE = (256, 256, 32)


def gala_dir() -> Path:
    """The gala example data: $PETARECON_GALA, the copy shipped in tests/data, or ../shared."""
    env = os.environ.get("PETARECON_GALA")
    for d in ((Path(env),) if env else ()) + GALA_DIRS:
        if (d / "train-image.h5").is_file():
            return d
    raise FileNotFoundError("gala example data not found; set PETARECON_GALA to its folder")


def run_demo(out: Path, workers: int = 2, synth_shape: tuple[int, int, int] = SYNTH_SHAPE,
             verbose: bool = False) -> list[dict[str, Any]]:
    """Ingest gala and a synthetic volume under ``out``; return the two run reports."""
    from pipeline.synth.io import make_volume, save_stack, write_truth

    out = out.resolve()
    common = {"overwrite": True, "cluster": {"workers": workers},
              "chunk_size": [128, 128, 32], "storage_chunk_size": [64, 64, 16]}
    gala = load_config({
        **common, "name": "gala", "output": str(out / "gala"), "resolution": [10, 10, 10],
        "ingest": {"source": str(gala_dir() / "train-image.h5"), "dataset": "stack",
                   "downsample_mips": 2},
    })
    reports = [run_embedded(gala, "ingest", verbose)]

    synth_dir = out / "synthetic"
    synth_dir.mkdir(parents=True, exist_ok=True)
    vol = make_volume(synth_shape, seed=0, resolution=(8, 8, 40), misalign=True, folds=1,
                      missing=1)
    stack = synth_dir / "image-stack.npy"
    save_stack(vol, str(stack))
    truth = write_truth(str(synth_dir), vol, (8, 8, 40), overwrite=True)
    synthetic = load_config({
        **common, "name": "synthetic", "output": str(synth_dir), "resolution": [8, 8, 40],
        "ingest": {"source": str(stack), "downsample_mips": 2},
    })
    report = run_embedded(synthetic, "ingest", verbose)
    report["layers"].update({n: {"path": p, "kind": k} for n, (p, k) in truth.items()})
    reports.append(report)
    return reports
