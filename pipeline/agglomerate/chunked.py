"""Mean-affinity agglomeration of supervoxels, chunk by chunk (pure arrays).

An atomic chunk measures, for every pair of supervoxels meeting across a voxel face it owns
(the face between voxel v of the chunk and its predecessor v - e_c), the affinity sum (fixed
point) and face count; and per supervoxel its size, bbox and semantic histogram. Merging is
greedy on the highest mean edge above ``threshold``, resolved up the octree by
:func:`pipeline.regiongraph.resolve`, with the paper's optional constraints:

- size: two segments of at least ``size_limit`` voxels merge only at mean ≥ ``size_affinity``;
- semantic: segments whose dominant semantic labels differ merge only at mean ≥
  ``semantic_affinity``;
- myelin: faces touching a voxel with myelin probability > ``myelin_threshold`` count as
  affinity 0.

A final segment's id is the smallest supervoxel id it holds, whatever the chunking.
"""

from __future__ import annotations

from dataclasses import dataclass

import fastremap
import numpy as np

from pipeline.face_graph import face_graph
from pipeline.regiongraph import (
    FIXED_POINT,
    MODE_MEAN,
    Edges,
    Params,
    Resolution,
    Segments,
    frozen_mask,
    resolve,
)


@dataclass(frozen=True)
class AgglomerationParams:
    """Thresholds of mean-affinity agglomeration and its constraints (off when 0 / -1)."""

    threshold: float = 0.5
    size_limit: int = 0
    size_affinity: float = -1.0
    semantic_affinity: float = -1.0
    myelin_threshold: float = 0.5

    def resolve_params(self) -> Params:
        return Params(MODE_MEAN, self.threshold, size_limit=self.size_limit,
                      size_affinity=self.size_affinity,
                      semantic_affinity=self.semantic_affinity)


def chunk_graph(ws_padded: np.ndarray, aff: np.ndarray, origin: tuple[int, ...],
                run_start: tuple[int, ...], params: AgglomerationParams,
                semantic: np.ndarray | None = None, n_classes: int = 0,
                myelin_padded: np.ndarray | None = None
                ) -> tuple[Segments, Edges, np.ndarray, np.ndarray]:
    """Supervoxel table and face-sum edges of one atomic chunk, and its labels as dense ids:
    ``ws_padded`` equals ``names[dense]``.

    ``ws_padded`` / ``myelin_padded`` cover the chunk grown by one voxel on the low sides;
    ``aff`` (X, Y, Z, 3) and ``semantic`` (X, Y, Z) cover the chunk. Supervoxels met only in
    the margin get a row of size 0 at one of their margin voxels.
    """
    dense, mapping = fastremap.renumber(np.asarray(ws_padded), preserve_zero=True)
    n = len(mapping) - (0 in mapping)
    ids = np.zeros(n + 1, np.uint64)
    ids[np.fromiter(mapping.values(), np.int64, len(mapping))] = np.fromiter(
        mapping.keys(), np.uint64, len(mapping))
    my = myelin_padded if myelin_padded is not None else np.zeros((1, 1, 1), np.float32)
    a, b, s, c, size, lo, hi, seen = face_graph(
        dense, n, aff.astype(np.float32, copy=False), np.ascontiguousarray(my, np.float32),
        myelin_padded is not None, np.float32(params.myelin_threshold),
        np.array(origin, np.int64), np.array(run_start, np.int64))
    a, b = ids[a], ids[b]
    edges = Edges(np.minimum(a, b), np.maximum(a, b), (s / FIXED_POINT).astype(np.float32), s,
                  c)  # wmax: unused by mean agglomeration
    hist = np.zeros((n + 1, n_classes), np.int64)
    if semantic is not None and n_classes:
        own = dense[1:, 1:, 1:].ravel().astype(np.int64)
        sem = np.clip(semantic.ravel().astype(np.int64), 0, n_classes - 1)
        np.add.at(hist, (own, sem), 1)
    rows = np.flatnonzero(size)
    margin = np.flatnonzero((size == 0) & (seen[:, 0] != np.iinfo(np.int64).min))
    lo[margin] = hi[margin] = seen[margin]
    rows = np.concatenate([rows, margin])
    return Segments.concat([Segments(ids[rows], size[rows], ids[rows].copy(), lo[rows],
                                     hi[rows], hist[rows])]), edges, dense, ids


def agglomerate_chunk(seg: Segments, edges: Edges, node_lo: np.ndarray, node_hi: np.ndarray,
                      volume_faces: tuple[bool, ...], params: AgglomerationParams) -> Resolution:
    """Level 0 of one atomic chunk: merge what its supervoxels alone decide."""
    return resolve(seg, edges, frozen_mask(seg, node_lo, node_hi, volume_faces),
                   params.resolve_params())
