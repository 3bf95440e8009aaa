"""Parts of the synthetic EM volume: synapses, mitochondria and image defects (pure kernels).

Arrays are in x, y, z order; ``resolution`` is nm per voxel along x, y, z.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import cc3d
import numpy as np
from scipy import ndimage

if TYPE_CHECKING:
    from pipeline.synth.kernels import DefectSpec

__all__ = ["apply_defects", "interface_partner", "mitochondria", "place_synapses"]

_XY3 = np.ones((3, 3, 1), dtype=bool)
_XY5 = np.ones((5, 5, 1), dtype=bool)


def interface_partner(lab: np.ndarray, seg: np.ndarray) -> np.ndarray:
    """For each membrane voxel between exactly two cells, the cell across the membrane.

    ``lab`` is the membrane-filled cell map (membrane voxels carry their nearest cell). A voxel
    with ``seg == 0`` whose xy 4-neighbours in ``lab`` show exactly one other cell gets that
    cell's id; every other voxel (cells, junctions of three cells) gets 0.
    """
    pad = np.pad(lab, ((1, 1), (1, 1), (0, 0)), mode="edge")
    big = np.iinfo(lab.dtype).max
    hi = np.zeros_like(lab)
    lo = np.full_like(lab, big)
    for nb in (pad[2:, 1:-1], pad[:-2, 1:-1], pad[1:-1, 2:], pad[1:-1, :-2]):
        differs = nb != lab
        np.maximum(hi, np.where(differs, nb, 0), out=hi)
        np.minimum(lo, np.where(differs, nb, big), out=lo)
    return np.where((hi == lo) & (seg == 0) & (lab > 0), hi, 0).astype(lab.dtype)


def _crop(center: np.ndarray, radius_vox: np.ndarray, shape: tuple[int, ...]):
    """Slices of the box of ``radius_vox`` around ``center``, clipped, and the box origin."""
    lo = np.maximum(0, center - radius_vox)
    hi = np.minimum(shape, center + radius_vox + 1)
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True)), lo


def _offsets_nm(sl: tuple[slice, ...], center: np.ndarray, res: np.ndarray) -> list[np.ndarray]:
    """Broadcastable physical offsets (nm) of a crop's voxels from ``center``."""
    return [
        ((np.arange(s.start, s.stop) - c) * r).reshape([-1 if i == a else 1 for i in range(3)])
        for a, (s, c, r) in enumerate(zip(sl, center, res, strict=True))
    ]


def _vesicles(
    rng: np.random.Generator, pre_in: np.ndarray, dist: np.ndarray, n: int
) -> tuple[np.ndarray, np.ndarray] | None:
    """Rim and lumen masks of ``n`` vesicles in the presynaptic crop, or None if no room.

    Centres lie at least 1 px from the pre cell's edge and 16-100 nm from the cleft, favouring
    the cleft; each vesicle is a disc of radius 2.6 px in its section, clipped to the cell.
    """
    core = ndimage.binary_erosion(pre_in, structure=_XY3, border_value=1)
    idx = np.flatnonzero(core & (dist >= 16.0) & (dist <= 100.0))
    if idx.size < 20:
        return None
    weight = np.exp(-dist.flat[idx] / 35.0)
    pick = rng.choice(idx, size=min(n, idx.size), replace=False, p=weight / weight.sum())
    centres = np.zeros(pre_in.shape, dtype=bool)
    centres.flat[pick] = True
    rim = np.zeros_like(centres)
    lumen = np.zeros_like(centres)
    for z in np.flatnonzero(centres.any(axis=(0, 1))):
        d = ndimage.distance_transform_edt(~centres[..., z])
        rim[..., z] = (d <= 2.6) & (d > 1.2)
        lumen[..., z] = d <= 1.2
    return rim & pre_in, lumen & pre_in


