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
from pipeline.watershed.kernels import region_graph

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
def _kept_edges(aff, high, low):  # pragma: no cover - compiled
    X, Y, Z = aff.shape[0], aff.shape[1], aff.shape[2]
    mx = np.empty((X, Y, Z), np.float32)
    ties = np.zeros((X, Y, Z), np.uint8)
    vals = np.empty(6, np.float32)
    for x in range(X):
        for y in range(Y):
            for z in range(Z):
                vals[0] = aff[x, y, z, 0] if x > 0 else low
                vals[1] = aff[x, y, z, 1] if y > 0 else low
                vals[2] = aff[x, y, z, 2] if z > 0 else low
                vals[3] = aff[x + 1, y, z, 0] if x < X - 1 else low
                vals[4] = aff[x, y + 1, z, 1] if y < Y - 1 else low
                vals[5] = aff[x, y, z + 1, 2] if z < Z - 1 else low
                m = low
                for d in range(6):
                    v = vals[d]
                    if not v <= high:  # clamps, and NaN never counts as an edge below
                        v = high if v > high else low
                    vals[d] = v
                    if v > m:
                        m = v
                mx[x, y, z] = m
                bits = 0
                if m > low:
                    for d in range(6):
                        if vals[d] == m:
                            bits |= 1 << d
                ties[x, y, z] = bits
    kept = np.zeros((X, Y, Z), np.uint8)
    steps = ((-1, 0, 0), (0, -1, 0), (0, 0, -1), (1, 0, 0), (0, 1, 0), (0, 0, 1))
    for x in range(X):
        for y in range(Y):
            for z in range(Z):
                b = ties[x, y, z]
                if b == 0 or mx[x, y, z] >= high or (b & (b - 1)) == 0:
                    kept[x, y, z] = b
                    continue
                first = -1
                exit_ = -1
                for d in range(6):
                    if b & (1 << d):
                        if first < 0:
                            first = d
                        nx, ny, nz = x + steps[d][0], y + steps[d][1], z + steps[d][2]
                        if mx[nx, ny, nz] > mx[x, y, z]:
                            exit_ = d
                            break
                kept[x, y, z] = 1 << (exit_ if exit_ >= 0 else first)
    return kept


def kept_edges(aff: np.ndarray, high: float, low: float) -> np.ndarray:
    """Per voxel, a 6-bit mask of the steepest-ascent edges it keeps (see module docstring).

    Exact for voxels at least 2 voxels inside ``aff``'s array bounds.
    """
    return _kept_edges(np.ascontiguousarray(aff, np.float32), np.float32(high), np.float32(low))


@njit(cache=True)
def _connectivity(kept, lo, hi, cc_bits):  # pragma: no cover - compiled
    """cc3d voxel graph of region [lo, hi) of ``kept``: an edge if either end keeps it."""
    X, Y, Z = hi[0] - lo[0], hi[1] - lo[1], hi[2] - lo[2]
    out = np.zeros((X, Y, Z), np.uint8)
    for x in range(X):
        for y in range(Y):
            for z in range(Z):
                k = kept[x + lo[0], y + lo[1], z + lo[2]]
                b = np.uint8(0)
                if x > 0 and ((k & 1) or (kept[x + lo[0] - 1, y + lo[1], z + lo[2]] & 8)):
                    b |= cc_bits[0]
                if y > 0 and ((k & 2) or (kept[x + lo[0], y + lo[1] - 1, z + lo[2]] & 16)):
                    b |= cc_bits[1]
                if z > 0 and ((k & 4) or (kept[x + lo[0], y + lo[1], z + lo[2] - 1] & 32)):
                    b |= cc_bits[2]
                if x < X - 1 and ((k & 8) or (kept[x + lo[0] + 1, y + lo[1], z + lo[2]] & 1)):
                    b |= cc_bits[3]
                if y < Y - 1 and ((k & 16) or (kept[x + lo[0], y + lo[1] + 1, z + lo[2]] & 2)):
                    b |= cc_bits[4]
                if z < Z - 1 and ((k & 32) or (kept[x + lo[0], y + lo[1], z + lo[2] + 1] & 4)):
                    b |= cc_bits[5]
                out[x, y, z] = b
    return out


@njit(cache=True)
def _basin_labels(cc, kept, m, ncc, origin, run_start,
                  run_shape):  # pragma: no cover - compiled
    """Components ``cc`` of voxels that keep an edge (``kept`` read at offset ``m``), numbered
    1..n by first voxel in C order; and per basin size, key and bbox."""
    X, Y, Z = cc.shape
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
            for z in range(Z):
                c = cc[x, y, z]
                if c == 0 or kept[x + m, y + m, z + m] == 0:
                    continue
                s = lut[c]
                if s == 0:
                    n += 1
                    lut[c] = s = n
                labels[x, y, z] = s
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
            hi[1:n + 1].copy())


@njit(cache=True)
def segment_stats(labels, origin, run_start, run_shape):  # pragma: no cover - compiled
    """Per label 1..n of a dense-labelled block: size, min linear index, inclusive bbox."""
    n = labels.max()
    size = np.zeros(n + 1, np.int64)
    key = np.full(n + 1, np.iinfo(np.uint64).max, np.uint64)
    lo = np.full((n + 1, 3), np.iinfo(np.int64).max, np.int64)
    hi = np.full((n + 1, 3), np.iinfo(np.int64).min, np.int64)
    X, Y, Z = labels.shape
    for x in range(X):
        for y in range(Y):
            for z in range(Z):
                s = labels[x, y, z]
                if s == 0:
                    continue
                gx, gy, gz = origin[0] + x, origin[1] + y, origin[2] + z
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
    return size[1:], key[1:], lo[1:], hi[1:]


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
    kept = kept_edges(aff_padded, params.high, params.low)
    lo = np.array([m] * 3, np.int64)
    hi = np.array([m + s for s in shape], np.int64)
    graph = _connectivity(kept, lo, hi, _CC3D_BITS_T)
    cc = cc3d.color_connectivity_graph(graph.T, connectivity=6).T  # C order, no copies
    labels, size, key, slo, shi = _basin_labels(
        cc, kept, m, int(cc.max()) if cc.size else 0, np.array(origin, np.int64),
        np.array(run_start, np.int64), np.array(run_shape, np.int64))
    del graph, cc  # the chunk's peak memory comes later, in the region graph and resolve
    n = len(size)
    off = np.uint64(id_offset)
    seg = Segments(np.arange(1, n + 1, dtype=np.uint64) + off, size, key, slo, shi,
                   np.zeros((n, 0), np.int64))
    own_aff = aff_padded[m:m + shape[0], m:m + shape[1], m:m + shape[2]]
    pairs, weights = region_graph(own_aff, labels)  # on ids 1..n: no renumbering
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
    la = lower[f"hi{axis}"].ravel()
    lb = upper[f"lo{axis}"].ravel()
    link = lower[f"link{axis}"].ravel()
    w = lower[f"aff{axis}"].ravel()
    both = (la != 0) & (lb != 0)
    def pairs(m: np.ndarray) -> Edges:  # one row per distinct pair
        zeros = np.zeros(int(m.sum()), np.int64)
        return Edges.concat([Edges(la[m], lb[m], w[m], zeros, zeros)])

    joined = pairs(link & both)
    return np.stack([joined.a, joined.b], axis=1), pairs(both)


