"""Displacement fields: exact chunk-invariant rendering, differentiable sampling, composition.

Conventions shared by every module of :mod:`pipeline.align`:

- a section is an ``(X, Y)`` array (x first, as CloudVolume); a field is ``(2, X, Y)`` float32,
  channel 0 the x and channel 1 the y displacement, in pixels at the field's mip;
- fields are *pull* maps: ``warp(img, f)(p) = img(p + f(p))``;
- samples outside the image are 0, the "no data" value.

:func:`warp` promises bit-identical output for a pixel whatever array (chunk) it is computed
in, as long as the source pixels it reads are inside the given image array: the bilinear
weights come from the field value alone (``floor`` / fraction split), never from the pixel's
position in the array.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

Tensor = torch.Tensor


def device() -> torch.device:
    """CUDA when available, else CPU: where alignment kernels run."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def as_tensor(a: np.ndarray | Tensor, dev: torch.device | None = None) -> Tensor:
    """``a`` as a float32 tensor on ``dev`` (default :func:`device`)."""
    dev = dev or device()
    if isinstance(a, Tensor):
        return a.to(dev, torch.float32)
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)).to(dev)


def warp(img: Tensor, field: Tensor, offset: tuple[int, int] = (0, 0)) -> Tensor:
    """Bilinear pull of ``img`` (``(X, Y)`` or ``(C, X, Y)``) through ``field`` ``(2, U, V)``.

    Output pixel ``p`` (an index into ``field``) samples ``img`` at ``p + offset + field[:, p]``
    (indices into ``img``); corners outside ``img`` count as 0 (like ``grid_sample`` with
    ``align_corners=True`` and zero padding). Returns ``(U, V)`` or ``(C, U, V)`` float32.
    """
    squeeze = img.dim() == 2
    src = img[None] if squeeze else img
    C, X, Y = src.shape
    U, V = field.shape[1:]
    dev = field.device
    px = torch.arange(U, device=dev, dtype=torch.float32)[:, None] + offset[0]
    py = torch.arange(V, device=dev, dtype=torch.float32)[None, :] + offset[1]
    # a sample far outside is moved to just outside (integer arithmetic, exact in float32):
    # it then reads the zero border with weight 1, as any sample outside would give 0
    fx = torch.minimum(torch.maximum(field[0], -1 - px), X - px)
    fy = torch.minimum(torch.maximum(field[1], -1 - py), Y - py)
    flx, fly = torch.floor(fx), torch.floor(fy)
    wx, wy = fx - flx, fy - fly
    Yp = Y + 3
    base = ((flx + px + 1).to(torch.int64) * Yp + (fly + py + 1).to(torch.int64)).reshape(-1)
    padded = F.pad(src, (1, 2, 1, 2)).reshape(C, -1)
    out = torch.empty((C, U, V), dtype=torch.float32, device=dev)
    for c in range(C):
        flat = padded[c]
        v00, v01 = flat.take(base).view(U, V), flat.take(base + 1).view(U, V)
        v10, v11 = flat.take(base + Yp).view(U, V), flat.take(base + Yp + 1).view(U, V)
        top = v00 + wy * (v01 - v00)
        out[c] = top + wx * (v10 + wy * (v11 - v10) - top)
    return out[0] if squeeze else out


def sample(img: Tensor, field: Tensor, padding: str = "zeros",
           offset: tuple[int, int] = (0, 0)) -> Tensor:
    """Differentiable pull of ``img`` ``(C, X, Y)`` through ``field`` ``(2, U, V)``: output
    pixel ``p`` samples ``img`` at ``p + offset + field[:, p]`` with
    ``torch.nn.functional.grid_sample`` (bilinear, ``align_corners=True``).

    ``padding`` is ``"zeros"`` (outside = 0) or ``"border"`` (outside = nearest edge value).
    """
    _C, X, Y = img.shape
    U, V = field.shape[1:]
    gx = torch.arange(U, device=field.device, dtype=torch.float32)[:, None] + offset[0] + \
        field[0]
    gy = torch.arange(V, device=field.device, dtype=torch.float32)[None, :] + offset[1] + \
        field[1]
    # grid_sample's last tensor dim (Y here) is its "x": grid[..., 0] indexes it
    grid = torch.stack([2 * gy / max(Y - 1, 1) - 1, 2 * gx / max(X - 1, 1) - 1], dim=-1)
    return F.grid_sample(img[None], grid[None], mode="bilinear", padding_mode=padding,
                         align_corners=True)[0]


def compose(first: Tensor, then: Tensor, offset: tuple[int, int] = (0, 0)) -> Tensor:
    """The field of pulling through ``then`` and then through ``first``: ``first(p) +
    then(p + offset + first(p))`` (``then`` sampled bilinearly, clamped at its edge; its
    pixel ``[0, 0]`` lies at ``-offset`` from ``first``'s).

    ``warp(warp(img, then), first) ≈ warp(img, compose(first, then))``.
    """
    return first + sample(then, first, padding="border", offset=offset)


