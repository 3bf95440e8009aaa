"""`petarecon demo`: the main job on the embedded default.

Through Airflow in-process, an fq:// queue and local worker processes, it

1. ingests the gala FIB-SEM cutout (`ingest` DAG, with its pyramid);
2. segments it (`segmentation` DAG: chunked watershed + octree agglomeration, pyramid,
   meshes) from the boundary map shipped with the data, and scores it against the gala
   ground truth;
   then predicts its affinities with the shipped RSUNet demo model (`inference` DAG) and
   segments and scores those too;
3. ingests a synthetic EM volume with misalignment, a fold and a missing section, beside its
   exact ground truth (cells, clefts, synapse partners);
4. finds its synapses (`synapses` DAG: cleft map-reduce, partners, dedup) and checks the
   partners against the truth;

and returns each run's report.
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


def segment_gala(out: Path, common: dict[str, Any], verbose: bool) -> dict[str, Any]:
    """Segment the gala image from its shipped boundary map; score it against ground truth."""
    import h5py
    import numpy as np

    from pipeline import storage
    from pipeline.evaluate import evaluate_paths
    from pipeline.geometry import Bbox

    with h5py.File(gala_dir() / "train-p1.lzf.h5") as f:
        p = f["stack"][:].transpose(2, 1, 0).astype(np.float32)
    box = Bbox.from_shape(p.shape)
    boundary = f"file://{out}/gala/boundary"
    storage.create_layer(boundary, "probability", box, (10, 10, 10), (64, 64, 16),
                         overwrite=True)
    storage.write(boundary, box, p)
    storage.set_status(boundary, "complete")
    config = load_config({
        **common, "name": "gala-seg", "output": str(out / "gala"),
        "chunk_size": [64, 64, 32],
        "segmentation": {"boundary": boundary, "ws_high": 0.9, "ws_low": 0.1, "ws_size": 200,
                         "ws_dust": 50, "agg_threshold": 0.5},
    })
    report = run_embedded(config, "segmentation", verbose)
    scores = evaluate_paths(f"file://{out}/gala/seg", str(gala_dir() / "train-gt.lzf.h5"))
    report["metrics"] = {k: round(scores[k], 4)
                         for k in ("adapted_rand_error", "vi_split", "vi_merge")}
    return report


DEMO_MODEL = REPO / "pipeline" / "models" / "demo" / "rsunet_gala.pt"


def predict_and_segment_gala(out: Path, common: dict[str, Any],
                             verbose: bool) -> list[dict[str, Any]]:
    """Affinities of the gala image from the shipped demo model (`inference` DAG), then the
    `segmentation` DAG on them, scored against the gala ground truth."""
    from pipeline.evaluate import evaluate_paths

    infer = load_config({
        **common, "name": "gala-inference", "output": str(out / "gala"),
        "input": f"file://{out}/gala/image", "chunk_size": [128, 128, 32],
        "inference": {"checkpoints": [str(DEMO_MODEL)], "patch_size": [48, 48, 16],
                      "overlap": [8, 8, 4], "batch_size": 4},
    })
    reports = [run_embedded(infer, "inference", verbose)]
    seg = load_config({
        **common, "name": "gala-seg-rsunet", "output": str(out / "gala"),
        "chunk_size": [64, 64, 32],
        "segmentation": {"affinity": f"file://{out}/gala/aff", "ws_high": 0.99, "ws_low": 0.1,
                         "ws_size": 200, "ws_dust": 50, "agg_threshold": 0.7,
                         "ws_layer": "ws_rsunet", "seg_layer": "seg_rsunet"},
    })
    report = run_embedded(seg, "segmentation", verbose)
    scores = evaluate_paths(f"file://{out}/gala/seg_rsunet",
                            str(gala_dir() / "train-gt.lzf.h5"))
    report["metrics"] = {k: round(scores[k], 4)
                         for k in ("adapted_rand_error", "vi_split", "vi_merge")}
    reports.append(report)
    return reports


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
    reports.append(segment_gala(out, common, verbose))
    reports += predict_and_segment_gala(out, common, verbose)

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
    reports.append(find_synapses(synth_dir, common, truth, vol, verbose))
    return reports


def find_synapses(synth_dir: Path, common: dict[str, Any], truth: dict, vol,
                  verbose: bool) -> dict[str, Any]:
    """The `synapses` DAG on the synthetic volume; partner accuracy against its truth.

    Until the alignment stage lands, partners are read from the defect-free rendering of the
    same volume (``image_aligned``): the injected shifts move vesicle clouds off their cells.
    """
    import csv

    from pipeline import storage
    from pipeline.geometry import Bbox
    from pipeline.synth.io import make_volume

    clean = make_volume(vol.image.shape, seed=0, resolution=(8, 8, 40))
    aligned = f"file://{synth_dir}/image_aligned"
    box = Bbox.from_shape(clean.image.shape)
    storage.create_layer(aligned, "image", box, (8, 8, 40), (64, 64, 16), overwrite=True)
    storage.write(aligned, box, clean.image)
    storage.set_status(aligned, "complete")
    config = load_config({
        **common, "name": "synthetic-synapses", "output": str(synth_dir),
        "input": aligned, "chunk_size": [128, 128, 16],
        "synapses": {"cleft": truth["cleft_probability"][0], "segmentation": truth["gt"][0],
                     "cleft_layer": "detected_clefts"},
    })
    report = run_embedded(config, "synapses", verbose)
    table = synth_dir / "scratch" / "synapses" / "synapses.csv"
    found = {(int(r["pre"]), int(r["post"])) for r in csv.DictReader(table.open())}
    known = {(s["pre"], s["post"]) for s in vol.synapses}
    report["metrics"] = {"synapses_found": len(found), "synapses_true": len(known),
                         "partners_correct": len(found & known)}
    return report
