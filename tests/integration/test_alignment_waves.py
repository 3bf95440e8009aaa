"""The alignment stage on a real fq:// queue and worker processes, at a coarser field mip,
and its bad inputs."""

from __future__ import annotations

import contextlib
import io

import igneous.task_creation as tc
import numpy as np
import pytest
import torch

from pipeline import storage
from pipeline.align import jobs, stage
from pipeline.align import synthetic as sy
from pipeline.align.tasks import params_of
from pipeline.align.warp import as_tensor, upsample_field
from pipeline.cluster import cluster_for
from pipeline.config import ConfigError
from pipeline.geometry import Bbox
from pipeline.queue import DeadLetters, enqueue_wave, wait_for_wave
from pipeline.runner import STAGES, dag_for
from pipeline.synth.io import make_volume, write_synthetic

SHAPE = (128, 128, 12)
RES = (8.0, 8.0, 10.0)
WAVES = ["defects", "fields", "stitch", "compose", "render", "masks", "pyramid"]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """A misaligned synthetic stack (shifts, a fold, a missing section) with a mip 1."""
    root = tmp_path_factory.mktemp("align")
    layers = write_synthetic(str(root / "syn"), SHAPE, 4, RES, misalign=True, folds=1,
                             missing=1)
    image = layers["image"][0]
    with contextlib.redirect_stdout(io.StringIO()):    # an x, y-only mip 1 (sections kept)
        for t in tc.create_downsampling_tasks(image, mip=0, num_mips=1, factor=(2, 2, 1),
                                              fill_missing=True):
            t()
    return image


def conf(tmp_path, image, **alignment):
    return {"name": "al", "output": str(tmp_path / "out"), "input": image,
            "chunk_size": [64, 64, 4], "storage_chunk_size": [32, 32, 4], "lease_seconds": 10,
            "cluster": {"workers": 2},
            "alignment": {"block_size": 6, "overlap": 2, "margin": 48,
                          "refine_iterations": 10, **alignment}}


def test_queue_run_equals_the_in_memory_run(tmp_path, synthetic):
    config = stage.sanity_check(conf(tmp_path, synthetic))
    assert dag_for(config) == "alignment" and STAGES["alignment"] == "pipeline.align.stage"
    stage.prepare(config)
    cluster, dead = cluster_for(config), DeadLetters(config.dead_letter_path)
    cluster.scale(2)
    try:
        for wave in WAVES:
            n = enqueue_wave(config.queue_url, stage.tasks(config, wave))
            wait_for_wave(config.queue_url, wave, n, dead, alive=cluster.size, timeout=300)
            if wave == "defects":
                assert stage.reduce_sections(config)["missing"] == \
                    make_volume(SHAPE, 4, RES, misalign=True, folds=1, missing=1) \
                    .defects["missing"]
    finally:
        cluster.shutdown()
    stage.finish(config)
    box = Bbox.from_shape(SHAPE)
    image = storage.read(synthetic, box)[..., 0]
    mem = jobs.align_in_memory(image, params_of(config), chunk=(64, 64, 4))
    out = {k: storage.read(config.layer_path(k), box) for k in
           ("aligned", "field", "input_mask", "output_mask", "misalignment")}
    assert np.array_equal(out["aligned"][..., 0], mem["aligned"])
    assert np.array_equal(jobs._fields(out["field"]), mem["fields"])
    assert np.array_equal(out["input_mask"][..., 0], mem["input"])
    assert np.array_equal(out["output_mask"][..., 0], mem["output"])
    assert np.allclose(out["misalignment"][..., 0], mem["misalignment"])
    assert storage.get_status(config.layer_path("aligned")) == "complete"
    assert len(storage.open_layer(config.layer_path("aligned")).info["scales"]) == 2


def test_fields_at_mip_1_render_at_mip_0(tmp_path, synthetic):
    """Fields computed at mip 1 (half the pixels), upsampled x2 to render at mip 0."""
    config = stage.sanity_check(conf(tmp_path, synthetic, field_mip=1, tile_size=16,
                                     search_radius=6, levels=2, smooth=16.0))
    stage.prepare(config)
    for wave in WAVES[:-2]:
        for t in stage.tasks(config, wave):
            t()
        if wave == "defects":
            stage.reduce_sections(config)
    field = storage.read(config.layer_path("field"), Bbox.from_shape((64, 64, 12)))
    vol = make_volume(SHAPE, 4, RES, misalign=True, folds=1, missing=1)
    fine = np.stack([upsample_field(as_tensor(field[:, :, z].transpose(2, 0, 1)), (0, 0), 2,
                                    (0, 0), SHAPE[:2]).numpy() for z in range(12)])
    res = sy.summary(sy.residuals(fine, sy.shifted_truth(vol.defects, SHAPE), vol.image,
                                  vol.defects))
    assert res["median"] <= 1.0, res
    aligned = storage.read(config.layer_path("aligned"), Bbox.from_shape(SHAPE))[..., 0]
    assert aligned.shape == SHAPE and (aligned[..., 0] > 0).mean() > 0.9


@pytest.mark.parametrize("case,field,words", [
    ("block", "alignment.block_size", "smaller than the stitch overlap"),
    ("channels", "alignment.field", "a field layer is 2-channel float32"),
    ("mip", "alignment.field_mip", "mip 3 is missing"),
    ("zmip", "alignment.field_mip", "downsampled in z"),
    ("chunk", "chunk_size", "must be multiples of 2"),
    ("render", "alignment.render_mip", "must not be coarser"),
])
def test_bad_inputs(tmp_path, synthetic, case, field, words):
    c = conf(tmp_path, synthetic)
    a = c["alignment"]
    if case == "block":
        a.update(block_size=2, overlap=3)
    elif case == "channels":
        path = f"file://{tmp_path}/wrong_field"
        storage.create_layer(path, "field", Bbox.from_shape(SHAPE), RES, (64, 64, 1),
                             channels=3)
        a["field"] = path
    elif case == "mip":
        a["field_mip"] = 3
    elif case == "zmip":   # an isotropic pyramid halves z: no sections to align at mip 1
        path = f"file://{tmp_path}/iso"
        storage.create_layer(path, "image", Bbox.from_shape(SHAPE), RES, (64, 64, 4))
        with contextlib.redirect_stdout(io.StringIO()):
            for t in tc.create_downsampling_tasks(path, mip=0, num_mips=1, factor=(2, 2, 2),
                                                  fill_missing=True):
                t()
        c["input"] = path
        a["field_mip"] = 1
    elif case == "chunk":
        a["field_mip"] = 1
        c["chunk_size"] = [33, 33, 4]
        c["storage_chunk_size"] = [33, 33, 4]
    elif case == "render":
        a.update(field_mip=0, render_mip=1)
    with pytest.raises(ConfigError) as err:
        stage.sanity_check(c)
    assert field in [f for f, _ in err.value.problems], err.value
    assert words in str(err.value)
    assert not (tmp_path / "out").exists()
