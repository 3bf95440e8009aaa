"""A corpus of bad inputs across every stage: each gets one clear error before any work starts.

Each case is a run config that is wrong in exactly one way (the config itself, a layer, a model,
the data, or the output location). The sanity check of the DAG the config asks for
(``pipeline.runner.preflight``, what ``petarecon check`` and ``petarecon run`` call first) must
raise a ConfigError with exactly one problem, naming the field and the reason, and must write
nothing under the run's output. A sample of cases also goes through ``petarecon check`` in a
subprocess: exit code 2, a one-line message, no traceback. Data found bad mid-run (NaN in a
chunk) is a failed task naming the chunk, and the output layer stays marked incomplete.
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml

from pipeline import storage
from pipeline.config import ConfigError, load_config
from pipeline.geometry import Bbox
from pipeline.runner import dag_for, preflight

pytestmark = pytest.mark.integration

SHAPE = (32, 32, 8)
RES = (8, 8, 40)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Good layers, stacks and a checkpoint, plus the bad ones the corpus points at."""
    from pipeline.models.checkpoint import save_checkpoint
    from pipeline.models.rsunet import ModelSpec, RSUNet

    root = tmp_path_factory.mktemp("inputs")
    rng = np.random.default_rng(0)
    box = Bbox.from_shape(SHAPE)

    def layer(name: str, kind: storage.LayerKind, arr: np.ndarray, res=RES) -> None:
        path = f"file://{root}/{name}"
        storage.create_layer(path, kind, box, res, (16, 16, 8))
        storage.write(path, box, arr)
        storage.set_status(path, "complete")

    image = rng.integers(0, 256, SHAPE, dtype=np.uint8)
    aff = rng.random((*SHAPE, 3), dtype=np.float32)
    prob = rng.random(SHAPE, dtype=np.float32)
    layer("image", "image", image)
    layer("aff", "affinity", aff)
    layer("boundary", "probability", prob)
    layer("cleft", "probability", prob)
    layer("seg", "segmentation", (np.arange(np.prod(SHAPE)).reshape(SHAPE) // 64 + 1)
          .astype(np.uint64))
    layer("seg_coarse", "segmentation", np.ones(SHAPE, np.uint64), res=(16, 16, 40))
    layer("float_image", "probability", prob)
    nan_aff = aff.copy()
    nan_aff[20, 5, 3, 1] = np.nan
    layer("nan_aff", "affinity", nan_aff)
    storage.create_layer(f"file://{root}/empty_aff", "affinity", box, RES, (16, 16, 8))
    (root / "stacks").mkdir()
    np.save(root / "stacks" / "good.npy", image.transpose(2, 1, 0))
    np.save(root / "stacks" / "empty.npy", np.zeros((0, 32, 32), np.uint8))
    np.save(root / "stacks" / "float.npy", prob.transpose(2, 1, 0))
    np.save(root / "stacks" / "flat.npy", np.zeros((32, 32), np.uint8))
    with h5py.File(root / "stacks" / "two.h5", "w") as f:
        f["a"] = image.transpose(2, 1, 0)
        f["b"] = image.transpose(2, 1, 0)
    (root / "stacks" / "junk.h5").write_bytes(b"not hdf5")
    spec = ModelSpec(widths=(4, 8), pool=(2, 2, 2))
    save_checkpoint(str(root / "net.pt"), spec, RSUNet(spec).state_dict())
    (root / "junk.pt").write_bytes(b"not a checkpoint")
    (root / "a_file").write_text("outputs cannot go under a regular file")
    (root / "full").mkdir()
    layer("full/aff", "affinity", aff)  # an output that already holds data
    return root


def base(kind: str, d: Path, out: Path) -> dict:
    """A good config of stage ``kind`` over the fixture ``d``, writing under ``out``."""
    common = {"name": "bad", "output": str(out), "resolution": list(RES),
              "storage_chunk_size": [16, 16, 8], "chunk_size": [16, 16, 8]}
    if kind == "ingest":
        return {**common, "ingest": {"source": str(d / "stacks" / "good.npy")}}
    if kind == "segmentation":
        return {**common, "segmentation": {"affinity": f"file://{d}/aff", "mesh": False}}
    if kind == "inference":
        return {**common, "input": f"file://{d}/image",
                "inference": {"checkpoints": [str(d / "net.pt")], "patch_size": [16, 16, 8],
                              "overlap": [4, 4, 2], "device": "cpu"}}
    if kind == "synapses":
        return {**common, "input": f"file://{d}/image",
                "synapses": {"cleft": f"file://{d}/cleft", "segmentation": f"file://{d}/seg"}}
    if kind == "alignment":
        return {**common, "input": f"file://{d}/image",
                "alignment": {"tile_size": 8, "search_radius": 2, "levels": 1,
                              "block_size": 4, "overlap": 2}}
    raise AssertionError(kind)


def setp(dotted: str, value: object) -> Callable[[dict, Path], None]:
    """An edit setting ``dotted`` (a.b.c) to ``value``; ``{d}`` in strings is the data root."""
    def edit(conf: dict, d: Path) -> None:
        *parents, last = dotted.split(".")
        node = conf
        for p in parents:
            node = node[p]
        if isinstance(value, str):
            node[last] = value.format(d=d)
        elif isinstance(value, list):
            node[last] = [v.format(d=d) if isinstance(v, str) else v for v in value]
        else:
            node[last] = value
    return edit


def drop(dotted: str) -> Callable[[dict, Path], None]:
    def edit(conf: dict, d: Path) -> None:
        *parents, last = dotted.split(".")
        node = conf
        for p in parents:
            node = node[p]
        del node[last]
    return edit


def both(*edits: Callable[[dict, Path], None]) -> Callable[[dict, Path], None]:
    def edit(conf: dict, d: Path) -> None:
        for e in edits:
            e(conf, d)
    return edit


# (id, stage, edit, field named, words in the message)
CASES: list[tuple[str, str, Callable[[dict, Path], None], str, str]] = [
    # -- configs -----------------------------------------------------------------------------
    ("bad-name", "ingest", setp("name", "Bad_Name"), "name", "lowercase"),
    ("unknown-field", "ingest", setp("chunksize", [1, 2, 3]), "chunksize", "unknown field"),
    ("missing-output", "ingest", drop("output"), "output", "required"),
    ("chunk-not-multiple", "ingest", setp("chunk_size", [24, 16, 8]), "chunk_size",
     "multiple of storage_chunk_size"),
    ("zero-chunk", "segmentation", setp("storage_chunk_size", [0, 16, 8]),
     "storage_chunk_size", "> 0"),
    ("negative-resolution", "ingest", setp("resolution", [8, -8, 40]), "resolution", "> 0 nm"),
    ("bbox-five-numbers", "segmentation", setp("bbox", [0, 0, 0, 8, 8]), "bbox", "6 numbers"),
    ("bbox-inverted", "segmentation", setp("bbox", [0, 0, 4, 8, 8, 4]), "bbox",
     "stop must exceed start"),
    ("bad-queue", "ingest", setp("queue", "redis://host/q"), "queue", "unsupported queue"),
    ("bad-storage-scheme", "ingest", setp("output", "ftp://host/run"), "output",
     "unsupported storage scheme"),
    ("short-lease", "ingest", setp("lease_seconds", 1), "lease_seconds", "greater than"),
    ("ws-low-above-high", "segmentation", setp("segmentation.ws_high", 0.005), "segmentation",
     "must not exceed ws_high"),
    ("two-sources", "segmentation", setp("segmentation.boundary", "file://{d}/boundary"),
     "segmentation", "exactly one"),
    ("threshold-out-of-range", "segmentation", setp("segmentation.agg_threshold", 1.5),
     "segmentation.agg_threshold", "less than or equal to 1"),
    ("overlap-too-big", "inference", setp("inference.overlap", [16, 4, 2]),
     "inference.overlap", "smaller than patch_size"),
    ("fp16-on-cpu", "inference", setp("inference.precision", "fp16"), "inference.precision",
     "fp16 needs device cuda"),
    ("odd-tile", "alignment", setp("alignment.tile_size", 9), "alignment.tile_size",
     "must be even"),
    ("cleft-threshold-one", "synapses", setp("synapses.cc_threshold", 1.0),
     "synapses.cc_threshold", "less than 1"),
    # -- layers ------------------------------------------------------------------------------
    ("missing-affinity", "segmentation", setp("segmentation.affinity", "file://{d}/nope"),
     "segmentation.affinity", "no precomputed info"),
    ("affinity-one-channel", "segmentation", setp("segmentation.affinity", "file://{d}/boundary"),
     "segmentation.affinity", "1-channel float32; expected 3-channel"),
    ("affinity-is-uint8", "segmentation", setp("segmentation.affinity", "file://{d}/image"),
     "segmentation.affinity", "uint8"),
    ("bbox-outside-layer", "segmentation", setp("bbox", [0, 0, 0, 64, 32, 8]),
     "segmentation.affinity", "does not cover"),
    ("missing-mip", "segmentation", setp("mip", 3), "segmentation.affinity", "no mip 3"),
    ("missing-cleft", "synapses", setp("synapses.cleft", "file://{d}/nope"), "synapses.cleft",
     "no precomputed info"),
    ("segmentation-wrong-resolution", "synapses",
     setp("synapses.segmentation", "file://{d}/seg_coarse"), "synapses.segmentation",
     "resolution"),
    ("inference-float-image", "inference", setp("input", "file://{d}/float_image"), "input",
     "1-channel uint8"),
    ("alignment-missing-image", "alignment", setp("input", "file://{d}/nope"), "input",
     "no precomputed info"),
    ("output-holds-data", "segmentation", both(setp("output", "{d}/full"),
                                              setp("segmentation.ws_layer", "aff")),
     "output", "already holds data"),
    ("empty-affinity-layer", "segmentation", setp("segmentation.affinity", "file://{d}/empty_aff"),
     "segmentation.affinity", "holds no data"),
    # -- models ------------------------------------------------------------------------------
    ("missing-checkpoint", "inference", setp("inference.checkpoints", ["{d}/none.pt"]),
     "inference.checkpoints", "no such file"),
    ("corrupt-checkpoint", "inference", setp("inference.checkpoints", ["{d}/junk.pt"]),
     "inference.checkpoints", "not a readable torch checkpoint"),
    ("patch-off-pooling", "inference", setp("inference.patch_size", [15, 16, 8]),
     "inference.patch_size", "pooling"),
    # -- stacks (ingest data) ----------------------------------------------------------------
    ("missing-stack", "ingest", setp("ingest.source", "{d}/stacks/none.npy"), "ingest.source",
     "no such file"),
    ("empty-stack", "ingest", setp("ingest.source", "{d}/stacks/empty.npy"), "ingest.source",
     "empty"),
    ("float-stack", "ingest", setp("ingest.source", "{d}/stacks/float.npy"), "ingest.source",
     "uint8"),
    ("2d-stack", "ingest", setp("ingest.source", "{d}/stacks/flat.npy"), "ingest.source",
     "3D stack"),
    ("ambiguous-hdf5", "ingest", setp("ingest.source", "{d}/stacks/two.h5"), "ingest.dataset",
     "set ingest.dataset"),
    ("junk-hdf5", "ingest", setp("ingest.source", "{d}/stacks/junk.h5"), "ingest.source",
     "not a readable HDF5"),
    # -- unwritable outputs ------------------------------------------------------------------
    ("output-under-a-file", "ingest", setp("output", "{d}/a_file/run"), "output",
     "not writable"),
    ("segmentation-output-under-a-file", "segmentation", setp("output", "{d}/a_file/run"),
     "output", "not writable"),
]


def _conf(stage: str, edit: Callable[[dict, Path], None], d: Path, out: Path) -> dict:
    conf = copy.deepcopy(base(stage, d, out))
    edit(conf, d)
    return conf


def _check(conf: dict) -> None:
    config = load_config(conf)
    preflight(config, dag_for(config))


def test_corpus_is_large_and_every_base_config_passes(data: Path, tmp_path: Path) -> None:
    assert len(CASES) >= 30
    assert len({c[0] for c in CASES}) == len(CASES)
    for stage in ("ingest", "segmentation", "inference", "synapses", "alignment"):
        _check(base(stage, data, tmp_path / stage))
    assert not any(tmp_path.iterdir()), "a sanity check wrote something"


@pytest.mark.parametrize(("stage", "edit", "field", "words"),
                         [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_clear_error(data: Path, tmp_path: Path, stage: str,
                                      edit: Callable[[dict, Path], None], field: str,
                                      words: str) -> None:
    out = tmp_path / "out"
    with pytest.raises(ConfigError) as err:
        _check(_conf(stage, edit, data, out))
    assert len(err.value.problems) == 1, err.value.problems
    got_field, msg = err.value.problems[0]
    assert got_field == field, err.value.problems
    assert words in msg, msg
    assert "\n" not in str(err.value), str(err.value)
    assert not out.exists(), "nothing may be written before the error"


CLI_SAMPLE = ["bad-name", "missing-affinity", "corrupt-checkpoint", "output-under-a-file"]


def test_cli_check_prints_one_line_and_exits_2(data: Path, tmp_path: Path) -> None:
    by_id = {c[0]: c for c in CASES}
    procs = []
    for case in CLI_SAMPLE:
        _, stage, edit, field, words = by_id[case]
        path = tmp_path / f"{case}.yaml"
        path.write_text(yaml.safe_dump(_conf(stage, edit, data, tmp_path / case)))
        cmd = [sys.executable, "-c", "from pipeline.cli import app; app()", "check", str(path)]
        procs.append((case, field, words, subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "COLUMNS": "400"})))
    for case, field, words, proc in procs:
        out, err = proc.communicate(timeout=120)
        lines = [line for line in (out + err).splitlines() if line.strip()]
        assert proc.returncode == 2, (case, out, err)
        assert len(lines) == 1, (case, lines)
        assert "Traceback" not in err
        assert field in lines[0] and words in lines[0], (case, lines[0])
        assert not (tmp_path / case).exists()


def test_nan_found_mid_run_fails_the_task_naming_the_chunk(data: Path, tmp_path: Path) -> None:
    """Data that only a task can see is bad: the task fails naming the chunk, and the layer
    it was filling stays marked incomplete."""
    from pipeline.segmentation import io as seg_io
    from pipeline.segmentation import stage

    conf = base("segmentation", data, tmp_path / "out")
    conf["segmentation"]["affinity"] = f"file://{data}/nan_aff"
    config = stage.sanity_check(conf)  # NaN is invisible without reading every chunk
    stage.prepare(config)
    seg = config.layer_path(config.segmentation.seg_layer)
    assert storage.get_status(seg) == "incomplete"
    good = Bbox((0, 0, 0), (16, 16, 8))
    seg_io.read_affinity(config, good, 1)
    bad = Bbox((16, 0, 0), (32, 16, 8))
    with pytest.raises(ValueError, match=r"chunk .*16.*nan_aff"):
        seg_io.read_affinity(config, bad, 0)
    assert storage.get_status(seg) == "incomplete"


def test_nan_mid_run_is_a_failed_wave_naming_the_chunk(data: Path, tmp_path: Path) -> None:
    """Through the real queue and a worker: the wave fails with the task's error naming the
    chunk and the layer, the error is dead-lettered, and no output layer is marked complete."""
    from bench.chaos import run_stage
    from pipeline.queue import DeadLetters, WaveFailed

    conf = base("segmentation", data, tmp_path / "out")
    conf["segmentation"]["affinity"] = f"file://{data}/nan_aff"
    conf.update(max_attempts=1, lease_seconds=5)
    named = r"chunk 16_0_0-32_16_8 of \S*nan_aff: affinities contain 1 NaN"
    with pytest.raises(WaveFailed, match=named):
        run_stage("segmentation", conf, "workers", workers=1)
    config = load_config(conf)
    dead = DeadLetters(config.dead_letter_path).list()
    assert dead and "nan_aff" in dead[0]["error"]
    for name in ("ws", "seg"):
        assert storage.get_status(config.layer_path(name)) == "incomplete"
