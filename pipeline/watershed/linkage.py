"""Size-dependent single linkage by union-find: the fast path of
:func:`pipeline.regiongraph_kernel.resolve_dense` for ``MODE_SINGLE_LINKAGE``.

With nothing frozen it gives the same result as the merge queue. The queue pops, for each
pair of current segments, the max of the edges between them: the first of its original
edges in descending order. Every later pop of that pair does nothing: a merge joined it, a
rejection (both sides >= ``ws_size``) stays one as sizes only grow, and a taint left both
sides tainted, which never merge. So the original edges are walked once in descending order;
equal weights are taken in the queue's order: edges touching tainted segments first, then by
the keys of their current segments.

With frozen segments, an edge between a tainted and an untainted segment, not rejected,
taints the untainted one, as in the queue; but a tainted segment is not left at its own
size. An untainted segment below ``ws_size`` whose edge at this weight into a tainted
*cluster* is its only way at that weight joins that segment in the global run whatever the
rest: so it joins the cluster here (it stays tainted, its own merge is redone above), and the
cluster's size, a lower bound of the global segment's from the next weight on, makes
rejections certain that the queue would have deferred. Untainted segments are decided as in
the global run. The residual graph passed to the parent is collapsed by those certain joins:
a joined segment keeps one edge, to its cluster at the weight of its join, and its other
edges become the cluster's (see :func:`_residual`); so the parent re-decides the clusters,
not every segment that touched one.
"""
from __future__ import annotations

import heapq

import numpy as np
from numba import njit

from pipeline.regiongraph_kernel import _find, _map_new, _map_slot


@njit(cache=True, inline="always")
def _join(cparent, csize, jv, size, x, c, v):  # pragma: no cover - compiled
    """Tainted segment ``x`` joins cluster ``c`` at weight ``v`` (a certain merge)."""
    cparent[x] = c
    csize[c] += size[x]
    jv[x] = v


@njit(cache=True)
def _decide(parent, size, key, tainted, cparent, csize, jv, ra, rb, v, out, nm, size_thr,
            tie):  # pragma: no cover - compiled
    """Pop segments ``ra != rb``: (merges so far, survivor or -1, absorbed root or -1,
    segment newly tainted or -1). Tainted segments are grouped in clusters (``cparent``,
    sizes ``csize``) by the certain merges below; an untainted segment is its own cluster."""
    ca, cb = _find(cparent, ra), _find(cparent, rb)
    sa = csize[ca] if tainted[ca] else size[ca]
    sb = csize[cb] if tainted[cb] else size[cb]
    if ca == cb or not (sa < size_thr or sb < size_thr):
        return nm, -1, -1, -1
    if tainted[ca] or tainted[cb]:
        if tainted[ca] and tainted[cb]:
            return nm, -1, -1, -1
        x, c = (rb, ca) if tainted[ca] else (ra, cb)
        tainted[x] = True
        if not tie and size[x] < size_thr:  # certain: x joins c's cluster
            _join(cparent, csize, jv, size, x, c, v)
        else:
            csize[x] = size[x]
        return nm, -1, -1, x
    r, o = (ra, rb) if key[ra] < key[rb] or (key[ra] == key[rb] and ra < rb) else (rb, ra)
    parent[o] = r
    size[r] += size[o]
    key[r] = min(key[r], key[o])
    out[nm, 0], out[nm, 1], out[nm, 2], out[nm, 3] = o, r, v, size[r]
    return nm + 1, r, o, -1


@njit(cache=True)
def _order(rank, tainted, ra, rb):  # pragma: no cover - compiled
    """The queue's order among equal weights: touching tainted first, then the keys (ranks
    of keys, < 2**31), packed in one uint64."""
    lo, hi = min(rank[ra], rank[rb]), max(rank[ra], rank[rb])
    clean = np.uint64(0 if tainted[ra] or tainted[rb] else 1)
    return (clean << np.uint64(62)) | (np.uint64(lo) << np.uint64(31)) | np.uint64(hi)


@njit(cache=True)
def _push_edge(heap, e, k, ea, eb, parent, rank, tainted):  # pragma: no cover - compiled
    """Queue edge ``e`` (entry ``k`` of its group) at its order now, unless it joins one root."""
    a, b = _find(parent, ea[e]), _find(parent, eb[e])
    if a != b:
        heapq.heappush(heap, (_order(rank, tainted, a, b), np.int64(k)))


@njit(cache=True)
def _by_code(codes, m):  # pragma: no cover - compiled
    """Indices of ``codes[:m]`` in stable ascending order."""
    if m > _SMALL_GROUP:
        return np.argsort(codes[:m], kind="mergesort")
    out = np.arange(m)
    for a in range(1, m):  # insertion sort
        i, b = out[a], a - 1
        while b >= 0 and codes[out[b]] > codes[i]:
            out[b + 1] = out[b]
            b -= 1
        out[b + 1] = i
    return out


