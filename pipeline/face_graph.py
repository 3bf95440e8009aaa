"""The agglomeration's region graph of a chunk: fixed-point affinity sum and face count per
pair of supervoxels meeting across voxel faces, with per-supervoxel statistics (pure arrays,
numba).

Labels come densely numbered (0 = none), so a pair is one int64 key; pairs are found through
the open-addressing map of :mod:`pipeline.regiongraph_kernel`, and a pair met again along z
(faces come in runs) skips the lookup.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from pipeline.regiongraph import FIXED_POINT
from pipeline.regiongraph_kernel import _map_slot

_EMPTY = np.int64(-1)
_NONE = np.iinfo(np.int64).min


@njit(cache=True)
def _wider(col, rows):  # pragma: no cover - compiled
    wide = np.empty(col.size * 2, col.dtype)
    wide[:rows] = col[:rows]
    return wide


@njit(cache=True)
def _scan(flat, aff, fmy, use_myelin, myelin_thr, shape, origin, run_start, n, row, tkeys,
          trows, pa, pb, sums, counts, rows, size, lo, hi, seen):  # pragma: no cover - compiled
    """Rows (x, y) of the chunk from ``row`` on, while the pair table surely has room; returns
    the pairs' count and the next row (see :func:`face_graph`)."""
    X, Y, Z = shape[0], shape[1], shape[2]
    PY, PZ = Y + 1, Z + 1
    stride = (PY * PZ, PZ, 1)
    last = np.full(3, _EMPTY, np.int64)  # per channel: the key and row of the previous face
    last_row = np.zeros(3, np.int64)
    first = np.zeros(3, np.bool_)  # per channel: on the run's first plane (no faces)
    while row < X * Y and 2 * (rows + 3 * Z) <= tkeys.size:
        x, y = row // Y, row % Y
        row += 1
        gx, gy = origin[0] + x, origin[1] + y
        first[0], first[1] = gx == run_start[0], gy == run_start[1]
        last[:] = _EMPTY
        base = ((x + 1) * PY + y + 1) * PZ + 1
        run_label, run_z = np.int64(0), 0
        for z in range(Z + 1):  # a run of one label along z ends at z (Z: the row's end)
            lv = np.int64(flat[base + z]) if z < Z else np.int64(-1)
            if lv != run_label:
                if run_label > 0:  # the run's voxels in the statistics, at once
                    size[run_label] += z - run_z
                    lo[run_label, 0] = min(lo[run_label, 0], gx)
                    hi[run_label, 0] = max(hi[run_label, 0], gx)
                    lo[run_label, 1] = min(lo[run_label, 1], gy)
                    hi[run_label, 1] = max(hi[run_label, 1], gy)
                    lo[run_label, 2] = min(lo[run_label, 2], origin[2] + run_z)
                    hi[run_label, 2] = max(hi[run_label, 2], origin[2] + z - 1)
                run_label, run_z = lv, z
            if lv <= 0:
                continue
            first[2] = origin[2] + z == run_start[2]
            for c in range(3):
                if first[c]:
                    continue
                iu = base + z - stride[c]
                lu = np.int64(flat[iu])
                if lu == 0 or lu == lv:
                    continue
                w = aff[x, y, z, c]
                if use_myelin and (fmy[base + z] > myelin_thr or fmy[iu] > myelin_thr):
                    w = np.float32(0.0)
                key = min(lv, lu) * (n + 1) + max(lv, lu)
                if key == last[c]:
                    r = last_row[c]
                else:
                    i = _map_slot(tkeys, tkeys.size, key)
                    if tkeys[i] == _EMPTY:
                        r = rows
                        rows += 1
                        tkeys[i], trows[i] = key, r
                        pa[r], pb[r], sums[r], counts[r] = min(lv, lu), max(lv, lu), 0, 0
                    else:
                        r = trows[i]
                    last[c], last_row[c] = key, r
                sums[r] += np.int64(np.round(np.float64(w) * FIXED_POINT))
                counts[r] += 1
                if seen[lu, 0] == _NONE and (
                        (c == 0 and x == 0) or (c == 1 and y == 0) or (c == 2 and z == 0)):
                    seen[lu, 0], seen[lu, 1], seen[lu, 2] = (
                        gx - (c == 0), gy - (c == 1), origin[2] + z - (c == 2))
    return rows, row


@njit(cache=True)
def face_graph(dense, n, aff, myelin, use_myelin, myelin_thr, origin,
               run_start):  # pragma: no cover - compiled
    """Per pair of dense labels (lo < hi) meeting across a face the chunk owns: fixed-point
    affinity sum and face count; per label, its voxels in the chunk (size, bbox) and, for one
    met across a face only in the margin, that voxel (``seen``; int64 min when none).

    The chunk's faces join each of its voxels to its predecessors along x, y, z. ``aff`` covers
    the chunk, whose first voxel is at ``origin``; ``dense`` (ids 0..n) and ``myelin`` (if
    ``use_myelin``) cover it grown by one voxel on its low sides. Faces with a voxel before
    ``run_start`` do not count.
    """
    shape = np.array(aff.shape[:3], np.int64)
    size = np.zeros(n + 1, np.int64)
    lo = np.full((n + 1, 3), np.iinfo(np.int64).max, np.int64)
    hi = np.full((n + 1, 3), np.iinfo(np.int64).min, np.int64)
    seen = np.full((n + 1, 3), _NONE, np.int64)
    cap = 1024
    while cap < 8 * shape[2]:  # room for a row's faces
        cap *= 2
    tkeys, trows = np.full(cap, _EMPTY, np.int64), np.empty(cap, np.int64)  # pair -> row
    pa, pb = np.empty(cap // 2, np.int64), np.empty(cap // 2, np.int64)
    sums, counts = np.zeros(cap // 2, np.int64), np.zeros(cap // 2, np.int64)
    rows, row = 0, 0
    flat, fmy = dense.reshape(-1), myelin.reshape(-1)
    while True:
        rows, row = _scan(flat, aff, fmy, use_myelin, myelin_thr, shape, origin, run_start,
                          n, row, tkeys, trows, pa, pb, sums, counts, rows, size,
                          lo, hi, seen)
        if row == shape[0] * shape[1]:
            break
        pa, pb = _wider(pa, rows), _wider(pb, rows)
        sums, counts = _wider(sums, rows), _wider(counts, rows)
        tkeys, trows = np.full(tkeys.size * 2, _EMPTY, np.int64), np.empty(tkeys.size * 2,
                                                                          np.int64)
        for r in range(rows):  # rehashed: a pair's key is derived from its row
            i = _map_slot(tkeys, tkeys.size, pa[r] * (n + 1) + pb[r])
            tkeys[i], trows[i] = pa[r] * (n + 1) + pb[r], r
    return (pa[:rows].copy(), pb[:rows].copy(), sums[:rows].copy(),
            counts[:rows].copy(), size, lo, hi, seen)
