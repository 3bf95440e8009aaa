"""The synapse stage's jobs over a store: map → reduce → remap → assign → dedup → relabel.

Tasks call them with a CloudStore; :func:`clefts_octree`-style drivers in tests call them in
memory. Tables (store names under ``syn/``):

- ``map/<chunk>``: the chunk's components (see :class:`kernels.ChunkClefts`) and segment sizes;
- ``reduce``: chunk id → cleft id, the cleft table, each cleft's home chunk (most voxels);
- ``assign/<chunk>``: (cleft, pre, post, evidence) for the clefts homed in the chunk;
- ``final``: cleft id → final id after autapse/huge-segment filtering and deduplication.
"""

from __future__ import annotations

from dataclasses import dataclass

import fastremap
import numpy as np

from pipeline.geometry import OctreeNode, Vec
from pipeline.octree_jobs import Layout, Store
from pipeline.regiongraph import apply_map
from pipeline.synapses import kernels


@dataclass(frozen=True)
class SynapseParams:
    """The stage's parameters (see :class:`pipeline.config.SynapseSection`)."""

    threshold: float = 0.5
    connectivity: int = 26
    size_threshold: int = 40
    merge_distance_nm: float = 700.0
    max_segment_size: int = 0
    radius: tuple[int, int, int] = (3, 3, 1)


def _tag(coord: Vec) -> str:
    return OctreeNode(0, coord).tag


def map_job(store: Store, layout: Layout, coord: Vec, prob_padded: np.ndarray,
            params: SynapseParams, seg: np.ndarray | None = None) -> None:
    """Label one chunk (``prob_padded``: the chunk grown by 1 voxel, 0 outside the run)."""
    box = layout.grid.chunk(coord)
    c = kernels.label_chunk(prob_padded, params.threshold, params.connectivity,
                            np.array(box.start), np.array(layout.bbox.start),
                            np.array(layout.bbox.shape), layout.id_offset(coord))
    out = {k: getattr(c, k) for k in ("fg_pos", "fg_label", "ids", "size", "sums", "lo", "hi",
                                      "key", "boundary_pos", "boundary_id", "link_id",
                                      "link_pos")}
    out["shape"] = np.array(box.shape, np.int64)
    if seg is not None:
        out["seg_ids"], out["seg_counts"] = fastremap.unique(seg, return_counts=True)
    store.put(f"syn/map/{_tag(coord)}", out)


def reduce_job(store: Store, layout: Layout, params: SynapseParams) -> dict[str, int]:
    """Stitch all chunks' components into clefts; filter by size; pick each home chunk."""
    parts = [store.get(f"syn/map/{_tag(c)}") for c in layout.grid.coords()]
    cat = {k: np.concatenate([p[k] for p in parts]) for k in
           ("ids", "size", "sums", "lo", "hi", "key", "boundary_pos", "boundary_id", "link_id",
            "link_pos")}
    # chunks come in chunk-index order, so ids (offset by chunk index) are already sorted
    chunk_of = np.concatenate([np.full(len(p["ids"]), i) for i, p in enumerate(parts)])
    comp = kernels.stitch(cat["ids"], cat["boundary_pos"], cat["boundary_id"], cat["link_id"],
                          cat["link_pos"])
    red = kernels.reduce_stats(cat["ids"], comp, cat["size"], cat["sums"], cat["lo"],
                               cat["hi"], cat["key"], params.size_threshold)
    # home chunk: the one holding most of each cleft's voxels (ties: lowest chunk index)
    home = np.zeros(len(red["id"]), np.int64)
    best = np.full(len(red["id"]), -1, np.int64)
    pos = np.searchsorted(red["id"], red["to"])
    for i in np.flatnonzero(red["to"] > 0):
        j = pos[i]
        if cat["size"][i] > best[j] or (cat["size"][i] == best[j] and chunk_of[i] < home[j]):
            best[j], home[j] = cat["size"][i], chunk_of[i]
    seg_sizes = {}
    if all("seg_ids" in p for p in parts):
        ids = np.concatenate([p["seg_ids"] for p in parts])
        counts = np.concatenate([p["seg_counts"] for p in parts])
        uniq, inv = np.unique(ids, return_inverse=True)
        seg_sizes = {"seg_ids": uniq, "seg_sizes": np.bincount(inv, weights=counts)
                     .astype(np.int64)}
    store.put("syn/reduce", {**red, "home": home, **seg_sizes})
    return {"components": len(cat["ids"]), "clefts": len(red["id"])}


