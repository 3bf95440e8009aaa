"""Region graphs over segments, and the octree node step that resolves them exactly.

A :class:`Segments` table holds, per segment id, its size, its *key* (a chunking-invariant id:
the smallest linear voxel index it covers, or the smallest supervoxel id it holds), its voxel
bbox and an optional histogram of semantic labels. An :class:`Edges` table holds, per segment
pair, the max affinity and the affinity sum (fixed point, exact) and count of the voxel faces
between them. Tables from different chunks combine by id (sums, mins, maxes) in any order with
the same result.

:func:`resolve` runs greedy merging (size-dependent single linkage for the watershed, mean
affinity for agglomeration) on one octree node. Segments *frozen* on the node's non-volume
faces may still change through their neighbours outside, so any edge reaching them is deferred
and its other endpoint *tainted* (it is frozen from then on). Everything untainted is decided
exactly as a global run decides it: the heap order is (value, keys), a function of content
only, and a frozen segment can only affect its neighbours through deferred edges. The root has
no frozen segments, so it resolves the rest. (Single linkage takes a union-find path that
decides what this queue decides, and more: :func:`pipeline.watershed.linkage.single_linkage_dense`.)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from numba import njit

from pipeline.regiongraph_kernel import (
    MODE_MEAN,
    MODE_SINGLE_LINKAGE,
    _map_new,
    _map_slot,
    resolve_dense,
)

FIXED_POINT = float(1 << 24)
"""Affinity sums are accumulated as ``round(affinity * 2**24)`` in int64: exact in any order."""

__all__ = ["FIXED_POINT", "MODE_MEAN", "MODE_SINGLE_LINKAGE", "Edges", "Params", "Resolution",
           "Segments", "resolve"]


def _empty_u64() -> np.ndarray:
    return np.zeros(0, np.uint64)


@dataclass
class Segments:
    """Per-segment statistics; ``lo``/``hi`` are inclusive voxel bbox corners (n, 3)."""

    ids: np.ndarray = field(default_factory=_empty_u64)
    size: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    key: np.ndarray = field(default_factory=_empty_u64)
    lo: np.ndarray = field(default_factory=lambda: np.zeros((0, 3), np.int64))
    hi: np.ndarray = field(default_factory=lambda: np.zeros((0, 3), np.int64))
    hist: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.int64))

    def __len__(self) -> int:
        return len(self.ids)

    def arrays(self) -> dict[str, np.ndarray]:
        return {"ids": self.ids, "size": self.size, "key": self.key, "lo": self.lo,
                "hi": self.hi, "hist": self.hist}

    @classmethod
    def concat(cls, parts: list[Segments]) -> Segments:
        """One row per id: sizes and histograms summed, keys min'd, bboxes united."""
        parts = [p for p in parts if len(p)]
        if not parts:
            return cls()
        k = max(p.hist.shape[1] for p in parts)
        ids = np.concatenate([p.ids for p in parts])
        hists = [np.pad(p.hist, ((0, 0), (0, k - p.hist.shape[1]))) for p in parts]
        ascending = _ascending(ids)
        order = slice(None) if ascending else np.argsort(ids, kind="stable")
        if ascending or _ascending(ids[order]):  # distinct ids: nothing to reduce
            return cls(ids[order], *(np.concatenate([getattr(p, f) for p in parts])[order]
                                     for f in ("size", "key", "lo", "hi")),
                       np.concatenate(hists)[order])
        uniq, inv = np.unique(ids, return_inverse=True)
        n = len(uniq)
        out = cls(uniq, np.zeros(n, np.int64), np.full(n, np.iinfo(np.uint64).max, np.uint64),
                  np.full((n, 3), np.iinfo(np.int64).max, np.int64),
                  np.full((n, 3), np.iinfo(np.int64).min, np.int64), np.zeros((n, k), np.int64))
        np.add.at(out.size, inv, np.concatenate([p.size for p in parts]))
        np.minimum.at(out.key, inv, np.concatenate([p.key for p in parts]))
        _columns_at(np.minimum, out.lo, inv, np.concatenate([p.lo for p in parts]))
        _columns_at(np.maximum, out.hi, inv, np.concatenate([p.hi for p in parts]))
        if k:
            _columns_at(np.add, out.hist, inv, np.concatenate(hists))
        return out

    def relabel(self, mapping: dict[int, int] | tuple[np.ndarray, np.ndarray]) -> Segments:
        """Rename ids through (sorted from, to) arrays, then combine rows that now coincide."""
        if isinstance(mapping, tuple) and len(mapping[0]) and _ascending(self.ids):
            src, dst = mapping
            pos, found = _locate(self.ids, src)
            to, into = _locate(self.ids, dst)
            if found and into and _hash_index(src, dst).max() < 0:  # fold renamed rows in
                keep = np.ones(len(self), bool)
                keep[pos] = False
                out = Segments(self.ids, self.size.copy(), self.key.copy(), self.lo.copy(),
                               self.hi.copy(), self.hist.copy())
                np.add.at(out.size, to, self.size[pos])
                np.minimum.at(out.key, to, self.key[pos])
                _columns_at(np.minimum, out.lo, to, self.lo[pos])
                _columns_at(np.maximum, out.hi, to, self.hi[pos])
                _columns_at(np.add, out.hist, to, self.hist[pos])
                return Segments(*(getattr(out, f)[keep] for f in
                                  ("ids", "size", "key", "lo", "hi", "hist")))
        return Segments.concat([Segments(apply_map(self.ids, mapping), self.size, self.key,
                                         self.lo, self.hi, self.hist)])


