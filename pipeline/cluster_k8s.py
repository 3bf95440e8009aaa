"""KubernetesCluster: a worker pool is a Deployment, scaled through the official client.

Each pool (cpu, gpu, highmem) is the Deployment ``{prefix}-{pool}`` in the run's namespace
(see k8s/base). Scaling patches its ``scale`` subresource, which is all the pipeline's
ServiceAccount may do; the size is the Deployment's ready replicas. Node pools of a cloud
provider are resized behind :class:`NodePools`, the one call that cannot run here.
"""

from __future__ import annotations

import logging
import math
from typing import Protocol

from pipeline.cluster import Cluster
from pipeline.config import ConfigError, RunConfig

log = logging.getLogger("petarecon.k8s")


class NodePools(Protocol):
    """Resize a cloud provider's node pool (GKE, EKS)."""

    def resize(self, pool: str, nodes: int) -> None: ...


class GKENodePools:
    """GKE node pools via google-cloud-container (``set_node_pool_size``)."""

    def __init__(self, project: str, location: str, cluster: str) -> None:
        self.parent = f"projects/{project}/locations/{location}/clusters/{cluster}"

    def resize(self, pool: str, nodes: int) -> None:
        from google.cloud import container_v1  # optional dependency, present on GKE images

        client = container_v1.ClusterManagerClient()
        client.set_node_pool_size(request={"name": f"{self.parent}/nodePools/{pool}",
                                           "node_count": nodes})


class EKSNodePools:
    """EKS managed node groups via boto3 (``update_nodegroup_config``)."""

    def __init__(self, cluster: str, region: str | None = None, **client_kwargs) -> None:
        import boto3

        self.cluster = cluster
        self.client = boto3.client("eks", region_name=region, **client_kwargs)

    def resize(self, pool: str, nodes: int) -> None:
        self.client.update_nodegroup_config(
            clusterName=self.cluster, nodegroupName=pool,
            scalingConfig={"desiredSize": nodes, "minSize": 0, "maxSize": max(nodes, 1)})


class KubernetesCluster(Cluster):
    """The pool's Deployment, capped at ``max_workers``; optionally its node pool too."""

    def __init__(self, namespace: str, pool: str = "cpu", *, prefix: str = "petarecon-worker",
                 max_workers: int | None = None, kubeconfig: str | None = None,
                 node_pools: NodePools | None = None, workers_per_node: int = 1,
                 api=None) -> None:
        self.namespace = namespace
        self.pool = pool
        self.deployment = f"{prefix}-{pool}"
        self.max_workers = max_workers
        self.node_pools = node_pools
        self.workers_per_node = workers_per_node
        self.api = api or _apps_api(kubeconfig)

    def scale(self, n: int) -> int:
        target = max(0, n if self.max_workers is None else min(n, self.max_workers))
        if self.node_pools is not None and target > 0:
            self.node_pools.resize(self.pool, math.ceil(target / self.workers_per_node))
        self.api.patch_namespaced_deployment_scale(self.deployment, self.namespace,
                                                   {"spec": {"replicas": target}})
        if self.node_pools is not None and target == 0:
            self.node_pools.resize(self.pool, 0)
        log.info("deployment %s/%s scaled to %d", self.namespace, self.deployment, target)
        return target

    def size(self) -> int:
        status = self.api.read_namespaced_deployment_status(self.deployment, self.namespace)
        return int(status.status.ready_replicas or 0)


def _apps_api(kubeconfig: str | None):
    from kubernetes import client, config

    try:
        if kubeconfig:
            config.load_kube_config(config_file=kubeconfig)
        else:
            try:
                config.load_incluster_config()
            except config.ConfigException:
                config.load_kube_config()
    except (config.ConfigException, FileNotFoundError, OSError) as e:
        raise ConfigError([("cluster.kubeconfig", f"cannot load a Kubernetes config: {e}")]) \
            from None
    return client.AppsV1Api()


def check(config: RunConfig, pools: tuple[str, ...] = ("cpu",), secret: str | None = None,
          api=None, core=None) -> None:
    """Before any scale-up: the API server answers, each pool's Deployment exists, and the
    queue/storage Secret exists. Raise ConfigError naming the field otherwise."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    c = config.cluster
    apps = api or _apps_api(c.kubeconfig)
    core = core or client.CoreV1Api(apps.api_client)
    problems: list[tuple[str, str]] = []
    try:
        core.get_api_resources(_request_timeout=10)
    except (HTTPError, OSError, ApiException) as e:
        raise ConfigError([("cluster.kubeconfig", f"Kubernetes API server unreachable: "
                                                  f"{type(e).__name__}: {e}")]) from None
    for pool in pools:
        name = f"{c.deployment_prefix}-{pool}"
        try:
            apps.read_namespaced_deployment(name, c.namespace, _request_timeout=10)
        except ApiException as e:
            problems.append(("cluster.deployment_prefix",
                             f"deployment {c.namespace}/{name} not found ({e.status})"))
    if secret:
        try:
            core.read_namespaced_secret(secret, c.namespace, _request_timeout=10)
        except ApiException as e:
            problems.append(("cluster.secret", f"secret {c.namespace}/{secret} not found "
                                               f"({e.status})"))
    if problems:
        raise ConfigError(problems)
