"""Global (single-chunk) affinity watershed of Zlateski & Seung (2015), as used by abiss.

Pure arrays in, arrays out; no I/O.  The steps are exposed one by one so that the chunked
watershed can reuse them:

1. :func:`steepest_ascent`: the steepest-ascent graph, one 6-bit mask per voxel.
2. :func:`basins`: plateau division and basin labelling.
3. :func:`region_graph`: max-affinity region graph between basins.
4. :func:`size_dependent_single_linkage`: size-dependent single linkage, then dust removal.
5. :func:`watershed`: all of the above.

Affinity convention (chunkflow/abiss): ``aff`` has shape ``(X, Y, Z, 3)``; ``aff[x, y, z, c]`` is
the affinity between voxel ``(x, y, z)`` and its predecessor along axis ``c``.  On the first plane
along axis ``c`` there is no predecessor, so that channel is never read there (no edge exists).
``aff`` is used as float32 (converted if needed); thresholds are compared in float32.

Graph bits: bit ``d`` of a voxel's mask is the edge towards its neighbour in direction ``d``:
``0: -x, 1: -y, 2: -z, 3: +x, 4: +y, 5: +z`` (abiss' order); the opposite of ``d`` is
``(d + 3) % 6``.

Determinism: every step is a fixed function of its inputs (no dependence on scan order for
plateau division, ties broken by the direction order above, by lower id, and by lower linear
index), so results are reproducible bit for bit.  Linear index means C order over ``(X, Y, Z)``.
"""

from __future__ import annotations

import cc3d
import fastremap
import numpy as np
from numba import njit

__all__ = [
    "DIRECTION_BITS",
    "basins",
    "region_graph",
    "size_dependent_single_linkage",
    "steepest_ascent",
    "watershed",
]

DIRECTION_BITS = (1, 2, 4, 8, 16, 32)  # -x, -y, -z, +x, +y, +z
# cc3d 6-connected voxel-graph bits for the same directions (cc3d: +x, -x, +y, -y, +z, -z).
_CC3D_BITS = np.array([2, 8, 32, 1, 4, 16], dtype=np.uint8)


@njit(cache=True)
def _steepest_ascent(aff, high, low, out):  # pragma: no cover - compiled
    X, Y, Z = out.shape
    vals = np.empty(6, dtype=aff.dtype)
    for x in range(X):
        for y in range(Y):
            for z in range(Z):
                # Missing edges get `low`, which never counts as an edge.
                vals[0] = aff[x, y, z, 0] if x > 0 else low
                vals[1] = aff[x, y, z, 1] if y > 0 else low
                vals[2] = aff[x, y, z, 2] if z > 0 else low
                vals[3] = aff[x + 1, y, z, 0] if x < X - 1 else low
                vals[4] = aff[x, y + 1, z, 1] if y < Y - 1 else low
                vals[5] = aff[x, y, z + 1, 2] if z < Z - 1 else low
                m = low
                for d in range(6):
                    v = vals[d]
                    if v >= high:
                        v = high
                    vals[d] = v
                    if v > m:
                        m = v
                bits = np.uint32(0)
                if m > low:
                    for d in range(6):
                        if vals[d] == m:
                            bits |= np.uint32(1 << d)
                out[x, y, z] = bits


def steepest_ascent(aff: np.ndarray, high: float, low: float) -> np.ndarray:
    """Steepest-ascent graph: for each voxel, a ``uint32`` mask of its maximal edges.

    Each edge's affinity is clamped to ``high`` (values ``>= high`` count as ``high``, so a region
    joined by such edges is one plateau).  Edges with affinity ``<= low`` are absent.  A voxel's
    mask holds every direction whose clamped affinity equals the voxel's maximum (ties are all
    kept: they form plateaus); it is 0 when every edge is ``<= low`` (a singleton).  NaN
    affinities are never edges.  Returns a C-ordered ``(X, Y, Z)`` array; bits as in the module
    docstring.
    """
    aff = _check_aff(aff)
    if not low <= high:
        raise ValueError(f"need low <= high, got low={low}, high={high}")
    out = np.empty(aff.shape[:3], dtype=np.uint32)
    _steepest_ascent(aff, aff.dtype.type(high), aff.dtype.type(low), out)
    return out


