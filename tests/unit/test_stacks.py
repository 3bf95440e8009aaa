"""Every stack format reads the same voxels in x, y, z order."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import tifffile
from PIL import Image

from pipeline.geometry import Bbox
from pipeline.ingest.stacks import Stack, StackError

ZYX = np.random.default_rng(3).integers(0, 256, (5, 12, 17), dtype=np.uint8)


def write(fmt: str, tmp_path):
    if fmt == "h5":
        path = tmp_path / "s.h5"
        with h5py.File(path, "w") as f:
            f["stack"] = ZYX
    elif fmt == "tiff":
        path = tmp_path / "s.tif"
        tifffile.imwrite(path, ZYX)
    elif fmt == "npy":
        path = tmp_path / "s.npy"
        np.save(path, ZYX)
    else:
        path = tmp_path / "pngs"
        path.mkdir()
        for z, section in enumerate(ZYX):
            Image.fromarray(section).save(path / f"{z:04d}.png")
    return path


@pytest.mark.parametrize("fmt", ["h5", "tiff", "npy", "png"])
def test_formats_read_xyz(tmp_path, fmt):
    stack = Stack(str(write(fmt, tmp_path)))
    assert stack.shape == (17, 12, 5)
    box = Bbox((3, 2, 1), (15, 12, 4))
    got = stack.read(box)
    assert got.flags.c_contiguous
    assert np.array_equal(got, ZYX.transpose(2, 1, 0)[box.slices()])


def test_xyz_axes(tmp_path):
    path = tmp_path / "xyz.npy"
    np.save(path, ZYX.transpose(2, 1, 0))
    stack = Stack(str(path), axes="xyz")
    assert stack.shape == (17, 12, 5)
    assert np.array_equal(stack.read(stack.bbox), ZYX.transpose(2, 1, 0))


def test_bad_stacks(tmp_path):
    np.save(tmp_path / "flat.npy", np.zeros((4, 4), np.uint8))
    with pytest.raises(StackError, match="flat.npy: expected a 3D stack"):
        Stack(str(tmp_path / "flat.npy"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(StackError, match="holds no .png sections"):
        Stack(str(tmp_path / "empty"))
    (tmp_path / "junk.h5").write_text("not hdf5")
    with pytest.raises(StackError, match="junk.h5: not a readable HDF5"):
        Stack(str(tmp_path / "junk.h5"))
    with h5py.File(tmp_path / "two.h5", "w") as f:
        f["a"] = ZYX
        f["b"] = ZYX
    with pytest.raises(StackError, match=r"set ingest.dataset to one of \['a', 'b'\]"):
        Stack(str(tmp_path / "two.h5"))