@dataclass
class Edges:
    """Per-pair edge weights with ``a < b``: max affinity, fixed-point sum and face count."""

    a: np.ndarray = field(default_factory=_empty_u64)
    b: np.ndarray = field(default_factory=_empty_u64)
    wmax: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    wsum: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    count: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    def __len__(self) -> int:
        return len(self.a)

    def arrays(self) -> dict[str, np.ndarray]:
        return {"a": self.a, "b": self.b, "wmax": self.wmax, "wsum": self.wsum,
                "count": self.count}

    @property
    def mean(self) -> np.ndarray:
        return self.wsum / np.maximum(self.count, 1) / FIXED_POINT

    @classmethod
    def concat(cls, parts: list[Edges]) -> Edges:
        """One row per pair (a < b, a != b): max of maxes, sums of sums and counts."""
        parts = [p for p in parts if len(p)]
        if not parts:
            return cls()
        a, b = _cat([p.a for p in parts]), _cat([p.b for p in parts])
        key, rows, back = _pair_keys(a, b)
        if not len(key):
            return cls()
        uk, wmax, wsum, count = _reduce_groups(
            key, np.argsort(key), rows, _cat([p.wmax for p in parts], np.float32),
            _cat([p.wsum for p in parts], np.int64), _cat([p.count for p in parts], np.int64))
        ua, ub = back(uk)
        return cls(ua, ub, wmax, wsum, count)

    def relabel(self, mapping: dict[int, int] | tuple[np.ndarray, np.ndarray]) -> Edges:
        """Rename endpoints, then combine edges that now join the same pair (dropping loops)."""
        return Edges.concat([Edges(apply_map(self.a, mapping), apply_map(self.b, mapping),
                                   self.wmax, self.wsum, self.count)])


_ROW_OPS = {np.add: 0, np.minimum: 1, np.maximum: 2}


def _columns_at(ufunc: np.ufunc, out: np.ndarray, idx: np.ndarray, values: np.ndarray
                ) -> None:
    """``ufunc.at(out, idx, values)`` for 2-D int64 ``out`` and ``ufunc`` add, min or max."""
    if out.shape[1] and len(idx):
        _rows_at(_ROW_OPS[ufunc], out, np.asarray(idx, np.int64),
                 np.asarray(values, np.int64))


@njit(cache=True)
def _rows_at(op, out, idx, values):  # pragma: no cover - compiled
    for i in range(idx.size):
        r = idx[i]
        for c in range(out.shape[1]):
            v = values[i, c]
            if op == 0:
                out[r, c] += v
            elif op == 1:
                out[r, c] = min(out[r, c], v)
            else:
                out[r, c] = max(out[r, c], v)


def _ascending(ids: np.ndarray) -> bool:
    """Whether ``ids`` ascend strictly (so each is there once)."""
    return bool(len(ids) < 2 or (ids[1:] > ids[:-1]).all())


def _cat(arrays: list[np.ndarray], dtype: type | None = None) -> np.ndarray:
    """One array of ``arrays`` (no copy for one array of the dtype)."""
    out = arrays[0] if len(arrays) == 1 else np.concatenate(arrays)
    return out if dtype is None else out.astype(dtype, copy=False)


