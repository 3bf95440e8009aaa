"""Faults on the real cluster: a worker pod over its memory limit is OOMKilled, its task is
re-leased, and the DAG fails naming the OOM instead of waiting forever."""

from __future__ import annotations

import threading
import time

import boto3
import numpy as np

from pipeline import storage
from pipeline.geometry import Bbox
from tests.e2e.kubernetes.conftest import NAMESPACE, CloudRun, Stack
from tests.e2e.kubernetes.test_dags import run

# The idle worker (python, igneous, boto3: about 180 MB) stays under this; a watershed task on
# a 384 x 384 x 64 chunk (its affinities alone are 113 MB) goes well over it.
TIGHT = "256Mi"


def test_oom_killed_worker_fails_the_dag_naming_the_oom(stack: Stack, cloud: CloudRun,
                                                        tmp_path):
    # one chunk, one task: its affinities and labels alone need more than the limit
    p = np.random.default_rng(0).random((384, 384, 64), dtype=np.float32)
    box = Bbox.from_shape(p.shape)
    boundary = f"s3://{cloud.bucket}/boundary"
    storage.create_layer(boundary, "probability", box, (10, 10, 10), (128, 128, 32))
    storage.write(boundary, box, p)
    conf = {"name": "k8s-oom", "output": f"s3://{cloud.bucket}/out", "scratch": cloud.scratch,
            "queue": f"sqs://{cloud.queue}", "lease_seconds": 30, "max_attempts": 2,
            "chunk_size": [384, 384, 64], "storage_chunk_size": [128, 128, 32],
            "cluster": cloud.cluster(stack.kubeconfig, workers=1),
            "segmentation": {"boundary": boundary, "ws_high": 0.9, "ws_low": 0.1,
                             "ws_size": 200, "ws_dust": 50, "agg_threshold": 0.5,
                             "mesh": False}}
    sqs = boto3.client("sqs", endpoint_url=stack.moto, region_name="us-east-1",
                       aws_access_key_id="testing", aws_secret_access_key="testing")
    url = sqs.get_queue_url(QueueName=cloud.queue)["QueueUrl"]
    states: list[str] = []  # the queue seen from outside: "v"isible task, leased ("f"light)
    done = threading.Event()

    def watch_queue() -> None:
        while not done.wait(0.5):
            attrs = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
            state = "f" if int(attrs["ApproximateNumberOfMessagesNotVisible"]) else \
                "v" if int(attrs["ApproximateNumberOfMessages"]) else "-"
            if not states or states[-1] != state:
                states.append(state)

    watcher = threading.Thread(target=watch_queue, daemon=True)
    watcher.start()
    stack.set_memory_limit("cpu", TIGHT)
    try:
        t0 = time.monotonic()
        proc = run(conf, tmp_path, "oom", verbose=False)
        seconds = time.monotonic() - t0
    finally:
        stack.set_memory_limit("cpu", "2Gi")
        done.set()
        watcher.join(10)
    err = proc.stderr
    assert proc.returncode != 0, (proc.stdout + err)[-4000:]
    assert seconds < 400, f"the OOM was reported only after {seconds:.0f} s"
    assert "OOMKilled" in err and "pool cpu" in err, err[-3000:]
    assert "petarecon-worker-cpu-" in err  # names the pod
    assert "Traceback" not in err
    # the task was leased, its worker killed, the lease expired, and it was leased again
    leases = "".join(states).replace("-", "")
    assert "fvf" in leases, f"queue states seen: {states}"

    # the pods really were OOMKilled (kubelet's view), and scaling down removed them
    stack.wait_no_workers()
    dep = stack.apps().read_namespaced_deployment("petarecon-worker-cpu", NAMESPACE)
    assert dep.spec.replicas == 0