def place_synapses(
    rng: np.random.Generator,
    seg: np.ndarray,
    lab: np.ndarray,
    other: np.ndarray,
    resolution: tuple[float, float, float],
    n_synapses: int,
    *,
    min_size: int = 40,
    min_separation_nm: float = 200.0,
    radius_nm: tuple[float, float] = (80.0, 120.0),
) -> tuple[np.ndarray, list[dict], dict[str, np.ndarray]]:
    """Place up to ``n_synapses`` clefts on membranes between two touching cells.

    A cleft is the membrane band of one cell pair (from :func:`interface_partner`) inside a
    ball of 80-120 nm, restricted to voxels within 2 px in-plane of both cells, and reduced
    to one 26-connected component of at least ``min_size`` voxels. Both cells have at least
    2.5 x size voxels within 64 nm of it. Clefts keep at least ``min_separation_nm`` apart.
    ids are 1..n in placement order. Returns the uint64 cleft map, the records (cleft_id, pre,
    post, centroid [x, y, z] voxel mean, size), and masks for the image: ``psd`` (post cell
    within 24 nm of the cleft), ``vesicle_rim`` and ``vesicle_lumen`` (a vesicle cloud in the
    pre cell). Fewer clefts come back when there is no room.
    """
    shape = seg.shape
    res = np.asarray(resolution, dtype=np.float64)
    clefts = np.zeros(shape, dtype=np.uint64)
    dark = {k: np.zeros(shape, dtype=bool) for k in ("psd", "vesicle_rim", "vesicle_lumen")}
    partners: list[tuple[int, int]] = []
    cand = np.flatnonzero(other > 0)
    if n_synapses <= 0 or cand.size == 0:
        return clefts, [], dark
    tries = rng.permutation(cand)[: 40 * n_synapses + 100]
    centres: list[np.ndarray] = []
    for flat in tries:
        if len(partners) >= n_synapses:
            break
        c = np.array(np.unravel_index(flat, shape))
        if centres and min(np.linalg.norm((c - p) * res) for p in centres) < min_separation_nm:
            continue
        a, b = int(lab[tuple(c)]), int(other[tuple(c)])
        radius = rng.uniform(*radius_nm)
        sl, _ = _crop(c, np.ceil((radius + min_separation_nm + 10) / res).astype(int), shape)
        s, lb, ot = seg[sl], lab[sl], other[sl]
        ox, oy, oz = _offsets_nm(sl, c, res)
        ball = ox**2 + oy**2 + oz**2 <= radius**2
        pair = ((lb == a) & (ot == b)) | ((lb == b) & (ot == a))
        near_a = ndimage.maximum_filter(s == a, footprint=_XY5)
        near_b = ndimage.maximum_filter(s == b, footprint=_XY5)
        patch = pair & ball & near_a & near_b
        if patch.sum() < min_size:
            continue
        comps, n_comps = cc3d.connected_components(patch, connectivity=26, return_N=True)
        sizes = np.bincount(comps.ravel(), minlength=n_comps + 1)
        sizes[0] = 0
        patch = comps == np.argmax(sizes)
        size = int(patch.sum())
        if size < min_size:
            continue
        dist = ndimage.distance_transform_edt(~patch, sampling=res)
        existing = clefts[sl] > 0
        if existing.any() and float(dist[existing].min()) < min_separation_nm:
            continue
        close = dist <= 64.0
        if min(int((close & (s == a)).sum()), int((close & (s == b)).sum())) < 2.5 * size:
            continue  # one side is a thin sliver: no room for vesicles or a clear PSD
        pre, post = (a, b) if rng.random() < 0.5 else (b, a)
        ves = _vesicles(rng, s == pre, dist, int(np.clip(size, 30, 150)))
        if ves is None:
            continue
        clefts[sl][patch] = len(partners) + 1
        dark["vesicle_rim"][sl] |= ves[0]
        dark["vesicle_lumen"][sl] |= ves[1]
        dark["psd"][sl] |= (s == post) & (dist <= 24.0)
        partners.append((pre, post))
        centres.append(c)

    records: list[dict] = []
    if partners:
        where = np.nonzero(clefts)
        ids = clefts[where].astype(np.intp)
        size = np.bincount(ids, minlength=len(partners) + 1)
        sums = [np.bincount(ids, weights=w, minlength=len(partners) + 1) for w in where]
        for i, (pre, post) in enumerate(partners, start=1):
            records.append(
                {
                    "cleft_id": i,
                    "pre": pre,
                    "post": post,
                    "centroid": [float(s_[i] / size[i]) for s_ in sums],
                    "size": int(size[i]),
                }
            )
    return clefts, records, dark


