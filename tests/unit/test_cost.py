"""`petarecon cost`: projections from measured rates, and measuring rates from run records."""

from __future__ import annotations

import json

import pytest

from pipeline import cost
from pipeline.config import load_config

RATES = {"source": "test table", "measured": "2026-01-01", "stages": {
    "inference": {"voxels_per_core_second": 1000.0, "bytes_per_voxel": {"aff": 4.0}},
    "segmentation": {"voxels_per_core_second": 4000.0, "bytes_per_voxel": {"ws": 1.0,
                                                                          "seg": 0.5}}}}


def config(device: str = "cpu", **extra):
    return load_config({"name": "c", "output": "/tmp/x", "input": "file:///nowhere/img",
                        "bbox": [0, 0, 0, 100, 100, 36],
                        "inference": {"checkpoints": ["m.pt"], "device": device},
                        "segmentation": {"affinity": "file:///nowhere/aff"}, **extra})


def test_projection_scales_with_voxels_and_names_its_source():
    proj = cost.project(config(), RATES)
    n = 100 * 100 * 36
    assert proj["voxels"] == n and proj["source"] == "test table"
    assert proj["stages"]["inference"]["core_hours"] == pytest.approx(n / 1000 / 3600)
    assert proj["stages"]["segmentation"]["storage_bytes"] == pytest.approx(1.5 * n)
    assert proj["total"]["core_hours"] == pytest.approx(n / 1000 / 3600 + n / 4000 / 3600)
    assert proj["unmeasured"] == ["postprocess"]
    big = cost.project(config(), RATES, extent_nm=(8000, 8000, 40000))
    assert big["voxels"] == 1000 * 1000 * 1000


def test_gpu_hours_only_from_a_gpu_measurement():
    cpu_rates = cost.project(config("cuda"), RATES)
    assert cpu_rates["stages"]["inference"]["gpu_hours"] == 0
    assert any("no GPU measurement" in n for n in cpu_rates["notes"])
    gpu = json.loads(json.dumps(RATES))
    gpu["stages"]["inference"]["device"] = "cuda"
    proj = cost.project(config("cuda"), gpu)
    assert proj["stages"]["inference"]["core_hours"] == 0
    assert proj["stages"]["inference"]["gpu_hours"] == pytest.approx(360000 / 1000 / 3600)


def test_measure_reads_complete_stage_records(tmp_path):
    chain = tmp_path / "chain"
    chain.mkdir()
    (chain / "inference.json").write_text(json.dumps({
        "stage": "inference", "state": "complete", "seconds": 10.0, "workers": 2,
        "voxels": 20000, "layers": {"aff": {"bytes": 40000, "chunks": 1, "path": "p"}}}))
    (chain / "synapses.json").write_text(json.dumps({"stage": "synapses", "state": "running"}))
    rates = cost.measure(f"file://{tmp_path}")
    assert list(rates["stages"]) == ["inference"]
    r = rates["stages"]["inference"]
    assert r["voxels_per_core_second"] == 1000.0 and r["bytes_per_voxel"] == {"aff": 2.0}
    with pytest.raises(FileNotFoundError):
        cost.measure(f"file://{tmp_path}/empty")


def test_shipped_table_is_measured_and_complete():
    table = cost.shipped()
    assert "measured" in table and table["source"]
    for stage in ("alignment", "inference", "segmentation", "synapses", "postprocess"):
        assert table["stages"][stage]["voxels_per_core_second"] > 0