def _check_aff(aff: np.ndarray) -> np.ndarray:
    aff = np.asarray(aff)
    if aff.ndim != 4 or aff.shape[3] != 3:
        raise ValueError(f"aff must have shape (X, Y, Z, 3), got {aff.shape}")
    return aff.astype(np.float32, copy=False)


@njit(cache=True)
def _divide_plateaus(flat, offsets):  # pragma: no cover - compiled
    """Undirected cc3d voxel graph of the plateau-divided steepest-ascent graph."""
    n = flat.size
    dist = np.full(n, -1, dtype=np.int32)
    queue = np.empty(n, dtype=np.int64)
    tail = 0
    # Exits: voxels with a strict ascent (an edge not returned by the neighbour).
    for i in range(n):
        b = flat[i]
        if b == 0:
            continue
        for d in range(6):
            if (b >> d) & 1 and not (flat[i + offsets[d]] >> ((d + 3) % 6)) & 1:
                dist[i] = 0
                queue[tail] = i
                tail += 1
                break
    # Breadth-first distance to the nearest exit inside each plateau.  A non-exit voxel's edges
    # are all bidirectional, so a neighbour j pointing at i (and unreached) is in i's plateau.
    head = 0
    while head < tail:
        i = queue[head]
        head += 1
        b = flat[i]
        for d in range(6):
            if (b >> d) & 1:
                j = i + offsets[d]
                if dist[j] == -1 and (flat[j] >> ((d + 3) % 6)) & 1:
                    dist[j] = dist[i] + 1
                    queue[tail] = j
                    tail += 1
    vcg = np.zeros(n, dtype=np.uint8)
    for i in range(n):
        b = flat[i]
        if b == 0:
            continue
        di = dist[i]
        for d in range(6):
            if not (b >> d) & 1:
                continue
            j = i + offsets[d]
            if di == 0:
                keep = not (flat[j] >> ((d + 3) % 6)) & 1  # first strict ascent
            elif di > 0:
                keep = dist[j] == di - 1  # first step towards the nearest exit
            else:
                keep = True  # maximal plateau: keep all its (bidirectional) edges
            if keep:
                vcg[i] |= _CC3D_BITS[d]
                vcg[j] |= _CC3D_BITS[(d + 3) % 6]
                if di >= 0:
                    break
    return vcg


@njit(cache=True)
def _first_occurrence_relabel(comps, graph):  # pragma: no cover - compiled
    """Components numbered 1..n by first voxel in memory order; graph-0 voxels get 0.

    cc3d's ids are dense, so a lookup table beats fastremap.renumber's hash map (~20x here).
    """
    lut = np.zeros(comps.max() + 1 if comps.size else 1, dtype=np.uint64)
    labels = np.zeros(comps.size, dtype=np.uint64)
    counts = np.zeros(comps.size + 1, dtype=np.uint64)
    n = 0
    for i in range(comps.size):
        if graph[i] == 0:
            counts[0] += 1
            continue
        c = comps[i]
        if lut[c] == 0:
            n += 1
            lut[c] = n
        labels[i] = lut[c]
        counts[lut[c]] += 1
    return labels, counts[: n + 1]


