"""Every layer kind round-trips through real CloudVolume layers; margins pad at volume edges."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pipeline import storage
from pipeline.geometry import Bbox

KINDS = {
    "image": (np.uint8, 1),
    "affinity": (np.float32, 3),
    "probability": (np.float32, 1),
    "segmentation": (np.uint64, 1),
    "field": (np.float32, 2),
}


def random_data(kind: str, shape, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    dtype, channels = KINDS[kind]
    full = (*shape, channels)
    if dtype == np.uint8:
        return rng.integers(0, 256, full, dtype=np.uint8)
    if dtype == np.uint64:
        return rng.integers(0, 2**40, full, dtype=np.uint64)
    return (rng.standard_normal(full) * 10).astype(np.float32)


@pytest.mark.parametrize("kind", list(KINDS))
def test_round_trip(tmp_path, kind):
    path = f"file://{tmp_path}/{kind}"
    box = Bbox((16, 0, 4), (56, 40, 14))  # not a multiple of the chunk size
    storage.create_layer(path, kind, box, (4, 4, 40), (16, 16, 5))
    vol = storage.open_layer(path)
    spec = storage.LAYER_SPECS[kind]
    assert vol.dtype == KINDS[kind][0] and vol.num_channels == KINDS[kind][1]
    assert vol.info["scales"][0]["encoding"] == spec.encoding
    assert storage.layer_bounds(path) == box
    assert storage.get_status(path) == "incomplete"
    data = random_data(kind, box.shape)
    storage.write(path, box, data)
    back = storage.read(path, box)
    assert back.dtype == data.dtype and np.array_equal(back, data)  # bit-exact, fpzip too
    assert storage.layer_has_data(path)
    storage.set_status(path, "complete")
    assert storage.get_status(path) == "complete"


def test_margin_reads_pad_at_volume_edges(tmp_path):
    path = f"file://{tmp_path}/img"
    box = Bbox((0, 0, 0), (32, 32, 8))
    storage.create_layer(path, "image", box, (4, 4, 40), (16, 16, 4))
    data = random_data("image", box.shape)
    storage.write(path, box, data)
    inner = Bbox((0, 16, 4), (16, 32, 8))
    got = storage.read(path, inner, margin=2, fill=7)
    assert got.shape == (20, 20, 8, 1)
    # interior part equals the data; beyond the volume it is the fill value
    assert (got[:2] == 7).all() and (got[:, 18:] == 7).all() and (got[:, :, 6:] == 7).all()
    assert np.array_equal(got[2:, :18, :6], data[:18, 14:32, 2:8])
    outside = storage.read(path, Bbox((100, 100, 100), (102, 102, 102)), fill=3)
    assert outside.shape == (2, 2, 2, 1) and (outside == 3).all()


def test_create_refuses_layer_with_data(tmp_path):
    path = f"file://{tmp_path}/seg"
    box = Bbox((0, 0, 0), (16, 16, 4))
    storage.create_layer(path, "segmentation", box, (4, 4, 40), (16, 16, 4))
    assert not storage.layer_has_data(path)  # info and status only
    storage.create_layer(path, "segmentation", box, (4, 4, 40), (16, 16, 4))  # still empty: fine
    storage.write(path, box, np.ones(box.shape, np.uint64))
    with pytest.raises(storage.LayerError, match="already holds data; set overwrite"):
        storage.create_layer(path, "segmentation", box, (4, 4, 40), (16, 16, 4))
    storage.create_layer(path, "segmentation", box, (4, 4, 40), (16, 16, 4), overwrite=True)


def test_errors_name_the_layer(tmp_path):
    with pytest.raises(storage.LayerError, match=f"layer file://{tmp_path}/none: no precomputed"):
        storage.open_layer(f"file://{tmp_path}/none")
    path = f"file://{tmp_path}/img"
    box = Bbox((0, 0, 0), (16, 16, 4))
    storage.create_layer(path, "image", box, (4, 4, 40), (16, 16, 4))
    with pytest.raises(ValueError, match="does not match bbox"):
        storage.write(path, box, np.zeros((8, 8, 4), np.uint8))


def test_discover_layers(tmp_path):
    box = Bbox((0, 0, 0), (16, 16, 4))
    for name, kind in [("run/image", "image"), ("run/aff", "affinity"), ("seg", "segmentation"),
                       ("run/field", "field")]:
        storage.create_layer(f"file://{tmp_path}/{name}", kind, box, (4, 4, 40), (16, 16, 4))
    (tmp_path / "run" / "scratch").mkdir()
    (tmp_path / "run" / "scratch" / "info").write_text(json.dumps({"not": "a layer"}))
    found = storage.discover_layers(tmp_path)
    assert {k: v[1] for k, v in found.items()} == {
        "run/image": "image", "run/aff": "affinity", "seg": "segmentation", "run/field": "field"}
    assert found["seg"][0] == f"file://{tmp_path}/seg"