def _pair_keys(a: np.ndarray, b: np.ndarray) -> tuple[
        np.ndarray, np.ndarray, Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]]:
    """For the rows with ``a != b``: uint64 keys of the pairs ``(min, max)`` in lexicographic
    order (equal pairs, equal keys), the rows' indices, and the function turning keys back
    into the pairs."""
    if a.dtype == b.dtype == np.uint64 and (not a.size or max(a.max(), b.max()) < 2**32):
        key, rows = _small_keys(a, b)
        return key, rows, lambda k: (k >> np.uint64(32), k & np.uint64(0xFFFFFFFF))
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    rows = np.flatnonzero(lo != hi)
    ua, ra = np.unique(lo[rows], return_inverse=True)       # ranks: any ids, any dtype
    ub, rb = np.unique(hi[rows], return_inverse=True)
    key = (ra.reshape(-1).astype(np.uint64) << np.uint64(32)) | rb.reshape(-1).astype(np.uint64)
    return key, rows, lambda k: (ua[(k >> np.uint64(32)).astype(np.intp)],
                                 ub[(k & np.uint64(0xFFFFFFFF)).astype(np.intp)])


@njit(cache=True)
def _small_keys(a, b):  # pragma: no cover - compiled
    """``(min << 32 | max)`` and the row of every row with ``a != b`` (ids < 2**32)."""
    key = np.empty(a.size, np.uint64)
    rows = np.empty(a.size, np.int64)
    m = 0
    for i in range(a.size):
        if a[i] != b[i]:
            lo, hi = min(a[i], b[i]), max(a[i], b[i])
            key[m] = (lo << np.uint64(32)) | hi
            rows[m] = i
            m += 1
    return key[:m], rows[:m]


@njit(cache=True)
def _reduce_groups(key, order, rows, wmax, wsum, count):  # pragma: no cover - compiled
    """Per distinct key (ascending; ``order`` sorts ``key``, ``rows`` maps a key to its
    value row): max of ``wmax``, sums of ``wsum`` and ``count``."""
    n = order.size
    groups = 0
    for i in range(n):
        if i == 0 or key[order[i]] != key[order[i - 1]]:
            groups += 1
    uk = np.empty(groups, np.uint64)
    wm = np.empty(groups, np.float32)
    ws = np.zeros(groups, np.int64)
    wc = np.zeros(groups, np.int64)
    g = -1
    for i in range(n):
        j = order[i]
        r = rows[j]
        if i == 0 or key[j] != key[order[i - 1]]:
            g += 1
            uk[g] = key[j]
            wm[g] = wmax[r]
        elif wmax[r] > wm[g]:
            wm[g] = wmax[r]
        ws[g] += wsum[r]
        wc[g] += count[r]
    return uk, wm, ws, wc


def _locate(ids: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, bool]:
    """Positions of ``x`` in the ascending ``ids`` (int64; meaningless for absent values), and
    whether every ``x`` is in ``ids``."""
    n = len(ids)
    if _consecutive(ids, x):
        pos = x.astype(np.int64)  # one array (ids and x are below 2**63)
        pos -= np.int64(ids[0])
        return pos, bool(x.size == 0 or (x.min() >= ids[0] and x.max() <= ids[-1]))
    if x.size < 2 or bool((x[1:] >= x[:-1]).all()):
        pos = np.searchsorted(ids, x).astype(np.int64, copy=False)
        return pos, bool(n and np.array_equal(ids[np.minimum(pos, n - 1)], x))
    pos = _hash_index(np.ascontiguousarray(ids, np.uint64), np.ascontiguousarray(x, np.uint64))
    return pos, bool(n and pos.min() >= 0)


def _consecutive(ids: np.ndarray, x: np.ndarray) -> bool:
    n = len(ids)
    return bool(n and x.size and ids.dtype == x.dtype == np.uint64 and ids[-1] - ids[0] == n - 1
                and (n == 1 or (np.diff(ids) == 1).all()))


