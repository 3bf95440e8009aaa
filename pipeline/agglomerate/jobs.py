"""The agglomeration's octree jobs over a store: chunk → nodes (level by level) → remap.

Tasks call them with a CloudStore; :func:`agglomerate_octree` runs them in memory, which is
also the single-chunk reference.
"""

from __future__ import annotations

import numpy as np

from pipeline.agglomerate.chunked import AgglomerationParams, agglomerate_chunk, chunk_graph
from pipeline.geometry import Bbox, OctreeNode, Vec
from pipeline.octree_jobs import Layout, MemoryStore, Store
from pipeline.regiongraph import Resolution, node_step
from pipeline.remap import remap_dense


def chunk_job(store: Store, layout: Layout, coord: Vec, ws_padded: np.ndarray,
              aff: np.ndarray, params: AgglomerationParams, semantic: np.ndarray | None = None,
              n_classes: int = 0, myelin_padded: np.ndarray | None = None) -> None:
    """Level 0 of one atomic chunk (``*_padded``: the chunk grown by 1 voxel on low sides)."""
    box = layout.grid.chunk(coord)
    node = OctreeNode(0, coord)
    seg, edges, dense, names = chunk_graph(ws_padded, aff, box.start, layout.bbox.start,
                                           params, semantic, n_classes, myelin_padded)
    store.put(f"agg/labels/{node.tag}", {"dense": dense, "names": names})
    lo, hi, faces = layout.node_geometry(node)
    store.put(f"agg/nodes/{node.tag}",
              agglomerate_chunk(seg, edges, lo, hi, faces, params).arrays())


def node_job(store: Store, layout: Layout, node: OctreeNode,
             params: AgglomerationParams) -> None:
    """A composite node: its children's residual graphs, resolved."""
    children = [Resolution.from_arrays(store.get(f"agg/nodes/{c.tag}"))
                for c in layout.octree.children(node)]
    lo, hi, faces = layout.node_geometry(node)
    res = node_step(children, [], [], lo, hi, faces, params.resolve_params())
    store.put(f"agg/nodes/{node.tag}", res.arrays())


def remap_job(store: Store, layout: Layout, coord: Vec) -> np.ndarray:
    """The final segment ids of the chunk grown by 1 voxel on its low sides (0 in that margin
    where the chunk's octree chain does not know the supervoxel); RuntimeError naming the chunk
    if one of its own supervoxels is unresolved."""
    tag = OctreeNode(0, coord).tag
    stored = store.get(f"agg/labels/{tag}")
    chain = [Resolution.from_arrays(store.get(f"agg/nodes/{n.tag}"))
             for n in layout.chain(coord)]
    seg = remap_dense(stored["dense"], stored["names"], chain, strict=False)
    lost = int(np.count_nonzero((seg[1:, 1:, 1:] == 0) & (stored["dense"][1:, 1:, 1:] != 0)))
    if lost:
        raise RuntimeError(f"chunk {layout.grid.chunk(coord)}: {lost} voxel(s) of supervoxels "
                           "left unresolved by the octree")
    return seg


def _low_padded(a: np.ndarray, run: Bbox, box: Bbox) -> np.ndarray:
    want = Bbox(tuple(s - 1 for s in box.start), box.stop)
    have = want.intersection(run)
    out = np.zeros(want.shape + a.shape[3:], a.dtype)
    out[have.slices(want.start)] = a[have.slices(run.start)]
    return out


def agglomerate_octree(aff: np.ndarray, ws: np.ndarray, chunk_size: Vec,
                       params: AgglomerationParams, semantic: np.ndarray | None = None,
                       n_classes: int = 0, myelin: np.ndarray | None = None,
                       store: Store | None = None) -> np.ndarray:
    """Chunked agglomeration of in-memory supervoxels ``ws`` on affinities ``aff``."""
    run = Bbox.from_shape(ws.shape)
    layout = Layout(run, tuple(chunk_size))
    store = store or MemoryStore()
    grid, tree = layout.grid, layout.octree
    for coord in grid.coords():
        box = grid.chunk(coord)
        chunk_job(store, layout, coord, _low_padded(ws, run, box), aff[box.slices()], params,
                  None if semantic is None else semantic[box.slices()], n_classes,
                  None if myelin is None else _low_padded(myelin, run, box))
    for level in range(1, tree.n_levels):
        for node in tree.nodes(level):
            node_job(store, layout, node, params)
    out = np.zeros(ws.shape, np.uint64)
    for coord in grid.coords():
        box = grid.chunk(coord)
        out[box.slices()] = remap_job(store, layout, coord)[1:, 1:, 1:]
    return out


def agglomerate_global(aff: np.ndarray, ws: np.ndarray, params: AgglomerationParams,
                       **kwargs) -> np.ndarray:
    """The single-chunk reference run."""
    return agglomerate_octree(aff, ws, ws.shape, params, **kwargs)
