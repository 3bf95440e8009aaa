"""The `synapses` DAG through Airflow on the embedded default, on synthetic EM."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import yaml

from pipeline.synth import synthesize
from pipeline.synth.io import write_synthetic

EXE = str(Path(sys.executable).with_name("petarecon"))


def test_synapses_dag_recovers_known_partners(tmp_path):
    layers = {k: v[0] for k, v in
              write_synthetic(str(tmp_path / "syn"), (160, 160, 24), 7, (8, 8, 40)).items()}
    conf = {"name": "syn", "output": str(tmp_path / "out"), "input": layers["image"],
            "chunk_size": [64, 64, 16], "storage_chunk_size": [32, 32, 8],
            "synapses": {"cleft": layers["cleft_probability"], "segmentation": layers["gt"]}}
    (tmp_path / "syn.yaml").write_text(yaml.safe_dump(conf))
    proc = subprocess.run([EXE, "run", "syn.yaml", "-v"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    logs = proc.stdout + proc.stderr
    for wave in ("map", "reduce", "remap", "assign", "relabel"):
        assert f"wave synapses {wave}: done" in logs
    out = tmp_path / "out" / "scratch" / "synapses"
    rows = list(csv.DictReader((out / "synapses.csv").open()))
    truth = {(s["pre"], s["post"]) for s in synthesize((160, 160, 24), 7).synapses}
    found = {(int(r["pre"]), int(r["post"])) for r in rows}
    assert len(found & truth) >= 0.9 * len(truth) and len(found) <= len(truth) + 1
    assert float(rows[0]["centroid_x_nm"]) == float(rows[0]["centroid_x"]) * 8
    edges = list(csv.DictReader((out / "connectivity.csv").open()))
    assert sum(int(e["count"]) for e in edges) == len(rows)
    state = json.loads((out / "synapses.ngstate.json").read_text())
    assert state["type"] == "annotation" and len(state["annotations"]) == len(rows)
    assert state["annotations"][0]["type"] == "line"
