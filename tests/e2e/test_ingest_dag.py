"""The `ingest` DAG through real Airflow (dag.test on SQLite), an fq:// queue and local workers."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import h5py
import numpy as np
import yaml
from PIL import Image

from pipeline import storage
from pipeline.cluster import LocalCluster
from pipeline.geometry import Bbox

REPO = Path(__file__).resolve().parents[2]
GALA = REPO / "tests" / "data" / "gala_fibsem_example" / "train-image.h5"


def petarecon(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    exe = Path(__import__("sys").executable).with_name("petarecon")
    return subprocess.run([str(exe), *args], cwd=cwd, capture_output=True, text=True, timeout=600)


def test_ingest_dag_output_equals_input(tmp_path):
    conf = {"name": "gala", "output": str(tmp_path / "out"), "resolution": [10, 10, 10],
            "chunk_size": [128, 64, 32], "storage_chunk_size": [64, 32, 16],
            "cluster": {"workers": 2},
            "ingest": {"source": str(GALA), "downsample_mips": 2}}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(conf))
    proc = petarecon("run", "run.yaml", "--verbose", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    logs = proc.stdout + proc.stderr
    # per-wave progress with done/total and ETA, in the Airflow task logs
    assert "wave ingest: 8/8 (100%)" in logs and "wave pyramid: 1/1 (100%)" in logs
    assert "ETA" in logs

    layer = f"file://{tmp_path}/out/image"
    with h5py.File(GALA) as f:
        zyx = f["stack"][:]
    box = Bbox.from_shape((200, 100, 50))
    assert np.array_equal(storage.read(layer, box)[..., 0], zyx.transpose(2, 1, 0))
    info = storage.open_layer(layer).info
    assert [s["size"] for s in info["scales"]] == [[200, 100, 50], [100, 50, 25], [50, 25, 13]]
    mip1 = storage.read(storage.open_layer(layer, mip=1), Bbox.from_shape((100, 50, 25)))
    assert abs(float(mip1.mean()) - float(zyx.mean())) < 2.0
    assert storage.get_status(layer) == "complete"
    report = json.loads((tmp_path / "out" / "scratch" / "report.json").read_text())
    assert report["layers"]["image"]["path"] == layer
    assert report["view"] == f"petarecon view {tmp_path}/out --port 8080"
    assert (tmp_path / "out" / "report.html").is_file()
    cluster = LocalCluster(tmp_path / "out" / "scratch" / "cluster", "fq://x", "file://x")
    assert cluster.size() == 0, "workers are scaled down after the run"

    # a rerun without overwrite is refused before any work, naming the field
    again = petarecon("run", "run.yaml", cwd=tmp_path)
    assert again.returncode == 2
    assert "output: layer" in again.stderr and "already holds data" in again.stderr
    assert "Traceback" not in again.stderr


def test_failed_task_fails_the_dag_and_scales_down(tmp_path):
    sections = tmp_path / "pngs"
    sections.mkdir()
    rng = np.random.default_rng(0)
    for z in range(8):
        Image.fromarray(rng.integers(0, 256, (32, 32), dtype=np.uint8)).save(
            sections / f"{z:03d}.png")
    (sections / "005.png").write_bytes(b"not a png")  # found bad by the task, not the check
    conf = {"name": "broken", "output": str(tmp_path / "out"), "max_attempts": 1,
            "chunk_size": [32, 32, 4], "storage_chunk_size": [32, 32, 4],
            "cluster": {"workers": 1}, "ingest": {"source": str(sections)}}
    (tmp_path / "run.json").write_text(json.dumps(conf))
    proc = petarecon("run", "run.json", cwd=tmp_path)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "DAG ingest run failed" in proc.stderr and "ingest_wave" in proc.stderr
    assert "Traceback" not in proc.stderr
    dead = list((tmp_path / "out" / "scratch" / "dead_letter" / "dead").glob("*.json"))
    assert len(dead) == 1 and "005.png" in json.loads(dead[0].read_text())["error"]
    assert storage.get_status(f"file://{tmp_path}/out/image") == "incomplete"
    cluster = LocalCluster(tmp_path / "out" / "scratch" / "cluster", "fq://x", "file://x")
    assert cluster.size() == 0
