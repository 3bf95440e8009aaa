"""The compiled heart of :func:`pipeline.regiongraph.resolve` (numba; dense indices only).

Greedy merging pops edges by (value desc, touches-tainted first, endpoint keys, edge index).
The queue is an indexed 4-ary heap (at most one entry per edge, updated in place), so after a
merge only the edges whose entry changes are re-queued: the edges moved from the absorbed
segment (their keys change), the edges they were folded into (their values change) and the
rejected edges of the survivor (they become candidates again). With single linkage, values
only move between edges, so keys and taint matter only to an edge whose value ties another's;
the others are not re-queued for them. Edges between two tainted segments leave the queue.
Adjacency and rejected-edge lists are linked lists over two slots per edge (one per endpoint).
"""

from __future__ import annotations

import numpy as np
from numba import njit

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


# ---- the indexed heap -------------------------------------------------------------------
# Row i of H is one queued edge: (order code of -value, clean, lo key, hi key, edge), compared
# lexicographically; pos[edge] is its row or -1. Edges valued <= the threshold are never
# queued: the loop stops at the first such edge, so they could not change what is merged.

_FLIP = np.int64(0x7FFFFFFFFFFFFFFF)


@njit(cache=True, inline="always")
def _code(negv):  # pragma: no cover - compiled
    """int64 whose order is the order of the float ``negv`` (-0.0 and 0.0 equal)."""
    b = np.float64(negv + 0.0).view(np.int64)
    return b if b >= 0 else b ^ _FLIP


@njit(cache=True, inline="always")
def _less(a0, a1, a2, a3, a4, b0, b1, b2, b3, b4):  # pragma: no cover - compiled
    if a0 != b0:
        return a0 < b0
    if a1 != b1:
        return a1 < b1
    if a2 != b2:
        return a2 < b2
    if a3 != b3:
        return a3 < b3
    return a4 < b4


@njit(cache=True, inline="always")
def _copy_row(H, pos, i, j):  # pragma: no cover - compiled
    H[i, 0], H[i, 1], H[i, 2], H[i, 3], H[i, 4] = H[j, 0], H[j, 1], H[j, 2], H[j, 3], H[j, 4]
    pos[H[i, 4]] = i


@njit(cache=True)
def _sift_down(H, pos, n, i, x0, x1, x2, x3, x4):  # pragma: no cover - compiled
    """Put the entry (x0, ..., x4) into hole ``i``, moving it down as far as it goes."""
    while True:
        c = 4 * i + 1
        if c >= n:
            break
        for d in range(c + 1, min(c + 4, n)):
            if _less(H[d, 0], H[d, 1], H[d, 2], H[d, 3], H[d, 4],
                     H[c, 0], H[c, 1], H[c, 2], H[c, 3], H[c, 4]):
                c = d
        if not _less(H[c, 0], H[c, 1], H[c, 2], H[c, 3], H[c, 4], x0, x1, x2, x3, x4):
            break
        _copy_row(H, pos, i, c)
        i = c
    H[i, 0], H[i, 1], H[i, 2], H[i, 3], H[i, 4] = x0, x1, x2, x3, x4
    pos[x4] = i


@njit(cache=True)
def _place(H, pos, n, i, x0, x1, x2, x3, x4):  # pragma: no cover - compiled
    """Put the entry (x0, ..., x4) into hole ``i`` of a heap of ``n`` rows, sifting it."""
    moved = False
    while i > 0:
        p = (i - 1) >> 2
        if not _less(x0, x1, x2, x3, x4, H[p, 0], H[p, 1], H[p, 2], H[p, 3], H[p, 4]):
            break
        _copy_row(H, pos, i, p)
        i = p
        moved = True
    if moved:
        H[i, 0], H[i, 1], H[i, 2], H[i, 3], H[i, 4] = x0, x1, x2, x3, x4
        pos[x4] = i
    else:
        _sift_down(H, pos, n, i, x0, x1, x2, x3, x4)