def apply_map(ids: np.ndarray, mapping: dict[int, int] | tuple[np.ndarray, np.ndarray]
              ) -> np.ndarray:
    """``ids`` renamed through ``mapping`` (dict, or sorted ``from`` and ``to`` arrays)."""
    if isinstance(mapping, dict):
        src = np.fromiter(mapping.keys(), np.uint64, len(mapping))
        dst = np.fromiter(mapping.values(), np.uint64, len(mapping))
        order = np.argsort(src)
        src, dst = src[order], dst[order]
    else:
        src, dst = mapping
    if not len(src):
        return ids.copy()
    if 8 * ids.size >= len(src):  # hashing, O(len(src) + ids.size)
        flat = np.ascontiguousarray(ids, np.uint64).reshape(-1)
        at = _hash_index(np.ascontiguousarray(src, np.uint64), flat)
        return np.where(at >= 0, dst[at], flat).astype(np.uint64).reshape(ids.shape)
    pos = np.clip(np.searchsorted(src, ids), 0, len(src) - 1)
    hit = src[pos] == ids
    return np.where(hit, dst[pos], ids).astype(np.uint64)


@njit(cache=True)
def _hash_index(src, x):  # pragma: no cover - compiled
    """Per value of ``x``: its (first) index in ``src``, or -1 (values below 2**63)."""
    keys, vals, cap = _map_new(src.size)
    for j in range(src.size):
        k = np.int64(src[j])
        i = _map_slot(keys, cap, k)
        if keys[i] == -1:
            keys[i], vals[i] = k, j
    out = np.empty(x.size, np.int64)
    for t in range(x.size):
        k = np.int64(x[t])
        i = _map_slot(keys, cap, k)
        out[t] = vals[i] if keys[i] == k else -1
    return out


@dataclass(frozen=True)
class Params:
    """What :func:`resolve` merges.

    ``mode`` MODE_SINGLE_LINKAGE: edges by max affinity, merged while > ``threshold`` (ws_low)
    when either side is smaller than ``size_threshold`` (ws_size); finals below ``dust`` become 0.
    ``mode`` MODE_MEAN: edges by mean affinity, merged while > ``threshold``; the size
    constraint refuses pairs both ≥ ``size_limit`` below ``size_affinity``; the semantic
    constraint refuses pairs whose dominant labels differ below ``semantic_affinity``.
    """

    mode: int
    threshold: float
    size_threshold: int = 0
    dust: int = 0
    size_limit: int = 0
    size_affinity: float = -1.0
    semantic_affinity: float = -1.0


@dataclass
class Resolution:
    """What one node decided: renames, final values, the residual, and the merge history."""

    map_from: np.ndarray
    map_to: np.ndarray
    final_from: np.ndarray
    final_to: np.ndarray
    segments: Segments
    edges: Edges
    history: np.ndarray  # structured: a, b (ids merged: a into b), value, size
    alias_from: np.ndarray = field(default_factory=_empty_u64)
    alias_to: np.ndarray = field(default_factory=_empty_u64)
    """Atomic-chunk ids in this subtree that now live on as residual segment ``alias_to``."""

    def arrays(self) -> dict[str, np.ndarray]:
        return {"map_from": self.map_from, "map_to": self.map_to,
                "final_from": self.final_from, "final_to": self.final_to,
                "history": self.history, "alias_from": self.alias_from,
                "alias_to": self.alias_to,
                **{f"seg_{k}": v for k, v in self.segments.arrays().items()},
                **{f"edge_{k}": v for k, v in self.edges.arrays().items()}}

    @classmethod
    def from_arrays(cls, d: dict[str, np.ndarray]) -> Resolution:
        seg = Segments(**{k[4:]: d[k] for k in d if k.startswith("seg_")})
        edg = Edges(**{k[5:]: d[k] for k in d if k.startswith("edge_")})
        return cls(d["map_from"], d["map_to"], d["final_from"], d["final_to"], seg, edg,
                   d["history"], d["alias_from"], d["alias_to"])


HISTORY_DTYPE = np.dtype([("a", np.uint64), ("b", np.uint64), ("value", np.float64),
                          ("size", np.int64)])


def frozen_mask(seg: Segments, node_lo: np.ndarray, node_hi: np.ndarray,
                volume_faces: tuple[bool, ...]) -> np.ndarray:
    """Segments whose bbox reaches a face of the node that is not a volume face.

    ``node_lo``/``node_hi`` are the node's inclusive voxel corners; ``volume_faces`` is
    :func:`pipeline.geometry.Octree.volume_faces` order ((x,lo), (x,hi), (y,lo), ...).
    """
    out = np.zeros(len(seg), bool)
    for axis in range(3):
        if not volume_faces[2 * axis]:
            out |= seg.lo[:, axis] <= node_lo[axis]
        if not volume_faces[2 * axis + 1]:
            out |= seg.hi[:, axis] >= node_hi[axis]
    return out


