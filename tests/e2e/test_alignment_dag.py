"""The `alignment` DAG through Airflow on the embedded default, on misaligned synthetic EM."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import yaml

from pipeline import storage
from pipeline.geometry import Bbox
from pipeline.synth.io import make_volume, write_synthetic

EXE = str(Path(sys.executable).with_name("petarecon"))
SHAPE = (96, 96, 8)
RES = (8.0, 8.0, 10.0)


def test_alignment_dag_aligns_and_writes_masks(tmp_path):
    layers = write_synthetic(str(tmp_path / "syn"), SHAPE, 6, RES, misalign=True, missing=1)
    conf = {"name": "al", "output": str(tmp_path / "out"), "input": layers["image"][0],
            "chunk_size": [48, 48, 4], "storage_chunk_size": [48, 48, 4],
            "alignment": {"block_size": 4, "overlap": 2, "margin": 32, "tile_size": 16,
                          "search_radius": 6, "levels": 2, "smooth": 16.0,
                          "refine_iterations": 5}}
    (tmp_path / "al.yaml").write_text(yaml.safe_dump(conf))
    proc = subprocess.run([EXE, "run", "al.yaml", "-v"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    logs = proc.stdout + proc.stderr
    for wave in ("defects", "fields", "stitch", "compose", "render", "masks", "pyramid"):
        assert f"wave alignment {wave}: done" in logs, wave
    report = json.loads((tmp_path / "out" / "scratch" / "report.json").read_text())
    assert {"field", "aligned", "input_mask", "output_mask", "defects",
            "misalignment"} <= set(report["layers"])
    box = Bbox.from_shape(SHAPE)
    aligned = storage.read(report["layers"]["aligned"]["path"], box)[..., 0]
    vol = make_volume(SHAPE, 6, RES, misalign=True, missing=1)
    (z_missing,) = vol.defects["missing"]
    inputs = storage.read(report["layers"]["input_mask"]["path"], box)[..., 0]
    assert (inputs[..., z_missing] == 1).all() and (aligned[..., z_missing] == 0).all()
    # the aligned sections agree with each other far better than the raw ones did
    def spread(stack):
        ok = [z for z in range(SHAPE[2]) if z != z_missing]
        s = stack[16:-16, 16:-16, ok].astype(float)
        return np.mean(np.abs(np.diff(s, axis=2)))
    assert spread(aligned) < 0.8 * spread(vol.image)
    assert storage.get_status(report["layers"]["aligned"]["path"]) == "complete"
