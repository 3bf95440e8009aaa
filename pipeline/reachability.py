"""Fast checks that a run's cloud storage and queue can be used, with one-line errors.

Cloud clients retry an unreachable endpoint for minutes and report a missing GCS bucket as
missing files. These checks ask each service once, with short timeouts and no retries, so that
a wrong bucket, endpoint or credential shows as one clear line in the sanity check, before any
layer is created or task enqueued.
"""

from __future__ import annotations

import contextlib
import io
from typing import TYPE_CHECKING

from pipeline.queue import QueueUnreachable, check_queue

if TYPE_CHECKING:
    from pipeline.config import RunConfig

TIMEOUT = 10.0  # seconds for one request to a storage service


def check_storage(path: str) -> str | None:
    """Why cloud path ``path`` cannot be used (None when its bucket answers a listing with
    the configured credentials, and for ``file://``/``mem://`` paths). Takes at most about
    :data:`TIMEOUT` seconds."""
    scheme, _, rest = path.partition("://")
    bucket, _, prefix = rest.partition("/")
    if scheme == "gs":
        return _check_gcs(path, bucket, prefix)
    if scheme == "s3":
        return _check_s3(path, bucket, prefix)
    return None


def _check_gcs(path: str, bucket: str, prefix: str) -> str | None:
    import os

    import google.auth.exceptions
    from google.api_core import exceptions as gexc
    from google.cloud import storage

    if not bucket:
        return f"{path}: no bucket name (expected gs://BUCKET/PATH)"
    where = os.environ.get("STORAGE_EMULATOR_HOST") or "Google Cloud Storage"
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # cloudfiles' credential banner
            from cloudfiles.secrets import google_credentials

            project, creds = google_credentials(bucket)
        client = storage.Client(project=project, credentials=creds)
        blobs = client.list_blobs(bucket, prefix=prefix, max_results=1, timeout=TIMEOUT,
                                  retry=None)
        list(blobs)
    except google.auth.exceptions.DefaultCredentialsError:
        return (f"{path}: no Google credentials (put a service-account key in "
                "~/.cloudvolume/secrets/google-secret.json or set "
                "GOOGLE_APPLICATION_CREDENTIALS)")
    except gexc.NotFound:
        return f"{path}: bucket {bucket!r} does not exist on {where}"
    except (gexc.Forbidden, gexc.Unauthorized) as e:
        return f"{path}: the credentials may not list bucket {bucket!r}: {_line(e)}"
    except gexc.GoogleAPICallError as e:
        return f"{path}: {where} refused the listing: {_line(e)}"
    except Exception as e:  # connection refused, DNS, timeouts
        return f"{path}: cannot reach {where} ({type(e).__name__}: {_line(e)})"
    return None


def _check_s3(path: str, bucket: str, prefix: str) -> str | None:
    import boto3
    import botocore.config
    import botocore.exceptions
    from cloudfiles.secrets import aws_credentials

    if not bucket:
        return f"{path}: no bucket name (expected s3://BUCKET/PATH)"
    creds = aws_credentials(bucket)
    keys = {k.lower(): v for k, v in creds.items()
            if k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN") and v}
    cfg = botocore.config.Config(connect_timeout=TIMEOUT, read_timeout=TIMEOUT,
                                 retries={"max_attempts": 1})
    try:
        client = boto3.client("s3", config=cfg, region_name=creds.get("AWS_DEFAULT_REGION")
                              or "us-east-1", **keys)
        client.list_objects_v2(Bucket=bucket, Prefix=prefix, MaxKeys=1)
    except botocore.exceptions.NoCredentialsError:
        return (f"{path}: no AWS credentials (put aws-secret.json in ~/.cloudvolume/secrets "
                "or set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)")
    except botocore.exceptions.ClientError as e:
        code = e.response.get("Error", {}).get("Code", "")
        if code == "NoSuchBucket":
            return f"{path}: bucket {bucket!r} does not exist"
        return f"{path}: S3 refused the listing ({code}): {_line(e)}"
    except Exception as e:  # endpoint unreachable, DNS, timeouts
        return f"{path}: cannot reach S3 ({type(e).__name__}: {_line(e)})"
    return None


def check_endpoints(config: RunConfig) -> list[tuple[str, str]]:
    """(field, one-line message) for each of the run's storage paths and its queue that
    cannot be used now; [] when all can. Meant for a stage's sanity check, before
    anything is written: for ``pubsub://`` it creates the topic and subscription."""
    problems: list[tuple[str, str]] = []
    seen: set[str] = set()
    for field, path in (("output", config.output), ("scratch", config.scratch_path),
                        ("input", config.input)):
        if not path:
            continue
        root = "/".join(path.split("/", 3)[:3])  # scheme://bucket
        if root in seen:
            continue
        seen.add(root)
        if why := check_storage(path):
            problems.append((field, why))
    try:
        check_queue(config.queue_url)
    except QueueUnreachable as e:
        problems.append(("queue", str(e)))
    return problems


def _line(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0][:300]


def checked(config: RunConfig) -> RunConfig:
    """``config``, once its storage and queue answer (see :func:`check_endpoints`); else
    :class:`pipeline.config.ConfigError` with one line per unusable endpoint."""
    from pipeline.config import ConfigError

    if problems := check_endpoints(config):
        raise ConfigError(problems)
    return config
