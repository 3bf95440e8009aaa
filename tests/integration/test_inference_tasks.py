"""The inference stage on a real fq:// queue, real layers and worker processes."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from pipeline import storage
from pipeline.cluster import cluster_for
from pipeline.config import ConfigError, load_config
from pipeline.geometry import Bbox
from pipeline.inference import stage, tasks
from pipeline.inference.kernels import Tiling, infer_chunked
from pipeline.models.checkpoint import load_model, save_checkpoint, write_bytes
from pipeline.models.rsunet import ModelSpec, RSUNet
from pipeline.queue import DeadLetters, enqueue_wave, wait_for_wave
from pipeline.runner import dag_for, preflight

GALA = Path(__file__).resolve().parents[1] / "data" / "gala_fibsem_example"
SPEC = ModelSpec(widths=(4, 8), pool=(2, 2, 2))
MYELIN = ModelSpec(widths=(4, 8), pool=(2, 2, 2), myelin=True)


@pytest.fixture(autouse=True)
def one_thread(monkeypatch):
    """Two workers share two cores: one torch thread each (and here) avoids oversubscription."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    with h5py.File(GALA / "test-image.h5") as f:
        return f["stack"][:20, :40, :56].transpose(2, 1, 0).copy()  # x, y, z = 56, 40, 20


def layer(tmp_path: Path, data: np.ndarray, kind: str = "image", name: str = "image") -> str:
    path = f"file://{tmp_path}/{name}"
    box = Bbox.from_shape(data.shape[:3])
    storage.create_layer(path, kind, box, (10, 10, 10), (16, 16, 8), overwrite=True)
    storage.write(path, box, data)
    return path


def checkpoint(tmp_path: Path, spec: ModelSpec, seed: int, name: str) -> str:
    torch.manual_seed(seed)
    path = str(tmp_path / name)
    save_checkpoint(path, spec, RSUNet(spec).state_dict())
    return path


def conf(tmp_path: Path, image_path: str, ckpts: list[str], **inference) -> dict:
    return {"name": "inf", "output": str(tmp_path / "out"), "input": image_path,
            "chunk_size": [32, 32, 16], "storage_chunk_size": [16, 16, 8],
            "cluster": {"workers": 2}, "lease_seconds": 60, "overwrite": True,
            "inference": {"checkpoints": ckpts, "patch_size": [16, 16, 8],
                          "overlap": [4, 4, 2], "batch_size": 2, "device": "cpu", **inference}}


def test_queue_run_equals_in_memory_chunked_pass(tmp_path, image):
    ckpts = [checkpoint(tmp_path, MYELIN, 0, "a.pt"),
             "file://" + checkpoint(tmp_path, MYELIN, 1, "b.pt")]  # an ensemble of two
    config = stage.sanity_check(conf(tmp_path, layer(tmp_path, image), ckpts, myelin=True))
    assert dag_for(config) == "inference" and stage.pool(config) == "cpu"
    stage.prepare(config)
    todo = stage.inference_tasks(config)
    assert len(todo) == 2 * 2 * 2
    cluster = cluster_for(config, stage.pool(config))
    cluster.scale(2)
    try:
        n = enqueue_wave(config.queue_url, todo)
        wait_for_wave(config.queue_url, "inference", n, DeadLetters(config.dead_letter_path),
                      alive=cluster.size, timeout=300)
    finally:
        cluster.shutdown()
    layers = stage.finish(config)
    assert set(layers) == {"image", "aff", "myelin"}
    assert storage.get_status(config.layer_path("aff")) == "complete"
    box = Bbox.from_shape(image.shape)
    aff = storage.read(config.layer_path("aff"), box)
    myelin = storage.read(config.layer_path("myelin"), box)[..., 0]
    assert aff.dtype == np.float32 and aff.shape == (*image.shape, 3)

    tiling = Tiling(box, (16, 16, 8), (4, 4, 2))
    models = [load_model(p) for p in ckpts]
    runs = [infer_chunked(partial(tasks._predict, m, [0, 1, 2, 3]), image, tiling, (32, 32, 16),
                          batch_size=2) for m in models]
    want = (runs[0] + runs[1]) / np.float32(2)
    assert np.array_equal(aff, want[..., :3]) and np.array_equal(myelin, want[..., 3])
    whole = [infer_chunked(partial(tasks._predict, m, [0, 1, 2, 3]), image, tiling,
                           image.shape, batch_size=2) for m in models]
    assert np.abs((whole[0] + whole[1]) / 2 - want).max() <= 1e-5