def cleft_labels(store: Store, coord: Vec, final: bool) -> np.ndarray:
    """The chunk's cleft ids (uint64): after the reduce, or (``final``) after filtering and
    dedup."""
    m = store.get(f"syn/map/{_tag(coord)}")
    red = store.get("syn/reduce")
    lut = np.zeros(len(m["ids"]) + 1, np.uint64)
    lut[1:] = apply_map(m["ids"], (red["from"], red["to"]))
    if final:
        fin = store.get("syn/final")
        lut[1:] = apply_map(lut[1:], (fin["from"], fin["to"]))
    out = np.zeros(tuple(m["shape"]), np.uint64)  # clefts are sparse: most pages stay unwritten
    out.reshape(-1)[m["fg_pos"]] = lut[m["fg_label"]]
    return out


def assign_job(store: Store, layout: Layout, coord: Vec, clefts: np.ndarray,
               seg: np.ndarray, image: np.ndarray | None, params: SynapseParams,
               model=None) -> None:
    """Partners of the clefts whose home is this chunk, from arrays of the chunk grown by
    ``params.radius`` (cleft ids as after the reduce)."""
    red = store.get("syn/reduce")
    mine = red["id"][red["home"] == layout.chunk_index(coord)]
    origin = np.array(layout.grid.chunk(coord).grow(params.radius).start)
    rows, points = [], []
    for cid in mine:
        if model is not None:
            row = kernels.assign_network(model, image, clefts, seg, int(cid), params.radius)
        else:
            row = kernels.assign_geometric(image, clefts, seg, int(cid), params.radius)
        rows.append((cid, *row))
        points.append(kernels.contact_points(clefts, seg, int(cid), row[0], row[1],
                                             params.radius) + origin)
    arr = np.array(rows, dtype=np.float64).reshape(-1, 4)
    store.put(f"syn/assign/{_tag(coord)}", {
        "cleft": arr[:, 0].astype(np.uint64), "pre": arr[:, 1].astype(np.uint64),
        "post": arr[:, 2].astype(np.uint64), "evidence": arr[:, 3],
        "points": np.array(points, np.float64).reshape(-1, 2, 3)})


def dedup_job(store: Store, layout: Layout, params: SynapseParams,
              resolution: tuple[float, float, float]) -> dict[str, np.ndarray]:
    """Drop autapses, unassigned clefts and clefts on huge segments; merge clefts with the same
    partners within ``merge_distance_nm``. Return the final synapse table (column arrays)."""
    red = store.get("syn/reduce")
    parts = [store.get(f"syn/assign/{_tag(c)}") for c in layout.grid.coords()]
    cleft = np.concatenate([p["cleft"] for p in parts])
    order = np.argsort(cleft)
    pre = np.concatenate([p["pre"] for p in parts])[order]
    post = np.concatenate([p["post"] for p in parts])[order]
    points = np.concatenate([p["points"] for p in parts])[order]
    cleft = cleft[order]
    idx = np.searchsorted(red["id"], cleft)
    keep = (pre != 0) & (post != 0) & (pre != post)
    if params.max_segment_size and "seg_ids" in red:
        sizes = red["seg_sizes"][np.searchsorted(red["seg_ids"], np.concatenate([pre, post]))]
        small = sizes <= params.max_segment_size
        keep &= small[:len(pre)] & small[len(pre):]
    res = np.asarray(resolution, np.float64)
    into = np.zeros(len(cleft), np.uint64)
    kept = np.flatnonzero(keep)
    into[kept] = kernels.dedup(cleft[kept], pre[kept], post[kept],
                               red["centroid"][idx[kept]] * res, params.merge_distance_nm)
    store.put("syn/final", {"from": cleft, "to": into})
    final_ids = np.unique(into[kept])
    table = {"cleft_id": final_ids}
    rows = {f: np.flatnonzero(into == f) for f in final_ids}
    size = np.array([red["size"][idx[r]].sum() for r in rows.values()], np.int64)
    cen = np.array([(red["centroid"][idx[r]] * red["size"][idx[r], None]).sum(0)
                    / red["size"][idx[r]].sum() for r in rows.values()]).reshape(-1, 3)
    lo = np.array([red["lo"][idx[r]].min(0) for r in rows.values()]).reshape(-1, 3)
    hi = np.array([red["hi"][idx[r]].max(0) for r in rows.values()]).reshape(-1, 3)
    first = np.array([r[0] for r in rows.values()], np.int64)
    table.update(pre=pre[first] if len(first) else pre[:0],
                 post=post[first] if len(first) else post[:0], size=size,
                 merged=np.array([len(r) for r in rows.values()], np.int64))
    pts = points[first] if len(first) else np.zeros((0, 2, 3))
    columns = {"centroid_{}": cen, "centroid_{}_nm": cen * res, "bbox_lo_{}": lo,
               "bbox_hi_{}": hi, "pre_point_{}": pts[:, 0], "post_point_{}": pts[:, 1]}
    for name, values in columns.items():
        for a, axis in enumerate("xyz"):
            table[name.format(axis)] = values[:, a]
    return table


