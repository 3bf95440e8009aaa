"""Misalignment maps and the inference masks built from them (pure kernels).

- :func:`misalignment`: residual displacement length (px) between two aligned sections,
  by tile NCC (:mod:`pipeline.align.ncc`); 0 where it cannot be measured (no data, an
  ambiguous or weak peak).
- :func:`classify`: at each pixel of section ``z``, with ``d_prev`` = misalignment of ``z``
  against ``z - 1``, ``d_next`` = of ``z + 1`` against ``z`` and ``d_skip`` = of ``z + 1``
  against ``z - 1`` (threshold ``t``):

  * **slip** (one section off, its neighbours agree): ``d_prev > t``, ``d_next > t`` and
    ``d_skip <= t``;
  * **step** (a persistent offset from ``z`` onwards): ``d_prev > t``, ``d_skip > t`` and
    ``d_next <= t``, unless ``z - 1`` slipped (then the offset is that slip's).

- the **input mask** (zeroes the input of boundary detection): slips, folds, cracks, resin
  and empty (no-data) pixels;
- the **output mask** (zeroes affinities): steps (on the first section after the step) and
  every pixel whose input mask is set in at least three consecutive sections (the whole run).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from pipeline.align import ncc
from pipeline.align.fields import lcn
from pipeline.align.warp import as_tensor
from pipeline.masks.detect import CRACK, EMPTY, FOLD, RESIN

INPUT_DEFECTS = FOLD | CRACK | RESIN | EMPTY
"""Defect codes that go into the input mask."""


@dataclass(frozen=True)
class MisalignParams:
    """Tile matching of aligned neighbours, and the misalignment threshold (px)."""

    tile: int = 32
    radius: int = 8
    threshold: float = 2.0

    @property
    def match(self) -> ncc.MatchParams:
        return ncc.MatchParams(tile=self.tile, radius=self.radius)


def misalignment(a: np.ndarray, b: np.ndarray, origin: tuple[int, int],
                 p: MisalignParams) -> np.ndarray:
    """Residual displacement length ``(X, Y)`` float32 of aligned section ``b`` against
    aligned section ``a`` (uint8, no data = 0); ``origin``: global pixel of ``[0, 0]``."""
    dev = torch.device("cpu")
    ta, tb = as_tensor(a, dev), as_tensor(b, dev)
    ma, mb = (ta > 0).to(torch.float32), (tb > 0).to(torch.float32)
    if float(ma.sum()) < 16 or float(mb.sum()) < 16:
        return np.zeros(a.shape, np.float32)
    tf = ncc.match_tiles(lcn(tb, mb), mb, lcn(ta, ma), ma, origin, p.match)
    tf.disp[~tf.valid] = 0
    d = ncc.tiles_to_pixels(tf, 0, origin, a.shape).norm(dim=0).numpy()
    return np.where((ma * mb).numpy() > 0, d, 0).astype(np.float32)


def classify(d_prev: np.ndarray, d_next: np.ndarray, d_skip: np.ndarray, threshold: float,
             prev_slip: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(slip, step) boolean maps of a section (see module doc); ``prev_slip``: where the
    previous section slipped (the offset against it is then not a step)."""
    off_prev, off_next, off_skip = d_prev > threshold, d_next > threshold, d_skip > threshold
    step = off_prev & off_skip & ~off_next
    if prev_slip is not None:
        step &= ~prev_slip
    return off_prev & off_next & ~off_skip, step


def runs_of_three(mask: np.ndarray) -> np.ndarray:
    """Pixels of ``mask`` ``(X, Y, Z)`` that belong to a run of at least three consecutive
    masked sections along z."""
    m = np.asarray(mask, bool)
    Z = m.shape[2]
    out = np.zeros_like(m)
    for z in range(Z - 2):
        three = m[..., z] & m[..., z + 1] & m[..., z + 2]
        out[..., z] |= three
        out[..., z + 1] |= three
        out[..., z + 2] |= three
    return out


def input_mask(codes: np.ndarray, slip: np.ndarray) -> np.ndarray:
    """uint8 1 where boundary detection's input is zeroed (slip or an input defect)."""
    return (slip | ((codes & INPUT_DEFECTS) != 0)).astype(np.uint8)


def output_mask(step: np.ndarray, inputs: np.ndarray) -> np.ndarray:
    """uint8 1 where affinities are zeroed: steps, and runs of >= 3 input-masked sections.
    ``step`` and ``inputs`` are ``(X, Y, Z)``."""
    return (step | runs_of_three(inputs != 0)).astype(np.uint8)


def masks_for_stack(aligned: np.ndarray, codes: np.ndarray, origin: tuple[int, int],
                    p: MisalignParams) -> dict[str, np.ndarray]:
    """Every mask of an aligned stack ``(X, Y, Z)`` and its defect codes: ``misalignment``
    (float32 px, of ``z`` against the previous section with data), ``slip``, ``step``,
    ``input`` and ``output`` (uint8 1 = masked). Sections without data are skipped as
    neighbours; the first and last sections have no slip/step."""
    X, Y, Z = aligned.shape
    has = [bool((aligned[..., z] > 0).any()) for z in range(Z)]
    prev = [max((t for t in range(z) if has[t]), default=None) for z in range(Z)]
    nxt = [min((t for t in range(z + 1, Z) if has[t]), default=None) for z in range(Z)]
    zero = np.zeros((X, Y), np.float32)

    def mis(i: int | None, j: int | None) -> np.ndarray:
        if i is None or j is None:
            return zero
        return misalignment(aligned[..., i], aligned[..., j], origin, p)

    d_prev = np.stack([mis(prev[z], z) if has[z] else zero for z in range(Z)], -1)
    slip = np.zeros((X, Y, Z), bool)
    step = np.zeros((X, Y, Z), bool)
    for z in range(Z):
        n = nxt[z]
        if not has[z] or prev[z] is None or n is None:
            continue
        s, t = classify(d_prev[..., z], d_prev[..., n], mis(prev[z], n), p.threshold,
                        slip[..., prev[z]])
        slip[..., z], step[..., z] = s, t
    inputs = input_mask(codes, slip)
    return {"misalignment": d_prev, "slip": slip.astype(np.uint8),
            "step": step.astype(np.uint8), "input": inputs,
            "output": output_mask(step, inputs)}
