"""Rendering: warp image chunks with the final field, and composite runs of partial sections.

:func:`render_section` promises that a chunk rendered with a margin of at least the largest
displacement in it plus one pixel equals, pixel for pixel, the same pixels of a render of
the whole section: the field is upsampled with weights computed from global pixel indices
(:func:`pipeline.align.warp.upsample_field`) and warped with weights computed from the field
value alone (:func:`pipeline.align.warp.warp`); :func:`margin_for` gives that margin.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from pipeline.align.warp import as_tensor, upsample_field, warp


def fine_field(field: np.ndarray, field_origin: tuple[int, int], scale: int,
               origin: tuple[int, int], shape: tuple[int, int],
               dev: torch.device | None = None) -> torch.Tensor:
    """The field ``(2, X, Y)`` in render-mip pixels over ``origin + [0, shape)``, from a
    field ``(2, Xm, Ym)`` at a mip ``scale`` times coarser whose pixel [0, 0] is global
    ``field_origin`` (it must cover the chunk plus one coarse pixel)."""
    return upsample_field(as_tensor(field, dev), field_origin, scale, origin, shape)


def margin_for(field: torch.Tensor) -> int:
    """Pixels of image margin a chunk needs so that every sample it takes is read."""
    if field.numel() == 0:
        return 1
    return math.ceil(float(field.abs().max())) + 1


def render_section(image: np.ndarray, field: torch.Tensor, margin: int) -> np.ndarray:
    """uint8 ``(X, Y)``: ``image`` (the chunk grown by ``margin`` on x and y) pulled
    through ``field`` ``(2, X, Y)``; 0 where the source has no data."""
    img = as_tensor(image, field.device)
    out = warp(img, field, offset=(margin, margin))
    return np.clip(np.rint(out.cpu().numpy()), 0, 255).astype(np.uint8)


def partial_runs(partial: np.ndarray, z0: int = 0) -> list[list[int]]:
    """Maximal runs of at least two consecutive partial sections (global z)."""
    runs, cur = [], []
    for i, p in enumerate(partial):
        if p:
            cur.append(z0 + i)
        else:
            if len(cur) > 1:
                runs.append(cur)
            cur = []
    if len(cur) > 1:
        runs.append(cur)
    return runs


def composite(sections: list[np.ndarray], areas: list[float]) -> np.ndarray:
    """Composite of partial sections (a hiatus): ordered from the largest data area to the
    smallest (ties: first given first), each pixel takes the first non-zero value."""
    order = sorted(range(len(sections)), key=lambda i: (-areas[i], i))
    out = np.zeros_like(sections[0])
    for i in order:
        fill = (out == 0) & (sections[i] != 0)
        out[fill] = sections[i][fill]
    return out
