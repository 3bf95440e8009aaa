"""Synaptic clefts (Synaptor style), pure arrays: label, stitch, measure, assign, deduplicate.

Arrays are x, y, z. Positions are global voxel coordinates; a *linear index* is
``x + X * (y + Y * z)`` over the run bbox (x fastest), so it names a voxel whatever the chunking.
"""

from __future__ import annotations

from dataclasses import dataclass

import cc3d
import numpy as np
from numba import njit
from scipy import ndimage

CONNECTIVITY_OFFSETS = {
    6: [o for o in np.ndindex(3, 3, 3) if sum(abs(v - 1) for v in o) == 1],
    18: [o for o in np.ndindex(3, 3, 3) if 1 <= sum(abs(v - 1) for v in o) <= 2],
    26: [o for o in np.ndindex(3, 3, 3) if o != (1, 1, 1)],
}


@dataclass
class ChunkClefts:
    """One chunk's thresholded components and what the reduce needs.

    ``fg_pos``/``fg_label``: the flat (C-order) index in the chunk and the local label (1..n)
    of every foreground voxel (clefts are sparse); ``size``, ``sums`` (coordinate sums, exact
    int64), ``lo``/``hi`` (inclusive bbox), ``key`` (smallest linear index) per component;
    ``boundary_pos``/``boundary_id``: linear index and id of the chunk's foreground voxels on
    faces inside the run; ``link_id``/``link_pos``: a component and the linear index of a
    foreground voxel outside the chunk that it touches.
    """

    fg_pos: np.ndarray
    fg_label: np.ndarray
    ids: np.ndarray
    size: np.ndarray
    sums: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    key: np.ndarray
    boundary_pos: np.ndarray
    boundary_id: np.ndarray
    link_id: np.ndarray
    link_pos: np.ndarray


def linear_index(coords: np.ndarray, run_start: np.ndarray, run_shape: np.ndarray) -> np.ndarray:
    """Linear index (x fastest over the run) of (n, 3) global coordinates."""
    rel = coords.astype(np.int64) - run_start
    return rel[:, 0] + run_shape[0] * (rel[:, 1] + run_shape[1] * rel[:, 2])


@njit(cache=True)
def _chunk_stats(local, fg, n, prob, threshold, origin, run_start, run_shape,
                 offsets):  # pragma: no cover - compiled
    """Per-component stats, boundary voxels and links of a C-ordered chunk labelled 1..n,
    visiting only its foreground voxels ``fg`` (flat indices); also their labels."""
    X, Y, Z = local.shape
    size = np.zeros(n, np.int64)
    sums = np.zeros((n, 3), np.int64)
    lo = np.full((n, 3), np.iinfo(np.int64).max, np.int64)
    hi = np.full((n, 3), np.iinfo(np.int64).min, np.int64)
    key = np.full(n, np.iinfo(np.int64).max, np.int64)
    cap = 2 * (X * Y + Y * Z + X * Z) + 8
    b_pos = np.empty(cap, np.int64)
    b_comp = np.empty(cap, np.int64)
    l_comp = np.empty(cap * len(offsets), np.int64)
    l_pos = np.empty(cap * len(offsets), np.int64)
    fg_label = np.empty(fg.size, local.dtype)
    nb = 0
    nl = 0
    flat = local.ravel()
    for j in range(fg.size):
        i = fg[j]
        fg_label[j] = flat[i]
        c = np.int64(flat[i]) - 1
        x, yz = divmod(i, Y * Z)
        y, z = divmod(yz, Z)
        gx, gy, gz = origin[0] + x, origin[1] + y, origin[2] + z
        lin = (gx - run_start[0]) + run_shape[0] * (
            (gy - run_start[1]) + run_shape[1] * (gz - run_start[2]))
        size[c] += 1
        sums[c, 0] += gx
        sums[c, 1] += gy
        sums[c, 2] += gz
        if lin < key[c]:
            key[c] = lin
        lo[c, 0] = min(lo[c, 0], gx)
        lo[c, 1] = min(lo[c, 1], gy)
        lo[c, 2] = min(lo[c, 2], gz)
        hi[c, 0] = max(hi[c, 0], gx)
        hi[c, 1] = max(hi[c, 1], gy)
        hi[c, 2] = max(hi[c, 2], gz)
        if 0 < x < X - 1 and 0 < y < Y - 1 and 0 < z < Z - 1:
            continue
        b_pos[nb] = lin
        b_comp[nb] = c
        nb += 1
        for k in range(offsets.shape[0]):
            ux, uy, uz = x + offsets[k, 0], y + offsets[k, 1], z + offsets[k, 2]
            if 0 <= ux < X and 0 <= uy < Y and 0 <= uz < Z:
                continue
            if not prob[ux + 1, uy + 1, uz + 1] > threshold:
                continue
            l_comp[nl] = c
            l_pos[nl] = lin + offsets[k, 0] + run_shape[0] * (
                offsets[k, 1] + run_shape[1] * offsets[k, 2])
            nl += 1
    return (fg_label, size, sums, lo, hi, key, b_pos[:nb].copy(), b_comp[:nb].copy(),
            l_comp[:nl].copy(), l_pos[:nl].copy())


