"""The compiled heart of :func:`pipeline.regiongraph.resolve` (numba; dense indices only)."""

from __future__ import annotations

import heapq

import numpy as np
from numba import njit, types
from numba.typed import Dict, List

MODE_SINGLE_LINKAGE = 0
MODE_MEAN = 1
_FIXED = float(1 << 24)


@njit(cache=True)
def _find(parent, i):  # pragma: no cover - compiled
    while parent[i] != i:
        parent[i] = parent[parent[i]]
        i = parent[i]
    return i


@njit(cache=True)
def _value(mode, e, wmax, wsum, wcnt):  # pragma: no cover - compiled
    if mode == MODE_SINGLE_LINKAGE:
        return np.float64(wmax[e])
    if wcnt[e] <= 0:
        return 0.0
    return wsum[e] / wcnt[e] / _FIXED


@njit(cache=True)
def _dominant(hist, r):  # pragma: no cover - compiled
    best = -1
    count = 0
    for j in range(hist.shape[1]):
        if hist[r, j] > count:
            best, count = j, hist[r, j]
    return best


@njit(cache=True)
def _taint(x, tainted, adj, alive, rejected, heap, mode, A, B, key, wmax, wsum, wcnt,
           version):  # pragma: no cover - compiled
    """Taint ``x`` and, transitively, everything it reaches through rejected edges; re-queue
    their edges so that, among equal values, edges touching tainted segments come first."""
    stack = [x]
    while len(stack):
        y = stack.pop()
        if tainted[y]:
            continue
        tainted[y] = True
        for f in adj[y]:
            if not alive[f] or (A[f] != y and B[f] != y):
                continue
            _push(heap, f, mode, A, B, key, wmax, wsum, wcnt, version, tainted)
            if rejected[f]:
                other = B[f] if A[f] == y else A[f]
                if not tainted[other]:
                    stack.append(other)


@njit(cache=True)
def _push(heap, e, mode, A, B, key, wmax, wsum, wcnt, version, tainted):  # pragma: no cover
    """Queue edge ``e`` by (value desc, touches-tainted first, endpoint keys)."""
    ka = np.int64(key[A[e]])
    kb = np.int64(key[B[e]])
    lo, hi = (ka, kb) if ka < kb else (kb, ka)
    clean = np.int64(0 if (tainted[A[e]] or tainted[B[e]]) else 1)
    version[e] += 1
    heapq.heappush(heap, (-_value(mode, e, wmax, wsum, wcnt), clean, lo, hi, e, version[e]))


@njit(cache=True)
def resolve_dense(size, key, frozen, hist, ea, eb, wmax, wsum, wcnt, mode, threshold,
                  size_thr, dust, size_limit, size_aff, sem_aff):  # pragma: no cover
    n = size.size
    m = ea.size
    size = size.copy()
    key = key.copy()
    hist = hist.copy()
    parent = np.arange(n)
    tainted = frozen.copy()
    A = ea.copy()
    B = eb.copy()
    wmax = wmax.copy()
    wsum = wsum.copy()
    wcnt = wcnt.copy()
    alive = np.ones(m, np.bool_)
    rejected = np.zeros(m, np.bool_)
    version = np.zeros(m, np.int64)
    adj = List()
    for _ in range(n):
        adj.append(List.empty_list(types.int64))
    emap = Dict.empty(key_type=types.int64, value_type=types.int64)
    for e in range(m):
        lo, hi = (A[e], B[e]) if A[e] < B[e] else (B[e], A[e])
        A[e], B[e] = lo, hi
        emap[lo * n + hi] = e
        adj[lo].append(e)
        adj[hi].append(e)
    heap = [(0.0, np.int64(0), np.int64(0), np.int64(0), np.int64(0), np.int64(0))]
    heap.pop()
    for e in range(m):
        _push(heap, e, mode, A, B, key, wmax, wsum, wcnt, version, tainted)
    merges = []
    while len(heap):
        negv, _clean, _k1, _k2, e, ver = heapq.heappop(heap)
        if not alive[e] or ver != version[e]:
            continue
        val = -negv
        if val <= threshold:
            break
        ra, rb = A[e], B[e]
        if tainted[ra] or tainted[rb]:
            _taint(ra, tainted, adj, alive, rejected, heap, mode, A, B, key, wmax, wsum, wcnt,
                   version)
            _taint(rb, tainted, adj, alive, rejected, heap, mode, A, B, key, wmax, wsum, wcnt,
                   version)
            continue
        if mode == MODE_SINGLE_LINKAGE:
            ok = size[ra] < size_thr or size[rb] < size_thr
        else:
            ok = True
            if size_limit > 0 and size[ra] >= size_limit and size[rb] >= size_limit \
                    and val < size_aff:
                ok = False
            if ok and hist.shape[1] > 0 and sem_aff > 0 and val < sem_aff:
                da = _dominant(hist, ra)
                db = _dominant(hist, rb)
                if da >= 0 and db >= 0 and da != db:
                    ok = False
        if not ok:
            rejected[e] = True
            continue
        if key[ra] < key[rb] or (key[ra] == key[rb] and ra < rb):
            r, o = ra, rb
        else:
            r, o = rb, ra
        parent[o] = r
        size[r] += size[o]
        key[r] = min(key[r], key[o])
        for j in range(hist.shape[1]):
            hist[r, j] += hist[o, j]
        merges.append((np.float64(o), np.float64(r), val, np.float64(size[r])))
        alive[e] = False
        del emap[A[e] * n + B[e]]
        for f in adj[o]:
            if not alive[f] or (A[f] != o and B[f] != o):
                continue
            c = B[f] if A[f] == o else A[f]
            del emap[A[f] * n + B[f]]
            lo, hi = (r, c) if r < c else (c, r)
            k = lo * n + hi
            if k in emap:
                g = emap[k]
                wmax[g] = max(wmax[g], wmax[f])
                wsum[g] += wsum[f]
                wcnt[g] += wcnt[f]
                alive[f] = False
            else:
                A[f], B[f] = lo, hi
                emap[k] = f
                adj[r].append(f)
        adj[o] = List.empty_list(types.int64)
        live = List.empty_list(types.int64)
        for f in adj[r]:
            if alive[f] and (A[f] == r or B[f] == r):
                rejected[f] = False
                _push(heap, f, mode, A, B, key, wmax, wsum, wcnt, version, tainted)
                live.append(f)
        adj[r] = live
    root = np.empty(n, np.int64)
    for i in range(n):
        root[i] = _find(parent, i)
    final_val = np.zeros(n, np.uint64)
    for i in range(n):
        if root[i] == i:
            if mode == MODE_SINGLE_LINKAGE:
                final_val[i] = 0 if size[i] < dust else key[i] + 1
            else:
                final_val[i] = key[i]
    res = np.zeros(m, np.bool_)
    for e in range(m):
        if alive[e] and tainted[A[e]] and tainted[B[e]]:
            res[e] = mode == MODE_MEAN or wmax[e] > threshold
    out = np.zeros((len(merges), 4), np.float64)
    for i in range(len(merges)):
        out[i, 0], out[i, 1], out[i, 2], out[i, 3] = merges[i]
    return root, tainted, final_val, res, A, B, wmax, wsum, wcnt, hist, size, key, out
