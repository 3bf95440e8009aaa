"""Bad input against the real cluster: each is one clear error from the sanity check
(``waves.start_run``), and nothing is scaled up."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
import yaml

from pipeline import waves
from pipeline.config import ConfigError, load_config
from tests.e2e.kubernetes.conftest import NAMESPACE, CloudRun, Stack, free_port, wait_port


def config(cloud: CloudRun, kubeconfig: str, **cluster) -> object:
    return load_config({"name": "bad", "output": f"s3://{cloud.bucket}/out",
                        "scratch": cloud.scratch, "queue": f"sqs://{cloud.queue}",
                        "input": f"s3://{cloud.bucket}/image",
                        "cluster": cloud.cluster(kubeconfig, **cluster)})


def refused(stack: Stack, cfg, match: str) -> str:
    """start_run raises one ConfigError matching ``match``; no worker was scaled up."""
    with pytest.raises(ConfigError, match=match) as err:
        waves.start_run(cfg)
    message = str(err.value)
    assert "Traceback" not in message and len(message.splitlines()) <= 3, message
    for pool in ("cpu", "gpu", "highmem"):
        dep = stack.apps().read_namespaced_deployment(f"petarecon-worker-{pool}", NAMESPACE)
        assert dep.spec.replicas == 0
    assert stack.worker_pods() == []
    return message


def edited_kubeconfig(stack: Stack, tmp_path: Path, edit) -> str:
    doc = yaml.safe_load(Path(stack.kubeconfig).read_text())
    edit(doc)
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump(doc))
    return str(path)


def test_good_config_passes(stack: Stack, cloud: CloudRun):
    waves.start_run(config(cloud, stack.kubeconfig))  # the baseline the others break


def test_unreachable_api_server(stack: Stack, cloud: CloudRun, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    def edit(doc):
        doc["clusters"][0]["cluster"]["server"] = f"https://127.0.0.1:{port}"

    refused(stack, config(cloud, edited_kubeconfig(stack, tmp_path, edit)),
            "cluster.kubeconfig: Kubernetes API server unreachable")


def test_kubeconfig_with_a_foreign_client_certificate(stack: Stack, cloud: CloudRun, tmp_path):
    """A kubeconfig for another cluster's user: the real API server rejects it (401)."""
    key, crt = tmp_path / "other.key", tmp_path / "other.crt"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/O=system:masters/CN=intruder", "-keyout", str(key),
                    "-out", str(crt)], check=True, capture_output=True)

    def edit(doc):
        doc["users"][0]["user"] = {"client-certificate": str(crt), "client-key": str(key)}

    refused(stack, config(cloud, edited_kubeconfig(stack, tmp_path, edit)),
            "cluster.kubeconfig: the Kubernetes API server refused the kubeconfig's user "
            r"\(401")


def test_kubeconfig_that_is_not_one(stack: Stack, cloud: CloudRun, tmp_path):
    bad = tmp_path / "kubeconfig"
    bad.write_text("this: is not\n a kubeconfig")
    refused(stack, config(cloud, str(bad)), "cluster.kubeconfig: cannot load a Kubernetes")


def test_missing_secret(stack: Stack, cloud: CloudRun):
    refused(stack, config(cloud, stack.kubeconfig, secret="no-such-secret"),
            r"cluster.secret: secret petarecon/no-such-secret not found \(404\)")


def test_deployment_that_does_not_exist(stack: Stack, cloud: CloudRun):
    refused(stack, config(cloud, stack.kubeconfig, deployment_prefix="petarecon-wrk"),
            r"cluster.deployment_prefix: deployment petarecon/petarecon-wrk-cpu not found "
            r"\(404\)")


def test_secret_naming_another_queue(stack: Stack, cloud: CloudRun):
    stack.set_secret({**cloud.secret, "PETARECON_QUEUE": "sqs://someone-elses-queue"})
    refused(stack, config(cloud, stack.kubeconfig),
            "cluster.secret: secret petarecon/petarecon-credentials sets "
            "PETARECON_QUEUE=sqs://someone-elses-queue but this run uses sqs://")


@pytest.fixture
def s3_with_auth() -> Iterator[tuple[str, dict[str, str]]]:
    """A second S3 server that checks credentials (moto's IAM auth after 3 free actions):
    yields its URL and the keys of a user who may do everything."""
    port = free_port()
    proc = subprocess.Popen([str(Path(sys.executable).with_name("moto_server")), "-H",
                             "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL,
                            env={**__import__("os").environ, "INITIAL_NO_AUTH_ACTION_COUNT": "3"})
    try:
        wait_port(port)
        url = f"http://127.0.0.1:{port}"
        iam = boto3.client("iam", endpoint_url=url, region_name="us-east-1",
                           aws_access_key_id="x", aws_secret_access_key="x")
        iam.create_user(UserName="petarecon")
        key = iam.create_access_key(UserName="petarecon")["AccessKey"]
        iam.put_user_policy(UserName="petarecon", PolicyName="all", PolicyDocument=json.dumps(
            {"Version": "2012-10-17",
             "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}))
        yield url, {"AWS_ACCESS_KEY_ID": key["AccessKeyId"],
                    "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"]}
    finally:
        proc.terminate()
        proc.wait(10)


def test_secret_credentials_that_cannot_read_the_input(stack: Stack, cloud: CloudRun,
                                                       s3_with_auth):
    url, good = s3_with_auth
    s3 = boto3.client("s3", endpoint_url=url, region_name="us-east-1",
                      aws_access_key_id=good["AWS_ACCESS_KEY_ID"],
                      aws_secret_access_key=good["AWS_SECRET_ACCESS_KEY"])
    s3.create_bucket(Bucket=cloud.bucket)
    s3.put_object(Bucket=cloud.bucket, Key="image/info", Body=b"{}")
    secret = {**cloud.secret, "AWS_ENDPOINT_URL_S3": url, "AWS_SESSION_TOKEN": "", **good}
    stack.set_secret(secret)
    t0 = time.monotonic()
    waves.start_run(config(cloud, stack.kubeconfig))  # these keys can read: accepted
    assert time.monotonic() - t0 < 30
    stack.set_secret({**secret, "AWS_SECRET_ACCESS_KEY": "revoked", "AWS_ACCESS_KEY_ID": "OLD"})
    message = refused(stack, config(cloud, stack.kubeconfig),
                      "cluster.secret: the workers' credentials in secret "
                      "petarecon/petarecon-credentials cannot read s3://")
    assert "InvalidAccessKeyId" in message and f"s3://{cloud.bucket}/image" in message
