"""Workers run as a non-root user, and credentials stay out of images and pod logs."""

from __future__ import annotations

import subprocess
import time
import uuid

from tests.e2e.kubernetes.conftest import NAMESPACE, CloudRun, Stack


def running_worker(stack: Stack, timeout: float = 180) -> str:
    """Scale the cpu pool to 1; return the running pod's name once its container runs."""
    stack.apps().patch_namespaced_deployment_scale("petarecon-worker-cpu", NAMESPACE,
                                                   {"spec": {"replicas": 1}})
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for pod in stack.worker_pods("cpu"):
            statuses = pod.status.container_statuses or []
            if statuses and statuses[0].state.running:
                return pod.metadata.name
        time.sleep(1)
    raise AssertionError("no worker pod running after scale-up")


def contains(stack: Stack, needle: bytes, *images: str) -> bool:
    """Whether ``needle`` occurs anywhere in `docker save` of ``images`` (layers + configs)."""
    proc = subprocess.Popen(["docker", "save", *images], stdout=subprocess.PIPE, env=stack.env)
    assert proc.stdout is not None
    tail = b""
    found = False
    while chunk := proc.stdout.read(1 << 22):
        if needle in tail + chunk:
            found = True
        tail = chunk[-len(needle):]
    assert proc.wait() == 0
    return found


def test_workers_run_non_root_and_secrets_stay_out_of_images_and_logs(stack: Stack,
                                                                      cloud: CloudRun):
    canary = f"canary-{uuid.uuid4().hex}"
    stack.set_secret({**cloud.secret, "AWS_SECRET_ACCESS_KEY": canary,
                      "PETARECON_CANARY": canary})
    try:
        pod = running_worker(stack)
        ids = stack.docker("ps", "-q", "--filter", f"label=io.kubernetes.pod.name={pod}",
                           "--filter", "label=io.kubernetes.container.name=worker",
                           capture_output=True, text=True, check=True).stdout.split()
        assert len(ids) == 1
        uid = stack.docker("exec", ids[0], "id", "-u", capture_output=True, text=True,
                           check=True).stdout.strip()
        assert uid == "10001"
        pid = stack.docker("inspect", "-f", "{{.State.Pid}}", ids[0], capture_output=True,
                           text=True, check=True).stdout.strip()
        with open(f"/proc/{pid}/status") as f:  # the worker process itself, seen by the host
            uids = next(line for line in f if line.startswith("Uid:")).split()[1:]
        assert set(uids) == {"10001"}
        # the Secret reaches the worker's environment, and nothing prints it
        env = stack.docker("exec", ids[0], "sh", "-c", "echo $PETARECON_CANARY",
                           capture_output=True, text=True, check=True).stdout.strip()
        assert env == canary
        time.sleep(3)
        logs = stack.core().read_namespaced_pod_log(pod, NAMESPACE)
        assert "worker" in logs and canary not in logs
    finally:
        stack.apps().patch_namespaced_deployment_scale("petarecon-worker-cpu", NAMESPACE,
                                                       {"spec": {"replicas": 0}})
    stack.wait_no_workers()
    # the build ran with a secret planted in its environment and HOME (see conftest)
    planted = stack.env["PETARECON_BUILD_CANARY"].encode()
    assert not contains(stack, planted, "petarecon-worker:latest", "petarecon-worker-gpu:latest",
                        "petarecon-airflow:latest")
    assert not contains(stack, canary.encode(), "petarecon-worker:latest")
    assert contains(stack, b"petarecon", "petarecon-worker:latest")  # the search itself works
