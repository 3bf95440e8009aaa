"""The synapses stage on a real fq:// queue and worker processes, and its bad inputs."""

from __future__ import annotations

import signal
import time
from functools import partial

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipeline import storage
from pipeline.cluster import cluster_for
from pipeline.config import ConfigError
from pipeline.geometry import Bbox
from pipeline.queue import DeadLetters, enqueue_wave, wait_for_wave
from pipeline.synapses import stage
from pipeline.synapses.jobs import SynapseParams, synapses_in_memory
from pipeline.synth import synthesize
from pipeline.synth.io import write_synthetic
from tests.integration import slow_tasks

WAVES = ["map", "reduce", "remap", "assign", "dedup", "relabel"]


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    root = tmp_path_factory.mktemp("syn")
    layers = write_synthetic(str(root / "syn"), (128, 128, 24), 5, (8, 8, 40))
    return root, {k: v[0] for k, v in layers.items()}


def conf(tmp_path, layers, **syn):
    return {"name": "syn", "output": str(tmp_path / "out"), "input": layers["image"],
            "chunk_size": [48, 48, 12], "storage_chunk_size": [16, 16, 4], "lease_seconds": 5,
            "cluster": {"workers": 2},
            "synapses": {"cleft": layers["cleft_probability"], "segmentation": layers["gt"],
                         **syn}}


def test_queue_run_equals_in_memory_and_survives_kill_9(tmp_path, synthetic):
    _, layers = synthetic
    config = stage.sanity_check(conf(tmp_path, layers))
    stage.prepare(config)
    cluster, dead = cluster_for(config), DeadLetters(config.dead_letter_path)
    cluster.scale(2)
    marks = tmp_path / "marks"
    try:
        for wave in WAVES:
            if wave == "dedup":
                stage.dedup(config)
                continue
            tasks = stage.tasks(config, wave)
            if wave == "assign":
                tasks = [partial(slow_tasks.slow_call, t.func.__module__, t.func.__name__, 0.5,
                                 str(marks), list(t.args)) for t in tasks]
            n = enqueue_wave(config.queue_url, tasks)
            if wave == "assign":
                while not (marks / "started").exists():
                    time.sleep(0.05)
                cluster.stop(cluster.pids()[0], signal.SIGKILL)
                cluster.scale(2)
            wait_for_wave(config.queue_url, wave, n, dead, alive=cluster.size, timeout=300)
    finally:
        cluster.shutdown()
    vol = synthesize((128, 128, 24), seed=5, resolution=(8, 8, 40))
    expect, table = synapses_in_memory(vol.cleft_probability, (48, 48, 12), SynapseParams(),
                                       vol.segmentation, vol.image, (8, 8, 40))
    box = Bbox.from_list(config.bbox)
    assert np.array_equal(storage.read(config.layer_path("clefts"), box)[..., 0], expect)
    got = pq.read_table(tmp_path / "out" / "scratch" / "synapses" / "synapses.parquet")
    assert got.column("cleft_id").to_pylist() == table["cleft_id"].tolist()
    assert got.column("pre").to_pylist() == table["pre"].tolist()
    truth = {(s["pre"], s["post"]) for s in vol.synapses}
    found = set(zip(got.column("pre").to_pylist(), got.column("post").to_pylist(), strict=True))
    assert len(found & truth) >= 0.9 * len(truth)


@pytest.mark.parametrize("case,field,words", [
    ("threshold", "synapses.cc_threshold", "less than 1"),
    ("no-seg", "synapses.segmentation", "needs a segmentation layer"),
    ("resolution", "synapses.segmentation", "differs from the cleft layer"),
    ("coverage", "synapses.segmentation", "does not cover the cleft bbox"),
    ("cleft-dtype", "synapses.cleft", "expected 1-channel float32"),
])
def test_bad_inputs(tmp_path, synthetic, case, field, words):
    _, layers = synthetic
    c = conf(tmp_path, layers)
    s = c["synapses"]
    box = Bbox.from_shape((128, 128, 24))
    if case == "threshold":
        s["cc_threshold"] = 1.5
    elif case == "no-seg":
        s.pop("segmentation")
    elif case == "resolution":
        path = f"file://{tmp_path}/seg4"
        storage.create_layer(path, "segmentation", box, (4, 4, 40), (64, 64, 8))
        s["segmentation"] = path
    elif case == "coverage":
        path = f"file://{tmp_path}/small"
        storage.create_layer(path, "segmentation", Bbox.from_shape((64, 64, 24)), (8, 8, 40),
                             (64, 64, 8))
        s["segmentation"] = path
    elif case == "cleft-dtype":
        s["cleft"] = layers["gt"]
    with pytest.raises(ConfigError) as err:
        stage.sanity_check(c)
    assert field in [f for f, _ in err.value.problems], err.value
    assert words in str(err.value)
    assert not (tmp_path / "out").exists()