def mitochondria(
    rng: np.random.Generator,
    seg: np.ndarray,
    clefts: np.ndarray,
    resolution: tuple[float, float, float],
    *,
    per_um3: float = 20.0,
) -> np.ndarray:
    """Boolean mask of mitochondria: rotated ellipsoids inside cells, away from synapses.

    About ``per_um3`` per cubic micron; xy semi-axes 25-70 nm, z semi-axis 100-260 nm. Each
    lies in one cell, at least 12 nm in-plane from its membrane, and 250 nm from any cleft.
    """
    shape = seg.shape
    res = np.asarray(resolution, dtype=np.float64)
    mask = np.zeros(shape, dtype=bool)
    inside = ndimage.distance_transform_edt(seg > 0, sampling=(res[0], res[1], 1e6))
    keep = np.ones(shape, dtype=bool)
    if clefts.any():
        keep = ndimage.distance_transform_edt(clefts == 0, sampling=res) > 250.0
    cand = np.flatnonzero((inside >= 55.0) & keep)
    n = round(per_um3 * float(np.prod(np.asarray(shape) * res)) / 1e9)
    if cand.size == 0 or n == 0:
        return mask
    for flat in rng.choice(cand, size=min(n, cand.size), replace=False):
        c = np.array(np.unravel_index(flat, shape))
        a, b = rng.uniform(35.0, 70.0), rng.uniform(25.0, 45.0)
        cz, theta = rng.uniform(100.0, 260.0), rng.uniform(0.0, np.pi)
        sl, _ = _crop(c, np.ceil(np.array([a, a, cz]) / res).astype(int), shape)
        ox, oy, oz = _offsets_nm(sl, c, res)
        u = ox * np.cos(theta) + oy * np.sin(theta)
        v = -ox * np.sin(theta) + oy * np.cos(theta)
        ell = (u / a) ** 2 + (v / b) ** 2 + (oz / cz) ** 2 <= 1.0
        ell &= (seg[sl] == seg[tuple(c)]) & (inside[sl] >= 12.0) & keep[sl]
        mask[sl] |= ell
    return mask


def _translate(sec: np.ndarray, dx: int, dy: int) -> np.ndarray:
    """``out[x, y] = sec[x - dx, y - dy]``; uncovered pixels are 0 (no data)."""
    X, Y = sec.shape
    out = np.zeros_like(sec)
    if abs(dx) >= X or abs(dy) >= Y:
        return out
    dst = (slice(max(dx, 0), X + min(dx, 0)), slice(max(dy, 0), Y + min(dy, 0)))
    src = (slice(max(-dx, 0), X - max(dx, 0)), slice(max(-dy, 0), Y - max(dy, 0)))
    out[dst] = sec[src]
    return out


def _fold(rng: np.random.Generator, sec: np.ndarray) -> tuple[np.ndarray, dict]:
    """A fold: content on each side pulled away from a line, and a dark stripe on the line.

    Pixels with signed distance ``d`` to the line (``d = (p - point) . normal``) show the
    content at ``p + sign(d) * width * normal``; pixels with ``|d| <= width / 2`` are dark.
    """
    X, Y = sec.shape
    point = np.array([rng.uniform(0.25, 0.75) * X, rng.uniform(0.25, 0.75) * Y])
    theta = rng.uniform(0.0, np.pi)
    normal = np.array([np.cos(theta), np.sin(theta)])
    width = int(rng.integers(3, 9))
    gx, gy = np.meshgrid(
        np.arange(X, dtype=np.float64), np.arange(Y, dtype=np.float64), indexing="ij"
    )
    d = (gx - point[0]) * normal[0] + (gy - point[1]) * normal[1]
    sign = np.sign(d)
    coords = [gx + sign * width * normal[0], gy + sign * width * normal[1]]
    out = ndimage.map_coordinates(sec.astype(np.float32), coords, order=1, mode="nearest")
    stripe = np.abs(d) <= width / 2
    out[stripe] = rng.normal(28.0, 6.0, int(stripe.sum()))
    geometry = {"point": point.tolist(), "normal": normal.tolist(), "width": width}
    return np.clip(np.rint(out), 1, 255).astype(np.uint8), geometry


