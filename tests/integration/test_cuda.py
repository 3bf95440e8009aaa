"""The GPU paths: inference and training on CUDA agree with the CPU and are repeatable.

CI has no GPU, so these skip there; they run where ``torch.cuda.is_available()``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.geometry import Bbox
from pipeline.inference.kernels import Tiling, infer_block, infer_chunked
from pipeline.models.rsunet import ModelSpec, RSUNet

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return np.random.default_rng(5).integers(0, 256, (40, 36, 14), dtype=np.uint8)


@pytest.fixture(scope="module")
def nets() -> tuple[RSUNet, RSUNet]:
    """The same weights on CPU and on the GPU."""
    torch.manual_seed(0)
    cpu = RSUNet(ModelSpec(widths=(4, 8, 8), pool=(2, 2, 1))).eval()
    gpu = RSUNet(ModelSpec(widths=(4, 8, 8), pool=(2, 2, 1))).eval()
    gpu.load_state_dict(cpu.state_dict())
    return cpu, gpu.cuda()


TILING = dict(patch=(12, 12, 4), overlap=(4, 4, 1))


def run(net: RSUNet, image: np.ndarray, chunk, **kwargs) -> np.ndarray:
    tiling = Tiling(Bbox.from_shape(image.shape), TILING["patch"], TILING["overlap"])
    return infer_chunked(net.predict, image, tiling, chunk, batch_size=2, **kwargs)


def test_cuda_fp32_matches_the_cpu_and_chunked_matches_whole(image, nets):
    cpu, gpu = nets
    want = run(cpu, image, image.shape)
    whole = run(gpu, image, image.shape, device="cuda")
    chunked = run(gpu, image, (16, 16, 8), device="cuda")
    assert whole.dtype == np.float32 and whole.shape == want.shape
    assert np.abs(whole - want).max() <= 1e-4
    assert np.abs(chunked - whole).max() <= 1e-5


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_cuda_half_precision_stays_close_to_fp32(image, nets, precision):
    _, gpu = nets
    fp32 = run(gpu, image, image.shape, device="cuda")
    half = run(gpu, image, image.shape, device="cuda", precision=precision)
    assert np.isfinite(half).all() and half.min() >= 0 and half.max() <= 1
    assert np.abs(half - fp32).mean() <= 0.01 and np.abs(half - fp32).max() <= 0.1


def test_cuda_inference_repeats_byte_for_byte(image, nets):
    """The inference task's promise: same inputs and device, same bytes."""
    _, gpu = nets
    box = Bbox((8, 8, 2), (32, 28, 12))
    tiling = Tiling(Bbox.from_shape(image.shape), TILING["patch"], TILING["overlap"])
    need = tiling.read_box(box)
    block = image[need.slices()]
    a = infer_block(gpu.predict, block, need, box, tiling, batch_size=3, device="cuda")
    b = infer_block(gpu.predict, block, need, box, tiling, batch_size=3, device="cuda")
    assert a.tobytes() == b.tobytes()


def test_cuda_training_with_bf16_autocast_lowers_the_loss(tmp_path):
    """``device: auto`` picks the GPU and bf16 there; the loss falls and the model loads."""
    import h5py

    from pipeline.models.checkpoint import load_model
    from pipeline.models.train import train

    gala = Path(__file__).resolve().parents[1] / "data" / "gala_fibsem_example"
    with h5py.File(gala / "train-image.h5") as f:
        image = f["stack"][:12, :48, :48]
    with h5py.File(gala / "train-gt.lzf.h5") as f:
        labels = f["stack"][:12, :48, :48]
    np.save(tmp_path / "image.npy", image)
    np.save(tmp_path / "labels.npy", labels)
    out = train({"image": str(tmp_path / "image.npy"), "labels": str(tmp_path / "labels.npy"),
                 "patch_size": [16, 16, 8], "widths": [4, 8], "pool": [2, 2, 2],
                 "batch_size": 2, "lr": 0.01, "steps": 40, "seed": 3, "val_fraction": 0,
                 "checkpoint_every": 40, "augment": ["flip_rotate"], "d_max": 2,
                 "out_dir": str(tmp_path / "run"), "device": "auto"})
    losses = json.loads(Path(out["history"]).read_text())["loss"]
    assert len(losses) == 40 and all(np.isfinite(losses))
    assert np.mean(losses[-8:]) < np.mean(losses[:8]) - 0.05
    assert load_model(out["model"]).spec.widths == (4, 8)
