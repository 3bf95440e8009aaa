"""The pipeline unchanged on cloud layers and queues, bit for bit equal to the file:// + fq://
run. Real servers on loopback, started here and stopped after the module:

- s3:// + sqs://: moto_server;
- gs:// + pubsub://: gcp-storage-emulator (through tests.infra.gcs_emulator) and Google's
  Pub/Sub emulator (tests.infra.pubsub_emulator);
- s3:// + pubsub://, mixed.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.parse
from functools import partial
from pathlib import Path

import boto3
import numpy as np
import pytest
from cloudfiles import CloudFiles
from taskqueue import QueueEmptyError

from pipeline import report, storage, waves
from pipeline.cluster import LocalCluster
from pipeline.config import ConfigError
from pipeline.geometry import Bbox, ChunkGrid
from pipeline.ingest import stage as ingest
from pipeline.ingest.tasks import ingest_chunk
from pipeline.queue import (
    DeadLetters,
    QueueUnreachable,
    WaveFailed,
    check_queue,
    enqueue_wave,
    open_queue,
    task_key,
    wait_for_wave,
)
from pipeline.queue_pubsub import parse_url
from pipeline.reachability import check_endpoints, check_storage
from pipeline.segmentation import stage as segmentation
from tests.infra import gcs_emulator, pubsub_emulator
from tests.infra.gcs_emulator import free_port, wait_for_port
from tests.integration import slow_tasks
from tests.integration.test_segmentation_waves import boundary  # noqa: F401  (fixture)

KEYS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": "us-east-1"}
PROJECT = "petarecon-test"
REPO = Path(__file__).resolve().parents[2]
STACK_SHAPE = (16, 80, 96)  # z, y, x


# --- servers (one of each per module) -------------------------------------------------------
@pytest.fixture(scope="module")
def moto():
    port = free_port()
    exe = Path(sys.executable).with_name("moto_server")
    proc = subprocess.Popen([str(exe), "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for_port(port, 30, proc)
    yield f"http://127.0.0.1:{port}"
    proc.terminate()
    proc.wait(10)


@pytest.fixture(scope="module")
def gcs_server(tmp_path_factory):
    with gcs_emulator.running(log=tmp_path_factory.mktemp("gcs") / "gcs.log") as env:
        yield env


@pytest.fixture(scope="module")
def pubsub_server(tmp_path_factory):
    with pubsub_emulator.running(log=tmp_path_factory.mktemp("pubsub") / "pubsub.log") as env:
        yield env


def _boto_keys() -> dict:
    return {"aws_access_key_id": "testing", "aws_secret_access_key": "testing",
            "region_name": "us-east-1"}


def use_s3(moto: str, monkeypatch, home: Path) -> str:
    """Point CloudVolume at moto with test credentials; return a new bucket."""
    for k, v in {**KEYS, "AWS_ENDPOINT_URL_S3": moto, "AWS_ENDPOINT_URL_SQS": moto}.items():
        monkeypatch.setenv(k, v)
    secret = json.dumps({"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"})
    for d in (home / ".cloudvolume" / "secrets", home / ".cloudfiles" / "secrets"):
        d.mkdir(parents=True, exist_ok=True)
        (d / "aws-secret.json").write_text(secret)
    bucket = f"petarecon-{time.monotonic_ns()}"
    boto3.client("s3", endpoint_url=moto, **_boto_keys()).create_bucket(Bucket=bucket)
    return bucket


def use_sqs(moto: str, monkeypatch) -> str:
    monkeypatch.setenv("AWS_ENDPOINT_URL_SQS", moto)
    name = f"q-{time.monotonic_ns()}"
    boto3.client("sqs", endpoint_url=moto, **_boto_keys()).create_queue(
        QueueName=name, Attributes={"VisibilityTimeout": "30"})
    return f"sqs://{name}"


def use_gcs(env: dict[str, str], monkeypatch) -> str:
    """Point cloudfiles at the GCS emulator (no google-secret.json); return a new bucket."""
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage as gcs

    for k, v in env.items():
        monkeypatch.setenv(k, v)
    bucket = f"petarecon-{time.monotonic_ns()}"
    gcs.Client(project=PROJECT, credentials=AnonymousCredentials()).create_bucket(bucket)
    return bucket


def use_pubsub(env: dict[str, str], monkeypatch) -> str:
    """Point Pub/Sub clients at the emulator; return a queue URL whose topic and
    subscription do not exist yet (the pipeline creates them)."""
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    ns = time.monotonic_ns()
    return f"pubsub://projects/{PROJECT}/topics/wave-{ns}/subscriptions/workers-{ns}"


@pytest.fixture
def cloud(request, monkeypatch, private_home):
    """(storage root, queue URL) for the backend pair named by the test's parameter."""
    store, queue = request.param
    if store == "s3":
        root = "s3://" + use_s3(request.getfixturevalue("moto"), monkeypatch, private_home)
    else:
        root = "gs://" + use_gcs(request.getfixturevalue("gcs_server"), monkeypatch)
    if queue == "sqs":
        url = use_sqs(request.getfixturevalue("moto"), monkeypatch)
    else:
        url = use_pubsub(request.getfixturevalue("pubsub_server"), monkeypatch)
    return root, url