@njit(cache=True)
def _remove(H, pos, n, e):  # pragma: no cover - compiled
    """Drop edge ``e`` from the heap if queued; the new heap size."""
    i = pos[e]
    if i < 0:
        return n
    pos[e] = -1
    n -= 1
    if i != n:
        _place(H, pos, n, i, H[n, 0], H[n, 1], H[n, 2], H[n, 3], H[n, 4])
    return n


@njit(cache=True)
def _push(H, pos, n, e, mode, threshold, A, B, key, wmax, wsum, wcnt,
          tainted):  # pragma: no cover - compiled
    """Queue edge ``e`` with its current entry (replacing its old one); the new heap size."""
    v = _value(mode, e, wmax, wsum, wcnt)
    if v <= threshold:
        return _remove(H, pos, n, e)
    ka = np.int64(key[A[e]])
    kb = np.int64(key[B[e]])
    lo, hi = (ka, kb) if ka < kb else (kb, ka)
    clean = np.int64(0 if (tainted[A[e]] or tainted[B[e]]) else 1)
    i = pos[e]
    if i < 0:
        i = n
        n += 1
    _place(H, pos, n, i, _code(-v), clean, lo, hi, np.int64(e))
    return n


# ---- a hash map of int64 >= 0 to int32 (open addressing, linear probing) ----------------
# ``cap`` slots (at most 2/3 full), a key's home slot by multiply-shift hashing.

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


