"""Reading a chunk's inputs for watershed and agglomeration from the run's layers."""

from __future__ import annotations

import numpy as np

from pipeline import storage
from pipeline.config import RunConfig
from pipeline.geometry import Bbox
from pipeline.octree_jobs import CloudStore, Layout
from pipeline.watershed.jobs import check_finite, prepare_affinity


def layout(config: RunConfig) -> Layout:
    """The octree layout of a resolved config (bbox set)."""
    return Layout(Bbox.from_list(config.bbox), config.chunk_size)


def store(config: RunConfig) -> CloudStore:
    return CloudStore(f"{config.scratch_path}/segmentation")


def read_affinity(config: RunConfig, box: Bbox, margin: int) -> np.ndarray:
    """Affinities of ``box`` grown by ``margin``: 0 outside the run, and channel c 0 on the
    run's first plane along c. From the affinity layer, or from the boundary map as
    ``1 - max(p[v], p[v - e_c])``. Raise ValueError naming the chunk on NaN/inf."""
    seg = config.segmentation
    assert seg is not None
    run = Bbox.from_list(config.bbox)
    want = box.grow(margin)
    if seg.affinity:
        aff = storage.read(seg.affinity, box, margin, config.mip).astype(np.float32)
    else:
        p = storage.read(seg.boundary, box, margin + 1, config.mip)[..., 0].astype(np.float32)
        aff = np.zeros((*want.shape, 3), np.float32)
        core = p[1:-1, 1:-1, 1:-1]
        aff[..., 0] = 1 - np.maximum(core, p[:-2, 1:-1, 1:-1])
        aff[..., 1] = 1 - np.maximum(core, p[1:-1, :-2, 1:-1])
        aff[..., 2] = 1 - np.maximum(core, p[1:-1, 1:-1, :-2])
    inside = want.intersection(run)
    check_finite(aff[inside.slices(want.start)], f"chunk {box} of {seg.affinity or seg.boundary}")
    mask = np.zeros(want.shape, bool)
    mask[inside.slices(want.start)] = True
    aff[~mask] = 0
    return prepare_affinity(aff, want.start, run.start, copy=False)


def read_low_padded(path: str, box: Bbox, mip: int) -> np.ndarray:
    """``box`` grown by one voxel on its low sides, first channel, 0 outside the layer."""
    low = Bbox(tuple(s - 1 for s in box.start), box.stop)
    return storage.read(path, low, 0, mip)[..., 0]
