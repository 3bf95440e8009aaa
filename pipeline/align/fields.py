"""Field computation for one section pair, and the consensus vote of candidate fields.

:class:`FieldModel` is the plug-in point: anything that maps (source section, aligned target
section, their masks, an initial field, a smoothness-relaxation map) to a field. The
classical model here does coarse-to-fine masked-NCC block matching (:mod:`.ncc`) and then
refines by gradient descent on the masked MSE plus a smoothness penalty that is relaxed where
the source has folds or cracks. A learned model (a field net, or an :class:`Encoder` whose
features replace the normalized image) implements the same call.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Protocol

import torch
import torch.nn.functional as F

from pipeline.align import ncc
from pipeline.align.warp import blur, compose, normalize, pool, sample, warp

Tensor = torch.Tensor


class Encoder(Protocol):
    """Maps a section ``(X, Y)`` and its valid mask to a feature image ``(X, Y)`` that block
    matching and refinement compare (default: local contrast normalization)."""

    def __call__(self, img: Tensor, mask: Tensor) -> Tensor: ...


class FieldModel(Protocol):
    """Computes the pull field taking ``src`` onto ``tgt``.

    All arrays share one grid whose pixel ``[0, 0]`` is global ``origin`` (field-mip pixels);
    ``src``/``tgt`` are raw intensities (0 = no data), masks are 1 where data is valid,
    ``init`` ``(2, X, Y)`` is the starting field and ``relax`` ``(X, Y)`` is 1 where the source
    has folds or cracks (smoothness may break there). The result is finite everywhere.
    """

    def __call__(self, src: Tensor, src_mask: Tensor, tgt: Tensor, tgt_mask: Tensor,
                 init: Tensor, relax: Tensor, origin: tuple[int, int]) -> Tensor: ...


def lcn(img: Tensor, mask: Tensor) -> Tensor:
    """The default encoder: local contrast normalization (sigma 8 px)."""
    return normalize(img, mask, 8.0)


@dataclass(frozen=True)
class ClassicalParams:
    """Settings of :class:`ClassicalFieldModel` (pixels at the field mip)."""

    match: ncc.MatchParams = field(default_factory=ncc.MatchParams)
    levels: int = 3
    smooth: float = 32.0
    iterations: int = 40
    refine_levels: int = 2
    lr: float = 0.5
    smoothness: float = 4.0
    relax: float = 0.01
    relax_dilation: int = 3
    blur: float = 1.0


class ClassicalFieldModel:
    """Coarse-to-fine masked NCC block matching, then MSE + smoothness refinement."""

    def __init__(self, params: ClassicalParams | None = None,
                 encoder: Encoder | None = None) -> None:
        self.p = params or ClassicalParams()
        self.encoder = encoder or lcn

    def __call__(self, src: Tensor, src_mask: Tensor, tgt: Tensor, tgt_mask: Tensor,
                 init: Tensor, relax: Tensor, origin: tuple[int, int]) -> Tensor:
        f = self.block_match(src, src_mask, tgt, tgt_mask, init, origin)
        if self.p.iterations > 0:
            f = self.refine(src, src_mask, tgt, tgt_mask, f, relax)
        return torch.nan_to_num(f)

    def block_match(self, src: Tensor, src_mask: Tensor, tgt: Tensor, tgt_mask: Tensor,
                    init: Tensor, origin: tuple[int, int]) -> Tensor:
        """Coarse to fine: at each level the source warped by the current field is matched
        against the target, tile by tile, and the tile shifts are composed onto the field."""
        X, Y = tgt.shape
        tgt_n = self.encoder(tgt, tgt_mask)
        f = init.clone()
        for level in reversed(range(self.p.levels)):
            k = 2 ** level
            if origin[0] % k or origin[1] % k:
                raise ValueError(f"origin {origin} must be a multiple of {k} (2**level)")
            ws = warp(src, f)
            wm = (warp(src_mask, f) > 0.999).to(torch.float32)
            src_n = self.encoder(ws, wm)
            a, am = pool(src_n, wm, k)
            b, bm = pool(tgt_n, tgt_mask, k)
            o = (origin[0] // k, origin[1] // k)
            tf = ncc.match_tiles(a, am, b, bm, o, self.p.match)
            tf = ncc.reject_outliers(tf, self.p.match.outlier)
            if level == self.p.levels - 1 and not bool(tf.valid.any()):
                # no tile at the coarsest level (a small part, a fold piece): one rigid
                # shift for the whole array, searched twice as far
                g = ncc.global_shift(a, am, b, bm, 2 * self.p.match.radius, self.p.match)
                if g is not None:
                    tf.disp[~tf.valid] = g
                    tf.valid = torch.ones_like(tf.valid)
            tf = ncc.fill_invalid(tf)
            tf = ncc.smooth_tiles(tf, self.p.smooth / (k * tf.stride))
            d = ncc.tiles_to_pixels(tf, level, origin, (X, Y))
            f = compose(d, f)
        return f

    def refine(self, src: Tensor, src_mask: Tensor, tgt: Tensor, tgt_mask: Tensor,
               init: Tensor, relax: Tensor) -> Tensor:
        """Gradient descent on ``E = sum(m * (src(p + f) - tgt)^2) + smoothness *
        sum(w * |grad f|^2)``, ``w`` = the ``relax`` factor near source folds/cracks, else 1,
        coarse to fine over ``refine_levels`` (so long-wavelength errors converge quickly).

        Each step is the gradient divided by the diagonal of E's Gauss-Newton Hessian
        (``2 m |grad src|^2 + 2 smoothness sum(w)`` per pixel), scaled by ``lr``: a damped
        Jacobi step that needs no global step size, is local (a pixel's step depends only on
        its neighbours, so chunks agree) and turns into smoothing where there is no data.
        """
        p = self.p
        s = blur(self.encoder(src, src_mask), p.blur)
        t = blur(self.encoder(tgt, tgt_mask), p.blur)
        wr = sample(relax[None], init)[0] > 0.01
        if p.relax_dilation:
            r = p.relax_dilation
            wr = F.max_pool2d(wr[None, None].float(), 2 * r + 1, 1, r)[0, 0] > 0
        w = torch.where(wr, torch.full_like(t, p.relax), torch.ones_like(t))
        good = (src_mask * (relax <= 0)).to(torch.float32)
        m = tgt_mask * (sample(good[None], init)[0] > 0.99)
        f = init
        X, Y = t.shape
        for level in reversed(range(min(p.refine_levels, p.levels))):
            k = 2 ** level
            if min(X, Y) < 8 * k:
                continue
            # the source is resampled through the current field at this level's resolution
            ws = warp(s, f)
            wsm = (warp(src_mask, f) > 0.999).to(torch.float32)
            a, _ = pool(ws, wsm, k)
            b, _ = pool(t, m, k)
            _, ml = pool(m * wsm, m * wsm, k)
            wl = -F.max_pool2d(-w[None, None], k, k, ceil_mode=True)[0, 0] if k > 1 else w
            delta = _descend(a, b, ml, wl[:a.shape[0], :a.shape[1]], p)
            if k > 1:
                delta = F.interpolate(delta[None], scale_factor=k, mode="bilinear",
                                      align_corners=False)[0][:, :X, :Y] * k
            f = compose(delta, f)
        return f


def _descend(s: Tensor, t: Tensor, m: Tensor, w: Tensor, p: ClassicalParams) -> Tensor:
    """``p.iterations`` damped Jacobi steps on the displacement ``d`` of ``s`` onto ``t``
    (see :meth:`ClassicalFieldModel.refine`); returns ``d`` ``(2, X, Y)``."""
    gx = F.pad(s[None, None], (0, 0, 1, 1), mode="replicate")[0, 0]
    gy = F.pad(s[None, None], (1, 1, 0, 0), mode="replicate")[0, 0]
    stack = torch.stack([s, (gx[2:] - gx[:-2]) / 2, (gy[:, 2:] - gy[:, :-2]) / 2])
    wx, wy = torch.minimum(w[1:], w[:-1]), torch.minimum(w[:, 1:], w[:, :-1])
    wsum = F.pad(wx, (0, 0, 1, 0)) + F.pad(wx, (0, 0, 0, 1)) + \
        F.pad(wy, (1, 0, 0, 0)) + F.pad(wy, (0, 1, 0, 0))
    lam = p.smoothness
    d = torch.zeros((2, *s.shape), device=s.device)
    for _ in range(p.iterations):
        ws, dx, dy = sample(stack, d)
        r = m * (ws - t)
        hess = torch.stack([2 * m * dx * dx, 2 * m * dy * dy]) + 2 * lam * wsum + 1e-3
        ddx = wx * (d[:, 1:] - d[:, :-1])
        ddy = wy * (d[:, :, 1:] - d[:, :, :-1])
        lap = F.pad(ddx, (0, 0, 1, 0)) - F.pad(ddx, (0, 0, 0, 1)) + \
            F.pad(ddy, (1, 0, 0, 0)) - F.pad(ddy, (0, 1, 0, 0))
        grad = torch.stack([2 * r * dx, 2 * r * dy]) + 2 * lam * lap
        d = d - p.lr * grad / hess
    return d


def vote(candidates: list[Tensor], valid: list[Tensor], temperature: float = 1.0,
         penalty: float = 1e3) -> Tensor:
    """Consensus of candidate fields ``(2, X, Y)``, pixel by pixel (vector voting).

    Every subset of ``n // 2 + 1`` candidates (a majority) scores the mean distance between
    its members, plus ``penalty`` per member invalid at the pixel (``valid`` maps); the
    result is the softmin(score / ``temperature``)-weighted average of the subsets' means
    over their valid members. With 3 candidates this picks the best-agreeing pair (median
    like); one candidate is returned as is. Finite wherever the candidates are.
    """
    n = len(candidates)
    if n == 1:
        return candidates[0]
    c = torch.stack(candidates)
    v = torch.stack([x.to(torch.float32) for x in valid])
    size = n // 2 + 1
    scores, means = [], []
    for subset in itertools.combinations(range(n), size):
        idx = list(subset)
        vs = v[idx]
        wsum = vs.sum(0)
        mean = torch.where(wsum > 0, (c[idx] * vs[:, None]).sum(0) / wsum.clamp_min(1),
                           c[idx].mean(0))
        dist = torch.zeros_like(wsum)
        pairs = 0
        for i, j in itertools.combinations(idx, 2):
            dist = dist + (c[i] - c[j]).norm(dim=0) * v[i] * v[j]
            pairs += 1
        score = dist / max(pairs, 1) + penalty * (size - wsum)
        scores.append(score)
        means.append(mean)
    weights = torch.softmax(-torch.stack(scores) / temperature, dim=0)
    return (weights[:, None] * torch.stack(means)).sum(0)
