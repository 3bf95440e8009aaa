"""The pipeline unchanged on s3:// layers and an sqs:// queue (a real S3 + SQS server on
loopback: moto_server), bit for bit equal to the file:// + fq:// run."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path

import boto3
import numpy as np
import pytest
from cloudfiles import CloudFiles

from pipeline import report, storage, waves
from pipeline.geometry import Bbox
from pipeline.ingest import stage as ingest
from pipeline.segmentation import stage as segmentation
from tests.integration.test_segmentation_waves import boundary  # noqa: F401  (fixture)

KEYS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": "us-east-1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def moto():
    port = free_port()
    exe = Path(sys.executable).with_name("moto_server")
    proc = subprocess.Popen([str(exe), "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.2)
    yield url
    proc.terminate()
    proc.wait(10)


@pytest.fixture
def aws(moto, monkeypatch, private_home):
    """Point CloudVolume and task-queue at the loopback server, with test credentials."""
    for k, v in {**KEYS, "AWS_ENDPOINT_URL_S3": moto, "AWS_ENDPOINT_URL_SQS": moto}.items():
        monkeypatch.setenv(k, v)
    secret = json.dumps({"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"})
    for d in (private_home / ".cloudvolume" / "secrets", private_home / ".cloudfiles" / "secrets"):
        d.mkdir(parents=True, exist_ok=True)
        (d / "aws-secret.json").write_text(secret)
    s3 = boto3.client("s3", endpoint_url=moto, **_boto_keys())
    sqs = boto3.client("sqs", endpoint_url=moto, **_boto_keys())
    bucket = f"petarecon-{time.monotonic_ns()}"
    s3.create_bucket(Bucket=bucket)
    queue = f"q-{time.monotonic_ns()}"
    sqs.create_queue(QueueName=queue, Attributes={"VisibilityTimeout": "30"})
    return bucket, queue


def _boto_keys() -> dict:
    return {"aws_access_key_id": "testing", "aws_secret_access_key": "testing",
            "region_name": "us-east-1"}


def run_waves(config, plan) -> None:
    waves.start_run(config)
    waves.scale(config)
    try:
        for name, make in plan:
            waves.run_wave(config, name, make(config))
    finally:
        waves.scale(config, n=0)


def chunk_bytes(layer: str) -> dict[str, bytes]:
    cf = CloudFiles(layer)
    names = [n for n in cf.list() if "/" in n]
    return {n: cf.get(n) for n in names}


def test_ingest_on_s3_and_sqs_equals_local(aws, tmp_path):
    bucket, queue = aws
    zyx = np.random.default_rng(2).integers(0, 256, (16, 80, 96), dtype=np.uint8)
    np.save(tmp_path / "stack.npy", zyx)
    base = {"name": "cloud", "chunk_size": [64, 64, 16], "storage_chunk_size": [32, 32, 8],
            "cluster": {"workers": 2}, "ingest": {"source": str(tmp_path / "stack.npy"),
                                                  "downsample_mips": 1}}
    outputs = {}
    for where, extra in (("s3", {"output": f"s3://{bucket}/run", "queue": f"sqs://{queue}"}),
                         ("file", {"output": str(tmp_path / "local")})):
        config = ingest.sanity_check({**base, **extra})
        ingest.prepare(config)
        run_waves(config, [("ingest", ingest.ingest_tasks), ("pyramid", ingest.pyramid_tasks)])
        rep = report.write_report(config, ingest.finish(config))
        outputs[where] = config.image_path
        if where == "s3":  # annotators get a public-viewer URL for cloud layers
            url = urllib.parse.unquote(rep["neuroglancer"])
            assert url.startswith("https://neuroglancer-demo.appspot.com/#!")
            assert f"precomputed://s3://{bucket}/run/image" in url
    s3_img = storage.read(outputs["s3"], Bbox.from_shape((96, 80, 16)))[..., 0]
    assert np.array_equal(s3_img, zyx.transpose(2, 1, 0))
    a, b = chunk_bytes(outputs["s3"]), chunk_bytes(outputs["file"])
    assert a.keys() == b.keys() and len(a) > 10
    assert all(a[k] == b[k] for k in a), "every chunk is bit-identical"
    assert storage.get_status(outputs["s3"]) == "complete"


def test_segmentation_on_s3_and_sqs_equals_local(aws, tmp_path, boundary):  # noqa: F811
    bucket, queue = aws
    box = Bbox.from_shape(boundary.shape)
    results = {}
    for where, root, extra in (("s3", f"s3://{bucket}", {"queue": f"sqs://{queue}"}),
                               ("file", f"file://{tmp_path}", {})):
        layer = f"{root}/boundary"
        storage.create_layer(layer, "probability", box, (10, 10, 10), (32, 32, 8))
        storage.write(layer, box, boundary)
        config = segmentation.sanity_check({
            "name": "cloud-seg", "output": f"{root}/out", "chunk_size": [32, 32, 16],
            "storage_chunk_size": [32, 32, 8], "cluster": {"workers": 2}, **extra,
            "segmentation": {"boundary": layer, "ws_high": 0.9, "ws_low": 0.1, "ws_size": 100,
                             "ws_dust": 20, "agg_threshold": 0.5, "mesh": False}})
        segmentation.prepare(config)
        run_waves(config, segmentation.wave_plan(config))
        results[where] = config
    for name in ("ws", "seg"):
        a = storage.read(results["s3"].layer_path(name), box)
        b = storage.read(results["file"].layer_path(name), box)
        assert np.array_equal(a, b) and len(np.unique(a)) > 5
        ca, cb = chunk_bytes(results["s3"].layer_path(name)), \
            chunk_bytes(results["file"].layer_path(name))
        assert ca.keys() == cb.keys() and all(ca[k] == cb[k] for k in ca)
