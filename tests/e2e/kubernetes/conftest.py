"""The real-cluster tier: Docker engine, images, a Kubernetes 1.20 node and a loopback S3+SQS.

The session fixture :func:`stack` does all set-up with the project's own scripts, cached
outside the repo under ``$PETARECON_CACHE`` (default ``~/.cache/petarecon``):

1. ``tests/infra/install.sh`` (apt packages, only those missing);
2. ``k8s/local/build.sh`` (Kubernetes binaries, built once per machine);
3. ``docker/engine.sh start``, ``docker/base-image.sh``, ``docker/build.sh`` (layer cache);
4. ``k8s/local/up.sh`` (etcd, control plane, kubelet; waits for the node);
5. ``moto_server`` (S3 + SQS) on loopback;
6. the ``k8s/overlays/local`` manifests.

Everything is torn down at the end, also when set-up or a test fails. Set
``PETARECON_KEEP_CLUSTER=1`` to leave the cluster and engine running for debugging.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
import yaml

REPO = Path(__file__).resolve().parents[3]
REAL_HOME = os.environ.get("HOME", "/root")  # before the per-test private HOME
CACHE = Path(os.environ.get("PETARECON_CACHE", f"{REAL_HOME}/.cache/petarecon"))
NAMESPACE = "petarecon"
SECRET = "petarecon-credentials"
BASE_IMAGE = "petarecon-base:bookworm"
KEYS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
WORKERS = "app=petarecon-worker"
HERE = Path(__file__).resolve().parent
SETUP_TIMEOUT = 2400  # s: a first run builds the images (the Kubernetes build is `make infra`)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Give this tier's tests room for the session set-up, which runs in the first one."""
    for item in items:
        if HERE in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.timeout(SETUP_TIMEOUT))


def script(*args: str, env: dict[str, str], timeout: float = 3600) -> str:
    """Run one of the project's set-up scripts; return its stdout, or fail naming its log."""
    proc = subprocess.run([str(REPO / args[0]), *args[1:]], cwd=REPO, env=env, text=True,
                          capture_output=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"{args[0]} failed ({proc.returncode}):\n"
                           f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc.stdout


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        time.sleep(0.2)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout:.0f} s")


@dataclass
class Stack:
    """What the session set up: where the cluster, engine and S3/SQS server are."""

    kubeconfig: str
    docker_host: str
    moto: str
    env: dict[str, str]

    def apps(self) -> Any:
        from kubernetes import client, config

        return client.AppsV1Api(config.new_client_from_config(self.kubeconfig))

    def core(self) -> Any:
        from kubernetes import client, config

        return client.CoreV1Api(config.new_client_from_config(self.kubeconfig))

    def worker_pods(self, pool: str | None = None) -> list[Any]:
        """Worker pods (V1Pod) that exist now, of one pool or all."""
        selector = WORKERS + (f",pool={pool}" if pool else "")
        return self.core().list_namespaced_pod(NAMESPACE, label_selector=selector).items

    def wait_no_workers(self, timeout: float = 120) -> None:
        """Wait until no worker pod exists (scale-down finished); fail after ``timeout``."""
        deadline = time.monotonic() + timeout
        while self.worker_pods():
            assert time.monotonic() < deadline, "worker pods still exist after scale-down: " \
                + ", ".join(p.metadata.name for p in self.worker_pods())
            time.sleep(1)

    def docker(self, *args: str, **kw: Any) -> subprocess.CompletedProcess:
        return subprocess.run(["docker", *args], env=self.env, **kw)

    def set_secret(self, data: dict[str, str], name: str = SECRET) -> None:
        """Create or replace the workers' Secret (new pods read it when they start)."""
        from kubernetes import client
        from kubernetes.client.exceptions import ApiException

        core = self.core()
        body = client.V1Secret(metadata=client.V1ObjectMeta(name=name), type="Opaque",
                               data={k: base64.b64encode(v.encode()).decode()
                                     for k, v in data.items()})
        try:
            core.replace_namespaced_secret(name, NAMESPACE, body)
        except ApiException as e:
            if e.status != 404:
                raise
            core.create_namespaced_secret(NAMESPACE, body)

    def set_memory_limit(self, pool: str, limit: str) -> None:
        """Patch a pool's Deployment to a memory limit of ``limit`` (>= 256Mi, the request of
        k8s/overlays/local; "2Gi" restores that overlay)."""
        self.apps().patch_namespaced_deployment(
            f"petarecon-worker-{pool}", NAMESPACE,
            {"spec": {"template": {"spec": {"containers": [{
                "name": "worker",
                "resources": {"limits": {"cpu": "1", "memory": limit},
                              "requests": {"cpu": "100m", "memory": "256Mi"}}}]}}}})