def test_an_empty_chunk_is_written_as_zeros_without_the_net(tmp_path, image):
    zeros = np.zeros_like(image)
    ckpt = checkpoint(tmp_path, SPEC, 0, "a.pt")
    config = stage.sanity_check(conf(tmp_path, layer(tmp_path, zeros), [ckpt]))
    stage.prepare(config)
    tasks.inference_chunk(config.to_dict(), [0, 0, 0, 32, 32, 16])
    out = storage.read(config.layer_path("aff"), Bbox((0, 0, 0), (32, 32, 16)))
    assert out.shape == (32, 32, 16, 3) and not out.any()


BAD = [  # (id, how to break the config, field named, words in the message)
    ("missing-checkpoint", "nope", "inference.checkpoints", "no such file"),
    ("corrupt-checkpoint", "junk", "inference.checkpoints", "not a readable torch checkpoint"),
    ("architecture-mismatch", "model", "inference.model", "the config says"),
    ("channel-mismatch", "bare", "inference.checkpoints", "has 3 output channels"),
    ("no-myelin-head", "myelin", "inference.myelin", "no myelin output"),
    ("wrong-dtype", "float", "input", "inference needs a 1-channel uint8 image"),
    ("missing-input", "noinput", "input", "no precomputed info file"),
    ("patch-above-chunk", "bigpatch", "inference.patch_size", "must not exceed chunk_size"),
    ("patch-vs-pooling", "oddpatch", "inference.patch_size", "must fit the net's pooling"),
    ("overlap-not-below-patch", "overlap", "inference.overlap", "smaller than patch_size"),
    ("fp16-on-cpu", "fp16", "inference.precision", "fp16 needs device cuda"),
    ("output-holds-data", "full", "output", "already holds data"),
]


@pytest.mark.parametrize("case,field,words", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_input_is_a_config_error_naming_the_field(tmp_path, image, case, field, words):
    good = checkpoint(tmp_path, SPEC, 0, "good.pt")
    c = conf(tmp_path, layer(tmp_path, image), [good])
    inf = c["inference"]
    if case == "nope":
        inf["checkpoints"] = [str(tmp_path / "missing.pt")]
    elif case == "junk":
        write_bytes(str(tmp_path / "junk.pt"), b"\x00garbage")
        inf["checkpoints"] = [good, str(tmp_path / "junk.pt")]
    elif case == "model":
        inf["model"] = MYELIN.model_dump()
    elif case == "bare":
        torch.save(RSUNet(SPEC).state_dict(), tmp_path / "bare.pt")
        inf.update(checkpoints=[str(tmp_path / "bare.pt")], model=MYELIN.model_dump())
    elif case == "myelin":
        inf["myelin"] = True
    elif case == "float":
        c["input"] = layer(tmp_path, image.astype(np.float32), "probability", "float")
    elif case == "noinput":
        c["input"] = f"file://{tmp_path}/nothing"
    elif case == "bigpatch":
        inf["patch_size"] = [64, 16, 8]
    elif case == "oddpatch":
        inf["patch_size"] = [15, 16, 8]
    elif case == "overlap":
        inf["overlap"] = [16, 4, 2]
    elif case == "fp16":
        inf["precision"] = "fp16"
    elif case == "full":
        c["overwrite"] = False
        layer(tmp_path, np.zeros((*image.shape, 3), np.float32), "affinity", "out/aff")
    with pytest.raises(ConfigError) as err:
        preflight(load_config(c), "inference")
    fields = [f for f, _ in err.value.problems]
    assert field in fields, err.value
    assert words in str(err.value)
    if case != "full":
        assert not storage.layer_exists(f"file://{tmp_path}/out/aff")  # nothing written


def test_inference_only_config_needs_an_image(tmp_path):
    with pytest.raises(ConfigError, match="inference stage needs an image layer"):
        load_config({"name": "x", "output": str(tmp_path), "inference": {"checkpoints": ["a"]}})
    config = load_config({"name": "x", "output": str(tmp_path), "inference": {
        "checkpoints": ["a.pt"], "input": str(tmp_path / "img")}})
    assert dag_for(config) == "inference"
    assert tasks.input_path(config) == f"file://{tmp_path}/img"
