"""The `segmentation` DAG through Airflow on the embedded default reproduces the global run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import yaml

from pipeline import storage
from pipeline.agglomerate.chunked import AgglomerationParams
from pipeline.agglomerate.jobs import agglomerate_global
from pipeline.geometry import Bbox
from pipeline.watershed.chunked import WatershedParams
from pipeline.watershed.jobs import watershed_global
from tests.integration.test_segmentation_waves import boundary_to_affinity

GALA = Path(__file__).resolve().parents[1] / "data" / "gala_fibsem_example"
EXE = str(Path(sys.executable).with_name("petarecon"))


def test_segmentation_dag_reproduces_global_run_on_gala(tmp_path):
    with h5py.File(GALA / "test-p1.lzf.h5") as f:
        p = f["stack"][:].transpose(2, 1, 0).astype(np.float32)
    box = Bbox.from_shape(p.shape)
    layer = f"file://{tmp_path}/boundary"
    storage.create_layer(layer, "probability", box, (10, 10, 10), (64, 64, 16))
    storage.write(layer, box, p)
    conf = {"name": "gala-seg", "output": str(tmp_path / "out"),
            "chunk_size": [64, 64, 32], "storage_chunk_size": [64, 64, 16],
            "segmentation": {"boundary": layer, "ws_high": 0.9, "ws_low": 0.1, "ws_size": 200,
                             "ws_dust": 50, "agg_threshold": 0.5}}
    (tmp_path / "seg.yaml").write_text(yaml.safe_dump(conf))
    proc = subprocess.run([EXE, "run", "seg.yaml", "-v"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    logs = proc.stdout + proc.stderr
    for wave in ("ws level 0 chunks", "ws level 0 faces", "ws level 2 nodes", "ws remap",
                 "agg level 2 nodes", "agg remap", "seg meshes"):
        assert f"wave {wave}: done" in logs, wave
    assert "level 3 is above this run's octree top" in logs  # skipped, not failed

    aff = boundary_to_affinity(p)
    ws = watershed_global(aff, WatershedParams(0.9, 0.1, 200, 50))
    seg = agglomerate_global(aff, ws, AgglomerationParams(0.5))
    out = tmp_path / "out"
    assert np.array_equal(storage.read(f"file://{out}/ws", box)[..., 0], ws)
    assert np.array_equal(storage.read(f"file://{out}/seg", box)[..., 0], seg)
    for layer_name in ("ws", "seg"):
        assert storage.get_status(f"file://{out}/{layer_name}") == "complete"
    assert len(storage.open_layer(f"file://{out}/seg").info["scales"]) == 2
    manifests = [m for m in (out / "seg" / "mesh").iterdir() if m.name.endswith(":0")]
    assert len(manifests) >= len(np.unique(seg)) // 2
    tables = out / "scratch" / "segmentation"
    for name in ("segment_sizes.csv", "region_graph.csv", "merge_history.csv"):
        assert (tables / name).stat().st_size > 30
    report = json.loads((out / "scratch" / "report.json").read_text())
    assert set(report["layers"]) == {"boundary", "ws", "seg"}

    scores = subprocess.run([EXE, "evaluate", f"file://{out}/seg",
                             str(GALA / "test-gt.lzf.h5"), "--json"],
                            capture_output=True, text=True, timeout=120)
    assert scores.returncode == 0, scores.stderr
    metrics = json.loads(scores.stdout)
    assert metrics["n_voxels"] == 200 * 100 * 50
    assert 0 < metrics["adapted_rand_error"] < 0.6 and metrics["vi"] < 3