def apply_local_overlay(kubeconfig: str) -> None:
    """Create the k8s/overlays/local objects (rendered by `kubectl kustomize`)."""
    from kubernetes import client, config, utils
    from kubernetes.client.exceptions import ApiException

    rendered = subprocess.run(["kubectl", "kustomize", str(REPO / "k8s/overlays/local")],
                              capture_output=True, text=True, check=True).stdout
    api = config.new_client_from_config(kubeconfig)
    for doc in yaml.safe_load_all(rendered):
        if not doc:
            continue
        try:
            utils.create_from_dict(api, doc, namespace=doc["metadata"].get("namespace"))
        except utils.FailToCreateError as e:
            if not all(isinstance(x, ApiException) and x.status == 409 for x in e.api_exceptions):
                raise
    core = client.CoreV1Api(api)
    deadline = time.monotonic() + 60  # the ServiceAccount admission needs the SA to exist
    while time.monotonic() < deadline:
        with contextlib.suppress(ApiException):
            core.read_namespaced_service_account("petarecon-worker", NAMESPACE)
            return
        time.sleep(0.5)


@pytest.fixture(scope="session")
def stack() -> Iterator[Stack]:
    """Engine, images, cluster, S3+SQS and manifests for the whole session; torn down after."""
    # The scripts run with a secret planted in their HOME and environment, where a careless
    # build would pick it up; test_security looks for it in the images.
    home = Path(tempfile.mkdtemp(prefix="petarecon-build-home-"))
    canary = f"build-canary-{uuid.uuid4().hex}"
    for d in (home / ".cloudvolume" / "secrets", home / ".aws"):
        d.mkdir(parents=True)
    (home / ".cloudvolume" / "secrets" / "aws-secret.json").write_text(json.dumps(
        {"AWS_ACCESS_KEY_ID": "AKIAPLANTED", "AWS_SECRET_ACCESS_KEY": canary}))
    (home / ".aws" / "credentials").write_text(
        f"[default]\naws_access_key_id = AKIAPLANTED\naws_secret_access_key = {canary}\n")
    env = {**os.environ, "HOME": str(home), "PETARECON_CACHE": str(CACHE),
           "PIP_CACHE_DIR": os.environ.get("PIP_CACHE_DIR", f"{REAL_HOME}/.cache/pip"),
           "PYTHON": sys.executable, "AWS_SECRET_ACCESS_KEY": canary,
           "PETARECON_BUILD_CANARY": canary}
    keep = os.environ.get("PETARECON_KEEP_CLUSTER") == "1"
    moto = None
    timings: dict[str, float] = {}

    def step(name: str, *args: str) -> str:
        t = time.monotonic()
        out = script(*args, env=env)
        timings[name] = round(time.monotonic() - t, 1)
        return out

    try:
        step("install", "tests/infra/install.sh")
        step("k8s build", "k8s/local/build.sh")
        line = step("engine", "docker/engine.sh", "start").strip().splitlines()[-1]
        env["DOCKER_HOST"] = line.split("=", 1)[1]
        step("base image", "docker/base-image.sh", BASE_IMAGE)
        env["PETARECON_GPU_BASE"] = BASE_IMAGE
        step("images", "docker/build.sh", BASE_IMAGE)
        kubeconfig = step("cluster", "k8s/local/up.sh").strip().splitlines()[-1].split("=", 1)[1]
        port = free_port()
        moto = subprocess.Popen([str(Path(sys.executable).with_name("moto_server")), "-H",
                                 "127.0.0.1", "-p", str(port)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(port)
        apply_local_overlay(kubeconfig)
        sys.stderr.write(f"\nkubernetes tier set-up (s): {json.dumps(timings)}\n")
        yield Stack(kubeconfig, env["DOCKER_HOST"], f"http://127.0.0.1:{port}", env)
    finally:
        if moto is not None:
            moto.terminate()
            moto.wait(10)
        if not keep:
            subprocess.run([str(REPO / "k8s/local/down.sh")], env=env, capture_output=True,
                           timeout=300)
            subprocess.run([str(REPO / "docker/engine.sh"), "stop"], env=env,
                           capture_output=True, timeout=120)
        shutil.rmtree(home, ignore_errors=True)
        shutil.rmtree("/var/tmp/petarecon-input", ignore_errors=True)  # test_dags' staged inputs


@dataclass
class CloudRun:
    """One test's S3 bucket and SQS queue, with the Secret pointing the workers at them."""

    bucket: str
    queue: str
    secret: dict[str, str]

    @property
    def scratch(self) -> str:
        return f"s3://{self.bucket}/scratch"

    def cluster(self, kubeconfig: str, **extra: Any) -> dict[str, Any]:
        """The run config's ``cluster`` section for this stack."""
        return {"backend": "kubernetes", "kubeconfig": kubeconfig, "namespace": NAMESPACE,
                "secret": SECRET, "workers": 2, **extra}


@pytest.fixture
def cloud(stack: Stack, monkeypatch: pytest.MonkeyPatch, private_home: Path) -> CloudRun:
    """A fresh bucket and queue; this process and the workers' Secret both point at them."""
    for k, v in {**KEYS, "AWS_ENDPOINT_URL_S3": stack.moto,
                 "AWS_ENDPOINT_URL_SQS": stack.moto}.items():
        monkeypatch.setenv(k, v)
    secret = json.dumps({"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"})
    for d in (private_home / ".cloudvolume" / "secrets", private_home / ".cloudfiles" / "secrets"):
        d.mkdir(parents=True, exist_ok=True)
        (d / "aws-secret.json").write_text(secret)
    keys = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing",
            "region_name": "us-east-1"}
    tag = uuid.uuid4().hex[:10]
    bucket, queue = f"petarecon-{tag}", f"q-{tag}"
    boto3.client("s3", endpoint_url=stack.moto, **keys).create_bucket(Bucket=bucket)
    boto3.client("sqs", endpoint_url=stack.moto, **keys).create_queue(
        QueueName=queue, Attributes={"VisibilityTimeout": "30"})
    data = {**KEYS, "AWS_ENDPOINT_URL_S3": stack.moto, "AWS_ENDPOINT_URL_SQS": stack.moto,
            "PETARECON_QUEUE": f"sqs://{queue}",
            "PETARECON_DEAD_LETTER": f"s3://{bucket}/scratch/dead_letter"}
    stack.set_secret(data)
    return CloudRun(bucket, queue, data)


def decoded_layers(root: str, names: list[str]) -> dict[str, Any]:
    """Every mip of every named layer under ``root``, decoded to arrays."""
    from pipeline import storage
    from pipeline.geometry import Bbox

    out = {}
    for name in names:
        layer = f"{root}/{name}"
        info = storage.open_layer(layer).info
        for mip, scale in enumerate(info["scales"]):
            start = scale.get("voxel_offset", [0, 0, 0])
            box = Bbox(start, [a + n for a, n in zip(start, scale["size"], strict=True)])
            out[f"{name}@{mip}"] = storage.read(storage.open_layer(layer, mip=mip), box)
    return out
