"""The run report: redaction, and the HTML page built from a run's records and tables."""

from __future__ import annotations

import json

import numpy as np

from pipeline import storage
from pipeline.config import load_config
from pipeline.geometry import Bbox
from pipeline.report import write_report
from pipeline.status import redact

SECRET = "s3cr3t-Planted-9931"


def test_redact_hides_secret_keys_and_url_passwords():
    got = redact({"cluster": {"secret": SECRET, "api_key": SECRET, "workers": 2},
                  "queue": f"sqs://user:{SECRET}@host/q", "list": [{"token": SECRET}]})
    assert SECRET not in json.dumps(got)
    assert got["cluster"]["workers"] == 2 and got["queue"] == "sqs://user:***@host/q"


def test_html_report_holds_layers_timings_tables_and_no_secret(tmp_path):
    out = tmp_path / "out"
    box = Bbox.from_shape((32, 32, 4))
    seg = f"file://{out}/seg"
    storage.create_layer(seg, "segmentation", box, (8, 8, 40), (32, 32, 4))
    storage.write(seg, box, np.arange(32 * 32 * 4, dtype=np.uint64).reshape(32, 32, 4) % 7)
    config = load_config({"name": "rep", "output": str(out), "input": seg,
                          "queue": f"fq://{tmp_path}/q", "cluster": {"secret": SECRET},
                          "segmentation": {"affinity": seg}})
    scratch = out / "scratch"
    (scratch / "progress").mkdir(parents=True)
    for i, wave in enumerate(("ws level 0 chunks", "agg remap")):
        (scratch / "progress" / f"w{i}.json").write_text(json.dumps(
            {"stage": "segmentation", "wave": wave, "done": 4, "total": 4, "elapsed": 2.5 + i,
             "eta": 0, "state": "done", "started": float(i)}))
    (scratch / "segmentation").mkdir()
    (scratch / "segmentation" / "segment_sizes.csv").write_text(
        "segment_id,voxels\n1,10\n2,1000\n3,55\n")
    (scratch / "synapses").mkdir()
    (scratch / "synapses" / "synapses.csv").write_text("cleft_id,pre,post\n1,1,2\n2,1,2\n3,2,3\n")
    (scratch / "synapses" / "connectivity.csv").write_text(
        "pre,post,count,total_size\n1,2,2,90\n2,3,1,40\n")
    report = write_report(config, {"seg": (seg, "segmentation")},
                          {"metrics": {"adapted_rand_error": 0.25}})
    page = (out / "report.html").read_text()
    assert report["html"] == f"file://{out}/report.html"
    assert "per stage" in page and "ws level 0 chunks" in page
    assert page.count("data:image/png;base64,") == 2  # timings and the size histogram
    assert "3 synapses between 3 segments; 2 connected" in page
    assert "adapted_rand_error" in page and "0.25" in page
    assert "/v/petarecon/#!" in page  # a Neuroglancer link through `petarecon view`
    assert SECRET not in page and SECRET not in (scratch / "report.json").read_text()
    assert f"petarecon view {out} --port 8080" in page
