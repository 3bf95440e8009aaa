"""The `reconstruction` DAG (the whole chain) through Airflow on the embedded default.

One tiny misaligned synthetic volume goes through alignment → inference → segmentation →
synapses → postprocess. The chain must equal the stage DAGs run one after another, bit for
bit; a rerun must skip every verified stage without rewriting a byte; a damaged output must
make exactly its stage and the later ones rerun; a skipped stage must not run; a run
cancelled mid-stage must resume at the wave it stopped in.
"""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from pipeline import chain, storage
from pipeline.synth.io import write_synthetic

EXE = str(Path(sys.executable).with_name("petarecon"))
REPO = Path(__file__).resolve().parents[2]
SHAPE = (96, 96, 16)
LAYERS = ("field", "aligned", "defects", "input_mask", "output_mask", "misalignment", "aff",
          "ws", "seg", "clefts")
TABLES = ("segmentation/segment_sizes.csv", "segmentation/region_graph.csv",
          "synapses/synapses.csv", "synapses/connectivity.csv")


def document(root: Path, out: str) -> dict:
    syn = root / "syn"
    return {"name": "chain", "output": str(root / out), "input": f"file://{syn}/image",
            "chunk_size": [48, 48, 8], "storage_chunk_size": [48, 48, 8], "lease_seconds": 20,
            "cluster": {"workers": 2},
            "alignment": {"block_size": 8, "overlap": 2, "margin": 32, "tile_size": 16,
                          "search_radius": 6, "levels": 2, "smooth": 16.0,
                          "refine_iterations": 5},
            "inference": {"checkpoints": [str(REPO / "pipeline/models/demo/rsunet_gala.pt")],
                          "patch_size": [48, 48, 8], "overlap": [8, 8, 4], "batch_size": 4},
            "segmentation": {"ws_high": 0.99, "ws_low": 0.1, "ws_size": 50, "ws_dust": 20,
                             "agg_threshold": 0.7},
            "synapses": {"cleft": f"file://{syn}/cleft_probability"},
            "chain": {"ground_truth": f"file://{syn}/gt",
                      "synapse_truth": str(syn / "synapses.csv")}}