PAIRS = [pytest.param(("s3", "sqs"), id="s3+sqs"), pytest.param(("gs", "pubsub"), id="gs+pubsub"),
         pytest.param(("s3", "pubsub"), id="s3+pubsub")]


# --- helpers -----------------------------------------------------------------------------
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


def assert_pubsub_queue_created(url: str) -> None:
    from google.cloud import pubsub_v1

    project, topic, sub = parse_url(url)
    pubsub_v1.PublisherClient().get_topic(topic=f"projects/{project}/topics/{topic}")
    pubsub_v1.SubscriberClient().get_subscription(
        subscription=f"projects/{project}/subscriptions/{sub}")


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    d = tmp_path_factory.mktemp("stack")
    zyx = np.random.default_rng(2).integers(0, 256, STACK_SHAPE, dtype=np.uint8)
    np.save(d / "stack.npy", zyx)
    return d / "stack.npy", zyx


def ingest_conf(source: Path, extra: dict) -> dict:
    return {"name": "cloud", "chunk_size": [64, 64, 16], "storage_chunk_size": [32, 32, 8],
            "cluster": {"workers": 2}, "ingest": {"source": str(source), "downsample_mips": 1},
            **extra}


def seg_config(root: str, boundary, extra: dict):  # noqa: F811
    box = Bbox.from_shape(boundary.shape)
    layer = f"{root}/boundary"
    storage.create_layer(layer, "probability", box, (10, 10, 10), (32, 32, 8))
    storage.write(layer, box, boundary)
    return segmentation.sanity_check({
        "name": "cloud-seg", "output": f"{root}/out", "chunk_size": [32, 32, 16],
        "storage_chunk_size": [32, 32, 8], "cluster": {"workers": 2}, **extra,
        "segmentation": {"boundary": layer, "ws_high": 0.9, "ws_low": 0.1, "ws_size": 100,
                         "ws_dust": 20, "agg_threshold": 0.5, "mesh": False}})


def _isolated(tmp: Path):
    mp = pytest.MonkeyPatch()
    home = tmp / "home"
    home.mkdir()
    mp.setenv("HOME", str(home))
    mp.setenv("CLOUD_VOLUME_DIR", str(home / ".cloudvolume"))
    mp.setenv("PYTHONPATH", str(REPO))
    return mp


@pytest.fixture(scope="module")
def ingest_reference(stack, tmp_path_factory):
    """Chunk bytes of the image layer of the file:// + fq:// ingest run."""
    tmp = tmp_path_factory.mktemp("ingest-ref")
    mp = _isolated(tmp)
    try:
        config = ingest.sanity_check(ingest_conf(stack[0], {"output": str(tmp / "local")}))
        ingest.prepare(config)
        run_waves(config, [("ingest", ingest.ingest_tasks), ("pyramid", ingest.pyramid_tasks)])
        ingest.finish(config)
        return chunk_bytes(config.image_path)
    finally:
        mp.undo()


@pytest.fixture(scope="module")
def segmentation_reference(boundary, tmp_path_factory):  # noqa: F811
    """(ws, seg) arrays and chunk bytes of the file:// + fq:// segmentation run."""
    tmp = tmp_path_factory.mktemp("seg-ref")
    mp = _isolated(tmp)
    try:
        config = seg_config(f"file://{tmp}", boundary, {})
        segmentation.prepare(config)
        run_waves(config, segmentation.wave_plan(config))
        box = Bbox.from_shape(boundary.shape)
        return {name: (storage.read(config.layer_path(name), box),
                       chunk_bytes(config.layer_path(name))) for name in ("ws", "seg")}
    finally:
        mp.undo()


