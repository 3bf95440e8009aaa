"""Chunked watershed (pure arrays): atomic chunk step, face stitching, octree node step, remap.

The basins are defined so that each voxel's decision depends only on affinities within two
voxels of it, which makes a chunked run equal a single-chunk run exactly:

- steepest ascent as in Zlateski & Seung (2015): a voxel's edges at its maximal affinity,
  clamped at ``high``; edges ``<= low`` do not exist (voxels without edges are singletons, 0);
- plateaus at ``high`` keep all their edges (one basin); on a plateau below ``high`` a voxel
  keeps its first edge (direction order -x, -y, -z, +x, +y, +z) leading to a neighbour whose
  own maximum is higher (an exit), else its first maximal edge;
- basins are the connected components of the kept edges (cc3d), stitched across chunk faces.

Then the max-affinity region graph feeds size-dependent single linkage and dust removal,
resolved up the octree by :func:`pipeline.regiongraph.resolve`. Final ids are the smallest
linear voxel index of each segment plus one (x fastest over the run bbox): the same whatever
the chunking.
"""

from __future__ import annotations

from dataclasses import dataclass

import cc3d
import numpy as np
from numba import njit

from pipeline.regiongraph import (
    MODE_SINGLE_LINKAGE,
    Edges,
    Params,
    Resolution,
    Segments,
    frozen_mask,
    resolve,
)
from pipeline.regiongraph_kernel import _map_new, _map_slot
from pipeline.watershed.kernels import face_entry, max_per_pair

MARGIN = 3
"""Affinity margin an atomic chunk reads: its own decisions and its 1-voxel shell's need 3."""

# cc3d's bits for our -x,-y,-z,+x,+y,+z when it reads our (X, Y, Z) C-ordered graph as its
# (Z, Y, X) Fortran-ordered transpose (cc3d works in Fortran order: no copies either way)
_CC3D_BITS_T = np.array([32, 8, 2, 16, 4, 1], dtype=np.uint8)


@dataclass(frozen=True)
class WatershedParams:
    """ws_high, ws_low: plateau and singleton thresholds; ws_size: single-linkage size; ws_dust."""

    high: float = 0.99
    low: float = 0.01
    size: int = 100
    dust: int = 50

    def resolve_params(self) -> Params:
        return Params(MODE_SINGLE_LINKAGE, self.low, size_threshold=self.size, dust=self.dust)


@njit(cache=True)
def _maxima(aff, high, low, lo, hi):  # pragma: no cover - compiled
    """Per voxel of [lo, hi) (one voxel inside the array): its maximal affinity clamped at
    high, and the 6-bit mask of its edges at that maximum (0 when it is <= low). NaN is never
    an edge."""
    X, Y, Z = aff.shape[0], aff.shape[1], aff.shape[2]
    mx = np.empty((X, Y, Z), np.float32)
    ties = np.empty((X, Y, Z), np.uint8)
    for x in range(lo[0], hi[0]):
        for y in range(lo[1], hi[1]):
            a, ax, ay = aff[x, y], aff[x + 1, y], aff[x, y + 1]
            mrow, trow = mx[x, y], ties[x, y]
            for z in range(lo[2], hi[2]):
                v0, v1, v2, v3, v4, v5 = a[z, 0], a[z, 1], a[z, 2], ax[z, 0], ay[z, 1], a[z + 1, 2]
                m = low  # comparisons false for NaN: never the maximum, never tied
                m = v0 if v0 > m else m
                m = v1 if v1 > m else m
                m = v2 if v2 > m else m
                m = v3 if v3 > m else m
                m = v4 if v4 > m else m
                m = v5 if v5 > m else m
                m = high if m > high else m
                mrow[z] = m
                bits = (np.uint8(v0 >= m) | (np.uint8(v1 >= m) << 1) | (np.uint8(v2 >= m) << 2)
                        | (np.uint8(v3 >= m) << 3) | (np.uint8(v4 >= m) << 4)
                        | (np.uint8(v5 >= m) << 5))
                trow[z] = bits if m > low else np.uint8(0)
    return mx, ties


@njit(cache=True)
def _bit_tables(cc_bits):  # pragma: no cover - compiled
    """Per 6-bit mask: its lowest direction, and its directions as cc3d graph bits."""
    lowest = np.zeros(64, np.int64)
    as_cc = np.zeros(64, np.uint8)
    for b in range(1, 64):
        for d in range(5, -1, -1):
            if (b >> d) & 1:
                lowest[b] = d
                as_cc[b] |= cc_bits[d]
    return lowest, as_cc


