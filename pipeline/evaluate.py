"""`petarecon evaluate`: metrics of a segmentation against ground truth, chunk by chunk.

Either side may be a precomputed layer (any cloud path) or a local label stack (.h5 with one
dataset, or .npy; axis order z, y, x). Contingency counts are computed per chunk and reduced,
so memory stays bounded by one chunk whatever the volume size.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline import storage
from pipeline.geometry import Bbox, ChunkGrid
from pipeline.metrics import Contingency, contingency, evaluate_contingency, reduce_contingency


class LabelSource:
    """Read label boxes (x, y, z) from a layer or a local stack."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.array = None
        local = Path(path)
        if "://" not in path and local.suffix in (".h5", ".hdf5", ".npy"):
            if not local.is_file():
                raise FileNotFoundError(f"{path}: no such file")
            if local.suffix == ".npy":
                zyx = np.load(local, mmap_mode="r")
            else:
                import h5py

                with h5py.File(local, "r") as f:
                    names = [k for k in f if isinstance(f[k], h5py.Dataset)]
                    if len(names) != 1:
                        raise ValueError(f"{path}: expected one dataset, found {names}")
                    zyx = f[names[0]][:]
            if zyx.ndim != 3:
                raise ValueError(f"{path}: expected a 3D label stack, got shape {zyx.shape}")
            self.array = np.asarray(zyx).transpose(2, 1, 0)
            self.bounds = Bbox.from_shape(self.array.shape)
        else:
            self.bounds = storage.layer_bounds(path)

    def read(self, box: Bbox) -> np.ndarray:
        if self.array is not None:
            return np.asarray(self.array[box.slices(self.bounds.start)])
        return storage.read(self.path, box)[..., 0]


def evaluate_paths(seg: str, gt: str, bbox: Bbox | None = None,
                   chunk: tuple[int, int, int] = (256, 256, 64)) -> dict[str, float]:
    """All metrics of :func:`pipeline.metrics.evaluate_contingency` over ``bbox`` (default:
    the overlap of both), reduced over chunks."""
    a, b = LabelSource(seg), LabelSource(gt)
    box = bbox or a.bounds.intersection(b.bounds)
    if box.empty():
        raise ValueError(f"{seg} and {gt} do not overlap ({a.bounds} vs {b.bounds})")
    for src in (a, b):
        if not src.bounds.contains(box):
            raise ValueError(f"{src.path} (bounds {src.bounds.to_list()}) does not cover "
                             f"bbox {box.to_list()}")
    tables: list[Contingency] = [contingency(a.read(c), b.read(c))
                                 for c in ChunkGrid(box, chunk)]
    return evaluate_contingency(reduce_contingency(tables))