# --- the pipeline on cloud backends ------------------------------------------------------------
@pytest.mark.parametrize("cloud", PAIRS, indirect=True)
def test_ingest_on_cloud_equals_local(cloud, stack, ingest_reference):
    root, queue = cloud
    source, zyx = stack
    config = ingest.sanity_check(ingest_conf(source, {"output": f"{root}/run", "queue": queue}))
    assert check_endpoints(config) == []
    ingest.prepare(config)
    run_waves(config, [("ingest", ingest.ingest_tasks), ("pyramid", ingest.pyramid_tasks)])
    rep = report.write_report(config, ingest.finish(config))
    if queue.startswith("pubsub://"):
        assert_pubsub_queue_created(queue)  # the pipeline made its topic and subscription
    # annotators get a public-viewer URL for cloud layers
    url = urllib.parse.unquote(rep["neuroglancer"])
    assert url.startswith("https://neuroglancer-demo.appspot.com/#!")
    assert f"precomputed://{root}/run/image" in url
    img = storage.read(config.image_path, Bbox.from_shape(STACK_SHAPE[::-1]))[..., 0]
    assert np.array_equal(img, zyx.transpose(2, 1, 0))
    a, b = chunk_bytes(config.image_path), ingest_reference
    assert a.keys() == b.keys() and len(a) > 10
    assert all(a[k] == b[k] for k in a), "every chunk is bit-identical"
    assert storage.get_status(config.image_path) == "complete"


@pytest.mark.parametrize("cloud", PAIRS[:2], indirect=True)
def test_segmentation_on_cloud_equals_local(cloud, boundary, segmentation_reference):  # noqa: F811
    root, queue = cloud
    config = seg_config(root, boundary, {"queue": queue})
    segmentation.prepare(config)
    run_waves(config, segmentation.wave_plan(config))
    box = Bbox.from_shape(boundary.shape)
    for name in ("ws", "seg"):
        ref, ref_chunks = segmentation_reference[name]
        a = storage.read(config.layer_path(name), box)
        assert np.array_equal(a, ref) and len(np.unique(a)) > 5
        ca = chunk_bytes(config.layer_path(name))
        assert ca.keys() == ref_chunks.keys() and all(ca[k] == ref_chunks[k] for k in ca)


# --- Pub/Sub leases, redelivery and errors ------------------------------------------------------
@pytest.fixture
def gcp(gcs_server, pubsub_server, monkeypatch):
    return use_gcs(gcs_server, monkeypatch), use_pubsub(pubsub_server, monkeypatch)


def test_pubsub_lease_renew_and_ack_are_honoured(gcp, tmp_path):
    _, queue = gcp
    task = partial(slow_tasks.sleeper, str(tmp_path), "x", 0.0)
    n = enqueue_wave(queue, [task])
    assert n == 1 and n.keys is not None and len(n.keys) == 1
    q = open_queue(queue)
    leased = q.lease(seconds=3)
    assert task_key(leased) == n.keys[0], "the waiter and the worker agree on the task's key"
    with pytest.raises(QueueEmptyError):
        q.lease(seconds=3)  # leased: nobody else gets it
    q.renew(leased, 7)
    time.sleep(4.5)
    with pytest.raises(QueueEmptyError):
        q.lease(seconds=3)  # the renewal outlived the first 3 s lease
    deadline = time.monotonic() + 15
    again = None
    while again is None and time.monotonic() < deadline:
        try:
            again = q.lease(seconds=3)
        except QueueEmptyError:
            time.sleep(0.3)
    assert again is not None, "an expired lease is redelivered"
    assert task_key(again) == task_key(leased)
    q.delete(again)  # acknowledges the FunctionTask
    time.sleep(4)
    with pytest.raises(QueueEmptyError):
        q.lease(seconds=3)


def test_worker_killed_mid_task_on_pubsub_is_redelivered(gcp, tmp_path, stack):
    bucket, queue = gcp
    zyx = stack[1][:8, :48, :64]
    np.save(tmp_path / "small.npy", zyx)
    box = Bbox.from_shape((64, 48, 8))
    layer, ref = f"gs://{bucket}/chaos/image", f"file://{tmp_path}/ref/image"
    for path in (layer, ref):
        storage.create_layer(path, "image", box, (4, 4, 40), (16, 16, 4))
    bboxes = [b.to_list() for b in ChunkGrid(box, (32, 16, 8))]
    for b in bboxes:
        ingest_chunk(str(tmp_path / "small.npy"), None, "zyx", ref, b)
    marks = tmp_path / "marks"
    dead = DeadLetters(f"gs://{bucket}/chaos/dead")
    cluster = LocalCluster(tmp_path / "cluster", queue, dead.path, lease_seconds=5)
    n = enqueue_wave(queue, [partial(slow_tasks.slow_ingest, str(marks), 1.5,
                                     str(tmp_path / "small.npy"), layer, b) for b in bboxes])
    assert n == 6
    cluster.scale(2)
    try:
        deadline = time.monotonic() + 60
        while not list((marks / "started").glob("*")) and time.monotonic() < deadline:
            time.sleep(0.05)
        victim_mark = sorted((marks / "started").glob("*"))[0].name
        victim_task, victim = victim_mark.split("--")[0], int(victim_mark.split("--")[1])
        cluster.stop(victim, signal.SIGKILL)
        assert cluster.size() == 1
        wait_for_wave(queue, "chaos", n, dead, alive=cluster.size, timeout=120)
    finally:
        cluster.shutdown()
    names = lambda kind: [p.name.split("--")[0] for p in (marks / kind).iterdir()]  # noqa: E731
    assert set(names("done")) == {"_".join(map(str, b)) for b in bboxes}
    assert names("started").count(victim_task) >= 2, "the killed task was redelivered"
    assert victim_task in names("done")
    assert dead.list() == []
    assert np.array_equal(storage.read(layer, box)[..., 0], zyx.transpose(2, 1, 0))
    a, b = chunk_bytes(layer), chunk_bytes(ref)
    assert a.keys() == b.keys() and all(a[k] == b[k] for k in a)


