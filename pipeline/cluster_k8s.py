"""KubernetesCluster: a worker pool is a Deployment, scaled through the official client.

Each pool (cpu, gpu, highmem) is the Deployment ``{prefix}-{pool}`` in the run's namespace
(see k8s/base). Scaling patches its ``scale`` subresource, which is all the pipeline's
ServiceAccount may do; the size is the Deployment's ready replicas. Node pools of a cloud
provider are resized behind :class:`NodePools`, the one call that cannot run here.

OOM kills are read from the pool's pods (``status.containerStatuses[].state`` and
``lastState``: ``terminated.reason == "OOMKilled"``), which needs ``list`` on pods (the
``petarecon-watch-pods`` Role in k8s/base/rbac.yaml); without it they go unreported.
"""

from __future__ import annotations

import logging
import math
from datetime import datetime
from typing import Any, Protocol

from pipeline.cluster import Cluster, OOMKill
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
        self._core: Any = None
        self._selector: str | None = None
        self._pods_forbidden = False

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

    @property
    def core(self) -> Any:
        """A CoreV1Api on the same connection as the apps client."""
        if self._core is None:
            from kubernetes import client

            self._core = client.CoreV1Api(self.api.api_client)
        return self._core

    def pods(self) -> list[Any]:
        """The pool's pods (V1Pod), found by its Deployment's label selector."""
        if self._selector is None:
            dep = self.api.read_namespaced_deployment(self.deployment, self.namespace,
                                                      _request_timeout=10)
            labels = dep.spec.selector.match_labels or {}
            self._selector = ",".join(f"{k}={v}" for k, v in sorted(labels.items()))
        return self.core.list_namespaced_pod(self.namespace, label_selector=self._selector,
                                             _request_timeout=10).items

    def oom_kills(self, since: datetime) -> list[OOMKill]:
        """Containers of the pool's pods whose current or previous termination is OOMKilled
        and ended at or after ``since`` (timezone-aware). [] when pods may not be listed."""
        from kubernetes.client.exceptions import ApiException

        if self._pods_forbidden:
            return []
        try:
            pods = self.pods()
        except ApiException as e:
            if e.status != 403:
                raise
            self._pods_forbidden = True
            log.warning("may not list pods in %s: OOM kills of pool %s go unreported",
                        self.namespace, self.pool)
            return []
        kills = []
        for pod in pods:
            limits = {c.name: ((c.resources and c.resources.limits) or {}).get("memory")
                      for c in pod.spec.containers}
            for cs in (pod.status and pod.status.container_statuses) or []:
                for state in (cs.state, cs.last_state):
                    ended = state.terminated if state is not None else None
                    if ended is None or ended.reason != "OOMKilled":
                        continue
                    if ended.finished_at is not None and ended.finished_at < since:
                        continue
                    kills.append(OOMKill(pod.metadata.name, cs.name, ended.finished_at,
                                         limits.get(cs.name)))
        return kills


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
    """Before any scale-up: the API server answers and accepts the kubeconfig's user, each
    pool's Deployment exists, and the workers' Secret exists, names the run's queue and
    dead-letter path (when it sets PETARECON_QUEUE / PETARECON_DEAD_LETTER) and holds
    storage credentials that can read the run's s3:// paths (when it holds AWS keys; without
    them workers use the node's identity, which cannot be checked from here).
    Raise ConfigError naming the field and the problem otherwise."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    c = config.cluster
    apps = api or _apps_api(c.kubeconfig)
    core = core or client.CoreV1Api(apps.api_client)
    problems: list[tuple[str, str]] = []
    try:
        core.get_api_resources(_request_timeout=10)
    except ApiException as e:
        if e.status in (401, 403):
            raise ConfigError([("cluster.kubeconfig", f"the Kubernetes API server refused "
                                                      f"the kubeconfig's user ({e.status} "
                                                      f"{e.reason})")]) from None
        raise ConfigError([("cluster.kubeconfig", f"Kubernetes API server error: {e.status} "
                                                  f"{e.reason}")]) from None
    except (HTTPError, OSError) as e:
        raise ConfigError([("cluster.kubeconfig", f"Kubernetes API server unreachable: "
                                                  f"{type(e).__name__}: {e}")]) from None
    for pool in pools:
        name = f"{c.deployment_prefix}-{pool}"
        try:
            apps.read_namespaced_deployment(name, c.namespace, _request_timeout=10)
        except ApiException as e:
            problems.append(("cluster.deployment_prefix", _missing("deployment", c.namespace,
                                                                   name, e)))
    if secret:
        try:
            found = core.read_namespaced_secret(secret, c.namespace, _request_timeout=10)
        except ApiException as e:
            problems.append(("cluster.secret", _missing("secret", c.namespace, secret, e)))
        else:
            problems += _check_secret(config, f"{c.namespace}/{secret}", _decode(found.data))
    if problems:
        raise ConfigError(problems)


def _missing(kind: str, namespace: str, name: str, e: Exception) -> str:
    status = getattr(e, "status", None)
    if status == 403:
        return f"may not read {kind} {namespace}/{name} (403 Forbidden: check RBAC)"
    return f"{kind} {namespace}/{name} not found ({status})"


def _decode(data: dict[str, str] | None) -> dict[str, str]:
    import base64

    return {k: base64.b64decode(v).decode(errors="replace") for k, v in (data or {}).items()}


def _check_secret(config: RunConfig, name: str, data: dict[str, str]) -> list[tuple[str, str]]:
    """What is wrong with the workers' Secret ``name`` (decoded ``data``) for this run."""
    problems = []
    for key, want in (("PETARECON_QUEUE", config.queue_url),
                      ("PETARECON_DEAD_LETTER", config.dead_letter_path)):
        if key in data and data[key] != want:
            problems.append(("cluster.secret", f"secret {name} sets {key}={data[key]} but "
                                               f"this run uses {want}"))
    if "AWS_ACCESS_KEY_ID" in data and "AWS_SECRET_ACCESS_KEY" in data:
        paths = sorted(_s3_paths(config.to_dict()))
        for i, path in enumerate(paths):  # the first refusal is enough
            error = _s3_unreadable(path, data)
            if error:
                more = f" (and {len(paths) - i - 1} more path(s) unchecked)" \
                    if i < len(paths) - 1 else ""
                problems.append(("cluster.secret", f"the workers' credentials in secret {name} "
                                                   f"cannot read {path}: {error}{more}"))
                break
    return problems


def _s3_paths(value: Any) -> set[str]:
    """The s3:// paths a run config names (inputs, output, scratch), bucket and prefix."""
    if isinstance(value, dict):
        return set().union(*(_s3_paths(v) for v in value.values()))
    if isinstance(value, list):
        return set().union(set(), *(_s3_paths(v) for v in value))
    if isinstance(value, str) and value.startswith("s3://"):
        return {value.rstrip("/")}
    return set()


def _s3_unreadable(path: str, env: dict[str, str]) -> str | None:
    """None if ``env``'s AWS credentials may list ``path``; else the refusal, in one line."""
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, _, prefix = path[len("s3://"):].partition("/")
    s3 = boto3.client("s3", aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                      aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
                      aws_session_token=env.get("AWS_SESSION_TOKEN") or None,
                      region_name=env.get("AWS_DEFAULT_REGION", "us-east-1"),
                      endpoint_url=env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL"))
    try:
        s3.list_objects_v2(Bucket=bucket, Prefix=prefix, MaxKeys=1)
    except ClientError as e:
        err = e.response.get("Error", {})
        return f"{err.get('Code', '?')}: {err.get('Message', e)}"
    except BotoCoreError as e:
        return f"{type(e).__name__}: {e}"
    return None
