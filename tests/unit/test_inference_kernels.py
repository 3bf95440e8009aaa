"""Chunked inference equals the whole-volume pass; blending weights sum to exactly 1."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.geometry import Bbox
from pipeline.inference.kernels import (
    MAX_WEIGHT_SUM,
    Tiling,
    bump_window,
    infer_block,
    infer_chunked,
    padded,
    patch_starts,
)
from pipeline.models.rsunet import ModelSpec, RSUNet


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Many tiny forward passes: one torch thread avoids OpenMP oversubscription stalls."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def identity(x: torch.Tensor) -> torch.Tensor:
    return x.repeat(1, 3, 1, 1, 1)


def ones(x: torch.Tensor) -> torch.Tensor:
    return torch.ones_like(x).repeat(1, 2, 1, 1, 1)


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return np.random.default_rng(0).integers(1, 256, (37, 29, 13), dtype=np.uint8)


def test_patch_starts():
    assert patch_starts(10, 4, 1) == [0, 3, 6]
    assert patch_starts(11, 4, 1) == [0, 3, 6, 7]  # the last patch is flush with the end
    assert patch_starts(3, 4, 2) == [0]
    assert patch_starts(4, 4, 0) == [0]
    with pytest.raises(ValueError):
        patch_starts(10, 4, 4)
    with pytest.raises(ValueError, match="overlap"):
        Tiling(Bbox.from_shape((8, 8, 8)), (4, 4, 4), (1, 4, 0))


def test_bump_window_is_a_positive_integer_bump():
    w = bump_window((5, 8, 9))
    assert w.min() >= 1 and np.array_equal(w, np.rint(w))
    assert np.array_equal(w, w[::-1, ::-1, ::-1])  # symmetric
    assert w[2, 3, 4] == w.max() and w[0, 0, 0] < w[2, 3, 4]


CASES = [  # chunk size, patch, overlap (x, y, z)
    ((37, 29, 13), (8, 8, 4), (2, 2, 1)),
    ((10, 10, 5), (8, 8, 4), (2, 2, 1)),
    ((8, 8, 4), (8, 8, 4), (0, 0, 0)),
    ((16, 7, 13), (16, 12, 6), (7, 5, 3)),
    ((19, 15, 7), (6, 6, 6), (5, 5, 5)),  # stride 1: up to 216 patches over a voxel
    ((20, 20, 20), (64, 32, 16), (8, 8, 4)),  # patches larger than the volume
]


@pytest.mark.parametrize("chunk,patch,overlap", CASES)
def test_identity_model_reproduces_the_input_exactly(image, chunk, patch, overlap):
    tiling = Tiling(Bbox.from_shape(image.shape), patch, overlap)
    out = infer_chunked(identity, image, tiling, chunk, batch_size=3)
    want = np.repeat((image.astype(np.float32) / 255)[..., None], 3, axis=3)
    assert out.dtype == np.float32 and np.array_equal(out, want)


@pytest.mark.parametrize("chunk,patch,overlap", CASES)
def test_blend_weights_sum_to_exactly_one(image, chunk, patch, overlap):
    tiling = Tiling(Bbox.from_shape(image.shape), patch, overlap)
    out = infer_chunked(ones, image, tiling, chunk)
    assert out.shape == (*image.shape, 2) and np.all(out == 1.0)
    assert tiling.max_cover * bump_window(tuple(reversed(patch))).max() < MAX_WEIGHT_SUM


def test_volume_offset_and_margin_reads(image):
    """A run bbox not at the origin: tiles anchor at its start, the read box is the margin."""
    vol = Bbox((100, 50, 7), (137, 79, 20))
    tiling = Tiling(vol, (8, 8, 4), (2, 2, 1))
    box = Bbox((110, 60, 10), (120, 70, 14))
    need = tiling.read_box(box)
    assert need.contains(box) and need.start[0] in tiling.starts(0)
    block = padded(image, vol, need)
    out = infer_block(identity, block, need, box, tiling)
    assert np.array_equal(out[..., 0], image[box.slices(vol.start)] / np.float32(255))
    with pytest.raises(ValueError, match="does not hold the patches"):
        short = Bbox((need.start[0] + 1, *need.start[1:]), need.stop)
        infer_block(identity, block[1:], short, box, tiling)


def test_masks_zero_input_and_output(image):
    tiling = Tiling(Bbox.from_shape(image.shape), (8, 8, 4), (2, 2, 1))
    imask = np.zeros(image.shape, np.uint8)
    imask[5:9, 3:20, 2:4] = 1
    omask = np.zeros(image.shape, np.uint8)
    omask[20:, :, 6] = 1
    out = infer_chunked(identity, image, tiling, (16, 16, 8), input_mask=imask,
                        output_mask=omask)
    want = image.astype(np.float32) / 255
    want[imask != 0] = 0
    want[omask != 0] = 0
    assert np.array_equal(out[..., 1], want)


@pytest.fixture(scope="module")
def net() -> RSUNet:
    torch.manual_seed(0)
    return RSUNet(ModelSpec(widths=(4, 8, 8), pool=(2, 2, 1))).eval()


@pytest.mark.parametrize("chunk,batch", [((16, 16, 8), 1), ((12, 20, 5), 3), ((37, 29, 13), 2)])
def test_real_net_chunked_equals_whole_volume_pass(image, net, chunk, batch):
    """The same global tiling over the whole volume and over chunks with margins: the same
    patches (InstanceNorm sees the same patch), the same weights, the same order."""
    tiling = Tiling(Bbox.from_shape(image.shape), (12, 12, 4), (4, 4, 1))
    whole = infer_chunked(net.predict, image, tiling, image.shape, batch_size=2)
    chunked = infer_chunked(net.predict, image, tiling, chunk, batch_size=batch)
    assert whole.shape == (*image.shape, 3)
    assert np.abs(chunked - whole).max() <= 1e-5
    assert whole.min() > 0 and whole.max() < 1
