"""The watershed's octree jobs, over a store: chunk → faces → nodes (level by level) → remap.

Each job is idempotent: it reads what earlier waves stored and writes whole files. Tasks call
these with a :class:`pipeline.octree_jobs.CloudStore`; :func:`watershed_octree` calls them in
memory, which is also the single-chunk reference.
"""

from __future__ import annotations

import numpy as np

from pipeline.geometry import Bbox, OctreeNode, Vec
from pipeline.octree_jobs import Layout, MemoryStore, Store
from pipeline.regiongraph import Edges, Resolution, node_step
from pipeline.remap import remap
from pipeline.watershed.chunked import (
    MARGIN,
    WatershedParams,
    resolve_basins,
    stitch_face,
    watershed_basins,
)


def prepare_affinity(block: np.ndarray, block_start: Vec, run_start: Vec,
                     copy: bool = True) -> np.ndarray:
    """Zero channel c on the run's first plane along c: those voxels have no predecessor.

    With ``copy=False`` a float32 ``block`` is changed in place (no second chunk in memory).
    """
    block = np.array(block, dtype=np.float32, copy=copy or block.dtype != np.float32)
    for c in range(3):
        i = run_start[c] - block_start[c]
        if 0 <= i < block.shape[c]:
            idx = [slice(None)] * 3 + [c]
            idx[c] = i
            block[tuple(idx)] = 0
    return block


def check_finite(block: np.ndarray, where: str) -> None:
    """Raise ValueError naming ``where`` if ``block`` holds NaN or inf."""
    if not np.isfinite(block).all():
        bad = int((~np.isfinite(block)).sum())
        raise ValueError(f"{where}: affinities contain {bad} NaN/inf value(s)")


def chunk_job(store: Store, layout: Layout, coord: Vec, aff_padded: np.ndarray,
              params: WatershedParams) -> None:
    """Level 0 of one atomic chunk; ``aff_padded`` is its box grown by MARGIN (see tasks).

    Pass the array without keeping a reference (``chunk_job(..., read(...), ...)``): it is
    dropped, with the supervoxel labels once stored, before the memory-hungry resolve.
    """
    box = layout.grid.chunk(coord)
    node = OctreeNode(0, coord)
    lo, hi, faces = layout.node_geometry(node)
    basins = watershed_basins(aff_padded, box.start, box.shape, layout.id_offset(coord),
                              layout.bbox.start, layout.bbox.shape, params)
    del aff_padded
    n = len(basins.segments)  # ids id_offset + 1..n, each in the labels
    store.put(f"ws/labels/{node.tag}", {"labels": basins.labels, "ids": np.array(
        [layout.id_offset(coord) + 1, layout.id_offset(coord) + n], np.uint64)})
    store.put(f"ws/faces/{node.tag}", basins.faces)
    basins.labels = basins.faces = None
    resolution = resolve_basins(basins, lo, hi, faces, params)
    store.put(f"ws/nodes/{node.tag}", resolution.arrays())


def face_job(store: Store, layout: Layout, coord: Vec) -> None:
    """Stitch the chunk's low faces with its lower neighbours' high faces."""
    upper = store.get(f"ws/faces/{OctreeNode(0, coord).tag}")
    out: dict[str, np.ndarray] = {}
    for axis in range(3):
        if coord[axis] == 0:
            continue
        below = list(coord)
        below[axis] -= 1
        lower = store.get(f"ws/faces/{OctreeNode(0, tuple(below)).tag}")
        links, edges = stitch_face(lower, upper, axis)
        out[f"links{axis}"] = links
        out.update({f"edge{axis}_{k}": v for k, v in edges.arrays().items()})
    store.put(f"ws/links/{OctreeNode(0, coord).tag}", out)


def node_job(store: Store, layout: Layout, node: OctreeNode, params: WatershedParams) -> None:
    """A composite node: children's residuals, plus the faces between them, resolved."""
    tree = layout.octree
    children = [Resolution.from_arrays(store.get(f"ws/nodes/{c.tag}"))
                for c in tree.children(node)]
    links, face_edges = [], []
    for coord, axis in tree.internal_faces(node):
        stitched = store.get(f"ws/links/{OctreeNode(0, coord).tag}")
        links.append(stitched[f"links{axis}"].reshape(-1, 2))
        face_edges.append(Edges(**{k: stitched[f"edge{axis}_{k}"]
                                   for k in ("a", "b", "wmax", "wsum", "count")}))
    lo, hi, faces = layout.node_geometry(node)
    res = node_step(children, links, face_edges, lo, hi, faces, params.resolve_params())
    store.put(f"ws/nodes/{node.tag}", res.arrays())


def remap_job(store: Store, layout: Layout, coord: Vec) -> np.ndarray:
    """The chunk's final supervoxel ids."""
    stored = store.get(f"ws/labels/{OctreeNode(0, coord).tag}")
    chain = [Resolution.from_arrays(store.get(f"ws/nodes/{n.tag}")) for n in layout.chain(coord)]
    ids = stored.get("ids")
    return remap(stored["labels"], chain, ids=None if ids is None else tuple(map(int, ids)))


def padded_block(aff: np.ndarray, run: Bbox, box: Bbox, margin: int) -> np.ndarray:
    """``box`` grown by ``margin`` from an in-memory run-sized array, 0 outside the run."""
    want = box.grow(margin)
    have = want.intersection(run)
    out = np.zeros((*want.shape, aff.shape[3]), np.float32)
    out[have.slices(want.start)] = aff[have.slices(run.start)]
    return out


def watershed_octree(aff: np.ndarray, chunk_size: Vec, params: WatershedParams,
                     store: Store | None = None) -> np.ndarray:
    """Chunked watershed of an in-memory (X, Y, Z, 3) affinity map, run job by job."""
    run = Bbox.from_shape(aff.shape[:3])
    layout = Layout(run, tuple(chunk_size))
    store = store or MemoryStore()
    grid, tree = layout.grid, layout.octree
    for coord in grid.coords():
        box = grid.chunk(coord)
        chunk_job(store, layout, coord, prepare_affinity(
            padded_block(aff, run, box, MARGIN), box.grow(MARGIN).start, run.start, copy=False),
                  params)
    for coord in grid.coords():
        face_job(store, layout, coord)
    for level in range(1, tree.n_levels):
        for node in tree.nodes(level):
            node_job(store, layout, node, params)
    out = np.zeros(aff.shape[:3], np.uint64)
    for coord in grid.coords():
        out[grid.chunk(coord).slices()] = remap_job(store, layout, coord)
    return out


def watershed_global(aff: np.ndarray, params: WatershedParams) -> np.ndarray:
    """The single-chunk reference run."""
    return watershed_octree(aff, aff.shape[:3], params)
