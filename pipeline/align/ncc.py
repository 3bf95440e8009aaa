"""Block matching by masked normalized cross-correlation (FFT, batched over tiles).

A *tile grid* has its centres at global pixel coordinates that are multiples of ``stride``,
so two chunks that share a tile compute it identically. For each tile, the target's
``tile x tile`` patch is compared with the source around it, at every integer shift within
``radius`` pixels; the masked NCC (Padfield 2012: only pixels valid in both images count)
is computed for all shifts and tiles at once with six FFT correlations.

A shift ``d`` found for a tile means ``src(p + d) ≈ tgt(p)`` (a pull displacement, see
:mod:`pipeline.align.warp`). A tile is *invalid* when the overlap is too small, its best
NCC is below ``min_ncc``, the peak lies on the search border, or it is ambiguous: the best
peak is not ``peak_ratio`` times the best value outside its neighbourhood. Invalid tiles
and outliers are filled by normalized convolution from valid neighbours.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

Tensor = torch.Tensor


@dataclass(frozen=True)
class MatchParams:
    """Block-matching settings (pixels at the level being matched)."""

    tile: int = 32
    radius: int = 8
    min_ncc: float = 0.15
    peak_ratio: float = 1.1
    min_overlap: float = 0.5
    exclusion: int = 2
    outlier: float = 3.0

    @property
    def stride(self) -> int:
        return max(1, self.tile // 2)


@dataclass
class TileField:
    """Displacements at tile centres: ``disp`` ``(nx, ny, 2)``, ``valid`` ``(nx, ny)``,
    ``ncc`` ``(nx, ny)``, centres at global ``(k0x + i) * stride``, ``(k0y + j) * stride``."""

    disp: Tensor
    valid: Tensor
    ncc: Tensor
    k0: tuple[int, int]
    stride: int


def _first_centre(origin: int, stride: int) -> int:
    return -(-origin // stride)


def _windows(a: Tensor, first: tuple[int, int], n: tuple[int, int], size: int,
             stride: int) -> Tensor:
    """``(nx, ny, size, size)`` windows of ``a`` starting at ``first + k * stride``."""
    sub = a[first[0]:first[0] + (n[0] - 1) * stride + size,
            first[1]:first[1] + (n[1] - 1) * stride + size]
    return sub.unfold(0, size, stride).unfold(1, size, stride)


def match_tiles(src: Tensor, src_mask: Tensor, tgt: Tensor, tgt_mask: Tensor,
                origin: tuple[int, int], p: MatchParams) -> TileField:
    """Best shift per tile of ``tgt`` (see module doc); arrays ``(X, Y)`` whose pixel
    ``[0, 0]`` is global ``origin``. Images should be normalized (zero mean, unit scale)."""
    X, Y = tgt.shape
    T, R, s = p.tile, p.radius, p.stride
    W = T + 2 * R
    half = T // 2
    k0 = (_first_centre(origin[0], s), _first_centre(origin[1], s))
    k1 = ((origin[0] + X - 1) // s, (origin[1] + Y - 1) // s)
    n = (max(0, k1[0] - k0[0] + 1), max(0, k1[1] - k0[1] + 1))
    dev = tgt.device
    if n[0] == 0 or n[1] == 0:
        z = torch.zeros((*n, 2), device=dev)
        return TileField(z, torch.zeros(n, dtype=torch.bool, device=dev), z[..., 0], k0, s)
    P = half + R
    pad = (P, P + W, P, P + W)

    def padded(a: Tensor) -> Tensor:
        return F.pad(a[None, None], pad)[0, 0]

    # window k spans local [c - half - R, c + half + R) with c = k * s - origin; padded by P
    first = (k0[0] * s - origin[0], k0[1] * s - origin[1])
    ms, mt = src_mask, tgt_mask
    sw = [_windows(padded(a), first, n, W, s) for a in (src * ms, src * src * ms, ms)]
    centre = torch.zeros((W, W), device=dev)
    centre[R:R + T, R:R + T] = 1
    tw = [_windows(padded(a), first, n, W, s) * centre for a in (tgt * mt, tgt * tgt * mt, mt)]
    fs = [torch.fft.rfft2(a) for a in sw]
    ft = [torch.fft.rfft2(a) for a in tw]

    def corr(a: Tensor, b: Tensor) -> Tensor:
        c = torch.fft.irfft2(a * torch.conj(b), s=(W, W))
        c = torch.roll(c, shifts=(R, R), dims=(-2, -1))
        return c[..., :2 * R + 1, :2 * R + 1]

    s1, s2, m = fs
    t1, t2, mt_ = ft
    cnt = corr(m, mt_)
    ssum, ssq = corr(s1, mt_), corr(s2, mt_)
    tsum, tsq = corr(m, t1), corr(m, t2)
    st = corr(s1, t1)
    nn = cnt.clamp_min(1.0)
    num = st - ssum * tsum / nn
    var_s = (ssq - ssum * ssum / nn).clamp_min(0)
    var_t = (tsq - tsum * tsum / nn).clamp_min(0)
    den = (var_s * var_t).sqrt()
    # template coverage, then the overlap relative to the smaller of the template and the
    # source in the window: a tile half outside the data, or a small source part, is fine
    cover = tw[2].sum(dim=(-2, -1))[..., None, None]
    cover_s = sw[2].sum(dim=(-2, -1))[..., None, None]
    ok = (cover >= p.min_overlap * T * T) & \
        (cnt >= p.min_overlap * torch.minimum(cover, cover_s)) & \
        (var_s > 1e-3 * nn) & (var_t > 1e-3 * nn)
    ncc = torch.where(ok, num / den.clamp_min(1e-6), torch.full_like(num, -1.0))
    return _peaks(ncc, p, k0, s)


def _peaks(ncc: Tensor, p: MatchParams, k0: tuple[int, int], stride: int) -> TileField:
    nx, ny, S, _ = ncc.shape
    R = p.radius
    flat = ncc.reshape(nx, ny, -1)
    best, arg = flat.max(dim=-1)
    bx, by = arg // S, arg % S
    gx = torch.arange(S, device=ncc.device)
    near = ((gx[None, None, :, None] - bx[..., None, None]).abs() <= p.exclusion) & \
           ((gx[None, None, None, :] - by[..., None, None]).abs() <= p.exclusion)
    second = torch.where(near, torch.full_like(ncc, -1.0), ncc).reshape(nx, ny, -1).amax(-1)
    inner = (bx > 0) & (bx < S - 1) & (by > 0) & (by < S - 1)
    for ox, oy in ((-1, 0), (1, 0), (0, -1), (0, 1)):   # the subpixel fit needs all four
        idx = ((bx + ox).clamp(0, S - 1) * S + (by + oy).clamp(0, S - 1))[..., None]
        inner &= flat.gather(-1, idx)[..., 0] > -1
    ambiguous = (second > 0) & (best < p.peak_ratio * second)
    valid = (best >= p.min_ncc) & inner & ~ambiguous

    def sub(axis_idx: Tensor, other: Tensor, along_x: bool) -> Tensor:
        lo, hi = (axis_idx - 1).clamp(0, S - 1), (axis_idx + 1).clamp(0, S - 1)
        def at(i: Tensor) -> Tensor:
            idx = i * S + other if along_x else other * S + i
            return flat.gather(-1, idx[..., None])[..., 0]
        a, b, c = at(lo), at(axis_idx), at(hi)
        d = a - 2 * b + c
        off = torch.where(d < -1e-6, 0.5 * (a - c) / d.clamp_max(-1e-6), torch.zeros_like(d))
        return axis_idx.to(torch.float32) + off.clamp(-0.5, 0.5)

    dx = sub(bx, by, True) - R
    dy = sub(by, bx, False) - R
    disp = torch.stack([dx, dy], dim=-1)
    return TileField(disp, valid, best, k0, stride)


def reject_outliers(tf: TileField, threshold: float) -> TileField:
    """Invalidate tiles farther than ``threshold`` px from the median of their valid 3x3
    neighbours (when at least 3 neighbours are valid)."""
    nx, ny, _ = tf.disp.shape
    if nx < 2 and ny < 2:
        return tf
    d = tf.disp.permute(2, 0, 1)[None]
    v = tf.valid.to(torch.float32)[None, None]
    nan = torch.where(v > 0, d, torch.full_like(d, float("nan")))
    pad = F.pad(nan, (1, 1, 1, 1), value=float("nan"))
    cols = pad.unfold(2, 3, 1).unfold(3, 3, 1).reshape(1, 2, nx, ny, 9)
    cols = torch.cat([cols[..., :4], cols[..., 5:]], dim=-1)
    count = (~torch.isnan(cols[:, 0])).sum(-1)[0]
    med = torch.nanmedian(cols, dim=-1).values[0].permute(1, 2, 0)
    far = (tf.disp - med).norm(dim=-1) > threshold
    bad = tf.valid & (count >= 3) & far & ~torch.isnan(med).any(-1)
    return TileField(tf.disp, tf.valid & ~bad, tf.ncc, tf.k0, tf.stride)


def fill_invalid(tf: TileField) -> TileField:
    """Replace invalid tiles by a normalized-convolution average of valid ones (growing
    neighbourhoods); all zero when no tile is valid. ``valid`` is left as it was."""
    if bool(tf.valid.all()) or not bool(tf.valid.any()):
        disp = tf.disp if bool(tf.valid.all()) else torch.zeros_like(tf.disp)
        return TileField(disp, tf.valid, tf.ncc, tf.k0, tf.stride)
    v = tf.valid.to(torch.float32)[None, None]
    d = (tf.disp.permute(2, 0, 1) * v[0])[None]
    out = tf.disp.clone()
    todo = ~tf.valid
    k = 3
    while bool(todo.any()):
        w = F.avg_pool2d(F.pad(v, (k // 2,) * 4), k, stride=1)[0, 0]
        s = F.avg_pool2d(F.pad(d, (k // 2,) * 4), k, stride=1)[0].permute(1, 2, 0)
        got = todo & (w > 0)
        out[got] = s[got] / w[got][:, None]
        todo = todo & ~got
        k += 2
    return TileField(out, tf.valid, tf.ncc, tf.k0, tf.stride)


def tiles_to_pixels(tf: TileField, level: int, origin: tuple[int, int],
                    shape: tuple[int, int]) -> Tensor:
    """Bilinear interpolation of tile displacements at a level ``2**level`` coarser onto
    pixels ``origin + [0, shape)`` of the finest grid; values scaled to finest pixels.

    Tile grids are global, so the result for a pixel does not depend on the chunk.
    """
    f = 2 ** level
    out = []
    for axis in range(2):
        g = np.arange(origin[axis], origin[axis] + shape[axis], dtype=np.float64)
        u = ((g + 0.5) / f - 0.5) / tf.stride          # global tile coordinate
        j = np.floor(u)
        w = (u - j).astype(np.float32)
        n = tf.disp.shape[axis]
        lo = np.clip(j.astype(np.int64) - tf.k0[axis], 0, n - 1)
        hi = np.clip(j.astype(np.int64) + 1 - tf.k0[axis], 0, n - 1)
        dev = tf.disp.device
        out.append((torch.from_numpy(lo).to(dev), torch.from_numpy(hi).to(dev),
                    torch.from_numpy(w).to(dev)))
    (lx, hx, wx), (ly, hy, wy) = out
    d = tf.disp.permute(2, 0, 1)
    a = d[:, lx][:, :, ly] * (1 - wy) + d[:, lx][:, :, hy] * wy
    b = d[:, hx][:, :, ly] * (1 - wy) + d[:, hx][:, :, hy] * wy
    return (a * (1 - wx)[:, None] + b * wx[:, None]) * f


def smooth_tiles(tf: TileField, sigma: float, ridge: float = 1e-3) -> TileField:
    """Local linear regression of the tile displacements with a Gaussian window of ``sigma``
    tiles, weighted by validity x NCC: affine fields pass unchanged, the cell-scale motion of
    oblique structures (which sequential alignment would otherwise follow and accumulate)
    is averaged out. Falls back to a local mean where the window holds too few tiles."""
    if sigma <= 0 or not bool(tf.valid.any()):
        return tf
    dev = tf.disp.device
    r = max(1, int(np.ceil(3 * sigma)))
    u = torch.arange(-r, r + 1, dtype=torch.float32, device=dev)
    g = torch.exp(-0.5 * (u / sigma) ** 2)
    w = (tf.valid.to(torch.float32) * tf.ncc.clamp_min(0.05))[None, None]
    d = tf.disp.permute(2, 0, 1)[None]

    def conv(x: Tensor, px: int, py: int) -> Tensor:
        kx = (g * u ** px).view(1, 1, -1, 1) / sigma ** px
        ky = (g * u ** py).view(1, 1, 1, -1) / sigma ** py
        c = x.shape[1]
        # correlation with kernels of offsets (j - i): flip so that u is "neighbour - self"
        x = F.conv2d(F.pad(x, (0, 0, r, r)), kx.flip(2).expand(c, 1, -1, 1), groups=c)
        return F.conv2d(F.pad(x, (r, r, 0, 0)), ky.flip(3).expand(c, 1, 1, -1), groups=c)

    wd = w * d
    s0, sx, sy = conv(w, 0, 0), conv(w, 1, 0), conv(w, 0, 1)
    sxx, sxy, syy = conv(w, 2, 0), conv(w, 1, 1), conv(w, 0, 2)
    t0, tx, ty = conv(wd, 0, 0), conv(wd, 1, 0), conv(wd, 0, 1)
    a = torch.stack([torch.stack([s0, sx, sy], -1), torch.stack([sx, sxx + ridge * s0, sxy], -1),
                     torch.stack([sy, sxy, syy + ridge * s0], -1)], -2)[0, 0]
    rhs = torch.stack([t0, tx, ty], -1)[0].permute(1, 2, 0, 3)          # (nx, ny, 2, 3)
    a = a + 1e-6 * torch.eye(3, device=dev)
    sol = torch.linalg.solve(a[:, :, None].expand(-1, -1, 2, -1, -1), rhs[..., None])[..., 0]
    mean = t0[0].permute(1, 2, 0) / s0[0, 0][..., None].clamp_min(1e-6)
    ok = (s0[0, 0] > 1e-6)[..., None]
    disp = torch.where(ok, torch.nan_to_num(sol[..., 0]), tf.disp)
    far = (disp - mean).abs() > 10 * tf.stride                           # ill-posed fit
    disp = torch.where(far, mean, disp)
    return TileField(disp, tf.valid | ok[..., 0], tf.ncc, tf.k0, tf.stride)


def global_shift(src: Tensor, src_mask: Tensor, tgt: Tensor, tgt_mask: Tensor, radius: int,
                 p: MatchParams) -> Tensor | None:
    """One masked-NCC shift for the whole array (the target as a single tile), searched
    within ``radius``; None when the peak is not valid (see :func:`match_tiles`)."""
    X, Y = tgt.shape
    T = 2 * (max(X, Y) // 2 + 1)
    q = MatchParams(tile=T, radius=radius, min_ncc=p.min_ncc, peak_ratio=p.peak_ratio,
                    min_overlap=min(p.min_overlap, float(tgt_mask.sum()) / (2 * T * T)),
                    exclusion=p.exclusion, outlier=p.outlier)
    # place the single centre (global 0, stride T // 2 >= X, Y) at the array's middle
    tf = match_tiles(src, src_mask, tgt, tgt_mask, (-(X // 2), -(Y // 2)), q)
    if tf.valid.numel() == 0 or not bool(tf.valid.any()):
        return None
    return tf.disp[tf.valid][0]