def label_chunk(prob_padded: np.ndarray, threshold: float, connectivity: int,
                origin: np.ndarray, run_start: np.ndarray, run_shape: np.ndarray,
                id_offset: int) -> ChunkClefts:
    """Threshold and label the chunk (``prob_padded`` is the chunk grown by one voxel, with
    voxels outside the run 0); measure components and record continuations.

    The chunk's ids are ``id_offset + 1..n`` for its local labels 1..n.
    """
    own = prob_padded[1:-1, 1:-1, 1:-1] > threshold  # a new, C-contiguous array
    fg = np.flatnonzero(own)
    # at most one label per foreground voxel: cc3d sizes its union-find tables by that
    local, n = cc3d.connected_components(own, connectivity=connectivity, return_N=True,
                                         max_labels=fg.size + 1)  # C order
    offsets = np.array(CONNECTIVITY_OFFSETS[connectivity], np.int64) - 1
    fg_label, size, sums, lo, hi, key, b_pos, b_comp, l_comp, l_pos = _chunk_stats(
        np.ascontiguousarray(local), fg, int(n), prob_padded,
        prob_padded.dtype.type(threshold), origin.astype(np.int64),
        run_start.astype(np.int64), run_shape.astype(np.int64), offsets)
    ids = np.arange(1, len(size) + 1, dtype=np.uint64) + np.uint64(id_offset)
    pos = fg.astype(np.int32) if own.size < 2**31 else fg
    return ChunkClefts(pos, fg_label, ids, size, sums, lo, hi, key.astype(np.uint64), b_pos,
                       ids[b_comp], ids[l_comp], l_pos)


def stitch(ids: np.ndarray, boundary_pos: np.ndarray, boundary_id: np.ndarray,
           link_id: np.ndarray, link_pos: np.ndarray) -> np.ndarray:
    """Union-find over continuations: for each of ``ids`` (sorted), its component index."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    order = np.argsort(boundary_pos)
    bpos, bid = boundary_pos[order], boundary_id[order]
    at = np.clip(np.searchsorted(bpos, link_pos), 0, max(len(bpos) - 1, 0))
    ok = (len(bpos) > 0) & (bpos[at] == link_pos) if len(bpos) else np.zeros(len(link_pos), bool)
    a = np.searchsorted(ids, link_id[ok])
    b = np.searchsorted(ids, bid[at[ok]])
    n = len(ids)
    graph = coo_matrix((np.ones(len(a)), (a, b)), shape=(n, n))
    return connected_components(graph, directed=False)[1]


def reduce_stats(ids: np.ndarray, comp: np.ndarray, size: np.ndarray, sums: np.ndarray,
                 lo: np.ndarray, hi: np.ndarray, key: np.ndarray, size_threshold: int
                 ) -> dict[str, np.ndarray]:
    """Global clefts from chunk components: summed stats, id = smallest linear index + 1, and
    the map chunk id → global id (0 for clefts below ``size_threshold``)."""
    k = comp.max() + 1 if len(comp) else 0
    gsize = np.bincount(comp, weights=size, minlength=k).astype(np.int64)
    gsums = np.zeros((k, 3), np.int64)
    glo = np.full((k, 3), np.iinfo(np.int64).max, np.int64)
    ghi = np.full((k, 3), np.iinfo(np.int64).min, np.int64)
    gkey = np.full(k, np.iinfo(np.uint64).max, np.uint64)
    np.add.at(gsums, comp, sums)
    np.minimum.at(glo, comp, lo)
    np.maximum.at(ghi, comp, hi)
    np.minimum.at(gkey, comp, key)
    gid = gkey + np.uint64(1)
    keep = gsize >= size_threshold
    to = np.where(keep[comp], gid[comp], np.uint64(0))
    kept = np.flatnonzero(keep)
    kept = kept[np.argsort(gid[kept])]  # the cleft table is sorted by id
    return {"from": ids, "to": to, "id": gid[kept], "size": gsize[kept],
            "centroid": gsums[kept] / np.maximum(gsize[kept], 1)[:, None],
            "lo": glo[kept], "hi": ghi[kept]}


def candidate_partners(clefts: np.ndarray, seg: np.ndarray, cleft_id: int,
                       radius: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Segments touching the cleft's dilation (by ``radius`` voxels): ids and voxel counts."""
    mask = clefts == cleft_id
    struct = np.ones([2 * r + 1 for r in radius], bool)
    shell = ndimage.binary_dilation(mask, struct) & ~mask
    ids, counts = np.unique(seg[shell], return_counts=True)
    keep = ids != 0
    return ids[keep], counts[keep]


