"""The segmentation stage on a real fq:// queue, real layers and worker processes."""

from __future__ import annotations

import signal
import time
from functools import partial
from pathlib import Path

import h5py
import numpy as np
import pytest

from pipeline import storage
from pipeline.agglomerate.chunked import AgglomerationParams
from pipeline.agglomerate.jobs import agglomerate_global
from pipeline.cluster import cluster_for
from pipeline.config import ConfigError, load_config
from pipeline.geometry import Bbox
from pipeline.queue import DeadLetters, enqueue_wave, wait_for_wave
from pipeline.segmentation import stage
from pipeline.watershed import tasks as ws_tasks
from pipeline.watershed.chunked import WatershedParams
from pipeline.watershed.jobs import watershed_global
from tests.integration import slow_tasks

GALA = Path(__file__).resolve().parents[1] / "data" / "gala_fibsem_example"
CROP = (slice(0, 40), slice(0, 40), slice(0, 96))  # z, y, x of the test cutout


def boundary_to_affinity(p: np.ndarray) -> np.ndarray:
    aff = np.zeros((*p.shape, 3), np.float32)
    aff[1:, :, :, 0] = 1 - np.maximum(p[1:], p[:-1])
    aff[:, 1:, :, 1] = 1 - np.maximum(p[:, 1:], p[:, :-1])
    aff[:, :, 1:, 2] = 1 - np.maximum(p[:, :, 1:], p[:, :, :-1])
    return aff


@pytest.fixture(scope="module")
def boundary():
    with h5py.File(GALA / "test-p1.lzf.h5") as f:
        return f["stack"][CROP].transpose(2, 1, 0).astype(np.float32)


def make_config(tmp_path, boundary, **seg):
    path = f"file://{tmp_path}/boundary"
    box = Bbox.from_shape(boundary.shape)
    if not storage.layer_exists(path):
        storage.create_layer(path, "probability", box, (10, 10, 10), (32, 32, 8))
        storage.write(path, box, boundary)
    conf = {"name": "seg", "output": str(tmp_path / "out"), "overwrite": True,
            "chunk_size": [32, 32, 16], "storage_chunk_size": [32, 32, 8],
            "cluster": {"workers": 2}, "lease_seconds": 5,
            "segmentation": {"boundary": path, "ws_high": 0.9, "ws_low": 0.1, "ws_size": 100,
                             "ws_dust": 20, "agg_threshold": 0.5, "mesh": False, **seg}}
    config = stage.sanity_check(conf)
    stage.prepare(config)
    return config


def run_plan(config, victim: str | None = None, marks: Path | None = None) -> None:
    """Every wave through the queue; in wave ``victim``, kill -9 a worker mid-task."""
    cluster = cluster_for(config)
    dead = DeadLetters(config.dead_letter_path)
    cluster.scale(2)
    try:
        for name, make in stage.wave_plan(config):
            tasks = make(config)
            if name == victim:
                tasks = [partial(slow_tasks.slow_call, t.func.__module__, t.func.__name__, 1.0,
                                 str(marks), list(t.args)) for t in tasks]
            n = enqueue_wave(config.queue_url, tasks)
            if name == victim:
                deadline = time.monotonic() + 60
                while not (marks / "started").exists() and time.monotonic() < deadline:
                    time.sleep(0.05)
                cluster.stop(cluster.pids()[0], signal.SIGKILL)
                cluster.scale(2)
            wait_for_wave(config.queue_url, name, n, dead, alive=cluster.size, timeout=300)
    finally:
        cluster.shutdown()