@njit(cache=True)
def _kept_graph(mx, ties, high, lo, hi, clo, chi, cc_bits):  # pragma: no cover - compiled
    """Kept-edge masks over [lo, hi) (0 elsewhere) by the plateau rule, and the cc3d graph of
    the box [clo, chi) (inside [lo, hi)): an edge of the graph if either end keeps it."""
    X, Y, Z = mx.shape
    GX, GY, GZ = chi[0] - clo[0], chi[1] - clo[1], chi[2] - clo[2]
    kept = np.zeros((X, Y, Z), np.uint8)
    graph = np.zeros((GX, GY, GZ), np.uint8)
    g, fm = graph.reshape(-1), mx.reshape(-1)
    step = np.array([-Y * Z, -Z, -1, Y * Z, Z, 1], np.int64)
    gstep = np.array([-GY * GZ, -GZ, -1, GY * GZ, GZ, 1], np.int64)
    lowest, as_cc = _bit_tables(cc_bits)
    for x in range(lo[0], hi[0]):
        gx = x - clo[0]
        for y in range(lo[1], hi[1]):
            gy = y - clo[1]
            trow, krow = ties[x, y], kept[x, y]
            base, gbase = (x * Y + y) * Z, (gx * GY + gy) * GZ - clo[2]
            row = 0 <= gx < GX and 0 <= gy < GY
            inside = 63 & ~((gx == 0) | (gy == 0) << 1 | (gx == GX - 1) << 3 | (gy == GY - 1) << 4)
            for z in range(lo[2], hi[2]):
                b = trow[z]
                if b == 0:
                    continue
                at_high = False
                if b & (b - 1):  # tied edges
                    at_high = fm[base + z] >= high
                    if not at_high:  # a plateau below high: its first exit, else first edge
                        d = lowest[b]
                        rest = b
                        while rest:
                            e = lowest[rest]
                            if fm[base + z + step[e]] > fm[base + z]:
                                d = e
                                break
                            rest &= rest - 1
                        b = np.uint8(1 << d)
                krow[z] = b
                if not (row and clo[2] <= z < chi[2]):
                    continue
                inz = inside & ~((z == clo[2]) << 2 | (z == chi[2] - 1) << 5)
                if at_high:  # its neighbours across these edges keep them too
                    g[gbase + z] |= as_cc[b & inz]
                elif b & inz:
                    d = lowest[b]
                    g[gbase + z] |= cc_bits[d]
                    g[gbase + z + gstep[d]] |= cc_bits[(d + 3) % 6]
    return kept, graph