@njit(cache=True)
def _tie_group(es, ea, eb, v, parent, size, key, tainted, cparent, csize, jv, out, nm, size_thr,
               ghead, gnext, fresh):  # pragma: no cover - compiled
    """Edges ``es`` of one weight ``v`` in the queue's order: sorted once by their order at the
    start; a merge or a taint, which can only move an edge earlier, re-queues the edges whose
    order it changed in a heap (their older entries are then skipped).

    A small segment tainted through an edge to a cluster tainted before the group, with all
    its edges of the group leading into that cluster, is certain to join it: it has no other
    way at this weight, in any order. Those joins are applied after the group, so that no
    decision within it counts them."""
    heap = [(np.uint64(0), np.int64(0))]
    heap.pop()
    codes, ks = np.empty(es.size, np.uint64), np.empty(es.size, np.int64)
    m = 0
    for k in range(es.size):
        ra, rb = _find(parent, ea[es[k]]), _find(parent, eb[es[k]])
        if ra != rb:
            gnext[2 * k], ghead[ra] = ghead[ra], 2 * k
            gnext[2 * k + 1], ghead[rb] = ghead[rb], 2 * k + 1
            codes[m], ks[m] = _order(key, tainted, ra, rb), k
            m += 1
    start = _by_code(codes, m)
    joins = np.empty((es.size, 2), np.int64)
    nj = i = 0
    while i < m or len(heap):
        if len(heap) and (i == m or heap[0] < (codes[start[i]], ks[start[i]])):
            code, k = heapq.heappop(heap)
        else:
            code, k = codes[start[i]], ks[start[i]]
            i += 1
        ra, rb = _find(parent, ea[es[k]]), _find(parent, eb[es[k]])
        if ra == rb or _order(key, tainted, ra, rb) != code:
            continue
        nm, r, o, t = _decide(parent, size, key, tainted, cparent, csize, jv, ra, rb, v, out,
                              nm, size_thr, True)
        if t >= 0:  # its edges now come first among equals
            fresh[t] = True
            c = _find(cparent, rb if t == ra else ra)
            alone = size[t] < size_thr and not fresh[c]
            s = ghead[t]
            while s >= 0:
                a2, b2 = _find(parent, ea[es[s >> 1]]), _find(parent, eb[es[s >> 1]])
                other = b2 if a2 == t else a2
                alone &= other == t or (_find(cparent, other) == c and not fresh[other])
                _push_edge(heap, es[s >> 1], s >> 1, ea, eb, parent, key, tainted)
                s = gnext[s]
            if alone:
                joins[nj, 0], joins[nj, 1] = t, c
                nj += 1
        if r >= 0:  # the absorbed root's edges move to the survivor, re-keyed
            s = ghead[o]
            while s >= 0:
                ns = gnext[s]
                gnext[s], ghead[r] = ghead[r], s
                _push_edge(heap, es[s >> 1], s >> 1, ea, eb, parent, key, tainted)
                s = ns
            ghead[o] = -1
    for i in range(nj):
        _join(cparent, csize, jv, size, joins[i, 0], joins[i, 1], v)
    for k in range(es.size):
        a, b = _find(parent, ea[es[k]]), _find(parent, eb[es[k]])
        ghead[a] = ghead[b] = -1
        fresh[a] = fresh[b] = False
    return nm


_SMALL_GROUP = 16


@njit(cache=True)
def _packed(wmax, threshold):  # pragma: no cover - compiled
    """(complemented weight bits, index) in a uint64 for each weight above ``threshold``
    (>= 0), or nothing if the weights are already in descending order."""
    bits = wmax.view(np.uint32)
    n = 0
    ordered = True
    for e in range(wmax.size):
        n += wmax[e] > threshold
        ordered &= e == 0 or not wmax[e] > wmax[e - 1]
    if ordered:
        return np.empty(0, np.uint64)
    packed = np.empty(n, np.uint64)
    n = 0
    for e in range(wmax.size):
        if wmax[e] > threshold:
            packed[n] = (np.uint64(0xFFFFFFFF - bits[e]) << np.uint64(32)) | np.uint64(e)
            n += 1
    return packed


def single_linkage_dense(size, key, frozen, hist, ea, eb, wmax, threshold, size_thr, dust):
    """:func:`pipeline.regiongraph_kernel.resolve_dense` for single linkage: (ok, root,
    tainted, final value, residual-edge mask (all set), A, B, weight: the residual graph of
    :func:`_residual`, hist, size, key, merges); not ok (and nothing done) where keys repeat,
    a weight is NaN or there are 2**31 segments. ``wmax`` is float32."""
    nan = bool(np.isnan(wmax).any())
    rank, sorted_keys = _ranks(np.asarray(key, np.uint64))
    packed = _packed(wmax, threshold)
    if packed.size:  # the edges above threshold, gathered in order: the walk reads them in a
        packed.sort()  # row, not at random (numpy's sort: by weight, then index)
        ea, eb, wmax = _in_order(packed, ea, eb, wmax)
        del packed
    return _single_linkage(size, key, rank, sorted_keys, frozen, hist, ea, eb, wmax, threshold,
                           size_thr, dust, nan)