def pool(img: Tensor, mask: Tensor, factor: int) -> tuple[Tensor, Tensor]:
    """Masked mean of ``factor`` x ``factor`` blocks (the array is padded at its high end to
    a multiple of ``factor``); a block is valid when at least half its pixels are."""
    if factor == 1:
        return img, mask
    X, Y = img.shape
    px, py = -X % factor, -Y % factor
    m = F.pad(mask[None, None], (0, py, 0, px))
    v = F.pad((img * mask)[None, None], (0, py, 0, px))
    sm = F.avg_pool2d(m, factor)[0, 0]
    sv = F.avg_pool2d(v, factor)[0, 0]
    out = torch.where(sm > 0, sv / sm.clamp_min(1e-6), torch.zeros_like(sv))
    valid = (sm >= 0.5).to(torch.float32)
    return out * valid, valid


def _axis_weights(start: int, n: int, scale: int, src_start: int, src_n: int,
                  dev: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """Indices and weight for linear interpolation from a grid ``scale`` times coarser.

    Fine pixel ``X`` (global) sits at coarse coordinate ``(X + 0.5) / scale - 0.5``; the
    fraction is computed from integers so it is the same in every chunk.
    """
    g = np.arange(start, start + n, dtype=np.int64)
    num = 2 * g + 1 - scale
    j = np.floor_divide(num, 2 * scale)
    w = (num - 2 * scale * j) / (2.0 * scale)
    lo = np.clip(j - src_start, 0, src_n - 1)
    hi = np.clip(j + 1 - src_start, 0, src_n - 1)
    return (torch.from_numpy(lo).to(dev), torch.from_numpy(hi).to(dev),
            torch.from_numpy(w.astype(np.float32)).to(dev))


def upsample_field(field: Tensor, field_origin: tuple[int, int], scale: int,
                   origin: tuple[int, int], shape: tuple[int, int]) -> Tensor:
    """Field at a ``scale`` times finer mip, over the fine pixels ``origin + [0, shape)``.

    ``field`` ``(2, Xm, Ym)`` covers coarse pixels ``field_origin + [0, Xm)``; values are
    multiplied by ``scale`` (pixels at the finer mip). Bilinear between coarse pixel
    centres, clamped at the field's edge. Chunk-invariant like :func:`warp`.
    """
    if scale == 1:
        x0, y0 = origin[0] - field_origin[0], origin[1] - field_origin[1]
        return field[:, x0:x0 + shape[0], y0:y0 + shape[1]]
    dev = field.device
    lx, hx, wx = _axis_weights(origin[0], shape[0], scale, field_origin[0], field.shape[1], dev)
    ly, hy, wy = _axis_weights(origin[1], shape[1], scale, field_origin[1], field.shape[2], dev)
    a = field[:, lx][:, :, ly] * (1 - wy) + field[:, lx][:, :, hy] * wy
    b = field[:, hx][:, :, ly] * (1 - wy) + field[:, hx][:, :, hy] * wy
    return (a * (1 - wx)[:, None] + b * wx[:, None]) * scale


def gaussian_kernel(sigma: float, dev: torch.device) -> Tensor:
    """A normalized 1-D Gaussian of radius ``ceil(3 sigma)``."""
    r = max(1, int(np.ceil(3 * sigma)))
    x = torch.arange(-r, r + 1, dtype=torch.float32, device=dev)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def blur(img: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur of ``(X, Y)`` or ``(C, X, Y)`` with zero padding."""
    if sigma <= 0:
        return img
    squeeze = img.dim() == 2
    x = (img[None] if squeeze else img)[:, None]
    k = gaussian_kernel(sigma, img.device)
    r = len(k) // 2
    x = F.conv2d(F.pad(x, (0, 0, r, r)), k.view(1, 1, -1, 1))
    x = F.conv2d(F.pad(x, (r, r, 0, 0)), k.view(1, 1, 1, -1))
    return x[:, 0][0] if squeeze else x[:, 0]


def normalize(img: Tensor, mask: Tensor, sigma: float = 8.0) -> Tensor:
    """Local contrast normalization over valid pixels: ``(img - mean) / std`` with a
    Gaussian window of ``sigma`` pixels; 0 where ``mask`` is 0. Local, so chunk-invariant
    away from the array edge."""
    m = blur(mask, sigma).clamp_min(1e-3)
    mean = blur(img * mask, sigma) / m
    var = (blur(img * img * mask, sigma) / m - mean * mean).clamp_min(1.0)
    return (img - mean) / var.sqrt() * mask
