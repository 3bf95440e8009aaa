"""Affinity targets from labels, in the pipeline's convention, on (Z, Y, X) arrays.

Channel c of an affinity map is the affinity between a voxel and its predecessor at offset
``offsets[c]`` (x, y, z): for the nearest-neighbour channels 0, 1, 2 the predecessor along x,
y, z (the chunkflow/abiss convention of :mod:`pipeline.storage` layers). Label 0 is boundary:
an affinity is 1 only between two voxels of the same nonzero label. Voxels whose predecessor
lies outside the array (the first plane, or the first ``offset`` planes) are masked out.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

NEAREST: tuple[tuple[int, int, int], ...] = ((1, 0, 0), (0, 1, 0), (0, 0, 1))
"""The nearest-neighbour offsets (x, y, z) of channels 0, 1, 2."""


def _pair_slices(shape_zyx: Sequence[int], off_xyz: Sequence[int]) -> tuple[tuple, tuple]:
    """(slices of voxels that have a predecessor, slices of those predecessors), (z, y, x)."""
    off = tuple(reversed(off_xyz))
    cur = tuple(slice(min(o, n), n) for o, n in zip(off, shape_zyx, strict=True))
    pre = tuple(slice(0, max(n - o, 0)) for o, n in zip(off, shape_zyx, strict=True))
    return cur, pre


def affinity_targets(labels: np.ndarray, offsets: Sequence[Sequence[int]] = NEAREST,
                     ) -> tuple[np.ndarray, np.ndarray]:
    """(affinity, mask), each (C, Z, Y, X) float32, of a (Z, Y, X) label array.

    ``affinity[c, v] = 1`` iff ``labels[v] == labels[v - offsets[c]] != 0``; ``mask[c, v] = 0``
    where ``v - offsets[c]`` lies outside the array (its affinity is then 0).
    """
    labels = np.asarray(labels)
    n = len(offsets)
    aff = np.zeros((n, *labels.shape), np.float32)
    mask = np.zeros((n, *labels.shape), np.float32)
    for c, off in enumerate(offsets):
        cur, pre = _pair_slices(labels.shape, off)
        a, b = labels[cur], labels[pre]
        aff[(c, *cur)] = (a == b) & (a != 0)
        mask[(c, *cur)] = 1
    return aff, mask


def boundary_to_affinity(p: np.ndarray) -> np.ndarray:
    """(3, Z, Y, X) affinities ``1 - max(p[v], p[v - e_c])`` of a (Z, Y, X) boundary map; 0 on
    each channel's first plane (as the segmentation stage reads boundary layers)."""
    p = np.asarray(p, np.float32)
    aff = np.zeros((3, *p.shape), np.float32)
    for c, off in enumerate(NEAREST):
        cur, pre = _pair_slices(p.shape, off)
        aff[(c, *cur)] = 1 - np.maximum(p[cur], p[pre])
    return aff


def to_xyzc(aff_czyx: np.ndarray) -> np.ndarray:
    """A (C, Z, Y, X) map as the (X, Y, Z, C) array that layers and the segmentation take."""
    return np.ascontiguousarray(np.asarray(aff_czyx).transpose(3, 2, 1, 0))
