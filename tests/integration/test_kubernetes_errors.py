"""Kubernetes misconfiguration is refused in the sanity check, before any scale-up."""

from __future__ import annotations

import socket

import pytest
import yaml

from pipeline import waves
from pipeline.cluster import cluster_for
from pipeline.cluster_k8s import KubernetesCluster
from pipeline.config import ConfigError, load_config


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again when the socket is


def kubeconfig(tmp_path, server: str) -> str:
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "t",
        "clusters": [{"name": "t", "cluster": {"server": server,
                                               "insecure-skip-tls-verify": True}}],
        "users": [{"name": "t", "user": {"token": "x"}}],
        "contexts": [{"name": "t", "context": {"cluster": "t", "user": "t"}}]}))
    return str(path)


def config(tmp_path, kube: str):
    return load_config({"name": "k", "output": str(tmp_path / "out"), "input": "file:///x",
                        "cluster": {"backend": "kubernetes", "kubeconfig": kube,
                                    "max_workers": {"cpu": 3}}})


def test_unreachable_api_server(tmp_path):
    cfg = config(tmp_path, kubeconfig(tmp_path, f"https://127.0.0.1:{closed_port()}"))
    with pytest.raises(ConfigError, match="cluster.kubeconfig: Kubernetes API server "
                                          "unreachable"):
        waves.start_run(cfg)
    assert not (tmp_path / "out").exists()


def test_wrong_kubeconfig(tmp_path):
    cfg = config(tmp_path, str(tmp_path / "missing-kubeconfig"))
    with pytest.raises(ConfigError, match="cluster.kubeconfig: cannot load a Kubernetes"):
        cluster_for(cfg)


def test_pool_cap_and_deployment_name(tmp_path):
    """Scaling patches the pool's Deployment, capped by max_workers (recorded client)."""
    class Recorder:
        calls: list = []

        def patch_namespaced_deployment_scale(self, name, ns, body):
            self.calls.append((name, ns, body))

    cluster = KubernetesCluster("petarecon", "gpu", max_workers=3, api=Recorder())
    assert cluster.scale(10) == 3
    assert Recorder.calls[-1] == ("petarecon-worker-gpu", "petarecon",
                                  {"spec": {"replicas": 3}})