def basins(graph: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Divide plateaus and label basins of a steepest-ascent graph.

    Plateau division (Zlateski & Seung 2015): a voxel with a strict ascent (an edge its
    neighbour does not return) keeps only the first such edge in direction order; any other
    plateau voxel keeps only the first edge towards a neighbour one step closer (breadth-first,
    within the plateau) to an exit; voxels of a plateau with no exit (a maximal plateau, which
    includes any local maximum) keep all their edges.  Basins are the connected components of
    that graph (found with cc3d): each one holds exactly one maximal plateau and every voxel whose
    ascent ends there.  The rule depends only on the graph, not on scan order.

    Singletons (mask 0: every edge ``<= low``) get label 0, as in abiss.  All other voxels get
    labels ``1..n``, numbered in order of each basin's first voxel in C order.  Every basin is
    6-connected.

    Returns ``(labels, counts)``: ``labels`` is a C-ordered ``uint64`` ``(X, Y, Z)`` array and
    ``counts`` a ``uint64`` array of length ``n + 1`` with ``counts[k]`` voxels labelled ``k``
    (``counts[0]`` = number of singletons).
    """
    graph = np.array(graph, dtype=np.uint32, order="C")  # a copy: border bits are cleared
    if graph.ndim != 3:
        raise ValueError(f"graph must be 3-D, got shape {graph.shape}")
    graph &= np.uint32(63)
    for axis in range(3):  # no edge leaves the volume, whatever the input says
        np.moveaxis(graph, axis, 0)[0] &= np.uint32(~(1 << axis) & 63)
        np.moveaxis(graph, axis, 0)[-1] &= np.uint32(~(1 << (axis + 3)) & 63)
    _, Y, Z = graph.shape
    offsets = np.array([-Y * Z, -Z, -1, Y * Z, Z, 1], dtype=np.int64)
    vcg = _divide_plateaus(graph.reshape(-1), offsets).reshape(graph.shape)
    comps = cc3d.color_connectivity_graph(vcg, connectivity=6)
    labels, counts = _first_occurrence_relabel(comps.reshape(-1), graph.reshape(-1))
    return labels.reshape(graph.shape), counts


@njit(cache=True)
def _boundary_buckets(aff, labels, n, count, fill):  # pragma: no cover - compiled
    """(hi, affinity) per voxel face between distinct nonzero (dense) labels lo < hi, in lo
    buckets in the order met. ``count``: only count the entries per lo (the first result), else
    ``fill`` holds where the buckets start (advanced as they fill). Consecutive repeats of a
    pair along z fold into one entry (keeping the max): shorter lists, the same result."""
    X, Y, Z = labels.shape
    counts = np.zeros(n + 2 if count else 0, dtype=np.int64)
    his = np.empty(0 if count else fill[n + 1], dtype=np.int64)
    vals = np.empty(his.size, dtype=np.float32)
    last = np.full((3, 3), -1, dtype=np.int64)  # per channel: lo, hi, entry of its last pair
    for x in range(X):
        for y in range(Y):
            last[:, 0] = -1
            for z in range(Z):
                a = np.int64(labels[x, y, z])
                for c in range(3):
                    if a == 0 or (x, y, z)[c] == 0:
                        continue
                    b = np.int64(labels[x - (c == 0), y - (c == 1), z - (c == 2)])
                    if b == 0 or b == a:
                        continue
                    lo, hi = (a, b) if a < b else (b, a)
                    if last[c, 0] == lo and last[c, 1] == hi:
                        if not count:
                            vals[last[c, 2]] = max(vals[last[c, 2]], aff[x, y, z, c])
                    elif count:
                        counts[lo + 1] += 1
                        last[c, 0], last[c, 1] = lo, hi
                    else:
                        k = fill[lo]
                        fill[lo] = k + 1
                        his[k], vals[k] = hi, aff[x, y, z, c]
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
    ulo, uhi, uw = np.empty(m, np.int64), np.empty(m, np.int64), np.empty(m, np.float32)
    m = 0
    for k in range(n + 1):
        first = m
        for j in range(start[k], start[k + 1]):
            h = bh[j]
            if owner[h] != k:
                owner[h], slot[h] = k, m
                ulo[m], uhi[m], uw[m] = k, h, bw[j]
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


def _max_per_pair(aff: np.ndarray, dense: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Unique face pairs (lo, hi) of ``dense`` (ids <= n), max affinity, by (-w, lo, hi)."""
    start = np.cumsum(_boundary_buckets(aff, dense, n, True, np.zeros(0, np.int64))[0])
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
    edges, weights = _max_per_pair(aff, dense, inverse.size - 1)
    same = np.array_equal(inverse, np.arange(inverse.size, dtype=np.uint64))
    return (edges if same else inverse[edges]), weights


@njit(cache=True)
def _find(parent, i):  # pragma: no cover - compiled
    root = i
    while parent[root] != root:
        root = parent[root]
    while parent[i] != root:
        nxt = parent[i]
        parent[i] = root
        i = nxt
    return root


@njit(cache=True)
def _single_linkage(edges, weights, sizes, size_threshold, low, dust):  # pragma: no cover
    n = sizes.size
    parent = np.arange(n)
    size = sizes.astype(np.int64)
    for k in range(edges.shape[0]):
        if not weights[k] > low:
            break
        a = _find(parent, np.int64(edges[k, 0]))
        b = _find(parent, np.int64(edges[k, 1]))
        if a == b or a == 0 or b == 0:
            continue
        if size[a] < size_threshold or size[b] < size_threshold:
            if b < a:
                a, b = b, a
            parent[b] = a  # the lower id is the root
            size[a] += size[b]
    remap = np.zeros(n, dtype=np.uint64)
    root_id = np.zeros(n, dtype=np.uint64)
    next_id = np.uint64(1)
    for i in range(1, n):
        if sizes[i] == 0:
            continue
        r = _find(parent, i)
        if size[r] < dust:
            continue
        if root_id[r] == 0:
            root_id[r] = next_id
            next_id += np.uint64(1)
        remap[i] = root_id[r]
    return remap


def size_dependent_single_linkage(
    edges: np.ndarray,
    weights: np.ndarray,
    sizes: np.ndarray,
    size_threshold: int,
    low: float,
    dust: int = 0,
) -> np.ndarray:
    """Zlateski's ``merge_segments``: size-dependent single linkage, then dust removal.

    Edges are visited in the given order, which must be by descending weight (as
    :func:`region_graph` returns them), and only while ``weight > low``.  The two current
    segments of an edge are merged when they differ and at least one has fewer than
    ``size_threshold`` voxels.  Afterwards every segment with fewer than ``dust`` voxels is removed
    (mapped to 0) whether or not it merged; so is id 0 and any id whose size is 0.

    ``sizes[i]`` is the voxel count of id ``i`` (``sizes[0]``, background, is ignored) and edges
    must hold ids below ``len(sizes)``.  Returns ``remap`` (``uint64``, same length as ``sizes``)
    mapping every old id to its new id; surviving segments get ids ``1..k`` numbered in order of
    their lowest old id.
    """
    edges = np.asarray(edges, dtype=np.uint64).reshape(-1, 2)
    weights = np.asarray(weights)
    sizes = np.asarray(sizes, dtype=np.int64)
    if weights.shape != (edges.shape[0],):
        raise ValueError("need one weight per edge")
    if weights.size > 1 and np.any(weights[1:] > weights[:-1]):
        raise ValueError("edges must be sorted by descending weight")
    if edges.size and edges.max() >= sizes.size:
        raise ValueError("edge id out of range of sizes")
    return _single_linkage(
        edges, weights, sizes, np.int64(size_threshold), weights.dtype.type(low), np.int64(dust)
    )


def watershed(
    aff: np.ndarray, high: float, low: float, size: int, dust: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Whole-volume affinity watershed: steepest ascent, basins, single linkage, dust removal.

    ``high``/``low`` as in :func:`steepest_ascent`; ``size`` is the single-linkage size
    threshold and ``dust`` the minimum final segment size (:func:`size_dependent_single_linkage`;
    abiss passes the size threshold as both).

    Returns ``(labels, edges, weights, sizes)``:

    * ``labels``: C-ordered ``uint64`` ``(X, Y, Z)``; 0 = singleton or dust; segments ``1..k``
      numbered in order of their first voxel in C order; each segment is 6-connected.
    * ``edges``, ``weights``: the max-affinity region graph of ``labels`` (equal to
      ``region_graph(aff, labels)``): every adjacent pair, including pairs joined by edges
      ``<= low``, sorted by descending weight then ids.
    * ``sizes``: ``uint64`` of length ``k + 1``; ``sizes[0]`` counts voxels labelled 0.
    """
    aff = _check_aff(aff)
    labels, counts = basins(steepest_ascent(aff, high, low))
    edges, weights = region_graph(aff, labels)
    remap = size_dependent_single_linkage(edges, weights, counts, size, low, dust)
    labels = remap[labels]
    final_sizes = np.bincount(remap.astype(np.intp), weights=counts, minlength=int(remap.max()) + 1)
    edges, weights = region_graph(aff, labels)
    return labels, edges, weights, final_sizes.astype(np.uint64)