def _partial(rng: np.random.Generator, sec: np.ndarray) -> tuple[np.ndarray, dict]:
    """Zero the pixels with ``x * nx + y * ny > offset``: a random 20-50% of the section."""
    X, Y = sec.shape
    theta = rng.uniform(0.0, 2 * np.pi)
    normal = np.array([np.cos(theta), np.sin(theta)])
    gx, gy = np.meshgrid(np.arange(X), np.arange(Y), indexing="ij")
    proj = gx * normal[0] + gy * normal[1]
    offset = float(np.quantile(proj, 1.0 - rng.uniform(0.2, 0.5)))
    out = sec.copy()
    out[proj > offset] = 0
    return out, {"normal": normal.tolist(), "offset": offset}


def apply_defects(
    image: np.ndarray, spec: DefectSpec, rng: np.random.Generator
) -> tuple[np.ndarray, dict]:
    """Apply ``spec``'s defects to a copy of ``image``; return it and a JSON-able record.

    Order: shifts (a random walk of integer steps in [-2, 2] per section, centred and clipped
    to ``max_shift``; ``shifts[str(z)] = [dx, dy]`` means section z's content moved by
    +dx, +dy with 0 where nothing moved in), then folds, partially missing and missing
    sections, on distinct sections. The record holds ``shifts``, sorted z lists ``folds``,
    ``missing`` and ``partial_missing``, plus ``fold_lines`` and ``partial_regions`` (str(z)
    -> geometry, see :func:`_fold` and :func:`_partial`) and ``max_shift``.
    """
    Z = image.shape[2]
    n_def = spec.folds + spec.missing + spec.partial_missing
    if min(spec.folds, spec.missing, spec.partial_missing, spec.max_shift) < 0:
        raise ValueError(f"defect counts and max_shift must be >= 0, got {spec}")
    if n_def > Z:
        raise ValueError(f"{n_def} defective sections requested but the volume has {Z}")
    out = image.copy()
    record: dict = {
        "shifts": {},
        "folds": [],
        "missing": [],
        "partial_missing": [],
        "fold_lines": {},
        "partial_regions": {},
        "max_shift": int(spec.max_shift) if spec.shifts else 0,
    }
    if spec.shifts and spec.max_shift > 0:
        walk = np.cumsum(rng.integers(-2, 3, size=(Z, 2)), axis=0)
        walk -= np.round(walk.mean(axis=0)).astype(walk.dtype)
        walk = np.clip(walk, -spec.max_shift, spec.max_shift)
        for z in range(Z):
            dx, dy = int(walk[z, 0]), int(walk[z, 1])
            out[..., z] = _translate(image[..., z], dx, dy)
            record["shifts"][str(z)] = [dx, dy]
    zs = [int(z) for z in rng.choice(Z, size=n_def, replace=False)]
    folds = sorted(zs[: spec.folds])
    partial = sorted(zs[spec.folds : spec.folds + spec.partial_missing])
    missing = sorted(zs[spec.folds + spec.partial_missing :])
    for z in folds:
        out[..., z], record["fold_lines"][str(z)] = _fold(rng, out[..., z])
    for z in partial:
        out[..., z], record["partial_regions"][str(z)] = _partial(rng, out[..., z])
    out[..., missing] = 0
    record.update(folds=folds, missing=missing, partial_missing=partial)
    return out, record
