"""Storage faults: 5 % of S3 reads and writes fail with 503, and the output does not change.

A real S3 (moto_server on loopback) sits behind ``pipeline.faults.FaultProxy``, which answers
a seeded 5 % of all requests (GET, PUT, HEAD, DELETE alike) with ``503 Slow Down`` without
forwarding them. The ingest stage (stack → s3:// layer and pyramid) and the segmentation stage
(s3:// boundary → s3:// ws/seg layers and tables) run through that proxy with real worker
processes. Their outputs must equal a clean file:// run byte for byte, faults must have hit
both reads and writes, and every retry must show as a warning in the logs (the test process's
and the workers').
"""

from __future__ import annotations

import json
import logging
import socket
import subprocess
import sys
import time
from pathlib import Path

import boto3
import pytest
from cloudfiles import CloudFiles

from bench.chaos import diff, make_inputs, run_stage, snapshot, stage_conf
from pipeline import storage
from pipeline.faults import FaultProxy
from pipeline.geometry import Bbox

pytestmark = pytest.mark.integration

KEYS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": "us-east-1"}
RETRY = "storage: transient error from the object store; retrying"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def moto() -> str:
    port = _free_port()
    exe = Path(sys.executable).with_name("moto_server")
    proc = subprocess.Popen([str(exe), "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    pytest.fail("moto_server did not start")
                time.sleep(0.2)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


def s3_snapshot(path: str) -> dict[str, bytes]:
    """Like ``bench.chaos.snapshot`` for an s3:// prefix (CloudFiles inflates on get)."""
    cf = CloudFiles(path)
    names = [n for n in cf.list() if not (set(n.split("/")) & {
        "queue", "dead_letter", "status", "cluster", "report.json", "progress", "provenance",
        storage.STATUS_FILE, "run.json"})]
    return {n.removesuffix(".gz"): cf.get(n) for n in sorted(names)}


def test_five_percent_storage_faults_change_nothing(moto: str, tmp_path: Path, monkeypatch,
                                                    private_home: Path, caplog) -> None:
    for key, value in {**KEYS, "AWS_ENDPOINT_URL_S3": moto}.items():
        monkeypatch.setenv(key, value)
    secret = json.dumps({"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"})
    for d in (private_home / ".cloudvolume" / "secrets", private_home / ".cloudfiles" / "secrets"):
        d.mkdir(parents=True, exist_ok=True)
        (d / "aws-secret.json").write_text(secret)
    bucket = f"petarecon-faults-{time.monotonic_ns()}"
    boto3.client("s3", endpoint_url=moto, aws_access_key_id="testing",
                 aws_secret_access_key="testing", region_name="us-east-1"
                 ).create_bucket(Bucket=bucket)

    inputs = make_inputs(tmp_path / "in")
    boundary = storage.read(inputs["boundary"], storage.layer_bounds(inputs["boundary"]))
    box = storage.layer_bounds(inputs["boundary"])
    s3_boundary = f"s3://{bucket}/in/boundary"  # copied before any fault is injected
    storage.create_layer(s3_boundary, "probability", box, (8, 8, 40), (32, 32, 4))
    storage.write(s3_boundary, Bbox(box.start, box.stop), boundary)

    clean = {stage: run_stage(stage, stage_conf(stage, inputs, tmp_path / stage))
             for stage in ("ingest", "segmentation")}

    caplog.set_level(logging.WARNING, logger="petarecon.storage")
    with FaultProxy(moto, rate=0.05, seed=1) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", proxy.url)
        faulty = {**inputs, "boundary": s3_boundary}
        for stage in ("ingest", "segmentation"):
            conf = stage_conf(stage, faulty, tmp_path / "unused")
            conf["output"] = f"s3://{bucket}/{stage}"
            conf["queue"] = f"fq://{tmp_path / 'queues' / stage}"
            run_stage(stage, conf, "workers", workers=2)
            # the stage's own reads and writes in this process, through the faults too
            assert storage.get_status(f"s3://{bucket}/{stage}/"
                                      + ("image" if stage == "ingest" else "seg")) == "complete"
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", moto)

    for stage in ("ingest", "segmentation"):
        want = snapshot(clean[stage].output)
        got = s3_snapshot(f"s3://{bucket}/{stage}")
        assert len(want) > 5
        assert diff(want, got) == [], stage

    counts = proxy.counts
    assert counts["GET 503"] > 0 and counts["PUT 503"] > 0, counts
    failed = sum(v for k, v in counts.items() if k.endswith("503"))
    assert 0.02 < failed / sum(counts.values()) < 0.10, counts
    logs = "".join(p.read_text(errors="replace")
                   for p in (private_home / ".cache").rglob("workers.log"))
    in_process = [r.getMessage() for r in caplog.records if RETRY in r.getMessage()]
    retried = logs.count(RETRY) + len(in_process)
    assert logs.count(RETRY) > 0, "workers retried without a warning in their logs"
    assert retried >= failed * 0.9, (retried, failed)
