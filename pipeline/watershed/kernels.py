"""The max-affinity region graph between labelled segments (pure arrays, numba).

Affinity convention (chunkflow/abiss): ``aff`` has shape ``(X, Y, Z, 3)``; ``aff[x, y, z, c]`` is
the affinity between voxel ``(x, y, z)`` and its predecessor along axis ``c``.  On the first plane
along axis ``c`` there is no predecessor, so that channel is never read there (no edge exists).
``aff`` is used as float32 (converted if needed).

The watershed itself (steepest ascent, basins, single linkage, dust) is in
:mod:`pipeline.watershed.chunked`, defined so that a chunked run equals a single-chunk run.
"""

from __future__ import annotations

import fastremap
import numpy as np
from numba import njit

__all__ = ["region_graph"]


def _check_aff(aff: np.ndarray) -> np.ndarray:
    aff = np.asarray(aff)
    if aff.ndim != 4 or aff.shape[3] != 3:
        raise ValueError(f"aff must have shape (X, Y, Z, 3), got {aff.shape}")
    return aff.astype(np.float32, copy=False)


@njit(cache=True)
def face_entry(labels, x, y, z, c, last):  # pragma: no cover - compiled
    """The face of voxel (x, y, z) (label nonzero) toward its predecessor along ``c``: (lo, hi,
    whether it starts an entry of the lo bucket), lo = -1 if there is no face between distinct
    nonzero labels. A repeat of the channel's last pair (``last[c]``, reset per (x, y) row)
    along z folds into that pair's entry: shorter lists, the same result."""
    if (x, y, z)[c] == 0:
        return -1, -1, False
    a = np.int64(labels[x, y, z])
    b = np.int64(labels[x - (c == 0), y - (c == 1), z - (c == 2)])
    if b == 0 or b == a:
        return -1, -1, False
    lo, hi = (a, b) if a < b else (b, a)
    return lo, hi, not (last[c, 0] == lo and last[c, 1] == hi)


@njit(cache=True)
def _boundary_buckets(aff, labels, n, count, fill):  # pragma: no cover - compiled
    """(hi, affinity) per voxel face between distinct nonzero (dense) labels lo < hi, in lo
    buckets in the order met (entries: see :func:`face_entry`). ``count``: only count the
    entries per lo (the first result), else ``fill`` holds where the buckets start (advanced
    as they fill)."""
    X, Y, Z = labels.shape
    counts = np.zeros(n + 2 if count else 0, dtype=np.int64)
    his = np.empty(0 if count else fill[n + 1], dtype=np.int32)  # dense ids < 2**31
    vals = np.empty(his.size, dtype=np.float32)
    last = np.full((3, 3), -1, dtype=np.int64)  # per channel: lo, hi, entry of its last pair
    for x in range(X):
        for y in range(Y):
            last[:, 0] = -1
            for z in range(Z):
                if labels[x, y, z] == 0:
                    continue
                for c in range(3):
                    lo, hi, new = face_entry(labels, x, y, z, c, last)
                    if lo < 0:
                        continue
                    if not new:
                        if not count:
                            vals[last[c, 2]] = max(vals[last[c, 2]], aff[x, y, z, c])
                    elif count:
                        counts[lo + 1] += 1
                        last[c, 0], last[c, 1] = lo, hi
                    else:
                        k = fill[lo]
                        fill[lo] = k + 1
                        his[k], vals[k] = np.int32(hi), aff[x, y, z, c]
                        last[c, 0], last[c, 1], last[c, 2] = lo, hi, k
    return counts, his, vals


@njit(cache=True)
def _bucket_max(start, bh, bw, n):  # pragma: no cover - compiled
    """Unique (lo, hi) pairs sorted ascending with their max weight, from lo buckets: repeats
    of a hi fold into its first entry (in bucket order), then a bucket is sorted by hi."""
    owner = np.full(n + 1, -1, dtype=np.int64)
    m = 0
    for k in range(n + 1):  # count the pairs first: the lists can be much longer
        for j in range(start[k], start[k + 1]):
            m += owner[bh[j]] != k
            owner[bh[j]] = k
    owner[:] = -1
    slot = np.empty(n + 1, dtype=np.int64)
    ulo, uhi, uw = np.empty(m, np.int32), np.empty(m, np.int32), np.empty(m, np.float32)
    m = 0
    for k in range(n + 1):
        first = m
        for j in range(start[k], start[k + 1]):
            h = bh[j]
            if owner[h] != k:
                owner[h], slot[h] = k, m
                ulo[m], uhi[m], uw[m] = np.int32(k), h, bw[j]
                m += 1
            else:
                uw[slot[h]] = max(uw[slot[h]], bw[j])
        if m - first > 16:
            order = np.argsort(uhi[first:m]) + first
            uhi[first:m], uw[first:m] = uhi[order], uw[order]
        for a in range(first + 1, m if m - first <= 16 else 0):  # insertion sort
            h, v, b = uhi[a], uw[a], a - 1
            while b >= first and uhi[b] > h:
                uhi[b + 1], uw[b + 1] = uhi[b], uw[b]
                b -= 1
            uhi[b + 1], uw[b + 1] = h, v
    return ulo, uhi, uw


