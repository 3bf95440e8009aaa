"""The Kubernetes manifests render (kustomize) and validate strictly; RBAC stays minimal."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

K8S = Path(__file__).resolve().parents[2] / "k8s"
VALIDATE = str(Path(sys.executable).with_name("kubernetes-validate"))


def render(overlay: str | Path) -> list[dict]:
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl (for kustomize) is part of this machine image"
    path = overlay if isinstance(overlay, Path) else K8S / "overlays" / overlay
    out = subprocess.run([kubectl, "kustomize", str(path)],
                         capture_output=True, text=True, check=True).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def validate(tmp_path: Path, docs: list[dict], version: str) -> None:
    path = tmp_path / "manifests.yaml"
    path.write_text(yaml.safe_dump_all(docs))
    proc = subprocess.run([VALIDATE, "--strict", "--quiet", "-k", version, str(path)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("overlay", ["local", "gke", "eks"])
@pytest.mark.parametrize("version", ["1.25.0", "1.37.0"])  # the oldest and newest schemas
def test_overlays_validate_strictly(tmp_path, overlay, version):
    docs = render(overlay)
    validate(tmp_path, docs, version)
    kinds = {(d["kind"], d["metadata"]["name"]) for d in docs}
    for pool in ("cpu", "gpu", "highmem"):
        assert ("Deployment", f"petarecon-worker-{pool}") in kinds


def test_workers_are_unprivileged_and_drain():
    for d in render("local"):
        if d["kind"] != "Deployment":
            continue
        spec = d["spec"]["template"]["spec"]
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["automountServiceAccountToken"] is False
        assert spec["terminationGracePeriodSeconds"] > 600  # the worker's default lease
        assert d["spec"]["replicas"] == 0
        assert spec["hostNetwork"] is True
        env = str(spec["containers"][0])
        assert "secretRef" in env and "SECRET_ACCESS_KEY" not in env


def test_scaler_role_can_only_scale_own_deployments():
    role = next(d for d in render("gke") if d["kind"] == "Role")
    verbs = {(r["resources"][0], v) for r in role["rules"] for v in r["verbs"]}
    assert verbs == {("deployments", "get"), ("deployments/scale", "get"),
                     ("deployments/scale", "patch")}
    for rule in role["rules"]:
        assert set(rule["resourceNames"]) == {f"petarecon-worker-{p}"
                                              for p in ("cpu", "gpu", "highmem")}


def test_gpu_pool_requests_a_gpu_and_tolerates_gpu_nodes():
    gpu = next(d for d in render("gke") if d["metadata"]["name"] == "petarecon-worker-gpu")
    spec = gpu["spec"]["template"]["spec"]
    assert spec["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert spec["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert spec["nodeSelector"] == {"cloud.google.com/gke-nodepool": "gpu"}


@pytest.mark.parametrize(("overlay", "component"), [("gke", "autoscale-pubsub"),
                                                    ("eks", "autoscale-sqs")])
def test_queue_depth_autoscaling_component_validates(tmp_path, overlay, component):
    """The optional autoscaling components add one HPA on the cpu pool's Deployment, driven
    by the queue's backlog per worker, and the result still validates strictly."""
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        "resources": [os.path.relpath(K8S / "overlays" / overlay, tmp_path)],
        "components": [os.path.relpath(K8S / "components" / component, tmp_path)]}))
    docs = render(tmp_path)
    validate(tmp_path, docs, "1.37.0")
    (hpa,) = [d for d in docs if d["kind"] == "HorizontalPodAutoscaler"]
    assert hpa["spec"]["scaleTargetRef"]["name"] == "petarecon-worker-cpu"
    assert ("Deployment", "petarecon-worker-cpu") in {(d["kind"], d["metadata"]["name"])
                                                      for d in docs}
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "External" and metric["external"]["target"]["type"] == "AverageValue"