def _ranks(key: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each key's rank (int64) and the keys sorted; ranks order and merge (min) as the keys
    do, and, unlike keys, fit in 31 bits (the walk packs a pair of them)."""
    n = key.size
    bits = max(int(n).bit_length(), 1)
    if n and int(key.max()) < 1 << (64 - bits):  # (key, index) packed: a plain sort
        packed = (key << np.uint64(bits)) | np.arange(n, dtype=np.uint64)
        packed.sort()
        order = (packed & np.uint64((1 << bits) - 1)).astype(np.int64)
        sorted_keys = packed >> np.uint64(bits)
    else:
        order = np.argsort(key)
        sorted_keys = key[order]
    rank = np.empty(n, np.int64)
    rank[order] = np.arange(n)
    return rank, sorted_keys


@njit(cache=True)
def _in_order(packed, ea, eb, wmax):  # pragma: no cover - compiled
    """Endpoints (int32) and weights of the edges whose indices ``packed`` holds, in order."""
    a, b = np.empty(packed.size, np.int32), np.empty(packed.size, np.int32)
    w = np.empty(packed.size, np.float32)
    for i in range(packed.size):
        e = np.int64(packed[i] & np.uint64(0xFFFFFFFF))
        a[i], b[i], w[i] = ea[e], eb[e], wmax[e]
    return a, b, w


@njit(cache=True)
def _disjoint_group(i, j, ea, eb, v, parent, size, key, tainted, cparent, csize, jv, out, nm,
                    size_thr, buf):  # pragma: no cover - compiled
    """Edges ``i:j`` of one weight ``v`` with no segment in
    two of them, if there are at most :data:`_SMALL_GROUP`: then no decision can change
    another's, in any order, and they are taken as they come (certain joins still applied
    after the group). Whether it did so; the merge count goes to ``buf[0, 0]``."""
    g = j - i
    if g > _SMALL_GROUP:
        return False
    for k in range(g):
        buf[k + 1, 0], buf[k + 1, 1] = _find(parent, ea[k + i]), _find(parent, eb[k + i])
        for q in range(1, k + 1):
            if buf[k + 1, 0] == buf[k + 1, 1]:
                break
            if buf[q, 0] == buf[q, 1]:
                continue
            for x in (buf[k + 1, 0], buf[k + 1, 1]):
                if x == buf[q, 0] or x == buf[q, 1]:
                    return False
    nj = 0
    for k in range(g):
        ra, rb = buf[k + 1, 0], buf[k + 1, 1]
        if ra == rb:
            continue
        nm, _, _, t = _decide(parent, size, key, tainted, cparent, csize, jv, ra, rb, v, out,
                              nm, size_thr, True)
        if t >= 0 and size[t] < size_thr:  # its only edge here leads into the cluster
            buf[k + 1, 0], buf[k + 1, 1] = t, _find(cparent, rb if t == ra else ra)
            nj += 1
        else:
            buf[k + 1, 0] = -1
    for k in range(g if nj else 0):
        if buf[k + 1, 0] >= 0 and buf[k + 1, 0] != buf[k + 1, 1]:
            _join(cparent, csize, jv, size, buf[k + 1, 0], buf[k + 1, 1], v)
    buf[0, 0] = nm
    return True


@njit(cache=True, inline="always")
def _cluster_pair(parent, tainted, cparent, a, b):  # pragma: no cover - compiled
    """The clusters (low, high) of segments ``a`` and ``b`` if both are tainted and in
    distinct clusters, else (-1, -1)."""
    ra, rb = _find(parent, a), _find(parent, b)
    if ra == rb or not (tainted[ra] and tainted[rb]):
        return -1, -1
    ca, cb = _find(cparent, ra), _find(cparent, rb)
    if ca == cb:
        return -1, -1
    return (ca, cb) if ca < cb else (cb, ca)


@njit(cache=True, inline="always")
def _cluster_of_member(parent, tainted, cparent, x):  # pragma: no cover - compiled
    """The cluster that tainted root ``x`` joined, or -1 if it is no member."""
    c = _find(cparent, x)
    return c if parent[x] == x and tainted[x] and c != x else -1


@njit(cache=True)
def _residual(parent, tainted, cparent, jv, ea, eb, wmax, threshold
              ):  # pragma: no cover - compiled
    """The residual graph, its segments collapsed into their clusters: (A, B, weight) with
    A < B, one row per pair of distinct clusters with an edge above ``threshold`` (their max
    weight), and one per cluster member (member, cluster, weight of its join).

    Exact for the parent: a member's other edges all lie below its join (an edge above it
    would have tainted it sooner; one at it, into another cluster, would have kept it out),
    and from its join on it is one segment with its cluster in the global run."""
    n = parent.size
    nc = nj = 0
    for e in range(ea.size):
        if wmax[e] > threshold:
            nc += _cluster_pair(parent, tainted, cparent, ea[e], eb[e])[0] >= 0
    for x in range(n):
        nj += _cluster_of_member(parent, tainted, cparent, x) >= 0
    keys, vals, cap = _map_new(nc)
    A, B = np.empty(nc + nj, np.int64), np.empty(nc + nj, np.int64)
    W = np.empty(nc + nj, np.float32)
    k = 0
    for e in range(ea.size):
        if wmax[e] > threshold:
            lo, hi = _cluster_pair(parent, tainted, cparent, ea[e], eb[e])
            if lo < 0:
                continue
            pair = np.int64(lo) * n + hi
            i = _map_slot(keys, cap, pair)
            if keys[i] == pair:
                W[vals[i]] = max(W[vals[i]], wmax[e])
            else:
                keys[i], vals[i] = pair, k
                A[k], B[k], W[k] = lo, hi, wmax[e]
                k += 1
    for x in range(n):
        c = _cluster_of_member(parent, tainted, cparent, x)
        if c >= 0:
            A[k], B[k], W[k] = min(x, c), max(x, c), np.float32(jv[x])
            k += 1
    return A[:k], B[:k], W[:k]


@njit(cache=True)
def _single_linkage(size, key, rank, sorted_keys, frozen, hist, ea, eb, wmax, threshold,
                    size_thr, dust, nan):  # pragma: no cover - compiled
    """:func:`single_linkage_dense`, given the edges above ``threshold`` first and in
    descending order, the keys' ranks and the keys sorted; ``nan``: whether a weight was
    NaN."""
    n = size.size
    size, hist, tainted = size.copy(), hist.copy(), frozen.copy()
    out = np.zeros((n, 4), np.float64)
    root = np.arange(n)
    final_val = np.zeros(n, np.uint64)
    ok = n < 2**31 and not nan
    for i in range(1, n):
        ok &= sorted_keys[i] != sorted_keys[i - 1]
    if not ok:
        none = np.zeros(0, np.int64)
        return (False, root, tainted, final_val, np.zeros(0, np.bool_), none, none,
                np.zeros(0, np.float32), hist, size, key.copy(), out[:0])
    key = rank.copy()  # keys as ranks: they order and merge alike
    m = 0  # the edges above threshold
    while m < wmax.size and wmax[m] > threshold:
        m += 1
    parent = np.arange(n).astype(np.int32)
    cparent = parent.copy()
    csize = size.copy()
    jv = np.zeros(n, np.float64)
    fresh = np.zeros(n, np.bool_)
    buf = np.empty((_SMALL_GROUP + 1, 2), np.int64)
    ghead = np.full(n, -1, np.int64)
    gnext = np.empty(0, np.int64)
    nm = i = 0
    while i < m:
        j = i + 1
        while j < m and wmax[j] == wmax[i]:
            j += 1
        if j == i + 1:
            ra, rb = _find(parent, ea[i]), _find(parent, eb[i])
            if ra != rb:
                nm = _decide(parent, size, key, tainted, cparent, csize, jv, ra, rb,
                             np.float64(wmax[i]), out, nm, size_thr, False)[0]
        elif not _disjoint_group(i, j, ea, eb, np.float64(wmax[i]), parent, size, key, tainted,
                                 cparent, csize, jv, out, nm, size_thr, buf):
            es = np.arange(i, j)
            if gnext.size < 2 * es.size:
                gnext = np.empty(2 * es.size, np.int64)
            nm = _tie_group(es, ea, eb, np.float64(wmax[i]), parent, size, key, tainted,
                            cparent, csize, jv, out, nm, size_thr, ghead, gnext, fresh)
        else:
            nm = buf[0, 0]
        i = j
    for i in range(nm):
        o, r = np.int64(out[i, 0]), np.int64(out[i, 1])
        for j in range(hist.shape[1]):
            hist[r, j] += hist[o, j]
    key = sorted_keys[key]
    for i in range(n):
        root[i] = _find(parent, i)
        if root[i] == i:
            final_val[i] = 0 if size[i] < dust else key[i] + 1
    A, B, W = _residual(parent, tainted, cparent, jv, ea, eb, wmax, threshold)
    return (True, root, tainted, final_val, np.ones(A.size, np.bool_), A, B, W, hist, size, key,
            out[:nm].copy())