def connectivity(table: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The weighted edge list (pre, post, count, total size) of a synapse table."""
    if not len(table["cleft_id"]):
        return {k: np.zeros(0, np.int64) for k in ("pre", "post", "count", "total_size")}
    pairs, inv = np.unique(np.stack([table["pre"], table["post"]], 1), axis=0,
                           return_inverse=True)
    inv = inv.reshape(-1)
    return {"pre": pairs[:, 0], "post": pairs[:, 1], "count": np.bincount(inv),
            "total_size": np.bincount(inv, weights=table["size"]).astype(np.int64)}


def padded(a: np.ndarray, run, box, margin) -> np.ndarray:
    """``box`` grown by ``margin`` from a run-sized in-memory array, 0 outside the run."""
    want = box.grow(margin)
    have = want.intersection(run)
    out = np.zeros(want.shape, a.dtype)
    out[have.slices(want.start)] = a[have.slices(run.start)]
    return out


def synapses_in_memory(prob: np.ndarray, chunk_size: Vec, params: SynapseParams,
                       seg: np.ndarray | None = None, image: np.ndarray | None = None,
                       resolution: tuple[float, float, float] = (8, 8, 40), store=None,
                       model=None) -> tuple[np.ndarray, dict[str, np.ndarray] | None]:
    """Every job in memory: the final cleft labels and (with ``seg``) the synapse table."""
    from pipeline.geometry import Bbox
    from pipeline.octree_jobs import MemoryStore

    run = Bbox.from_shape(prob.shape)
    layout = Layout(run, tuple(chunk_size))
    store = store or MemoryStore()
    for coord in layout.grid.coords():
        box = layout.grid.chunk(coord)
        map_job(store, layout, coord, padded(prob, run, box, 1), params,
                None if seg is None else seg[box.slices()])
    reduce_job(store, layout, params)
    if seg is None:
        out = np.zeros(prob.shape, np.uint64)
        for coord in layout.grid.coords():
            out[layout.grid.chunk(coord).slices()] = cleft_labels(store, coord, final=False)
        return out, None
    clefts = np.zeros(prob.shape, np.uint64)
    for coord in layout.grid.coords():
        clefts[layout.grid.chunk(coord).slices()] = cleft_labels(store, coord, final=False)
    r = params.radius
    for coord in layout.grid.coords():
        box = layout.grid.chunk(coord)
        assign_job(store, layout, coord, padded(clefts, run, box, r), padded(seg, run, box, r),
                   None if image is None else padded(image, run, box, r), params, model)
    table = dedup_job(store, layout, params, resolution)
    out = np.zeros(prob.shape, np.uint64)
    for coord in layout.grid.coords():
        out[layout.grid.chunk(coord).slices()] = cleft_labels(store, coord, final=True)
    return out, table