def test_bad_pubsub_url_is_one_clear_line(stack, tmp_path):
    for bad in ("pubsub://projects/petarecon-test/topics/only-a-topic",
                "pubsub://projects/P/topics/t/subscriptions/s"):
        with pytest.raises(ConfigError) as err:
            ingest.sanity_check(ingest_conf(stack[0], {"output": str(tmp_path / "o"),
                                                       "queue": bad}))
        assert [f for f, _ in err.value.problems] == ["queue"]
        msg = err.value.problems[0][1]
        assert "\n" not in msg and "pubsub://projects/PROJECT/topics/TOPIC/subscriptions/" in msg


def test_unreachable_pubsub_fails_fast_before_any_task(monkeypatch, stack, tmp_path):
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", f"127.0.0.1:{free_port()}")
    url = f"pubsub://projects/{PROJECT}/topics/nowhere/subscriptions/nobody"
    t0 = time.monotonic()
    with pytest.raises(QueueUnreachable) as err:
        check_queue(url)
    assert time.monotonic() - t0 < 30
    msg = str(err.value)
    assert "\n" not in msg and url in msg and "cannot reach the Pub/Sub emulator" in msg
    with pytest.raises(QueueUnreachable):
        enqueue_wave(url, [partial(slow_tasks.sleeper, str(tmp_path), "x", 0.0)])
    with pytest.raises(ConfigError) as err:  # the sanity check refuses it, writing nothing
        ingest.sanity_check(ingest_conf(stack[0], {"output": str(tmp_path / "o"),
                                                   "queue": url}))
    problems = err.value.problems
    assert [f for f, _ in problems] == ["queue"] and "\n" not in problems[0][1]
    assert not (tmp_path / "o").exists()


def test_missing_or_unreachable_gcs_bucket_is_one_clear_line(gcs_server, monkeypatch, stack,
                                                            tmp_path):
    bucket = use_gcs(gcs_server, monkeypatch)
    assert check_storage(f"gs://{bucket}/run") is None
    msg = check_storage("gs://no-such-bucket-here/run")
    assert msg is not None and "\n" not in msg and "does not exist" in msg
    with pytest.raises(ConfigError) as err:  # in the stage's sanity check, before any write
        ingest.sanity_check(ingest_conf(stack[0], {"output": "gs://no-such-bucket-here/run",
                                                   "queue": f"fq://{tmp_path}/q"}))
    assert [f for f, _ in err.value.problems] == ["output"]
    assert "does not exist" in err.value.problems[0][1]
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{free_port()}")
    t0 = time.monotonic()
    msg = check_storage(f"gs://{bucket}/run")
    assert time.monotonic() - t0 < 30
    assert msg is not None and "\n" not in msg and "cannot reach" in msg


def test_failing_task_on_pubsub_is_retried_then_dead_lettered(gcp, tmp_path):
    bucket, queue = gcp
    marks = tmp_path / "marks"
    dead = DeadLetters(f"gs://{bucket}/dl")
    cluster = LocalCluster(tmp_path / "cluster", queue, dead.path, lease_seconds=8,
                           max_attempts=2)
    n = enqueue_wave(queue, [partial(slow_tasks.always_fails, "disk on fire"),
                             partial(slow_tasks.fails_once, str(marks), "flaky")])
    cluster.scale(1)
    try:
        with pytest.raises(WaveFailed, match=r"failed 2 times; first: RuntimeError: disk on fire"):
            wait_for_wave(queue, "broken", n, dead, alive=cluster.size, timeout=90)
        deadline = time.monotonic() + 60
        while not (marks / "done").exists() and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        cluster.shutdown()
    records = dead.list()
    assert len(records) == 1 and records[0]["attempts"] == 2
    assert records[0]["task"][0] == ["tests.integration.slow_tasks", "always_fails"]
    assert [p.name.split("--")[0] for p in (marks / "done").iterdir()] == ["flaky"], \
        "a failed attempt is released and retried"
    # both tasks were acknowledged: nothing comes back after their leases would have ended
    time.sleep(9)
    q = open_queue(queue)
    with pytest.raises(QueueEmptyError):
        q.lease(seconds=5)
