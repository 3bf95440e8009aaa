"""Where alignment jobs read and write: precomputed layers, or arrays in memory.

Both kinds answer ``read(box, margin)`` with an ``(x, y, z, c)`` array of
``box.grow(margin)``, 0 outside the volume (or, with ``clamp``, the nearest voxel inside on
x and y), and ``write(box, data)``. Jobs only see this protocol, so the in-memory driver
used by tests runs exactly the code that queue tasks run against layers.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from pipeline import storage
from pipeline.geometry import Bbox, Vec


class Volume(Protocol):
    """A chunked 4-D array (x, y, z, channel) addressed by voxel boxes."""

    @property
    def bounds(self) -> Bbox: ...

    def read(self, box: Bbox, margin: Vec = (0, 0, 0), clamp: bool = False) -> np.ndarray: ...

    def write(self, box: Bbox, data: np.ndarray) -> None: ...


def _clamped(vol: Volume, box: Bbox, margin: Vec) -> np.ndarray:
    """``box.grow(margin)`` with x and y clamped into the bounds (edge values repeated)."""
    want = box.grow(margin)
    b = vol.bounds
    have = Bbox((max(want.start[0], b.start[0]), max(want.start[1], b.start[1]),
                 want.start[2]),
                (min(want.stop[0], b.stop[0]), min(want.stop[1], b.stop[1]), want.stop[2]))
    if have.empty():
        return vol.read(box, margin)
    data = vol.read(have)
    pad = [(have.start[a] - want.start[a], want.stop[a] - have.stop[a]) for a in range(2)]
    return np.pad(data, [*pad, (0, 0), (0, 0)], mode="edge")


class ArrayVolume:
    """A volume held in memory: ``data`` ``(x, y, z[, c])`` covering ``bounds``."""

    def __init__(self, data: np.ndarray, offset: Vec = (0, 0, 0)) -> None:
        self.data = data if data.ndim == 4 else data[..., None]
        self._bounds = Bbox.from_shape(self.data.shape[:3], offset)

    @classmethod
    def empty(cls, bounds: Bbox, dtype: str, channels: int = 1) -> ArrayVolume:
        return cls(np.zeros((*bounds.shape, channels), dtype), bounds.start)

    @property
    def bounds(self) -> Bbox:
        return self._bounds

    def read(self, box: Bbox, margin: Vec = (0, 0, 0), clamp: bool = False) -> np.ndarray:
        if clamp:
            return _clamped(self, box, margin)
        want = box.grow(margin)
        have = want.intersection(self._bounds)
        out = np.zeros((*want.shape, self.data.shape[3]), self.data.dtype)
        if not have.empty():
            out[have.slices(want.start)] = self.data[have.slices(self._bounds.start)]
        return out

    def write(self, box: Bbox, data: np.ndarray) -> None:
        if data.ndim == 3:
            data = data[..., None]
        self.data[box.slices(self._bounds.start)] = data.astype(self.data.dtype, copy=False)


class LayerVolume:
    """A precomputed layer at one mip (reads and writes through :mod:`pipeline.storage`)."""

    def __init__(self, path: str, mip: int = 0) -> None:
        self.path, self.mip = path, mip
        self.vol = storage.open_layer(path, mip)
        b = self.vol.bounds
        self._bounds = Bbox(tuple(b.minpt), tuple(b.maxpt))

    @property
    def bounds(self) -> Bbox:
        return self._bounds

    def read(self, box: Bbox, margin: Vec = (0, 0, 0), clamp: bool = False) -> np.ndarray:
        if clamp:
            return _clamped(self, box, margin)
        return storage.read(self.vol, box, margin)

    def write(self, box: Bbox, data: np.ndarray) -> None:
        storage.write(self.vol, box, data)
