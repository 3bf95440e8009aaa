"""Block-parallel alignment along z: blocks, sequential alignment inside a block, stitching.

Sections ``[z0, z1)`` are cut into blocks of ``block_size`` sections. Block ``b`` *owns*
``[z0 + b B, z0 + (b + 1) B)`` and also aligns the ``overlap`` sections before it, starting
from its first valid section (its *anchor*, identity field). Inside a block each section is
aligned to the already-aligned previous valid sections (up to ``neighbours`` of them, one
candidate field each, combined by :func:`pipeline.align.fields.vote`), so an error is never
compounded by composing pairwise fields; missing sections are skipped, and folded ones are
passed over as references where an unfolded one is near. Blocks are independent.

Stitching brings block ``b`` into the global frame: the correction ``g_b`` solves
``g + f_b,z(p + g) = G_b-1,z`` (fixed point) on each unfolded overlap section and takes the
median of those that agree with the anchor's (see :func:`stitch`); then ``G_b,z =
compose(g_b, f_b,z)``. On the overlap the final field cross-fades from the previous block's
``G`` to the next one's (weight ``(j + 1) / (overlap + 1)`` on section ``j`` of the
overlap, less where the two disagree): the correction decays in over the overlap instead
of jumping.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage

from pipeline.align.fields import FieldModel, vote
from pipeline.align.warp import as_tensor, compose, sample, warp

Tensor = torch.Tensor


@dataclass(frozen=True)
class Block:
    """Block ``index``: aligns sections ``[start, stop)``, owns ``[own, stop)``."""

    index: int
    start: int
    own: int
    stop: int

    @property
    def parity(self) -> str:
        """"even" or "odd": overlapping blocks never share a parity (overlap <= block_size)."""
        return "even" if self.index % 2 == 0 else "odd"


def blocks(z0: int, z1: int, block_size: int, overlap: int,
           valid: np.ndarray | None = None) -> list[Block]:
    """The blocks of sections ``[z0, z1)``; raise ValueError if ``block_size < overlap``.

    With ``valid`` (per section of ``[z0, z1)``: False for those that must not count,
    e.g. missing or folded ones), a block's overlap reaches back until it holds ``overlap``
    valid sections, but never before the previous block's own range, so that only
    neighbouring blocks share sections.
    """
    if block_size < overlap or block_size < 1 or overlap < 0:
        raise ValueError(f"block_size ({block_size}) must be >= overlap ({overlap}) and >= 1")
    out: list[Block] = []
    for i, own in enumerate(range(z0, z1, block_size)):
        start = max(z0, own - overlap)
        if valid is not None and out:
            start, count = own, 0
            while start > out[-1].own and count < overlap:
                start -= 1
                count += bool(valid[start - z0])
        out.append(Block(i, start, own, min(own + block_size, z1)))
    return out


def targets(z: int, done: list[int], valid: np.ndarray, neighbours: int,
            clean: np.ndarray | None = None) -> list[int]:
    """Aligned sections that section ``z`` is matched against: the valid sections among
    ``done``, nearest first (ties: the earlier one), at most ``neighbours`` (at least one
    when any exists).

    With ``clean`` (per section: no folds or cracks), a folded section is passed over for a
    clean one at most ``neighbours`` sections farther: a fold's field is least certain next
    to the fold, and a reference passes its error on to every section aligned to it.
    """
    near = sorted((t for t in done if t != z and valid[t]), key=lambda t: (abs(t - z), t))
    n = max(1, neighbours)
    if clean is not None:
        window = near[:2 * n]
        picked = [t for t in window if clean[t]][:n]
        if picked:
            return picked
    return near[:n]


def order(valid: np.ndarray, clean: np.ndarray) -> list[int]:
    """Alignment order of a block's sections: the anchor (the first valid section without
    folds or cracks, else the first valid one), the sections after it, then those before it
    backwards. Invalid sections are left out."""
    idx = [z for z in range(len(valid)) if valid[z]]
    if not idx:
        return []
    good = [z for z in idx if clean[z]]
    a = good[0] if good else idx[0]
    return [a] + [z for z in idx if z > a] + [z for z in reversed(idx) if z < a]


def align_block(images: np.ndarray, masks: np.ndarray, relax: np.ndarray, valid: np.ndarray,
                origin: tuple[int, int], model: FieldModel, neighbours: int,
                clean: np.ndarray | None = None) -> np.ndarray:
    """Fields ``(Z, 2, X, Y)`` aligning each section of ``images`` ``(X, Y, Z)`` to the
    frame of the block's anchor (see :func:`order`), which gets the identity field.

    ``masks``: nonzero where data is valid; ``relax``: nonzero at folds/cracks; ``valid``
    ``(Z,)``: False for sections to skip (missing), whose field is 0; ``clean`` ``(Z,)``:
    sections without folds or cracks anywhere (from the whole section, so that every chunk
    picks the same anchor; default: judged from ``relax``). Each section is matched against
    up to ``neighbours`` nearest aligned sections. The result has no NaN.
    """
    X, Y, Z = images.shape
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    out = np.zeros((Z, 2, X, Y), np.float32)
    aligned: dict[int, tuple[Tensor, Tensor]] = {}
    fields: dict[int, Tensor] = {}
    if clean is None:
        clean = np.array([not relax[..., z].any() for z in range(Z)])
    todo = order(valid, clean)
    back = [z for z in todo if todo and z < todo[0]]
    for i, z in enumerate(todo):
        img = as_tensor(images[..., z], dev)
        good = (masks[..., z] != 0) & (relax[..., z] == 0)
        tz = targets(z, list(aligned), valid, neighbours, clean)
        if not tz:
            f = torch.zeros((2, X, Y), device=dev)
        else:
            refs = [(*aligned[t], fields[t]) for t in tz]
            f = section_field(model, img, good, relax[..., z] != 0, refs, origin)
        f = torch.nan_to_num(f)
        fields[z] = f
        mask = as_tensor(good, dev)
        aligned[z] = (warp(img, f), (warp(mask, f) > 0.999).to(torch.float32))
        out[z] = f.cpu().numpy()
        keep: set[int] = set()
        for nxt in ([todo[i + 1]] if i + 1 < len(todo) else []) + \
                ([back[0]] if back and back[0] not in aligned else []):
            keep.update(targets(nxt, list(aligned), valid, neighbours, clean))
        for t in [t for t in aligned if t not in keep]:
            del aligned[t], fields[t]
    return out


def pieces(good: np.ndarray, relax: np.ndarray, min_size: int = 1024) -> list[np.ndarray]:
    """The parts of a section that its folds/cracks (``relax``, grown by 2 px) cut apart,
    each of at least ``min_size`` pixels; one part when nothing is cut."""
    if not relax.any():
        return [good]
    cut = good & ~ndimage.binary_dilation(relax, iterations=2)
    lab, n = ndimage.label(cut)
    sizes = np.bincount(lab.ravel(), minlength=n + 1)
    big = [i for i in range(1, n + 1) if sizes[i] >= min_size]
    return [lab == i for i in big] if len(big) > 1 else [good]


def section_field(model: FieldModel, img: Tensor, good: np.ndarray, relax: np.ndarray,
                  refs: list[tuple[Tensor, Tensor, Tensor]], origin: tuple[int, int]) -> Tensor:
    """The voted field of one section against aligned references ``(image, mask, field)``.

    A section that a fold or crack cuts into parts gets one field per part (each matched
    with only its own pixels), so the field may jump across the fold; each aligned pixel
    takes the field of the part it lands in.
    """
    dev = img.device
    rel = as_tensor(relax, dev)
    parts = pieces(good, relax)
    fs, owns = [], []
    for part in parts:
        m = as_tensor(part, dev)
        cands = [model(img, m, timg, tmask, tf, rel, origin) for timg, tmask, tf in refs]
        f = torch.nan_to_num(vote(cands, [tmask > 0 for _, tmask, _ in refs]))
        fs.append(f)
        owns.append(warp(m, f) > 0.5)
    if len(fs) == 1:
        return fs[0]
    own = torch.stack(owns).to(torch.float32)
    stack = torch.stack(fs)
    total = own.sum(0)
    mixed = (stack * own[:, None]).sum(0) / total.clamp_min(1)
    return torch.where(total > 0, mixed, stack.mean(0))


def fixed_point(target: Tensor, field: Tensor, offset: tuple[int, int] = (0, 0),
                iterations: int = 6) -> Tensor:
    """The correction ``g`` with ``g(p) + field(p + offset + g(p)) = target(p)``
    (fixed-point iteration; ``field`` may cover a larger grid, see :func:`compose`)."""
    U, V = target.shape[1:]
    g = target - field[:, offset[0]:offset[0] + U, offset[1]:offset[1] + V]
    for _ in range(iterations):
        g = target - sample(field, g, padding="border", offset=offset)
    return g


def stitch(previous: list[Tensor], current: list[Tensor],
           offset: tuple[int, int] = (0, 0), tolerance: float = 2.0) -> Tensor | None:
    """Correction bringing a block into the previous block's (global) frame, from its
    overlap sections: ``previous`` = the previous block's global fields ``G`` there,
    ``current`` = this block's own fields (on a grid larger by ``offset`` each side), the
    block's anchor first. None without overlap.

    The anchor's correction is exact by construction (its own field is the identity); the
    other sections' corrections carry this block's alignment of them, made against fewer
    references than anywhere else in the block. Per pixel, the result is the median of
    the corrections within ``tolerance`` px of the anchor's (mean of two), so one section
    matched wrongly cannot shift the whole block."""
    if not previous:
        return None
    gs = torch.stack([fixed_point(p, c, offset) for p, c in zip(previous, current,
                                                                  strict=True)])
    near = (gs - gs[:1]).norm(dim=1, keepdim=True) <= tolerance               # (n, 1, U, V)
    if len(gs) > 2:
        agreeing = torch.where(near, gs, torch.full_like(gs, float("nan")))
        return agreeing.nanmedian(dim=0).values
    return (gs * near).sum(0) / near.sum(0)


def crossfade(owner: Tensor, following: Tensor, weight: float,
              tolerance: float = 2.0) -> Tensor:
    """``owner``'s global field faded into the next block's (``following``) by
    ``weight``, except where the two disagree: the weight falls linearly to 0 between
    ``tolerance`` and twice that (px), so that a section the next block matched wrongly
    (next to its anchor it has the fewest references) keeps its owner's field."""
    gap = (following - owner).norm(dim=0, keepdim=True)
    w = weight * (2.0 - gap / tolerance).clamp(0.0, 1.0)
    return (1 - w) * owner + w * following


def crossfade_weight(z: int, nxt: Block | None) -> float:
    """Weight of the next block's field for section ``z`` owned by the current block:
    ``(j + 1) / (overlap + 1)`` on the ``j``-th section of the next block's overlap."""
    if nxt is None or z < nxt.start:
        return 0.0
    return (z - nxt.start + 1) / (nxt.own - nxt.start + 1)


def global_field(correction: Tensor | None, field: Tensor,
                 offset: tuple[int, int] = (0, 0)) -> Tensor:
    """A block's field in the global frame: ``compose(correction, field)``."""
    if correction is None:
        U, V = field.shape[1] - 2 * offset[0], field.shape[2] - 2 * offset[1]
        return field[:, offset[0]:offset[0] + U, offset[1]:offset[1] + V]
    return compose(correction, field, offset)