def assign_geometric(image: np.ndarray, clefts: np.ndarray, seg: np.ndarray, cleft_id: int,
                     radius: tuple[int, int, int]) -> tuple[int, int, float]:
    """Presynaptic and postsynaptic segment of one cleft by the geometric rule.

    The rule: the partners are the two segments with the most voxels in the cleft's dilation
    (by ``radius``); the presynaptic one is the darker of the two within that dilation, since
    the presynaptic terminal holds the (dark) vesicle cloud. Returns (pre, post, margin), where
    margin is the difference of mean intensities (post - pre); (0, 0, 0) without two partners.
    """
    ids, counts = candidate_partners(clefts, seg, cleft_id, radius)
    if len(ids) < 2:
        return 0, 0, 0.0
    top = ids[np.argsort(-counts, kind="stable")[:2]]
    struct = np.ones([2 * r + 1 for r in radius], bool)
    near = ndimage.binary_dilation(clefts == cleft_id, struct)
    means = [float(image[near & (seg == s)].mean()) for s in top]
    pre, post = (top[0], top[1]) if means[0] <= means[1] else (top[1], top[0])
    return int(pre), int(post), abs(means[0] - means[1])


def assign_network(model, image: np.ndarray, clefts: np.ndarray, seg: np.ndarray,
                   cleft_id: int, radius: tuple[int, int, int]) -> tuple[int, int, float]:
    """Partners from an assignment network, as in the paper.

    ``model(image, cleft)`` takes float tensors (1, 1, Z, Y, X) and returns two maps (pre,
    post) of the same shape; each candidate segment's weight is the sum of a map over its
    voxels in the cleft's dilation (so both how much it touches the cleft and how strongly the
    network marks it count). Pre is the segment with the highest pre weight, post the other
    segment with the highest post weight.
    """
    import torch

    ids, _ = candidate_partners(clefts, seg, cleft_id, radius)
    if len(ids) < 2:
        return 0, 0, 0.0
    to_t = lambda a: torch.from_numpy(np.ascontiguousarray(  # noqa: E731
        a.transpose(2, 1, 0), np.float32))[None, None]
    with torch.no_grad():
        pre_map, post_map = model(to_t(image / 255.0), to_t(clefts == cleft_id))
    pre_map = pre_map[0, 0].numpy().transpose(2, 1, 0)
    post_map = post_map[0, 0].numpy().transpose(2, 1, 0)
    struct = np.ones([2 * r + 1 for r in radius], bool)
    near = ndimage.binary_dilation(clefts == cleft_id, struct)
    pre_w = np.array([pre_map[near & (seg == s)].sum() for s in ids])
    post_w = np.array([post_map[near & (seg == s)].sum() for s in ids])
    pre = int(ids[np.argmax(pre_w)])
    post_w[ids == pre] = -np.inf
    post = int(ids[np.argmax(post_w)])
    return pre, post, float(pre_w.max())


def contact_points(clefts: np.ndarray, seg: np.ndarray, cleft_id: int, pre: int, post: int,
                   radius: tuple[int, int, int]) -> np.ndarray:
    """(2, 3) block coordinates: the mean voxel of ``pre`` and of ``post`` in the cleft's
    dilation (the ends of a pre → post line annotation)."""
    struct = np.ones([2 * r + 1 for r in radius], bool)
    near = ndimage.binary_dilation(clefts == cleft_id, struct)
    out = np.zeros((2, 3))
    for i, s in enumerate((pre, post)):
        idx = np.argwhere(near & (seg == s))
        if len(idx):
            out[i] = idx.mean(0)
    return out


def dedup(ids: np.ndarray, pre: np.ndarray, post: np.ndarray, centroid_nm: np.ndarray,
          distance_nm: float) -> np.ndarray:
    """For each cleft, the id it merges into: clefts with the same (pre, post) whose centroids
    lie within ``distance_nm`` are joined (transitively); a group takes its smallest id."""
    from scipy.spatial import cKDTree

    into = ids.copy()
    parent = np.arange(len(ids))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    pairs = np.stack([pre, post], 1)
    _, group = np.unique(pairs, axis=0, return_inverse=True)
    for g in np.unique(group.reshape(-1)):
        members = np.flatnonzero(group.reshape(-1) == g)
        if len(members) < 2:
            continue
        for i, j in cKDTree(centroid_nm[members]).query_pairs(distance_nm):
            a, b = find(members[i]), find(members[j])
            if a != b:
                parent[max(a, b)] = min(a, b)
    roots = np.array([find(i) for i in range(len(ids))])
    smallest = {}
    for i, r in enumerate(roots):
        smallest[r] = min(smallest.get(r, ids[i]), ids[i])
    into[:] = [smallest[r] for r in roots]
    return into
