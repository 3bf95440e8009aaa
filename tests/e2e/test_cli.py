"""The `petarecon` commands as a user runs them: exit codes, messages, outputs."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.parse
import urllib.request
from functools import partial
from pathlib import Path

import numpy as np
import tifffile
import yaml

from pipeline import storage
from pipeline.geometry import Bbox
from pipeline.queue import enqueue_wave, open_queue
from tests.integration import slow_tasks

EXE = str(Path(sys.executable).with_name("petarecon"))


def petarecon(*args: str, cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([EXE, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout)


def test_help_lists_commands(tmp_path):
    out = petarecon("--help", cwd=tmp_path).stdout
    for cmd in ("run", "check", "ingest", "worker", "synth", "view", "demo"):
        assert cmd in out


def test_check_reports_bad_config_without_traceback(tmp_path):
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(
        {"name": "Bad Name", "output": "out", "chunk_size": [10, 64, 16],
         "ingest": {"source": "nowhere.h5"}}))
    proc = petarecon("check", "bad.yaml", cwd=tmp_path)
    assert proc.returncode == 2
    assert "invalid run config (bad.yaml)" in proc.stderr
    assert "name:" in proc.stderr and "multiple of storage_chunk_size" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()
    missing = petarecon("check", "nope.yaml", cwd=tmp_path)
    assert missing.returncode == 2 and "config file not found" in missing.stderr


def test_ingest_tiff_then_check(tmp_path):
    zyx = np.random.default_rng(5).integers(0, 256, (6, 40, 70), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "stack.tif", zyx)
    proc = petarecon("ingest", "stack.tif", "--output", "out", "--chunk-size", "64", "64", "16",
                     "--workers", "1", "--mips", "1", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "run ingest done" in proc.stderr
    layer = f"file://{tmp_path}/out/image"
    got = storage.read(layer, Bbox.from_shape((70, 40, 6)))[..., 0]
    assert np.array_equal(got, zyx.transpose(2, 1, 0))
    assert len(storage.open_layer(layer).info["scales"]) == 2


def test_synth_writes_layers_and_tables(tmp_path):
    proc = petarecon("synth", "syn", "--shape", "64", "64", "8", "--seed", "3", "--misalign",
                     "--missing", "1", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for layer in ("image", "gt", "clefts", "cleft_probability"):
        assert (tmp_path / "syn" / layer / "info").exists()
    synapses = json.loads((tmp_path / "syn" / "synapses.json").read_text())
    header = (tmp_path / "syn" / "synapses.csv").read_text().splitlines()[0]
    assert header == "cleft_id,pre,post,centroid_x,centroid_y,centroid_z,size"
    defects = json.loads((tmp_path / "syn" / "defects.json").read_text())
    assert len(defects["missing"]) == 1 and defects["shifts"]
    clefts = storage.read(f"file://{tmp_path}/syn/clefts", Bbox.from_shape((64, 64, 8)))
    assert set(np.unique(clefts)) - {0} == {s["cleft_id"] for s in synapses}
    again = petarecon("synth", "syn", "--shape", "64", "64", "8", cwd=tmp_path)
    assert again.returncode == 2 and "already holds data" in again.stderr


def test_worker_command_drains_queue(tmp_path):
    queue = f"fq://{tmp_path}/q"
    enqueue_wave(queue, [partial(slow_tasks.sleeper, str(tmp_path / "marks"), f"t{i}", 0.0)
                         for i in range(3)])
    proc = petarecon("worker", queue, "--idle-exit", "1", cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert open_queue(queue).enqueued == 0
    assert len(list((tmp_path / "marks" / "done").iterdir())) == 3
    assert "stopped after 3 task(s)" in proc.stderr


def test_view_serves_layers(tmp_path):
    box = Bbox.from_shape((32, 32, 4))
    storage.create_layer(f"file://{tmp_path}/data/img", "image", box, (4, 4, 40), (32, 32, 4))
    storage.write(f"file://{tmp_path}/data/img", box, np.full(box.shape, 9, np.uint8))
    proc = subprocess.Popen([EXE, "view", str(tmp_path / "data"), "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.startswith("Neuroglancer: http://127.0.0.1:")
        url = line.split(": ", 1)[1].strip()
        assert "precomputed://http://127.0.0.1" in urllib.parse.unquote(url)
        base = url.split("/v/")[0]
        with urllib.request.urlopen(f"{base}/data/img/info", timeout=10) as r:
            assert json.loads(r.read())["type"] == "image"
            assert r.headers["Access-Control-Allow-Origin"] == "*"
        with urllib.request.urlopen(url.split("#")[0], timeout=10) as r:
            assert b"<html" in r.read().lower()
    finally:
        proc.terminate()
        proc.wait(10)
    empty = petarecon("view", str(tmp_path / "nothing"), cwd=tmp_path)
    assert empty.returncode == 2 and "no precomputed layers" in empty.stderr


def test_demo(tmp_path):
    """README's main job: gala + synthetic through the ingest DAG, with pyramids."""
    proc = petarecon("demo", "--out", "data", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "petarecon view data" in proc.stderr
    for run in ("gala", "gala-seg", "gala-inference", "gala-seg-rsunet", "synthetic",
                "synthetic-synapses"):
        assert f"run {run} done" in proc.stderr
    assert '"partners_correct": 21' in proc.stderr
    for layer in ("gala/image", "gala/ws", "gala/seg", "gala/aff", "gala/seg_rsunet",
                  "synthetic/image", "synthetic/gt", "synthetic/clefts",
                  "synthetic/detected_clefts"):
        info = json.loads((tmp_path / "data" / layer / "info").read_text())
        assert info["scales"]
    assert len(json.loads((tmp_path / "data" / "gala/image/info").read_text())["scales"]) == 3
    assert storage.get_status(f"file://{tmp_path}/data/gala/image") == "complete"
    assert storage.get_status(f"file://{tmp_path}/data/gala/aff") == "complete"
