"""The remap wave: the final ids of an atomic chunk's labels, following the renames and
finals of its octree chain (the chunk's nodes from level 0 to the root)."""

from __future__ import annotations

import fastremap
import numpy as np
from numba import njit

from pipeline.regiongraph import Resolution, _sorted, apply_map


@njit(cache=True)
def _nonzero_range(flat):  # pragma: no cover - compiled
    """Smallest and largest nonzero value (1, 0 if there is none)."""
    lo, hi = np.uint64(np.iinfo(np.uint64).max), np.uint64(0)
    for v in flat:
        if v != 0:
            lo, hi = min(lo, v), max(hi, v)
    return (lo, hi) if hi else (np.uint64(1), np.uint64(0))


@njit(cache=True)
def _present(flat, lo, span):  # pragma: no cover - compiled
    """Which of the nonzero values ``lo .. lo + span - 1`` occur."""
    out = np.zeros(span, np.bool_)
    for v in flat:
        if v != 0:
            out[v - lo] = True
    return out


@njit(cache=True)
def _through(flat, lo, table):  # pragma: no cover - compiled
    """Nonzero values through ``table`` (indexed from ``lo``); 0 stays 0."""
    out = np.zeros(flat.size, np.uint64)
    for i in range(flat.size):
        if flat[i] != 0:
            if flat[i] < lo or flat[i] - lo >= table.size:
                raise ValueError("a label outside the remap table's ids")
            out[i] = table[flat[i] - lo]
    return out


def final_ids(ids: np.ndarray, chain: list[Resolution], strict: bool = True) -> np.ndarray:
    """The final id of each of ``ids`` (0 stays 0) following renames and finals from a chunk's
    node to the root; 0 for ids the chain does not resolve, unless ``strict`` (then raise)."""
    cur = ids.copy()
    out = np.zeros(len(ids), np.uint64)
    done = ids == 0
    for res in chain:
        cur = apply_map(cur, _sorted((res.map_from, res.map_to)))
        ff, ft = _sorted((res.final_from, res.final_to))
        if len(ff):
            pos = np.clip(np.searchsorted(ff, cur), 0, len(ff) - 1)
            hit = (ff[pos] == cur) & ~done
            out[hit] = ft[pos[hit]]
            done |= hit
    if strict and not done.all():
        raise RuntimeError(f"{int((~done).sum())} segment(s) left unresolved at the root")
    return out


def remap_dense(dense: np.ndarray, names: np.ndarray, chain: list[Resolution],
                strict: bool = True) -> np.ndarray:
    """Final ids (uint64) of the labels ``names[dense]`` (``dense``: 0..len(names) - 1, and
    ``names[0]`` = 0), as :func:`remap` gives them."""
    table = final_ids(names, chain, strict)
    return _through(dense.reshape(-1), np.uint64(0), table).reshape(dense.shape)


def remap(labels: np.ndarray, chain: list[Resolution], strict: bool = True,
          ids: tuple[int, int] | None = None) -> np.ndarray:
    """Final ids of ``labels`` following renames and finals from the chunk's node to the root.

    ``ids``: (first, last) when the nonzero labels are known to be exactly ``first..last``.
    """
    flat = labels.reshape(-1)
    tabled = ids is not None and labels.dtype == np.uint64  # values through a table
    if tabled:
        lo, span = np.uint64(ids[0]), ids[1] - ids[0] + 1  # (first >= 1; span 0: none)
        uniq = np.arange(ids[0], ids[1] + 1, dtype=np.uint64)
    else:
        lo, hi = np.uint64(1), np.uint64(0)
        if labels.dtype == np.uint64 and flat.size:
            hi = flat.max()  # (vectorized); the smallest nonzero id only if the span is long
            lo, hi = (lo, hi) if hi <= 4 * flat.size else _nonzero_range(flat)
        span = int(hi) - int(lo) + 1
        tabled = 0 < span <= 4 * flat.size  # (no voxel-sized index arrays)
        if tabled:
            uniq = np.flatnonzero(_present(flat, lo, span)).astype(np.uint64) + lo
        else:  # values renumbered 0..k (hashing: no sort of the voxels)
            inv, mapping = fastremap.renumber(labels, preserve_zero=True, in_place=False)
            uniq = np.zeros(len(mapping) + 1, np.uint64)
            uniq[np.fromiter(mapping.values(), np.int64, len(mapping))] = np.fromiter(
                mapping.keys(), np.uint64, len(mapping))
    out = final_ids(uniq, chain, strict)
    if tabled:
        table = np.zeros(span, np.uint64)
        table[(uniq - lo).astype(np.intp)] = out
        return _through(flat, lo, table).reshape(labels.shape)
    return out[inv].reshape(labels.shape)
