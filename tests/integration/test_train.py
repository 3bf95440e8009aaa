"""Training on CPU: the loss falls, resuming is exact, outputs load, bad configs are named."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from pipeline.models.checkpoint import load_model
from pipeline.models.train import TrainConfigError, load_train_config, train

GALA = Path(__file__).resolve().parents[1] / "data" / "gala_fibsem_example"


@pytest.fixture(autouse=True)
def one_thread():
    """Exact loss sequences need a fixed thread count; one also avoids oversubscription."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, str]:
    """Training and validation crops of the gala train cutout, as .npy (z, y, x) and .h5."""
    root = tmp_path_factory.mktemp("gala")
    with h5py.File(GALA / "train-image.h5") as f:
        image = f["stack"][:12, :40, :80]
    with h5py.File(GALA / "train-gt.lzf.h5") as f:
        labels = f["stack"][:12, :40, :80]
    np.save(root / "image.npy", image[:, :, :48])
    np.save(root / "labels.npy", labels[:, :, :48])
    with h5py.File(root / "val.h5", "w") as f:
        f["raw"], f["gt"] = image[:, :, 48:], labels[:, :, 48:]
    return {"image": str(root / "image.npy"), "labels": str(root / "labels.npy"),
            "val_image": str(root / "val.h5"), "val_image_dataset": "raw",
            "val_labels": str(root / "val.h5"), "val_labels_dataset": "gt"}


def config(data: dict, out: Path, **over) -> dict:
    return {**data, "patch_size": [16, 16, 8], "widths": [4, 8], "pool": [2, 2, 2],
            "batch_size": 2, "lr": 0.01, "steps": 8, "seed": 3, "val_every": 4,
            "checkpoint_every": 4, "val_patches": 2, "d_max": 2,
            "augment": ["flip_rotate", "brightness_contrast", "missing_section",
                        "lost_section", "misalign"],
            "out_dir": str(out), "device": "cpu", **over}


def test_training_lowers_the_loss_and_writes_its_outputs(data, tmp_path):
    out = train(config(data, tmp_path / "run", steps=24, val_every=12, checkpoint_every=12,
                       augment=["flip_rotate"]))
    losses = json.loads(Path(out["history"]).read_text())["loss"]
    assert len(losses) == 24 and out["steps"] == 24
    assert np.mean(losses[-6:]) < np.mean(losses[:6]) - 0.05
    assert {"loss", "vi", "vi_split", "vi_merge", "adapted_rand_error"} <= set(out["val"])
    assert Path(out["plot"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    model = load_model(out["model"])
    assert model.spec.widths == (4, 8) and not model.training
    assert Path(out["model"]).stat().st_size < Path(out["checkpoint"]).stat().st_size


def test_resume_continues_exactly(data, tmp_path):
    straight = train(config(data, tmp_path / "a"))
    first = train(config(data, tmp_path / "b", stop_at=3))  # as if killed after step 3
    assert first["steps"] == 3
    resumed = train(config(data, tmp_path / "b", resume=True))
    a = json.loads(Path(straight["history"]).read_text())
    b = json.loads(Path(resumed["history"]).read_text())
    assert b["loss"] == a["loss"] and len(a["loss"]) == 8  # bit-identical floats
    assert b["val"] == a["val"]
    wa = load_model(straight["model"]).state_dict()
    wb = load_model(resumed["model"]).state_dict()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.mark.parametrize("over,field,words", [
    ({"stepz": 3}, "stepz", "Extra inputs"),
    ({"patch_size": [15, 16, 8]}, "patch_size", "x=15 is not a multiple of 2"),
    ({"depth": 3}, "depth", "3 != len(widths) = 2"),
    ({"augment": ["rotate45"]}, "augment", "unknown augmentation"),
    ({"image": "/nonexistent.h5"}, "image", "no such file"),
    ({"val_labels_dataset": "nope"}, "val_labels_dataset", "no dataset 'nope'"),
    ({"patch_size": [64, 16, 8]}, "patch_size", "smaller than its samples"),
    ({"val_labels": None}, "val_labels", "give both"),
])
def test_bad_config_names_the_field(data, tmp_path, over, field, words):
    with pytest.raises(TrainConfigError) as err:
        cfg = load_train_config(config(data, tmp_path, **over))
        train(cfg)
    assert field in [f for f, _ in err.value.problems], err.value
    assert words in str(err.value)


def test_long_range_targets_and_a_precomputed_layer_as_input(data, tmp_path):
    from pipeline import storage
    from pipeline.geometry import Bbox

    image = np.load(data["image"])
    path = f"file://{tmp_path}/layer"
    box = Bbox.from_shape(image.shape[::-1])
    storage.create_layer(path, "image", box, (10, 10, 10), (16, 16, 8))
    storage.write(path, box, image.transpose(2, 1, 0))
    cfg = config(data, tmp_path / "lr", image=path, long_range=True, steps=2,
                 val_image=None, val_labels=None, val_fraction=0.0, augment=[])
    out = train(cfg)
    assert out["val"] is None and out["steps"] == 2
    model = load_model(out["model"])
    assert model.spec.out_channels == 3 + 9
