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
from numba import njit, types
from numba.typed import Dict

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
from pipeline.watershed.chunked import segment_stats


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


_PAIR = types.UniTuple(types.int64, 2)
_XYZ = types.UniTuple(types.int64, 3)


@njit(cache=True)
def _face_sums(ws, aff, myelin, use_myelin, myelin_thr, origin, run_start):  # pragma: no cover
    """Per supervoxel pair: fixed-point affinity sum and count over faces this chunk owns.

    ``ws`` is the chunk grown by one voxel on its low sides; ``myelin`` likewise (or empty).
    Also returns, for segments seen only in that margin, one voxel coordinate each.
    """
    X, Y, Z = aff.shape[0], aff.shape[1], aff.shape[2]
    acc = Dict.empty(key_type=_PAIR, value_type=types.int64)
    sums = []
    counts = []
    outside = Dict.empty(key_type=types.int64, value_type=_XYZ)
    steps = ((1, 0, 0), (0, 1, 0), (0, 0, 1))
    for x in range(X):
        for y in range(Y):
            for z in range(Z):
                lv = np.int64(ws[x + 1, y + 1, z + 1])
                if lv == 0:
                    continue
                for c in range(3):
                    ux, uy, uz = x + 1 - steps[c][0], y + 1 - steps[c][1], z + 1 - steps[c][2]
                    g = (origin[0] + ux - 1, origin[1] + uy - 1, origin[2] + uz - 1)
                    if g[c] < run_start[c]:
                        continue
                    lu = np.int64(ws[ux, uy, uz])
                    if lu == 0 or lu == lv:
                        continue
                    a = aff[x, y, z, c]
                    if use_myelin and (myelin[x + 1, y + 1, z + 1] > myelin_thr
                                       or myelin[ux, uy, uz] > myelin_thr):
                        a = 0.0
                    q = np.int64(np.round(np.float64(a) * 16777216.0))
                    k = (min(lv, lu), max(lv, lu))
                    if k in acc:
                        i = acc[k]
                        sums[i] += q
                        counts[i] += 1
                    else:
                        acc[k] = len(sums)
                        sums.append(q)
                        counts.append(np.int64(1))
                    if (ux == 0 or uy == 0 or uz == 0) and lu not in outside:
                        outside[lu] = g
    n = len(acc)
    a_out = np.empty(n, np.uint64)
    b_out = np.empty(n, np.uint64)
    s_out = np.empty(n, np.int64)
    c_out = np.empty(n, np.int64)
    for k, i in acc.items():
        a_out[i], b_out[i], s_out[i], c_out[i] = k[0], k[1], sums[i], counts[i]
    m = len(outside)
    o_ids = np.empty(m, np.uint64)
    o_pos = np.empty((m, 3), np.int64)
    j = 0
    for k, g in outside.items():
        o_ids[j] = k
        o_pos[j, 0], o_pos[j, 1], o_pos[j, 2] = g
        j += 1
    return a_out, b_out, s_out, c_out, o_ids, o_pos


def chunk_graph(ws_padded: np.ndarray, aff: np.ndarray, origin: tuple[int, ...],
                run_start: tuple[int, ...], params: AgglomerationParams,
                semantic: np.ndarray | None = None, n_classes: int = 0,
                myelin_padded: np.ndarray | None = None) -> tuple[Segments, Edges]:
    """Supervoxel table and face-sum edges of one atomic chunk.

    ``ws_padded`` / ``myelin_padded`` cover the chunk grown by one voxel on the low sides;
    ``aff`` (X, Y, Z, 3) and ``semantic`` (X, Y, Z) cover the chunk.
    """
    own = np.ascontiguousarray(ws_padded[1:, 1:, 1:])
    pad_origin = np.array([o - 1 for o in origin], np.int64)
    my = myelin_padded if myelin_padded is not None else np.zeros((1, 1, 1), np.float32)
    a, b, s, c, o_ids, o_pos = _face_sums(
        np.ascontiguousarray(ws_padded, np.uint64), np.ascontiguousarray(aff, np.float32),
        np.ascontiguousarray(my, np.float32), myelin_padded is not None,
        np.float32(params.myelin_threshold), pad_origin, np.array(run_start, np.int64))
    wmax = (s / FIXED_POINT).astype(np.float32)  # max is unused by mean agglomeration
    edges = Edges(a, b, wmax, s, c)
    dense, mapping = fastremap.renumber(own, preserve_zero=True)
    inv = np.zeros(len(mapping) + 1, np.uint64)
    for old, new in mapping.items():
        inv[new] = old
    n = int(dense.max())
    size, _, lo, hi = segment_stats(dense.astype(np.uint64), np.array(origin, np.int64),
                                    np.array(run_start, np.int64), np.ones(3, np.int64))
    ids = inv[1:n + 1]
    hist = np.zeros((n, n_classes), np.int64)
    if semantic is not None and n_classes:
        flat = dense.ravel().astype(np.int64)
        sem = np.clip(semantic.ravel().astype(np.int64), 0, n_classes - 1)
        keep = flat > 0
        np.add.at(hist, (flat[keep] - 1, sem[keep]), 1)
    seg = Segments(ids, size, ids.copy(), lo, hi, hist)
    missing = ~np.isin(o_ids, ids)
    placeholder = Segments(o_ids[missing], np.zeros(int(missing.sum()), np.int64),
                           o_ids[missing].copy(), o_pos[missing], o_pos[missing],
                           np.zeros((int(missing.sum()), n_classes), np.int64))
    return Segments.concat([seg, placeholder]), edges


def agglomerate_chunk(seg: Segments, edges: Edges, node_lo: np.ndarray, node_hi: np.ndarray,
                      volume_faces: tuple[bool, ...], params: AgglomerationParams) -> Resolution:
    """Level 0 of one atomic chunk: merge what its supervoxels alone decide."""
    return resolve(seg, edges, frozen_mask(seg, node_lo, node_hi, volume_faces),
                   params.resolve_params())