@njit(cache=True)
def _weight_codes(uw):  # pragma: no cover - compiled
    """Keys (weight code << 32 | row), ascending for descending weights (-0.0 becomes 0.0)."""
    code = np.empty(uw.size, np.uint64)
    for i in range(uw.size):
        uw[i] += np.float32(0.0)
        b = np.uint64(np.float32(uw[i]).view(np.uint32))
        up = (b ^ np.uint64(0xFFFFFFFF)) if b >> np.uint64(31) else (b | np.uint64(1 << 31))
        code[i] = ((up ^ np.uint64(0xFFFFFFFF)) << np.uint64(32)) | np.uint64(i)
    return code


@njit(cache=True)
def _rows_by_code(ulo, uhi, uw, code):  # pragma: no cover - compiled
    edges, weights = np.empty((uw.size, 2), np.uint64), np.empty(uw.size, np.float32)
    for i in range(uw.size):
        r = np.int64(code[i] & np.uint64(0xFFFFFFFF))
        edges[i, 0], edges[i, 1], weights[i] = ulo[r], uhi[r], uw[r]
    return edges, weights


def max_per_pair(aff: np.ndarray, dense: np.ndarray, n: int,
                 counts: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Unique face pairs (lo, hi) of ``dense`` (ids <= n), max affinity, by (-w, lo, hi).

    ``counts``: the entries per lo bucket (at lo + 1, n + 2 of them) if already counted.
    """
    if counts is None:
        counts = _boundary_buckets(aff, dense, n, True, np.zeros(0, np.int64))[0]
    start = np.cumsum(counts)
    ulo, uhi, uw = _bucket_max(start, *_boundary_buckets(aff, dense, n, False, start.copy())[1:],
                               n)
    code = _weight_codes(uw)
    code.sort()  # rows by (-w, lo, hi), as rows are by (lo, hi)
    return _rows_by_code(ulo, uhi, uw, code)


def _dense_order_preserving(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Labels mapped to ``0..n`` keeping their order (0 stays 0), and the inverse map."""
    labels = np.ascontiguousarray(labels)
    if labels.size == 0 or int(labels.max()) <= 2 * labels.size:
        top = int(labels.max()) if labels.size else 0
        return labels, np.arange(top + 1, dtype=np.uint64)
    dense, mapping = fastremap.renumber(labels, start=1, preserve_zero=True)
    olds = np.fromiter(mapping.keys(), dtype=np.uint64, count=len(mapping))
    news = np.fromiter(mapping.values(), dtype=np.int64, count=len(mapping))
    order = np.argsort(olds)
    rank = np.zeros(int(news.max()) + 1, dtype=np.uint64)
    offset = 0 if olds[order[0]] == 0 else 1
    rank[news[order]] = np.arange(offset, offset + news.size, dtype=np.uint64)
    return rank[dense], np.concatenate([[np.uint64(0)] * offset, olds[order]]).astype(np.uint64)


def region_graph(aff: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Max-affinity region graph between distinct nonzero labels.

    For each pair of labels ``lo < hi`` that share at least one voxel face, the weight is the
    maximum affinity over those faces.  Label 0 takes no part.  Returns ``(edges, weights)``:
    ``edges`` is ``uint64`` ``(n, 2)`` with ``edges[:, 0] < edges[:, 1]``; ``weights`` is
    ``float32``; rows are sorted by descending weight, ties by ``(lo, hi)`` ascending.
    """
    aff = _check_aff(aff)
    labels = np.asarray(labels)
    if labels.shape != aff.shape[:3]:
        raise ValueError(f"labels shape {labels.shape} != aff shape {aff.shape[:3]}")
    if labels.dtype.kind not in "iu":
        raise TypeError(f"labels must be integers, got {labels.dtype}")
    if labels.dtype.kind == "i" and labels.size and labels.min() < 0:
        raise ValueError("labels must be non-negative")
    dense, inverse = _dense_order_preserving(labels)
    if inverse.size > np.iinfo(np.int32).max:
        raise ValueError(f"{inverse.size - 1} segments in one block; at most 2**31 - 2")
    edges, weights = max_per_pair(aff, dense, inverse.size - 1)
    same = np.array_equal(inverse, np.arange(inverse.size, dtype=np.uint64))
    return (edges if same else inverse[edges]), weights
