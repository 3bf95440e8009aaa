"""The `ingest` and `segmentation` DAGs through Airflow with workers as pods of a real
Kubernetes cluster, draining an sqs:// queue against s3:// layers: the outputs equal the
embedded run (file://, fq://, local worker processes) bit for bit, also when worker pods are
deleted mid-wave, and scaling down really leaves no worker pods."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import boto3
import h5py
import numpy as np
import yaml

from pipeline import storage
from pipeline.geometry import Bbox
from tests.e2e.kubernetes.conftest import NAMESPACE, CloudRun, Stack, decoded_layers

REPO = Path(__file__).resolve().parents[3]
GALA = REPO / "tests" / "data" / "gala_fibsem_example"
INPUT = Path("/var/tmp/petarecon-input")  # mounted at the same path in the local overlay's pods
EXE = str(Path(sys.executable).with_name("petarecon"))


def run(conf: dict[str, Any], tmp: Path, name: str,
        verbose: bool = True) -> subprocess.CompletedProcess:
    """`petarecon run` (Airflow's dag.test in that process) on ``conf``; with ``verbose``,
    Airflow's task logs (wave progress) are in the output."""
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(conf))
    return subprocess.run([EXE, "run", str(path), *(["--verbose"] if verbose else [])],
                          cwd=tmp, capture_output=True, text=True, timeout=1200)


def check_ok(proc: subprocess.CompletedProcess) -> str:
    logs = proc.stdout + proc.stderr
    assert proc.returncode == 0, logs[-5000:]
    return logs


def staged(src: Path) -> str:
    """Copy an input file where the worker pods can read it (a hostPath of the local overlay)."""
    folder = INPUT / uuid.uuid4().hex[:10]
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(src, folder / src.name)
    return str(folder / src.name)


def assert_same_layers(a_root: str, b_root: str, names: list[str]) -> None:
    a, b = decoded_layers(a_root, names), decoded_layers(b_root, names)
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].dtype == b[key].dtype and a[key].shape == b[key].shape, key
        assert np.array_equal(a[key], b[key]), f"{key} differs from the embedded run"


def ingest_conf(source: str, chunk: list[int]) -> dict[str, Any]:
    return {"name": "k8s-ingest", "resolution": [10, 10, 10], "chunk_size": chunk,
            "storage_chunk_size": chunk, "lease_seconds": 30,
            "ingest": {"source": source, "downsample_mips": 2}}


def test_ingest_dag_on_kubernetes_equals_embedded(stack: Stack, cloud: CloudRun, tmp_path):
    source = staged(GALA / "train-image.h5")
    base = ingest_conf(source, [64, 32, 16])
    k8s = run({**base, "output": f"s3://{cloud.bucket}/out", "scratch": cloud.scratch,
               "queue": f"sqs://{cloud.queue}", "cluster": cloud.cluster(stack.kubeconfig)},
              tmp_path, "k8s")
    logs = check_ok(k8s)
    assert re.search(r"wave ingest: (\d+)/\1 \(100%\)", logs), logs[-3000:]
    assert "petarecon/petarecon-worker-cpu scaled to 2" in logs
    local = run({**base, "output": str(tmp_path / "local"), "cluster": {"workers": 2}},
                tmp_path, "local")
    check_ok(local)
    assert_same_layers(f"s3://{cloud.bucket}/out", f"file://{tmp_path}/local", ["image"])
    with h5py.File(GALA / "train-image.h5") as f:
        zyx = f["stack"][:]
    img = storage.read(f"s3://{cloud.bucket}/out/image", Bbox.from_shape((200, 100, 50)))
    assert np.array_equal(img[..., 0], zyx.transpose(2, 1, 0))
    stack.wait_no_workers()
    dep = stack.apps().read_namespaced_deployment("petarecon-worker-cpu", NAMESPACE)
    assert dep.spec.replicas == 0


