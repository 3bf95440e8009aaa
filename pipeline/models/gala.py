"""Score a boundary detector on the gala *test* cutout against the boundary map shipped with it.

``python -m pipeline.models.gala [MODEL.pt]`` predicts affinities for ``test-image.h5`` with
the model (default: the shipped demo model) through the chunked inference kernel, segments
them with the pipeline's watershed + mean-affinity agglomeration, and scores the result
against ``test-gt.lzf.h5``. The same segmentation of the shipped ``test-p1.lzf.h5`` boundary
map (as affinities ``1 - max(p[v], p[v - e_c])``) is the reference. It prints, for both, the
scores at the demo's fixed parameters and at the best point of a small parameter grid (the
same grid for both: a fair comparison of the maps, not of one tuned pipeline).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.models.affinity import boundary_to_affinity, to_xyzc
from pipeline.models.checkpoint import load_model
from pipeline.models.validate import predict_volume, score

DEMO_MODEL = Path(__file__).resolve().parent / "demo" / "rsunet_gala.pt"
FIXED = {"ws_high": 0.9, "ws_low": 0.1, "ws_size": 200, "ws_dust": 50, "agg_threshold": 0.5}
"""The parameters the gala demo segments the shipped boundary map with (pipeline/demo.py)."""
WS_HIGH = (0.9, 0.99, 0.999)
THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7)


def _read(path: Path) -> np.ndarray:
    import h5py

    with h5py.File(path, "r") as f:
        return f["stack"][...]


def evaluate_affinities(aff_xyzc: np.ndarray, gt_xyz: np.ndarray) -> dict[str, Any]:
    """Scores at the demo's fixed parameters (:data:`FIXED`), and at the best (lowest VI)
    ``ws_high`` × ``agg_threshold`` of the grid :data:`WS_HIGH` × :data:`THRESHOLDS` (the
    other parameters as in FIXED): the same protocol for every affinity map."""
    from pipeline.agglomerate.chunked import AgglomerationParams
    from pipeline.agglomerate.jobs import agglomerate_global
    from pipeline.watershed.chunked import WatershedParams
    from pipeline.watershed.jobs import prepare_affinity, watershed_global

    aff = prepare_affinity(aff_xyzc[..., :3], (0, 0, 0), (0, 0, 0))
    grid = {}
    for high in WS_HIGH:
        ws = watershed_global(aff, WatershedParams(high, FIXED["ws_low"], FIXED["ws_size"],
                                                   FIXED["ws_dust"]))
        for t in THRESHOLDS:
            seg = agglomerate_global(aff, ws, AgglomerationParams(t))
            grid[(high, t)] = score(seg, gt_xyz)
    best = min(grid, key=lambda k: grid[k]["vi"])
    return {"fixed": grid[(FIXED["ws_high"], FIXED["agg_threshold"])],
            "best": {"ws_high": best[0], "agg_threshold": best[1], **grid[best]},
            "grid_vi": {f"{h}/{t}": grid[(h, t)]["vi"] for h, t in grid}}


def evaluate_gala(model_path: str | Path = DEMO_MODEL, data: str | Path | None = None,
                  patch: tuple[int, int, int] = (48, 48, 16),
                  overlap: tuple[int, int, int] = (12, 12, 4)) -> dict[str, Any]:
    """{"model": scores, "p1": scores} on the gala test cutout (see the module docstring)."""
    from pipeline.demo import gala_dir

    d = Path(data) if data else gala_dir()
    image = _read(d / "test-image.h5")
    gt = _read(d / "test-gt.lzf.h5").transpose(2, 1, 0)
    p1 = _read(d / "test-p1.lzf.h5").astype(np.float32)
    model = load_model(str(model_path))
    aff = predict_volume(model, image, patch, overlap, batch_size=2)
    return {"model": evaluate_affinities(aff, gt),
            "p1": evaluate_affinities(to_xyzc(boundary_to_affinity(p1)), gt),
            "params": {**FIXED, "patch": patch, "overlap": overlap, "model": str(model_path)}}


if __name__ == "__main__":
    import sys

    print(json.dumps(evaluate_gala(*(sys.argv[1:2] or [DEMO_MODEL])), indent=2))