@njit(cache=True)
def _map_new(m):  # pragma: no cover - compiled
    cap = max(16, m + m // 2 + 2)
    return np.full(cap, -1, np.int64), np.empty(cap, np.int32), cap


@njit(cache=True, inline="always")
def _map_home(k, cap):  # pragma: no cover - compiled
    return np.int64((((np.uint64(k) * _GOLDEN) >> np.uint64(32)) * np.uint64(cap))
                    >> np.uint64(32))


@njit(cache=True, inline="always")
def _map_slot(keys, cap, k):  # pragma: no cover - compiled
    """The slot holding ``k``, or the empty slot where it would go."""
    i = _map_home(k, cap)
    while keys[i] != -1 and keys[i] != k:
        i += 1
        if i == cap:
            i = 0
    return i


@njit(cache=True)
def _map_del(keys, vals, cap, i):  # pragma: no cover - compiled
    """Empty slot ``i``, shifting back the entries that probed past it."""
    j = i
    while True:
        j += 1
        if j == cap:
            j = 0
        if keys[j] == -1:
            break
        h = _map_home(keys[j], cap)
        if (j - h) % cap >= (j - i) % cap:
            keys[i] = keys[j]
            vals[i] = vals[j]
            i = j
    keys[i] = -1


# ---- lists over edge slots --------------------------------------------------------------


@njit(cache=True)
def _unreject(f, A, B, rejected, rhead, rprev, rnext):  # pragma: no cover - compiled
    """Clear ``f``'s rejected flag and unlink its two slots from their endpoints' lists."""
    rejected[f] = False
    for s, owner in ((2 * f, A[f]), (2 * f + 1, B[f])):
        p, q = rprev[s], rnext[s]
        if p >= 0:
            rnext[p] = q
        else:
            rhead[owner] = q
        if q >= 0:
            rprev[q] = p
        rprev[s] = -1
        rnext[s] = -1


@njit(cache=True)
def _reject(f, A, B, rejected, rhead, rprev, rnext):  # pragma: no cover - compiled
    rejected[f] = True
    for s, owner in ((2 * f, A[f]), (2 * f + 1, B[f])):
        q = rhead[owner]
        rprev[s] = -1
        rnext[s] = q
        if q >= 0:
            rprev[q] = s
        rhead[owner] = s


@njit(cache=True)
def _taint(x, tainted, head, nxt, alive, rejected, H, pos, n, mode, threshold, A, B,
           key, wmax, wsum, wcnt, tie):  # pragma: no cover - compiled
    """Taint ``x`` and, transitively, everything it reaches through rejected edges; re-queue
    their queued edges whose value ``tie``s with another's, so that, among equal values, edges
    touching tainted segments come first. (Other edges of theirs keep their place; those now
    between two tainted segments leave the queue: they could only pop to no effect.)
    """
    stack = [x]
    while len(stack):
        y = stack.pop()
        if tainted[y]:
            continue
        tainted[y] = True
        s = head[y]
        while s >= 0:
            f = s >> 1
            s = nxt[s]
            if not alive[f] or (A[f] != y and B[f] != y):
                continue
            other = B[f] if A[f] == y else A[f]
            if tainted[other]:  # it could only pop to no effect
                n = _remove(H, pos, n, f)
                continue
            if tie[f] and pos[f] >= 0:
                n = _push(H, pos, n, f, mode, threshold, A, B, key, wmax, wsum, wcnt, tainted)
            if rejected[f] and mode == MODE_MEAN:  # single linkage never revives a rejection
                stack.append(other)
    return n


@njit(cache=True)
def resolve_dense(size, key, frozen, hist, ea, eb, wmax, wsum, wcnt, mode, threshold,
                  size_thr, dust, size_limit, size_aff, sem_aff):  # pragma: no cover
    """Greedy merging on dense indices; see :func:`pipeline.regiongraph.resolve`.

    Returns (root, tainted, final value, residual-edge mask, the edge arrays A, B, wmax, wsum,
    wcnt and the segment arrays hist, size, key as merged, and the merges (o, r, value, size)).
    ``ea`` and ``eb`` become A and B (changed in place); the other inputs are not changed.
    """
    n = size.size
    m = ea.size
    size = size.copy()
    key = key.copy()
    hist = hist.copy()
    parent = np.arange(n)
    tainted = frozen.copy()
    A = ea
    B = eb
    wmax = wmax.copy()
    mean = mode == MODE_MEAN
    if mean:  # single linkage neither reads nor changes the sums and counts
        wsum = wsum.copy()
        wcnt = wcnt.copy()
    alive = np.ones(m, np.bool_)
    rejected = np.zeros(m, np.bool_)
    # A rejected edge is queued again when its survivor merges. With single linkage that is
    # moot: it was rejected because both sides had reached the size threshold, sizes only
    # grow, so it would be rejected again; and single linkage never taints through a
    # rejection. So only mean affinity keeps the lists of rejected edges.
    requeue = mode != MODE_SINGLE_LINKAGE
    # Single-linkage weights only move between edges (a max): an edge holding a value no
    # other edge had is ordered by it alone, so its keys and taint may change unqueued.
    tie = np.ones(m, np.bool_)
    if mode == MODE_SINGLE_LINKAGE:
        tie[:] = False
        q = np.flatnonzero(~(wmax <= threshold))
        q = q[np.argsort(wmax[q])]
        for i in range(q.size):
            if np.isnan(wmax[q[i]]) or (i and wmax[q[i]] == wmax[q[i - 1]]):
                tie[q[i]] = tie[q[i - 1]] = True
    head = np.full(n, -1, np.int64)
    nxt = np.empty(2 * m, np.int32)  # int32 indices: m < 2**30 (checked by the caller)
    rhead = np.full(n if requeue else 0, -1, np.int64)
    rprev = np.full(2 * m if requeue else 0, -1, np.int64)
    rnext = np.full(2 * m if requeue else 0, -1, np.int64)
    mkeys, mvals, mcap = _map_new(m)
    for e in range(m):
        lo, hi = (A[e], B[e]) if A[e] < B[e] else (B[e], A[e])
        A[e], B[e] = lo, hi
        i = _map_slot(mkeys, mcap, lo * n + hi)
        mkeys[i] = lo * n + hi
        mvals[i] = e
        nxt[2 * e] = head[lo]
        head[lo] = 2 * e
        nxt[2 * e + 1] = head[hi]
        head[hi] = 2 * e + 1
    H = np.empty((m, 5), np.int64)
    pos = np.full(m, -1, np.int32)
    hn = 0
    for e in range(m):
        v = _value(mode, e, wmax, wsum, wcnt)
        if not v <= threshold:  # as in _push
            ka = np.int64(key[A[e]])
            kb = np.int64(key[B[e]])
            H[hn, 0] = _code(-v)
            H[hn, 1] = 0 if (tainted[A[e]] or tainted[B[e]]) else 1
            H[hn, 2], H[hn, 3] = (ka, kb) if ka < kb else (kb, ka)
            H[hn, 4] = e
            pos[e] = hn
            hn += 1
    for i in range((hn - 2) // 4, -1, -1):
        _sift_down(H, pos, hn, i, H[i, 0], H[i, 1], H[i, 2], H[i, 3], H[i, 4])
    out = np.zeros((n, 4), np.float64)
    nm = 0
    while hn > 0:
        e = H[0, 4]
        hn = _remove(H, pos, hn, e)
        if not alive[e]:
            continue
        val = _value(mode, e, wmax, wsum, wcnt)
        ra, rb = A[e], B[e]
        if mode == MODE_SINGLE_LINKAGE and size[ra] >= size_thr and size[rb] >= size_thr:
            # Certain already: sizes here are lower bounds of the global ones at this value
            # (a frozen segment only grows by what lies outside), and both are too big.
            if requeue:
                _reject(e, A, B, rejected, rhead, rprev, rnext)
            else:
                rejected[e] = True
            continue
        if tainted[ra] or tainted[rb]:
            for x in (ra, rb):
                hn = _taint(x, tainted, head, nxt, alive, rejected, H, pos, hn, mode,
                            threshold, A, B, key, wmax, wsum, wcnt, tie)
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
            if requeue:
                _reject(e, A, B, rejected, rhead, rprev, rnext)
            else:
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
        out[nm, 0], out[nm, 1], out[nm, 2], out[nm, 3] = o, r, val, size[r]
        nm += 1
        alive[e] = False
        _map_del(mkeys, mvals, mcap, _map_slot(mkeys, mcap, A[e] * n + B[e]))
        s = head[o]
        while s >= 0:
            f = s >> 1
            ns = nxt[s]
            if alive[f] and (A[f] == o or B[f] == o):
                was_rejected = rejected[f]
                if was_rejected and requeue:
                    _unreject(f, A, B, rejected, rhead, rprev, rnext)
                c = B[f] if A[f] == o else A[f]
                _map_del(mkeys, mvals, mcap, _map_slot(mkeys, mcap, A[f] * n + B[f]))
                lo, hi = (r, c) if r < c else (c, r)
                k = lo * n + hi
                i = _map_slot(mkeys, mcap, k)
                if mkeys[i] == k:
                    g = mvals[i]
                    old = wmax[g]
                    wmax[g] = max(wmax[g], wmax[f])
                    if wmax[g] != old:  # g holds f's value now (or NaN)
                        tie[g] |= tie[f]
                    if mean:
                        wsum[g] += wsum[f]
                        wcnt[g] += wcnt[f]
                    alive[f] = False
                    hn = _remove(H, pos, hn, f)
                    if rejected[g] and requeue:
                        _unreject(g, A, B, rejected, rhead, rprev, rnext)
                    hn = _push(H, pos, hn, g, mode, threshold, A, B, key, wmax, wsum, wcnt,
                               tainted)
                else:
                    A[f], B[f] = lo, hi
                    mkeys[i] = k
                    mvals[i] = f
                    nxt[s] = head[r]
                    head[r] = s
                    if tie[f] or was_rejected:
                        hn = _push(H, pos, hn, f, mode, threshold, A, B, key, wmax, wsum, wcnt,
                                   tainted)
            s = ns
        head[o] = -1
        if requeue:
            s = rhead[r]
            while s >= 0:
                f = s >> 1
                ns = rnext[s]
                _unreject(f, A, B, rejected, rhead, rprev, rnext)
                hn = _push(H, pos, hn, f, mode, threshold, A, B, key, wmax, wsum, wcnt,
                           tainted)
                s = ns
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
    return (root, tainted, final_val, res, A, B, wmax, wsum, wcnt, hist, size, key,
            out[:nm].copy())