def _resolve_arrays(size, key, frozen, hist, ia, ib, wmax, wsum, wcnt, mode, threshold, size_thr,
                   dust, size_limit, size_aff, sem_aff) -> tuple[np.ndarray, ...]:
    """:func:`resolve_dense`, or for single linkage its union-find path (which taints less)."""
    if mode == MODE_SINGLE_LINKAGE:
        from pipeline.watershed.linkage import single_linkage_dense

        ok, root, tainted, final_val, res, A, B, wout, hist_out, size_out, key_out, merges = \
            single_linkage_dense(size, key, frozen, hist, ia, ib, wmax, threshold, size_thr,
                                 dust)
        if ok:  # its residual graph has no sums (single linkage reads the max only)
            zero = np.zeros(len(A), np.int64)
            return (root, tainted, final_val, res, A, B, wout, zero, zero, hist_out, size_out,
                    key_out, merges)
    return resolve_dense(size, key, frozen, hist, ia, ib, wmax, wsum, wcnt, mode, threshold,
                         size_thr, dust, size_limit, size_aff, sem_aff)


DEFER_FROZEN = 1 / 3
"""A node with at least this share of its segments frozen passes its whole graph up
undecided. Taint spreads from frozen segments along their edges, so such a node would pass
most of its graph up anyway (gala's 100 x 50 x 25 watershed leaves, 46-80 % frozen: 86-97 %;
synth's 125^3 agglomeration leaves, 69-80 % frozen: 69-80 %); deciding it once, at the
parent, saves resolving it twice. Nodes of large chunks have few frozen segments (6 % at
125^3 on synth) and resolve. Exactness does not depend on it: any node may defer."""


def resolve(seg: Segments, edges: Edges, frozen: np.ndarray, params: Params) -> Resolution:
    """Merge greedily what can be decided on this node; return renames, finals and residual
    (the whole graph, undecided, if :data:`DEFER_FROZEN` of its segments are frozen)."""
    n = len(seg)
    if len(edges) >= 2**30:
        raise ValueError(f"{len(edges)} edges in one octree node; at most 2**30 - 1")
    ia, found_a = _locate(seg.ids, edges.a)
    ib, found_b = _locate(seg.ids, edges.b)
    if n and len(edges) and not (found_a and found_b):
        raise ValueError("every edge endpoint needs a segment row")
    hist = seg.hist if seg.hist.shape[0] == n else np.zeros((n, 0), np.int64)
    if frozen.any() and frozen.mean() >= DEFER_FROZEN:  # (the root never defers)
        none = _empty_u64()
        return Resolution(none, none, none, none, Segments(seg.ids, seg.size, seg.key, seg.lo,
                                                           seg.hi, hist),
                          edges, np.zeros(0, HISTORY_DTYPE))
    (root, tainted, final_val, res, A, B, wmax, wsum, wcnt, hist_out, size_out, key_out,
     merges) = _resolve_arrays(  # they copy what they change
        seg.size.astype(np.int64, copy=False), seg.key.astype(np.uint64, copy=False),
        frozen.astype(np.bool_, copy=False), np.ascontiguousarray(hist, np.int64), ia, ib,
        edges.wmax.astype(np.float32, copy=False), edges.wsum.astype(np.int64, copy=False),
        edges.count.astype(np.int64, copy=False), params.mode,
        float(params.threshold), int(params.size_threshold), int(params.dust),
        int(params.size_limit), float(params.size_affinity), float(params.semantic_affinity))
    ids = seg.ids
    moved = root != np.arange(n)
    final = ~moved & ~tainted
    resid = ~moved & tainted
    lo = hi = np.zeros((0, 3), np.int64)  # bboxes are kept for residual segments only
    if resid.any():
        lo = np.full((n, 3), np.iinfo(np.int64).max, np.int64)
        hi = np.full((n, 3), np.iinfo(np.int64).min, np.int64)
        _columns_at(np.minimum, lo, root, seg.lo)
        _columns_at(np.maximum, hi, root, seg.hi)
        lo, hi = lo[resid], hi[resid]
    rs = Segments(ids[resid], size_out[resid], key_out[resid], lo, hi, hist_out[resid])
    # one edge per pair, A < B: already canonical (ids ascend with the index)
    redges = Edges(ids[A[res]], ids[B[res]], wmax[res], wsum[res], wcnt[res])
    hist_arr = np.zeros(len(merges), HISTORY_DTYPE)
    if len(merges):
        hist_arr["a"] = ids[merges[:, 0].astype(np.int64)]
        hist_arr["b"] = ids[merges[:, 1].astype(np.int64)]
        hist_arr["value"] = merges[:, 2]
        hist_arr["size"] = merges[:, 3].astype(np.int64)
    return Resolution(ids[moved], ids[root[moved]], ids[final],
                      final_val[final].astype(np.uint64), rs, redges, hist_arr)


