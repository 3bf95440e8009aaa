"""The RSUNet's architecture, heads and self-describing checkpoints."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from pipeline.models.checkpoint import (
    CheckpointError,
    load_checkpoint,
    load_model,
    save_checkpoint,
    write_bytes,
)
from pipeline.models.rsunet import LONG_RANGE_OFFSETS, ModelSpec, ResModule, RSUNet

SMALL = ModelSpec(widths=(4, 8, 16), pool=(2, 2, 1))


def test_architecture_follows_the_paper():
    net = RSUNet(SMALL)
    convs = [m for m in net.modules() if isinstance(m, nn.Conv3d)]
    assert net.embed.kernel_size == (1, 5, 5) and net.out.kernel_size == (1, 5, 5)
    inner = [c.kernel_size for c in convs if c not in (net.embed, net.out)]
    assert set(inner) == {(3, 3, 3), (1, 1, 1)}  # 1x1x1 only in the up-sampling joins
    res = [m for m in net.modules() if isinstance(m, ResModule)]
    assert len(res) == 2 * 3 - 1
    assert all(len(r.convs) == 3 for r in res)  # the paper's extra convolution
    assert any(isinstance(m, nn.InstanceNorm3d) for m in net.modules())
    x = torch.rand(2, 1, 4, 16, 16)
    assert net(x).shape == (2, 3, 4, 16, 16)


def test_heads_and_probabilities():
    spec = ModelSpec(widths=(4, 8), long_range=LONG_RANGE_OFFSETS, myelin=True,
                     semantic_classes=3)
    assert spec.out_channels == 3 + 9 + 1 + 3 and spec.myelin_channel == 12
    net = RSUNet(spec).eval()
    p = net.predict(torch.rand(1, 1, 2, 8, 8))
    assert p.shape == (1, 16, 2, 8, 8)
    assert p.min() >= 0 and p.max() <= 1
    assert torch.allclose(p[:, 13:].sum(1), torch.ones(1, 2, 8, 8), atol=1e-5)


def test_spec_validation_and_patch_multiple():
    assert ModelSpec(widths=(8, 16, 32), pool=(2, 2, 1)).patch_multiple == (4, 4, 1)
    for bad in ({"widths": ()}, {"pool": (0, 2, 2)}, {"long_range": ((0, 0, 0),)},
                {"wdths": (1,)}):
        with pytest.raises(ValueError):
            ModelSpec(**bad)


def test_checkpoint_roundtrip_local_file_and_cloud(tmp_path):
    torch.manual_seed(1)
    net = RSUNet(SMALL).eval()
    x = torch.rand(1, 1, 4, 8, 8)
    for path in (str(tmp_path / "a.pt"), f"file://{tmp_path}/b.pt", "mem://ckpt/c.pt"):
        save_checkpoint(path, SMALL, net.state_dict(), step=3)
        loaded = load_model(path)
        assert loaded.spec == SMALL and not loaded.training
        assert torch.equal(loaded(x), net(x))
        assert load_checkpoint(path)["step"] == 3


def test_bare_state_dict_needs_and_checks_the_architecture(tmp_path):
    net = RSUNet(SMALL)
    path = str(tmp_path / "bare.pt")
    torch.save(net.state_dict(), path)
    with pytest.raises(CheckpointError, match="carries no architecture") as e:
        load_model(path)
    assert e.value.field == "model"
    assert load_model(path, SMALL).spec == SMALL
    with pytest.raises(CheckpointError, match="has 3 output channels") as e:
        load_model(path, ModelSpec(widths=(4, 8, 16), pool=(2, 2, 1), myelin=True))
    assert e.value.field == "checkpoints"
    save_checkpoint(str(tmp_path / "full.pt"), SMALL, net.state_dict())
    with pytest.raises(CheckpointError, match="the config says") as e:
        load_model(str(tmp_path / "full.pt"), ModelSpec(widths=(4, 8, 16), myelin=True))
    assert e.value.field == "model"


def test_missing_and_corrupt_checkpoints(tmp_path):
    with pytest.raises(CheckpointError, match="no such file"):
        load_model(str(tmp_path / "nope.pt"))
    write_bytes(str(tmp_path / "junk.pt"), b"not a torch file")
    with pytest.raises(CheckpointError, match="not a readable torch checkpoint"):
        load_model(str(tmp_path / "junk.pt"))
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match="not a dict"):
        load_model(str(tmp_path / "list.pt"))


def test_the_shipped_demo_model_loads_and_matches_its_training_config():
    from pipeline.models.train import load_train_config

    demo = Path(__file__).resolve().parents[2] / "pipeline" / "models" / "demo"
    model = load_model(str(demo / "rsunet_gala.pt"))
    cfg = load_train_config(demo / "train_gala.yaml")
    assert model.spec == cfg.spec() and (demo / "rsunet_gala.pt").stat().st_size < 20e6
    assert model(torch.rand(1, 1, 16, 48, 48)).shape == (1, 3, 16, 48, 48)


def test_rebalanced_bce_gives_each_class_half_the_weight():
    from pipeline.models.data import rebalanced_bce

    target = torch.zeros(1, 1, 1, 1, 10)
    target[..., :2] = 1  # 2 positives, 8 negatives (one of them masked out)
    mask = torch.ones_like(target)
    mask[..., 9] = 0
    logits = torch.zeros_like(target)  # BCE of logit 0 is log 2 everywhere
    loss = rebalanced_bce(logits, target, mask)
    assert torch.isclose(loss, torch.log(torch.tensor(2.0)))  # weights sum to the count
    sure = torch.where(target > 0, 5.0, -5.0)
    assert rebalanced_bce(sure, target, mask) < 0.01
    assert rebalanced_bce(sure, target, mask, soft=True) > 0.2  # 0.9 / 0.1 targets
    wrong_pos = sure.clone()
    wrong_pos[..., 0] = -5.0  # one of 2 positives wrong weighs as much as 3.5 negatives
    wrong_neg = sure.clone()
    wrong_neg[..., 2] = 5.0
    base = rebalanced_bce(sure, target, mask)
    a, b = rebalanced_bce(wrong_pos, target, mask), rebalanced_bce(wrong_neg, target, mask)
    assert torch.isclose((a - base) / (b - base), torch.tensor(7 / 2), rtol=1e-4)
    assert torch.isclose(rebalanced_bce(wrong_pos, target, mask, rebalance=False),
                         rebalanced_bce(wrong_neg, target, mask, rebalance=False))
