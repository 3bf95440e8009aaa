"""Readers for image stacks on local disk, each read a bbox at a time in x, y, z order."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.geometry import Bbox, Vec

STACK_SUFFIXES = (".h5", ".hdf5", ".hdf", ".tif", ".tiff", ".npy")


class StackError(ValueError):
    """An image stack cannot be read as a 3D uint8 volume; the message names the file."""


class Stack:
    """A 3D image stack. ``shape`` is x, y, z; :meth:`read` returns an (x, y, z) array."""

    def __init__(self, source: str, dataset: str | None = None, axes: str = "zyx") -> None:
        self.path = Path(source)
        self.axes = axes
        if not self.path.exists():
            raise StackError(f"{source}: no such file or folder")
        self._png: list[Path] | None = None
        self._data = self._open(dataset)
        shape = tuple(self._data.shape) if self._png is None else self._png_shape()
        if len(shape) != 3:
            raise StackError(f"{source}: expected a 3D stack, got shape {shape}")
        self.shape: Vec = tuple(reversed(shape)) if axes == "zyx" else shape  # type: ignore
        if self.dtype != np.uint8:
            raise StackError(f"{source}: expected uint8 voxels, got {self.dtype}")

    def _open(self, dataset: str | None):
        p = self.path
        if p.is_dir():
            self._png = sorted(p.glob("*.png"))
            if not self._png:
                raise StackError(f"{p}: folder holds no .png sections")
            return None
        suffix = p.suffix.lower()
        if suffix in (".h5", ".hdf5", ".hdf"):
            import h5py

            try:
                f = h5py.File(p, "r")
            except OSError as e:
                raise StackError(f"{p}: not a readable HDF5 file ({e})") from None
            names = [k for k in f if isinstance(f[k], h5py.Dataset)]
            if dataset is None:
                if len(names) != 1:
                    raise StackError(f"{p}: set ingest.dataset to one of {names}")
                dataset = names[0]
            if dataset not in f:
                raise StackError(f"{p}: no dataset {dataset!r}; it has {names}")
            return f[dataset]
        if suffix in (".tif", ".tiff"):
            import tifffile

            try:
                return tifffile.imread(p)
            except Exception as e:
                raise StackError(f"{p}: not a readable TIFF ({e})") from None
        if suffix == ".npy":
            try:
                return np.load(p, mmap_mode="r")
            except Exception as e:
                raise StackError(f"{p}: not a readable .npy file ({e})") from None
        raise StackError(f"{p}: unsupported stack type {suffix!r}; use one of "
                         f"{', '.join(STACK_SUFFIXES)} or a folder of .png sections")

    def _png_shape(self) -> tuple[int, int, int]:
        first = self._read_png(0)
        return (len(self._png), *first.shape)  # type: ignore[arg-type]

    def _read_png(self, z: int) -> np.ndarray:
        from PIL import Image

        with Image.open(self._png[z]) as im:  # type: ignore[index]
            a = np.asarray(im)
        if a.ndim != 2:
            raise StackError(f"{self._png[z]}: expected a grayscale section, got {a.shape}")
        return a

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(np.uint8) if self._png is not None else np.dtype(self._data.dtype)

    @property
    def bbox(self) -> Bbox:
        return Bbox.from_shape(self.shape)

    def read(self, bbox: Bbox) -> np.ndarray:
        """The voxels of ``bbox`` as a C-ordered (x, y, z) uint8 array."""
        (x0, y0, z0), (x1, y1, z1) = bbox.start, bbox.stop
        if self._png is not None:
            zyx = np.stack([self._read_png(z)[y0:y1, x0:x1] for z in range(z0, z1)])
        elif self.axes == "zyx":
            zyx = np.asarray(self._data[z0:z1, y0:y1, x0:x1])
        else:
            return np.ascontiguousarray(self._data[x0:x1, y0:y1, z0:z1])
        return np.ascontiguousarray(zyx.transpose(2, 1, 0))