def test_segmentation_dag_on_kubernetes_equals_embedded(stack: Stack, cloud: CloudRun,
                                                        tmp_path):
    with h5py.File(GALA / "test-p1.lzf.h5") as f:
        p = f["stack"][:].transpose(2, 1, 0).astype(np.float32)
    box = Bbox.from_shape(p.shape)
    roots = {"k8s": f"s3://{cloud.bucket}", "local": f"file://{tmp_path}/local"}
    for root in roots.values():
        storage.create_layer(f"{root}/boundary", "probability", box, (10, 10, 10), (64, 64, 16))
        storage.write(f"{root}/boundary", box, p)
    seg = {"ws_high": 0.9, "ws_low": 0.1, "ws_size": 200, "ws_dust": 50,
           "agg_threshold": 0.5, "mesh": False}
    base = {"name": "k8s-seg", "chunk_size": [64, 64, 32], "storage_chunk_size": [64, 64, 16],
            "lease_seconds": 30}
    k8s = run({**base, "output": f"{roots['k8s']}/out", "scratch": cloud.scratch,
               "queue": f"sqs://{cloud.queue}", "cluster": cloud.cluster(stack.kubeconfig),
               "segmentation": {**seg, "boundary": f"{roots['k8s']}/boundary"}},
              tmp_path, "k8s")
    logs = check_ok(k8s)
    for wave in ("ws level 0 chunks", "ws remap", "agg remap"):
        assert f"wave {wave}: done" in logs, wave
    local = run({**base, "output": f"{roots['local']}/out", "cluster": {"workers": 2},
                 "segmentation": {**seg, "boundary": f"{roots['local']}/boundary"}},
                tmp_path, "local")
    check_ok(local)
    assert_same_layers(f"{roots['k8s']}/out", f"{roots['local']}/out", ["ws", "seg"])
    assert len(np.unique(storage.read(f"{roots['k8s']}/out/seg", box))) > 5
    stack.wait_no_workers()


def test_deleting_worker_pods_mid_wave_leaves_output_unchanged(stack: Stack, cloud: CloudRun,
                                                               tmp_path):
    """Pods are deleted without grace while the ingest wave runs: their leased tasks come
    back after the 30 s lease, the Deployment replaces the pods, the output is unchanged."""
    source = staged(GALA / "train-image.h5")
    base = ingest_conf(source, [32, 32, 16])  # 7 x 4 x 4 = 112 tasks: a wave that lasts
    sqs = boto3.client("sqs", endpoint_url=stack.moto, region_name="us-east-1",
                       aws_access_key_id="testing", aws_secret_access_key="testing")
    url = sqs.get_queue_url(QueueName=cloud.queue)["QueueUrl"]
    killed: dict[str, Any] = {}

    def kill_when_busy() -> None:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and not killed:
            attrs = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
            in_flight = int(attrs["ApproximateNumberOfMessagesNotVisible"])
            left = int(attrs["ApproximateNumberOfMessages"])
            running = [p for p in stack.worker_pods("cpu") if p.status.phase == "Running"]
            if in_flight > 0 and left > 20 and running:
                for pod in running:
                    stack.core().delete_namespaced_pod(pod.metadata.name, NAMESPACE,
                                                       grace_period_seconds=0)
                killed.update(pods=[p.metadata.name for p in running], left=left,
                              in_flight=in_flight)
            time.sleep(0.3)

    killer = threading.Thread(target=kill_when_busy, daemon=True)
    killer.start()
    k8s = run({**base, "output": f"s3://{cloud.bucket}/out", "scratch": cloud.scratch,
               "queue": f"sqs://{cloud.queue}", "cluster": cloud.cluster(stack.kubeconfig)},
              tmp_path, "k8s")
    killer.join(5)
    check_ok(k8s)
    assert killed, "no worker pod was deleted mid-wave"
    assert killed["in_flight"] > 0 and killed["left"] > 20
    local = run({**base, "output": str(tmp_path / "local"), "cluster": {"workers": 2}},
                tmp_path, "local")
    check_ok(local)
    assert_same_layers(f"s3://{cloud.bucket}/out", f"file://{tmp_path}/local", ["image"])
    # scaling to 0 after the wave really leaves no worker pods, in any pool
    stack.wait_no_workers()
    assert stack.worker_pods() == []