def run_cli(root: Path, doc: dict, name: str = "chain.yaml",
            *args: str) -> subprocess.CompletedProcess:
    (root / name).write_text(yaml.safe_dump(doc))
    proc = subprocess.run([EXE, "run", name, "-v", *args], cwd=root, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def arrays(out: Path) -> dict[str, np.ndarray]:
    box = storage.layer_bounds(f"file://{out}/seg")
    return {n: storage.read(f"file://{out}/{n}", box if n != "field" else
                            storage.layer_bounds(f"file://{out}/{n}")) for n in LAYERS}


def mtimes(out: Path) -> dict[str, float]:
    """Modification times of every chunk file of the output layers (not scratch)."""
    return {str(p.relative_to(out)): p.stat().st_mtime_ns for n in LAYERS
            for p in (out / n).rglob("*") if p.is_file() and p.name != "petarecon.json"}


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def chained(tmp_path_factory):
    """The chain run once through `petarecon run` (Airflow in-process)."""
    root = tmp_path_factory.mktemp("chain")
    write_synthetic(str(root / "syn"), SHAPE, 6, (8.0, 8.0, 40.0), misalign=True, missing=1)
    proc = run_cli(root, document(root, "a"))
    return root, proc


def test_chain_runs_every_stage_and_reports(chained):
    root, proc = chained
    out = root / "a"
    assert "report: file://" in proc.stderr
    recs = {s: json.loads((out / "scratch/chain" / f"{s}.json").read_text())
            for s in chain.CHAIN}
    assert all(r["state"] == "complete" for r in recs.values())
    # each stage read the previous one's output
    cfg = chain.load(root / "chain.yaml")
    assert cfg.inference.input == f"file://{out}/aligned"
    assert cfg.segmentation.affinity == f"file://{out}/aff"
    assert cfg.synapses.segmentation == f"file://{out}/seg"
    for name in LAYERS:
        assert storage.get_status(f"file://{out}/{name}") == "complete", name
    assert any((out / "seg").glob("skeletons*/*")), "postprocess wrote no skeletons"
    page = (out / "report.html").read_text()
    for part in ("Neuroglancer", "per stage", "segment sizes", "Synapses", "adapted_rand_error",
                 "data:image/png;base64,"):
        assert part in page, part
    status = subprocess.run([EXE, "status", str(out), "--json"], capture_output=True,
                            text=True, timeout=120)
    st = json.loads(status.stdout)
    assert [s["stage"] for s in st["stages"]] == list(chain.CHAIN)
    assert st["waves"] and all(w["state"] == "done" and w["done"] == w["total"]
                               for w in st["waves"])


def test_chain_equals_stage_dags_in_sequence(chained):
    root, _ = chained
    doc = document(root, "b")
    for stage in chain.CHAIN:  # each stage's own DAG, through Airflow, one after another
        proc = run_cli(root, doc, "stages.yaml", "--dag", stage)
        assert f"wave {stage}" in proc.stdout + proc.stderr or stage == "segmentation"
    a, b = arrays(root / "a"), arrays(root / "b")
    for name in LAYERS:
        assert a[name].dtype == b[name].dtype and np.array_equal(a[name], b[name]), name
    for table in TABLES:
        assert digest(root / "a/scratch" / table) == digest(root / "b/scratch" / table), table


def test_rerun_skips_verified_stages_and_changes_nothing(chained):
    root, _ = chained
    out = root / "a"
    before, data = mtimes(out), arrays(out)
    proc = run_cli(root, document(root, "a"))
    logs = proc.stdout + proc.stderr
    assert "task(s) enqueued" not in logs, "a verified stage ran a wave"
    assert mtimes(out) == before
    after = arrays(out)
    assert all(np.array_equal(data[n], after[n]) for n in LAYERS)
    for s in chain.CHAIN:
        assert json.loads((out / "scratch/chain" / f"{s}.json").read_text())["resumed"]


def test_damaged_stage_reruns_with_later_ones_and_skip_is_honoured(chained):
    root, _ = chained
    out = root / "a"
    data = arrays(out)
    rows = list(csv.DictReader((out / "scratch/synapses/synapses.csv").open()))
    before = mtimes(out)
    key = storage.open_layer(f"file://{out}/seg").info["scales"][0]["key"]
    victim = sorted((out / "seg" / key).iterdir())[0]
    victim.unlink()  # a lost chunk: segmentation is no longer verified
    doc = document(root, "a")
    doc["chain"]["skip"] = ["postprocess"]
    proc = run_cli(root, doc)
    logs = proc.stdout + proc.stderr
    assert "wave alignment" not in logs and "wave inference" not in logs
    assert "wave ws level 0 chunks: done" in logs and "wave synapses map: done" in logs
    assert "wave postprocess" not in logs
    recs = {s: json.loads((out / "scratch/chain" / f"{s}.json").read_text())
            for s in chain.CHAIN}
    assert recs["segmentation"]["why"] == "layer seg is missing chunks"
    assert recs["synapses"]["why"].startswith("upstream segmentation reran")
    assert recs["postprocess"]["state"] == "skipped"
    now = mtimes(out)
    for name, t in before.items():  # alignment and inference outputs untouched
        if name.split("/")[0] in ("field", "aligned", "aff", "input_mask"):
            assert now[name] == t, name
    after = arrays(out)
    assert all(np.array_equal(data[n], after[n]) for n in LAYERS)
    again = list(csv.DictReader((out / "scratch/synapses/synapses.csv").open()))
    assert again == rows
    shutil.rmtree(root / "b", ignore_errors=True)


def _state(progress: Path) -> str | None:
    try:
        return json.loads(progress.read_text())["state"]
    except (OSError, ValueError, KeyError):  # not there yet, or being rewritten
        return None


def test_cancelled_run_resumes_at_the_wave_it_stopped_in(chained):
    """Cancel during segmentation once its first wave finished; the rerun skips the verified
    stages and the waves that finished, runs the rest, and equals the uninterrupted run."""
    root, _ = chained
    doc = document(root, "c")
    (root / "c.yaml").write_text(yaml.safe_dump(doc))
    run = subprocess.Popen([EXE, "run", "c.yaml"], cwd=root, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    first = root / "c/scratch/progress/ws-level-0-chunks.json"
    try:
        deadline = time.monotonic() + 600
        while _state(first) != "done":
            assert run.poll() is None, run.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "segmentation never started"
            time.sleep(0.1)
        cancel = subprocess.run([EXE, "cancel", "c.yaml"], cwd=root, capture_output=True,
                                text=True, timeout=120)
        assert cancel.returncode == 0, cancel.stderr[-2000:]
        _, err = run.communicate(timeout=300)
    finally:
        if run.poll() is None:
            run.kill()
    assert run.returncode == 2 and "cancelled" in err, err[-2000:]
    rec = json.loads((root / "c/scratch/chain/segmentation.json").read_text())
    assert rec["state"] == "running"
    done = [w["wave"] for w in rec["waves_done"]]
    assert done[0] == "ws level 0 chunks"
    proc = run_cli(root, doc, "c.yaml")
    logs = proc.stdout + proc.stderr
    assert "wave alignment" not in logs and "wave inference" not in logs
    for wave in done:
        assert f"wave {wave}: finished before the interruption, skipped" in logs, wave
        assert f"wave {wave}: done" not in logs, wave
    assert "wave agg remap: done" in logs or "agg remap" in done
    recs = {s: json.loads((root / "c/scratch/chain" / f"{s}.json").read_text())
            for s in chain.CHAIN}
    assert recs["segmentation"]["why"] == f"resumed after {len(done)} finished wave(s)"
    assert all(r["state"] == "complete" for r in recs.values())
    assert recs["alignment"]["resumed"] and recs["inference"]["resumed"]
    a, c = arrays(root / "a"), arrays(root / "c")
    for name in LAYERS:
        assert np.array_equal(a[name], c[name]), name
    for table in TABLES:
        assert digest(root / "a/scratch" / table) == digest(root / "c/scratch" / table), table
