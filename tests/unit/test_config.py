"""Bad run configs are refused up front with a message naming the field; nothing is written."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

from pipeline.config import ConfigError, load_config
from pipeline.ingest import stage


@pytest.fixture
def stack(tmp_path):
    path = tmp_path / "stack.h5"
    with h5py.File(path, "w") as f:
        f["stack"] = np.zeros((8, 40, 50), dtype=np.uint8)  # z, y, x
        f["float"] = np.zeros((8, 40, 50), dtype=np.float32)
    return path


def base(tmp_path, stack, **over):
    conf = {
        "name": "run-1",
        "output": str(tmp_path / "out"),
        "ingest": {"source": str(stack), "dataset": "stack"},
        "chunk_size": [32, 32, 8],
        "storage_chunk_size": [16, 16, 4],
    }
    for key, value in over.items():
        if value is None:
            conf.pop(key, None)
        else:
            conf[key] = value
    return conf


BAD = [
    # (id, overrides, field named in the error, words in the message)
    ("no-name", {"name": None}, "name", "required"),
    ("bad-name", {"name": "Run_1"}, "name", "lowercase"),
    ("typo", {"chunksize": [1, 2, 3]}, "chunksize", "unknown field"),
    ("not-multiple", {"chunk_size": [30, 32, 8]}, "chunk_size", "x=30 is not a multiple of 16"),
    ("negative-chunk", {"chunk_size": [-32, 32, 8]}, "chunk_size", "> 0"),
    ("chunk-type", {"chunk_size": "big"}, "chunk_size", "tuple"),
    ("bbox-inverted", {"bbox": [0, 0, 8, 10, 10, 4]}, "bbox", "stop must exceed start"),
    ("bbox-length", {"bbox": [0, 0, 10, 10]}, "bbox", "needs 6 numbers"),
    ("queue-scheme", {"queue": "redis://host/q"}, "queue", "unsupported queue"),
    ("storage-scheme", {"output": "ftp://host/x"}, "output", "unsupported storage scheme"),
    ("cloud-without-queue", {"output": "gs://bucket/run"}, "<root>", "queue is required"),
    ("resolution", {"resolution": [8, 0, 40]}, "resolution", "> 0 nm"),
    ("workers", {"cluster": {"workers": -1}}, "cluster.workers", "greater than or equal"),
    ("backend", {"cluster": {"backend": "slurm"}}, "cluster.backend", "'local' or 'kubernetes'"),
    ("attempts", {"max_attempts": 0}, "max_attempts", "greater than or equal"),
    ("no-input", {"ingest": None}, "<root>", "give `input`"),
    ("axes", {"ingest": {"source": "x.h5", "axes": "yxz"}}, "ingest.axes", "'zyx' or 'xyz'"),
]


@pytest.mark.parametrize("over,field,words", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_static_errors_name_the_field(tmp_path, stack, over, field, words):
    with pytest.raises(ConfigError) as err:
        load_config(base(tmp_path, stack, **over))
    fields = [f or "<root>" for f, _ in err.value.problems]
    assert field in fields, err.value
    assert words in str(err.value)
    assert not (tmp_path / "out").exists()


DATA_BAD = [
    ("missing-source", {"source": "missing.h5"}, "ingest.source", "no such file"),
    ("wrong-dataset", {"dataset": "nope"}, "ingest.dataset", "no dataset 'nope'"),
    ("float-stack", {"dataset": "float"}, "ingest.source", "expected uint8"),
    ("bad-suffix", {"source": "stack.zarr"}, "ingest.source", "unsupported stack type"),
]


@pytest.mark.parametrize(
    "ingest,field,words", [b[1:] for b in DATA_BAD], ids=[b[0] for b in DATA_BAD]
)
def test_data_errors_before_anything_is_written(tmp_path, stack, ingest, field, words):
    if "source" in ingest:
        ingest = {**ingest, "source": str(tmp_path / ingest["source"])}
        (tmp_path / "stack.zarr").write_text("x")
    conf = base(tmp_path, stack)
    conf["ingest"] = {**conf["ingest"], **ingest}
    with pytest.raises(ConfigError) as err:
        stage.sanity_check(conf)
    assert err.value.problems[0][0] == field
    assert words in str(err.value)
    assert not (tmp_path / "out").exists()


def test_bbox_outside_stack(tmp_path, stack):
    with pytest.raises(ConfigError, match=r"bbox: \[0, 0, 0, 60, 40, 8\] lies outside the stack"):
        stage.sanity_check(base(tmp_path, stack, bbox=[0, 0, 0, 60, 40, 8]))
    assert not (tmp_path / "out").exists()


def test_output_with_data_needs_overwrite(tmp_path, stack):
    layer = tmp_path / "out" / "image"
    layer.mkdir(parents=True)
    (layer / "info").write_text("{}")
    (layer / "chunk").write_text("data")
    with pytest.raises(ConfigError, match="output: layer .* already holds data; set overwrite"):
        stage.sanity_check(base(tmp_path, stack))
    assert sorted(p.name for p in layer.iterdir()) == ["chunk", "info"]
    assert stage.sanity_check(base(tmp_path, stack, overwrite=True)).bbox == (0, 0, 0, 50, 40, 8)


def test_files_and_round_trip(tmp_path, stack):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "none.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: [unclosed")
    with pytest.raises(ConfigError, match="cannot parse broken.yaml"):
        load_config(broken)
    good = tmp_path / "good.json"
    good.write_text(json.dumps(base(tmp_path, stack)))
    cfg = load_config(good)
    assert load_config(cfg.to_dict()) == cfg
    assert cfg.output == f"file://{tmp_path}/out"
    assert cfg.queue_url == f"fq://{tmp_path}/out/scratch/queue"
    assert cfg.image_path == f"file://{tmp_path}/out/image"
    assert cfg.cluster.size_for("cpu") == 2
    capped = load_config(base(tmp_path, stack, cluster={"workers": 8, "max_workers": {"cpu": 3}}))
    assert capped.cluster.size_for("cpu") == 3 and capped.cluster.size_for("gpu") == 8