def link_map(seg: Segments, links: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The rename (sorted from, to) uniting basin pieces joined across faces: each group of
    linked segments takes the id of its member with the smallest key."""
    if not len(links):
        return np.zeros(0, np.uint64), np.zeros(0, np.uint64)
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    ids, idx = np.unique(links, return_inverse=True)  # the linked segments only
    idx = idx.reshape(-1, 2)
    key = seg.key[np.searchsorted(seg.ids, ids)]
    n = len(ids)
    graph = coo_matrix((np.ones(len(links)), (idx[:, 0], idx[:, 1])), shape=(n, n))
    _, comp = connected_components(graph, directed=False)
    order = np.lexsort((ids, key, comp))
    first = np.ones(n, bool)
    first[1:] = comp[order][1:] != comp[order][:-1]
    rep_of_comp = np.empty(comp.max() + 1, np.uint64)
    rep_of_comp[comp[order][first]] = ids[order][first]
    rep = rep_of_comp[comp]
    moved = rep != ids
    return ids[moved], rep[moved]


def compose(first: tuple[np.ndarray, np.ndarray], then: tuple[np.ndarray, np.ndarray]
            ) -> tuple[np.ndarray, np.ndarray]:
    """The rename ``then ∘ first`` as sorted (from, to) arrays."""
    src = np.concatenate([first[0], then[0]])
    dst = np.concatenate([apply_map(first[1], _sorted(then)), then[1]])
    src, idx = np.unique(src, return_index=True)
    return src, dst[idx]


def _sorted(m: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(m[0], kind="stable")
    return m[0][order], m[1][order]


def node_step(children: list[Resolution], links: list[np.ndarray], face_edges: list[Edges],
              node_lo: np.ndarray, node_hi: np.ndarray, volume_faces: tuple[bool, ...],
              params: Params) -> Resolution:
    """A composite octree node: unite its children's residuals across its internal faces and
    resolve what can now be decided.

    ``links`` and ``face_edges`` name atomic-chunk ids; the children's aliases translate them
    to the residual segments those pieces now belong to.
    """
    seg = Segments.concat([c.segments for c in children])
    alias = _sorted((np.concatenate([c.alias_from for c in children] + [seg.ids]),
                     np.concatenate([c.alias_to for c in children] + [seg.ids])))
    all_links = np.concatenate(links) if links else np.zeros((0, 2), np.uint64)
    all_links = apply_map(all_links.astype(np.uint64).reshape(-1), alias).reshape(-1, 2)
    lf, lt = link_map(seg, all_links)
    # children's edges take the links' rename, face edges (atomic pieces) the aliases' and
    # then the links'; all are combined once
    link = (lf, lt)
    united = (alias[0], apply_map(alias[1], link))

    def renamed(parts: list[Edges], m: tuple[np.ndarray, np.ndarray]) -> Edges:
        parts = [e for e in parts if len(e)] or [Edges()]
        a, b = _cat([e.a for e in parts]), _cat([e.b for e in parts])
        return Edges(apply_map(a, m) if len(m[0]) else a, apply_map(b, m) if len(m[0]) else b,
                     *(_cat([getattr(e, f) for e in parts]) for f in ("wmax", "wsum", "count")))

    edges = Edges.concat([renamed([c.edges for c in children], link),
                          renamed(face_edges, united)])
    if len(lf):
        seg = seg.relabel(link)
    res = resolve(seg, edges, frozen_mask(seg, node_lo, node_hi, volume_faces), params)
    res.map_from, res.map_to = compose(_sorted((lf, lt)), _sorted((res.map_from, res.map_to)))
    target = apply_map(alias[1], _sorted((res.map_from, res.map_to)))
    live = np.isin(target, res.segments.ids)
    res.alias_from, res.alias_to = alias[0][live], target[live]
    return res