def _steepest_ascent(aff: np.ndarray, high: float, low: float, lo: np.ndarray, hi: np.ndarray,
                     clo: np.ndarray, chi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Kept-edge masks over the box [lo, hi) (0 elsewhere; the box at least 2 voxels inside
    ``aff``) and the cc3d graph of the box [clo, chi) inside it."""
    aff = np.ascontiguousarray(aff, np.float32)
    high, low = np.float32(high), np.float32(low)
    mx, ties = _maxima(aff, high, low, lo - 1, hi + 1)
    return _kept_graph(mx, ties, high, lo, hi, clo, chi, _CC3D_BITS_T)


def kept_edges(aff: np.ndarray, high: float, low: float) -> np.ndarray:
    """Per voxel, a 6-bit mask of the steepest-ascent edges it keeps (see module docstring)."""
    shape = np.array(aff.shape[:3], np.int64)
    padded = np.zeros((*(shape + 4), 3), np.float32)
    padded[2:-2, 2:-2, 2:-2] = aff
    for c in range(3):  # no predecessor on the first plane along c
        idx = [slice(None)] * 3 + [c]
        idx[c] = 2
        padded[tuple(idx)] = 0
    two, none = np.full(3, 2, np.int64), np.zeros(3, np.int64)
    return _steepest_ascent(padded, high, low, two, two + shape, none, none)[0][
        2:-2, 2:-2, 2:-2]


@njit(cache=True)
def _basin_labels(cc, kept, m, ncc, origin, run_start,
                  run_shape):  # pragma: no cover - compiled
    """Components ``cc`` of voxels that keep an edge (``kept`` read at offset ``m``), numbered
    1..n by first voxel in C order; per basin size, key and bbox; and the region graph's
    entries per lo bucket (see :func:`pipeline.watershed.kernels.max_per_pair`)."""
    X, Y, Z = cc.shape
    counts = np.zeros(ncc + 2, np.int64)
    last = np.full((3, 3), -1, dtype=np.int64)
    lut = np.zeros(ncc + 1, np.int64)
    labels = np.zeros((X, Y, Z), np.uint64)
    size = np.zeros(ncc + 1, np.int64)
    key = np.full(ncc + 1, np.iinfo(np.uint64).max, np.uint64)
    lo = np.full((ncc + 1, 3), np.iinfo(np.int64).max, np.int64)
    hi = np.full((ncc + 1, 3), np.iinfo(np.int64).min, np.int64)
    n = 0
    for x in range(X):
        gx = origin[0] + x
        for y in range(Y):
            gy = origin[1] + y
            last[:, 0] = -1
            for z in range(Z):
                c = cc[x, y, z]
                if c == 0 or kept[x + m, y + m, z + m] == 0:
                    continue
                s = lut[c]
                if s == 0:
                    n += 1
                    lut[c] = s = n
                labels[x, y, z] = s
                for a in range(3):  # its faces toward labelled predecessors
                    flo, fhi, new = face_entry(labels, x, y, z, a, last)
                    if new:
                        counts[flo + 1] += 1
                        last[a, 0], last[a, 1] = flo, fhi
                gz = origin[2] + z
                lin = np.uint64((gx - run_start[0]) + run_shape[0] * (
                    (gy - run_start[1]) + run_shape[1] * (gz - run_start[2])))
                size[s] += 1
                if lin < key[s]:
                    key[s] = lin
                for a, g in ((0, gx), (1, gy), (2, gz)):
                    if g < lo[s, a]:
                        lo[s, a] = g
                    if g > hi[s, a]:
                        hi[s, a] = g
    return (labels, size[1:n + 1].copy(), key[1:n + 1].copy(), lo[1:n + 1].copy(),
            hi[1:n + 1].copy(), counts[:n + 2].copy())


@dataclass
class Basins:
    """An atomic chunk's basins (global ids): labels, segment table, region graph, faces."""

    labels: np.ndarray
    segments: Segments
    edges: Edges
    faces: dict[str, np.ndarray]


def watershed_basins(aff_padded: np.ndarray, origin: tuple[int, int, int],
                     shape: tuple[int, ...], id_offset: int, run_start: tuple[int, ...],
                     run_shape: tuple[int, ...], params: WatershedParams) -> Basins:
    """The first half of an atomic chunk's level-0 step: steepest ascent, basins, the max
    region graph and the face planes (the affinities are not needed after it).

    ``aff_padded`` covers the chunk (``origin``, ``shape``) grown by :data:`MARGIN` on every
    side; outside the run it is 0, and channel c is 0 on the run's first plane along c. Basin
    ids are ``id_offset + 1..n``, unique across chunks without coordination.
    """
    m = MARGIN
    lo = np.array([m] * 3, np.int64)
    hi = np.array([m + s for s in shape], np.int64)
    # kept on the chunk and its high shell (for the faces); the graph of the chunk
    kept, graph = _steepest_ascent(aff_padded, params.high, params.low, lo, hi + 1, lo, hi)
    cc = cc3d.color_connectivity_graph(graph.T, connectivity=6).T  # C order, no copies
    labels, size, key, slo, shi, counts = _basin_labels(
        cc, kept, m, int(cc.max()) if cc.size else 0, np.array(origin, np.int64),
        np.array(run_start, np.int64), np.array(run_shape, np.int64))
    del graph, cc  # the chunk's peak memory comes later, in the region graph and resolve
    n = len(size)
    off = np.uint64(id_offset)
    seg = Segments(np.arange(1, n + 1, dtype=np.uint64) + off, size, key, slo, shi,
                   np.zeros((n, 0), np.int64))
    own_aff = aff_padded[m:m + shape[0], m:m + shape[1], m:m + shape[2]]
    pairs, weights = max_per_pair(own_aff, labels, n, counts)  # on ids 1..n
    pairs += off
    edges = Edges(pairs[:, 0], pairs[:, 1], weights.astype(np.float32, copy=False),
                  np.zeros(len(weights), np.int64), np.zeros(len(weights), np.int64))
    _offset_nonzero(labels, off)
    return Basins(labels, seg, edges, _faces(labels, kept, aff_padded, shape))


@njit(cache=True)
def _offset_nonzero(labels, off):  # pragma: no cover - compiled
    flat = labels.reshape(-1)
    for i in range(flat.size):
        if flat[i] != 0:
            flat[i] += off


def resolve_basins(basins: Basins, node_lo: np.ndarray, node_hi: np.ndarray,
                   volume_faces: tuple[bool, ...], params: WatershedParams) -> Resolution:
    """The second half: single linkage and dust on what the chunk can decide alone (segments
    on faces inside the run are frozen for the parent)."""
    frozen = frozen_mask(basins.segments, node_lo, node_hi, volume_faces)
    return resolve(basins.segments, basins.edges, frozen, params.resolve_params())


def _faces(labels: np.ndarray, kept: np.ndarray, aff: np.ndarray,
           shape: tuple[int, ...]) -> dict[str, np.ndarray]:
    """Label planes of all 6 faces; on high faces also the link and affinity planes.

    Link plane c: the last own voxel v and the shell voxel u = v + e_c are joined (v keeps +c
    or u keeps -c); affinity plane c: aff[u, c], the affinity between them.
    """
    m = MARGIN
    out = {}
    for c in range(3):
        take = [slice(m, m + s) for s in shape]
        own = list(take)
        own[c] = slice(m + shape[c] - 1, m + shape[c])
        shell = list(take)
        shell[c] = slice(m + shape[c], m + shape[c] + 1)
        idx = [slice(None)] * 3
        idx[c] = 0
        out[f"lo{c}"] = np.take(labels, 0, axis=c)
        out[f"hi{c}"] = np.take(labels, shape[c] - 1, axis=c)
        link = (kept[tuple(own)] & (1 << (c + 3))) | (kept[tuple(shell)] & (1 << c))
        out[f"link{c}"] = np.take(link != 0, 0, axis=c)
        out[f"aff{c}"] = np.take(aff[(*shell, c)], 0, axis=c).astype(np.float32)
    return out


def stitch_face(lower: dict[str, np.ndarray], upper: dict[str, np.ndarray],
                axis: int) -> tuple[np.ndarray, Edges]:
    """Across the face between two chunks along ``axis``: basin links (n, 2) and edges."""
    a, b, w, linked = _face_pairs(lower[f"hi{axis}"].ravel(), upper[f"lo{axis}"].ravel(),
                                  lower[f"link{axis}"].ravel(), lower[f"aff{axis}"].ravel())
    zeros = np.zeros(len(a), np.int64)
    return np.stack([a[linked], b[linked]], axis=1), Edges(a, b, w, zeros, zeros)


@njit(cache=True)
def _face_pairs(la, lb, link, w):  # pragma: no cover - compiled
    """Per distinct pair of basins facing each other (both nonzero, ``la`` of one chunk and
    ``lb`` of the other): its ids (low, high), max affinity, and whether a voxel pair of it is
    linked; in order of first appearance."""
    top = np.uint64(np.iinfo(np.uint64).max)
    amin, bmin, amax, bmax, m = top, top, np.uint64(0), np.uint64(0), 0
    for i in range(la.size):
        if la[i] != 0 and lb[i] != 0 and la[i] != lb[i]:
            amin, amax = min(amin, la[i]), max(amax, la[i])
            bmin, bmax = min(bmin, lb[i]), max(bmax, lb[i])
            m += 1
    span = np.int64(bmax - bmin) + 1 if m else np.int64(1)
    if m and np.int64(amax - amin) >= np.iinfo(np.int64).max // span:
        raise ValueError("the basin ids of a face span too wide a range")
    keys, rows, cap = _map_new(m)
    A, B = np.empty(m, np.uint64), np.empty(m, np.uint64)
    W, L = np.empty(m, np.float32), np.zeros(m, np.bool_)
    k = 0
    for i in range(la.size):
        if la[i] == 0 or lb[i] == 0 or la[i] == lb[i]:
            continue
        key = np.int64(la[i] - amin) * span + np.int64(lb[i] - bmin)
        s = _map_slot(keys, cap, key)
        if keys[s] == -1:
            keys[s], rows[s] = key, k
            A[k], B[k] = min(la[i], lb[i]), max(la[i], lb[i])
            W[k], L[k] = w[i], link[i]
            k += 1
        else:
            r = rows[s]
            if w[i] > W[r]:
                W[r] = w[i]
            L[r] |= link[i]
    return A[:k], B[:k], W[:k], L[:k]
