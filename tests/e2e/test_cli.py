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
    for cmd in ("run", "check", "ingest", "worker", "synth", "view", "demo", "submit",
                "status", "cancel", "cost"):
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


def test_demo_small(tmp_path):
    """README's main job at the small size: the chain on synthetic EM and on gala."""
    proc = petarecon("demo", "--out", "data", "--size", "small", cwd=tmp_path, timeout=1500)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    for run in ("synthetic", "gala", "gala-recon"):
        assert f"run {run} done" in proc.stderr
    for report in ("synthetic/recon/report.html", "gala/recon/report.html"):
        assert f"report: file://{tmp_path}/data/{report}" in proc.stderr
        assert "adapted_rand_error" in (tmp_path / "data" / report).read_text()
    assert '"partners_correct"' in proc.stderr and "petarecon view" in proc.stderr
    for layer in ("synthetic/recon/aligned", "synthetic/recon/aff", "synthetic/recon/seg",
                  "synthetic/recon/clefts", "gala/image", "gala/recon/aff", "gala/recon/seg"):
        assert storage.get_status(f"file://{tmp_path}/data/{layer}") == "complete", layer
    assert len(json.loads((tmp_path / "data/gala/image/info").read_text())["scales"]) == 3


def test_cost_projects_from_shipped_rates_and_says_so(tmp_path):
    conf = {"name": "big", "output": str(tmp_path / "out"), "input": "file:///nowhere/img",
            "resolution": [8, 8, 40], "bbox": [0, 0, 0, 1000, 1000, 100],
            "inference": {"checkpoints": ["m.pt"]}, "segmentation": {},
            "synapses": {"cleft": "file:///nowhere/cleft"}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(conf))
    proc = petarecon("cost", "c.yaml", "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    proj = json.loads(proc.stdout)
    assert proj["voxels"] == 10**8 and "shipped" in proj["source"]
    assert set(proj["stages"]) == {"inference", "segmentation", "synapses", "postprocess"}
    assert proj["total"]["core_hours"] > 0 and proj["total"]["storage_bytes"] > 0
    mm3 = json.loads(petarecon("cost", "c.yaml", "--json", "--extent-nm", "1e6", "1e6", "1e6",
                               cwd=tmp_path).stdout)
    assert mm3["voxels"] == 125000 * 125000 * 25000
    ratio = mm3["total"]["core_hours"] / proj["total"]["core_hours"]
    assert abs(ratio - mm3["voxels"] / proj["voxels"]) < 1e-6 * ratio
    nothing = petarecon("cost", "c.yaml", "--rates-from", str(tmp_path), cwd=tmp_path)
    assert nothing.returncode == 2 and "no run records" in nothing.stderr
    assert "Traceback" not in nothing.stderr


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_submit_to_real_airflow_api_server_needs_auth(tmp_path):
    """A real `airflow api-server` on loopback: the API refuses requests without a token,
    `petarecon submit` logs in (JWT from /auth/token) and creates the DAG run."""
    import os
    import time

    home = tmp_path / "airflow"
    home.mkdir()
    (home / "passwords.json").write_text(json.dumps({"operator": "pw-4f9a2c"}))
    env = {**os.environ, "AIRFLOW_HOME": str(home), "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
           "AIRFLOW__CORE__DAGS_FOLDER": str(Path(__file__).resolve().parents[2] / "dags"),
           "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home}/airflow.db",
           "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "operator:admin",
           "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(home / "passwords.json"),
           "AIRFLOW__API_AUTH__JWT_SECRET": "test-jwt-secret-" + "x" * 16}
    airflow = str(Path(sys.executable).with_name("airflow"))
    for cmd in (["db", "migrate"], ["dags", "reserialize"]):
        subprocess.run([airflow, *cmd], env=env, check=True, capture_output=True, timeout=300)
    port = _free_port()
    server = subprocess.Popen([airflow, "api-server", "-H", "127.0.0.1", "-p", str(port),
                               "-w", "1", "--apps", "core"], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(f"{url}/api/v2/monitor/health", timeout=5):
                    break
            except OSError:
                assert time.monotonic() < deadline, "api-server did not come up"
                time.sleep(1)
        try:
            urllib.request.urlopen(f"{url}/api/v2/dags", timeout=10)
            raise AssertionError("the Airflow API answered without authentication")
        except urllib.error.HTTPError as e:
            assert e.code == 401
        conf = {"name": "sub", "output": str(tmp_path / "out"), "input": "file:///x/img",
                "segmentation": {"boundary": "file:///x/bnd"}}
        (tmp_path / "c.yaml").write_text(yaml.safe_dump(conf))
        sub_env = {**os.environ, "PETARECON_AIRFLOW_PASSWORD": "pw-4f9a2c"}
        proc = subprocess.run([EXE, "submit", "c.yaml", "--airflow", url, "--user", "operator"],
                              cwd=tmp_path, env=sub_env, capture_output=True, text=True,
                              timeout=120)
        assert proc.returncode == 0, proc.stderr[-2000:]
        run = json.loads(proc.stdout)
        assert run["dag_id"] == "segmentation"
        from pipeline.submit import Airflow

        got = Airflow(url, "operator", "pw-4f9a2c").run("segmentation", run["dag_run_id"])
        assert got["conf"]["config"]["name"] == "sub"
        wrong = subprocess.run([EXE, "submit", "c.yaml", "--airflow", url, "--user", "operator"],
                               cwd=tmp_path, capture_output=True, text=True, timeout=120,
                               env={**os.environ, "PETARECON_AIRFLOW_PASSWORD": "nope-123"})
        assert wrong.returncode == 2 and "refused the credentials" in wrong.stderr
        assert "Traceback" not in wrong.stderr and "nope-123" not in wrong.stderr
    finally:
        os.killpg(server.pid, 15)
        server.wait(30)


def test_cancel_stops_a_running_chain(tmp_path):
    """`petarecon cancel` during a wave: the run fails as cancelled, no worker survives,
    the queue is empty, and `petarecon status` shows the cancelled wave."""
    import time

    from pipeline.cluster import LocalCluster
    from pipeline.synth.io import write_synthetic

    layers = write_synthetic(str(tmp_path / "syn"), (96, 96, 16), 2, (8, 8, 40))
    conf = {"name": "slow", "output": str(tmp_path / "out"), "input": layers["image"][0],
            "chunk_size": [48, 48, 8], "storage_chunk_size": [48, 48, 8],
            "alignment": {"block_size": 8, "overlap": 2, "tile_size": 16, "search_radius": 6,
                          "levels": 2, "refine_iterations": 2000},
            "segmentation": {"boundary": layers["cleft_probability"][0]}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(conf))
    run = subprocess.Popen([EXE, "run", "c.yaml"], cwd=tmp_path, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    try:
        progress = tmp_path / "out/scratch/progress"
        deadline = time.monotonic() + 300
        while not (progress.exists() and any("fields" in p.name for p in progress.iterdir())):
            assert run.poll() is None, run.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "the fields wave never started"
            time.sleep(1)
        proc = petarecon("cancel", "out", cwd=tmp_path, timeout=120)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert json.loads(proc.stdout)["workers_left"] == {"cpu": 0, "gpu": 0}
        _, err = run.communicate(timeout=180)
    finally:
        if run.poll() is None:
            run.kill()
    assert run.returncode == 2 and "cancelled" in err and "Traceback" not in err
    pool = LocalCluster(tmp_path / "out/scratch/cluster", "fq:///unused", "file:///unused")
    assert pool.size() == 0
    assert open_queue(f"fq://{tmp_path}/out/scratch/queue").enqueued == 0
    st = json.loads(petarecon("status", "c.yaml", "--json", cwd=tmp_path).stdout)
    assert st["cancel_requested"]
    assert any(w["state"] == "cancelled" for w in st["waves"])
