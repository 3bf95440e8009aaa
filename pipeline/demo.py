"""`petarecon demo`: the whole reconstruction chain on the embedded default.

Through Airflow in-process, an fq:// queue and local worker processes:

1. **synthetic EM** with exact ground truth: a volume rendered with cells, membranes,
   mitochondria and synaptic clefts with known partners, then given per-section
   misalignments, a fold and a missing section. The `reconstruction` DAG aligns it (with
   defect masks), predicts affinities with the shipped RSUNet demo model, segments them
   (watershed + octree agglomeration), finds synapses (clefts from the generator's cleft
   probability map: petarecon has no cleft network), and postprocesses (pyramids, meshes,
   skeletons). The report scores seg and the synapse partners against the truth.
2. **the gala FIB-SEM cutout** (real EM, already aligned): the `ingest` DAG, then the chain's
   inference → segmentation → postprocess, scored against the gala ground truth.

Each run writes ``report.html`` next to its outputs; the demo returns the run reports.
``size="small"`` shrinks both volumes for tests.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pipeline.chain import load
from pipeline.config import load_config
from pipeline.runner import run_embedded

REPO = Path(__file__).resolve().parents[1]
GALA_DIRS = (REPO / "tests" / "data" / "gala_fibsem_example",
             REPO.parent / "shared" / "data" / "gala_fibsem_example")
DEMO_MODEL = REPO / "pipeline" / "models" / "demo" / "rsunet_gala.pt"
SIZES = {"default": {"synth": (192, 192, 32), "gala_bbox": None},
         "small": {"synth": (96, 96, 16), "gala_bbox": [0, 0, 0, 96, 96, 32]}}
RES = (8.0, 8.0, 40.0)


def gala_dir() -> Path:
    """The gala example data: $PETARECON_GALA, the copy shipped in tests/data, or ../shared."""
    env = os.environ.get("PETARECON_GALA")
    for d in ((Path(env),) if env else ()) + GALA_DIRS:
        if (d / "train-image.h5").is_file():
            return d
    raise FileNotFoundError("gala example data not found; set PETARECON_GALA to its folder")


def inference_section(patch: tuple[int, int, int]) -> dict[str, Any]:
    return {"checkpoints": [str(DEMO_MODEL)], "patch_size": list(patch),
            "overlap": [8, 8, 4], "batch_size": 4}


def synthetic_chain(out: Path, common: dict[str, Any], shape: tuple[int, int, int],
                    verbose: bool) -> dict[str, Any]:
    """Write the synthetic volume and its truth under ``out/synthetic``; run the chain."""
    from pipeline.synth.io import write_synthetic

    root = out / "synthetic"
    layers = write_synthetic(str(root), shape, 0, RES, misalign=True, folds=1, missing=1,
                             overwrite=True)
    z = shape[2]
    doc = {**common, "name": "synthetic", "output": str(root / "recon"),
           "input": layers["image"][0], "chunk_size": [96, 96, min(16, z)],
           "storage_chunk_size": [48, 48, min(16, z)],
           "alignment": {"block_size": min(16, z), "overlap": 2, "tile_size": 32,
                         "search_radius": 8, "levels": 2, "smooth": 32.0,
                         "refine_iterations": 10},
           "inference": inference_section((48, 48, min(16, z))),
           "segmentation": {"ws_high": 0.99, "ws_low": 0.1, "ws_size": 100, "ws_dust": 50,
                            "agg_threshold": 0.7},
           "synapses": {"cleft": layers["cleft_probability"][0]},
           "chain": {"ground_truth": layers["gt"][0],
                     "synapse_truth": str(root / "synapses.csv")}}
    report = run_embedded(load(doc), "reconstruction", verbose)
    report["layers"].update({f"truth_{n}": {"path": p, "kind": k}
                             for n, (p, k) in layers.items() if n != "image"})
    return report


def gala_chain(out: Path, common: dict[str, Any], bbox: list[int] | None,
               verbose: bool) -> list[dict[str, Any]]:
    """Ingest the gala image (`ingest` DAG), then inference → segmentation → postprocess."""
    root = out / "gala"
    ingest = load_config({
        **common, "name": "gala", "output": str(root), "resolution": [10, 10, 10],
        "chunk_size": [128, 128, 32], "storage_chunk_size": [64, 64, 16],
        "ingest": {"source": str(gala_dir() / "train-image.h5"), "dataset": "stack",
                   "downsample_mips": 2}})
    reports = [run_embedded(ingest, "ingest", verbose)]
    doc = {**common, "name": "gala-recon", "output": str(root / "recon"),
           "input": f"file://{root}/image", "bbox": bbox,
           "chunk_size": [64, 64, 32], "storage_chunk_size": [64, 64, 16],
           "inference": inference_section((48, 48, 16)),
           "segmentation": {"ws_high": 0.99, "ws_low": 0.1, "ws_size": 200, "ws_dust": 50,
                            "agg_threshold": 0.7},
           "chain": {"ground_truth": str(gala_dir() / "train-gt.lzf.h5")}}
    reports.append(run_embedded(load(doc), "reconstruction", verbose))
    return reports


def run_demo(out: Path, workers: int = 2, size: Literal["default", "small"] = "default",
             verbose: bool = False) -> list[dict[str, Any]]:
    """Run the synthetic and the gala chains under ``out``; return their run reports (each
    with ``html``, the path of its report page, and ``metrics`` against ground truth)."""
    out = out.resolve()
    common = {"overwrite": True, "cluster": {"workers": workers}, "lease_seconds": 60}
    spec = SIZES[size]
    reports = [synthetic_chain(out, common, spec["synth"], verbose)]
    reports += gala_chain(out, common, spec["gala_bbox"], verbose)
    return reports