def test_queue_run_equals_global_and_survives_kill_9(tmp_path, boundary):
    aff = boundary_to_affinity(boundary)
    ws = watershed_global(aff, WatershedParams(0.9, 0.1, 100, 20))
    seg = agglomerate_global(aff, ws, AgglomerationParams(0.5))
    assert len(np.unique(seg)) > 10

    config = make_config(tmp_path, boundary)
    assert stage.top_level(config) == 2  # 3 x 2 x 3 chunks
    run_plan(config, victim="ws level 1 nodes", marks=tmp_path / "marks")
    box = Bbox.from_list(config.bbox)
    assert np.array_equal(storage.read(config.layer_path("ws"), box)[..., 0], ws)
    assert np.array_equal(storage.read(config.layer_path("seg"), box)[..., 0], seg)
    assert len(list((tmp_path / "marks" / "started").iterdir())) > \
        len(list((tmp_path / "marks" / "done").iterdir())) - 1  # the killed one re-ran

    counts = stage.write_tables(config)
    table = (tmp_path / "out" / "scratch" / "segmentation" / "segment_sizes.csv").read_text()
    rows = [line.split(",") for line in table.splitlines()[1:]]
    ids, sizes = np.unique(seg[seg > 0], return_counts=True)
    assert {int(a): int(b) for a, b in rows} == dict(zip(ids.tolist(), sizes.tolist(),
                                                         strict=True))
    assert counts["segments"] == len(ids) and counts["merges"] > 0


def test_nan_fails_the_task_naming_the_chunk(tmp_path, boundary):
    bad = boundary.copy()
    bad[40, 5, 3] = np.nan
    config = make_config(tmp_path, bad)
    with pytest.raises(ValueError, match=r"chunk 32_0_0-64_32_16 of file://.*boundary: "
                                         r"affinities contain \d+ NaN/inf"):
        ws_tasks.ws_chunk(config.to_dict(), [1, 0, 0])


@pytest.mark.parametrize("case,field,words", [
    ("channels", "segmentation.affinity", "is 1-channel float32; expected 3-channel"),
    ("dtype", "segmentation.boundary", "is 1-channel uint8; expected 1-channel float32"),
    ("missing", "segmentation.boundary", "no precomputed info file"),
    ("bbox", "segmentation.boundary", "does not cover bbox"),
    ("semantic", "segmentation.semantic", "no precomputed info file"),
    ("output", "output", "already holds data"),
])
def test_bad_layers_are_refused_before_work(tmp_path, boundary, case, field, words):
    box = Bbox.from_shape(boundary.shape)
    good = f"file://{tmp_path}/boundary"
    storage.create_layer(good, "probability", box, (10, 10, 10), (32, 32, 8))
    seg = {"boundary": good}
    conf = {"name": "bad", "output": str(tmp_path / "out"), "segmentation": seg}
    if case == "channels":
        seg.pop("boundary")
        seg["affinity"] = good
    elif case == "dtype":
        storage.create_layer(f"file://{tmp_path}/u8", "image", box, (10, 10, 10), (32, 32, 8))
        seg["boundary"] = f"file://{tmp_path}/u8"
    elif case == "missing":
        seg["boundary"] = f"file://{tmp_path}/nothing"
    elif case == "bbox":
        conf["bbox"] = [0, 0, 0, 200, 40, 40]
    elif case == "semantic":
        seg.update(semantic=f"file://{tmp_path}/nosem", semantic_classes=3)
    elif case == "output":
        out = f"file://{tmp_path}/out/ws"
        storage.create_layer(out, "segmentation", box, (10, 10, 10), (32, 32, 8))
        storage.write(out, box, np.ones(box.shape, np.uint64))
    with pytest.raises(ConfigError) as err:
        stage.sanity_check(conf)
    assert (field, ) == tuple({f for f, _ in err.value.problems} & {field}), err.value
    assert words in str(err.value)
    assert not (tmp_path / "out" / "seg").exists()


@pytest.mark.parametrize("seg,words", [
    ({"boundary": "b", "ws_low": 0.5, "ws_high": 0.4}, "must not exceed ws_high"),
    ({"boundary": "b", "ws_high": 1.5}, "less than or equal to 1"),
    ({"boundary": "b", "agg_threshold": -0.1}, "greater than or equal to 0"),
    ({"boundary": "b", "affinity": "a"}, "exactly one of"),
    ({}, "exactly one of"),
    ({"boundary": "b", "semantic": "s"}, "semantic_classes > 0"),
])
def test_bad_parameters(seg, words):
    with pytest.raises(ConfigError, match="segmentation") as err:
        load_config({"name": "x", "output": "/tmp/x", "segmentation": seg})
    assert words in str(err.value)
