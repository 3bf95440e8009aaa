"""``pubsub://`` task queues on Google Cloud Pub/Sub, through the Pub/Sub client directly.

A queue URL is ``pubsub://projects/P/topics/T/subscriptions/S``: tasks are published to topic
``T`` and leased from subscription ``S`` (one subscription shared by all workers). Messages carry
the same JSON body task-queue's own pubsub backend publishes, so either can fill the queue.

task-queue's backend cannot serve the pipeline as it is (its ``enqueued`` raises, its lease
ignores the lease length), so :class:`PubSubQueue` implements the part of the TaskQueue
interface that the pipeline uses: ``insert``, ``lease(seconds)``, ``renew``, ``delete`` and
``purge``. A lease is the message's ack deadline; ``delete`` acknowledges it. Pub/Sub cannot
count the messages of a subscription, so wave progress on these queues comes from completion
records (see :class:`pipeline.queue.Completions`).

Credentials: with ``PUBSUB_EMULATOR_HOST`` set, the client talks to that emulator without any.
Otherwise a service-account key ``google-secret.json`` in the CloudVolume secrets folder
(``$CLOUD_VOLUME_DIR/secrets``, default ``~/.cloudvolume/secrets``) is used if present, else
Google's application default credentials (``GOOGLE_APPLICATION_CREDENTIALS``, workload
identity, the metadata server).
"""

from __future__ import annotations

import contextlib
import os
import re
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import orjson
from taskqueue import QueueEmptyError
from taskqueue.lib import jsonify
from taskqueue.queueables import totask

PUBSUB_URL = re.compile(r"^pubsub://projects/(?P<project>[a-z][-a-z0-9]{4,28}[a-z0-9])"
                        r"/topics/(?P<topic>[A-Za-z][-\w.~+%]{2,254})"
                        r"/subscriptions/(?P<subscription>[A-Za-z][-\w.~+%]{2,254})$")
URL_FORM = "pubsub://projects/PROJECT/topics/TOPIC/subscriptions/SUBSCRIPTION"
MAX_ACK_DEADLINE = 600  # Pub/Sub's limit on one ack deadline, seconds
CONNECT_TIMEOUT = 10.0  # seconds to wait for the service before calling it unreachable


class QueueUnreachable(RuntimeError):
    """A queue's service cannot be reached or refuses us; the message is one line."""


def parse_url(url: str) -> tuple[str, str, str]:
    """(project, topic, subscription) of a ``pubsub://`` URL; ValueError (one line) if the URL
    does not have the form :data:`URL_FORM` with valid Pub/Sub names."""
    m = PUBSUB_URL.match(url)
    if m is None:
        raise ValueError(f"bad Pub/Sub queue {url!r}: expected {URL_FORM} (project ids are "
                         "6-30 lowercase letters, digits or dashes; topic and subscription "
                         "names 3-255 characters starting with a letter)")
    return m["project"], m["topic"], m["subscription"]


def _credentials() -> Any:
    """Service-account credentials from CloudVolume's secrets folder, or None (emulator or
    application default credentials)."""
    if os.environ.get("PUBSUB_EMULATOR_HOST"):
        return None
    cv_dir = Path(os.environ.get("CLOUD_VOLUME_DIR", Path.home() / ".cloudvolume"))
    for key in (cv_dir / "secrets" / "google-secret.json",
                Path.home() / ".cloudvolume" / "secrets" / "google-secret.json"):
        if key.exists():
            from google.oauth2 import service_account

            return service_account.Credentials.from_service_account_file(str(key))
    return None


def _where() -> str:
    host = os.environ.get("PUBSUB_EMULATOR_HOST")
    return f"the Pub/Sub emulator at {host}" if host else "Google Cloud Pub/Sub"


def encode_task(task: Any) -> bytes:
    """The message body for ``task`` (a partial of a @queueable function, a FunctionTask or a
    RegisteredTask): the JSON task-queue publishes."""
    return jsonify({"payload": totask(task).payload(), "queueName": "pubsub"}).encode()


def decode_task(body: bytes, ack_id: str | None = None) -> Any:
    """The task object a message body holds, with ``ack_id`` as its id."""
    data = orjson.loads(body)
    data["id"] = ack_id if ack_id is not None else -1
    return totask(data)


class PubSubQueue:
    """One ``pubsub://`` queue. Constructing it checks that the service answers and creates
    the topic and the subscription if they do not exist (raising :class:`QueueUnreachable`
    within about :data:`CONNECT_TIMEOUT` seconds otherwise).

    ``ack_deadline`` is the subscription's default lease, which only covers the moment between
    a pull and the :meth:`lease` call setting the lease the worker asked for.
    """

    def __init__(self, url: str, ack_deadline: int = 60) -> None:
        self.url = url
        self.project, self.topic_id, self.subscription_id = parse_url(url)
        try:
            from google.cloud import pubsub_v1
        except ImportError:  # pragma: no cover - a dependency of the project
            raise QueueUnreachable("pubsub:// queues need the google-cloud-pubsub package "
                                   "(pip install google-cloud-pubsub)") from None
        import google.auth.exceptions

        try:
            creds = _credentials()
            self.publisher = pubsub_v1.PublisherClient(credentials=creds)
            self.subscriber = pubsub_v1.SubscriberClient(credentials=creds)
        except google.auth.exceptions.DefaultCredentialsError:
            raise QueueUnreachable(
                f"{url}: no Google credentials: put a service-account key in "
                "~/.cloudvolume/secrets/google-secret.json, set GOOGLE_APPLICATION_CREDENTIALS, "
                "or set PUBSUB_EMULATOR_HOST for a local emulator") from None
        self.topic = f"projects/{self.project}/topics/{self.topic_id}"
        self.subscription = f"projects/{self.project}/subscriptions/{self.subscription_id}"
        self._ensure(ack_deadline)

    def _call(self, fn: Any, what: str, **kwargs: Any) -> Any:
        """Call a client method with a short timeout, turning service errors into one-line
        :class:`QueueUnreachable` errors. NotFound and AlreadyExists pass through."""
        from google.api_core import exceptions as gexc
        from google.api_core.retry import Retry, if_exception_type

        # the client's default retry goes on for minutes against a dead endpoint
        retry = Retry(initial=0.2, maximum=2.0, multiplier=2.0, timeout=CONNECT_TIMEOUT,
                      predicate=if_exception_type(gexc.ServiceUnavailable, gexc.InternalServerError,
                                                  gexc.Aborted))
        try:
            return fn(**kwargs, retry=retry, timeout=CONNECT_TIMEOUT)
        except (gexc.NotFound, gexc.AlreadyExists):
            raise
        except (gexc.ServiceUnavailable, gexc.DeadlineExceeded, gexc.RetryError):
            raise QueueUnreachable(f"{self.url}: cannot reach {_where()} while trying to "
                                   f"{what} (is it running, and is the address right?)") \
                from None
        except (gexc.PermissionDenied, gexc.Unauthenticated, gexc.Forbidden) as e:
            raise QueueUnreachable(f"{self.url}: {_where()} refused to {what}: "
                                   f"{_first_line(e)}") from None
        except gexc.GoogleAPICallError as e:
            raise QueueUnreachable(f"{self.url}: {what} failed: {_first_line(e)}") from None

    def _ensure(self, ack_deadline: int) -> None:
        """Create the topic and the subscription unless they exist."""
        from google.api_core import exceptions as gexc

        try:
            self._call(self.publisher.get_topic, "read the topic", topic=self.topic)
        except gexc.NotFound:
            with contextlib.suppress(gexc.AlreadyExists):
                self._call(self.publisher.create_topic, "create the topic", name=self.topic)
        try:
            sub = self._call(self.subscriber.get_subscription, "read the subscription",
                             subscription=self.subscription)
        except gexc.NotFound:
            with contextlib.suppress(gexc.AlreadyExists):
                self._call(self.subscriber.create_subscription, "create the subscription",
                           name=self.subscription, topic=self.topic,
                           ack_deadline_seconds=ack_deadline)
        else:
            if sub.topic != self.topic:
                raise QueueUnreachable(f"{self.url}: subscription {self.subscription} exists "
                                       f"but is attached to {sub.topic}, not {self.topic}")

    # --- the TaskQueue subset ------------------------------------------------------------
    @property
    def enqueued(self) -> int:
        """Not available: Pub/Sub does not count a subscription's messages."""
        raise NotImplementedError(f"{self.url}: Pub/Sub cannot count queued tasks; wave "
                                  "progress comes from completion records")

    def insert_bodies(self, bodies: Iterable[bytes]) -> int:
        """Publish pre-encoded task bodies (see :func:`encode_task`); return how many."""
        futures = [self.publisher.publish(self.topic, body) for body in bodies]
        for f in futures:
            try:
                f.result(timeout=60)
            except Exception as e:  # a publish that failed after the client's own retries
                raise QueueUnreachable(f"{self.url}: publishing failed: "
                                       f"{_first_line(e)}") from None
        return len(futures)

    def insert(self, tasks: Iterable[Any], total: int | None = None) -> int:
        """Publish ``tasks``; return how many were published."""
        return self.insert_bodies(encode_task(t) for t in tasks)

    def lease(self, seconds: int = 600, num_tasks: int = 1, wait_sec: float | None = None) -> Any:
        """Pull one task and hold it for ``seconds`` (at most 600, Pub/Sub's limit): no other
        worker gets it before then unless it is released. Raise QueueEmptyError if none is
        available now."""
        if num_tasks != 1:
            raise ValueError("PubSubQueue leases one task at a time")
        with warnings.catch_warnings():  # return_immediately is deprecated but what we mean
            warnings.simplefilter("ignore", DeprecationWarning)
            resp = self._call(self.subscriber.pull, "pull a task",
                              subscription=self.subscription, max_messages=1,
                              return_immediately=True)
        if not resp.received_messages:
            raise QueueEmptyError()
        msg = resp.received_messages[0]
        self.renew(msg.ack_id, seconds)
        return decode_task(msg.message.data, msg.ack_id)

    def renew(self, task: Any, seconds: int) -> None:
        """Set the lease of a leased task (or ack id) to end ``seconds`` from now; 0 releases
        it at once."""
        ack_id = _ack_id(task)
        seconds = max(0, min(int(seconds), MAX_ACK_DEADLINE))
        self._call(self.subscriber.modify_ack_deadline, "extend a lease",
                   subscription=self.subscription, ack_ids=[ack_id],
                   ack_deadline_seconds=seconds)

    def delete(self, task: Any, total: int | None = None, tally: bool = False) -> None:
        """Remove a leased task (or ack id) from the queue for good: acknowledge it."""
        self._call(self.subscriber.acknowledge, "acknowledge a task",
                   subscription=self.subscription, ack_ids=[_ack_id(task)])

    def purge(self, native: bool = False) -> None:
        """Drop every task that is not leased right now."""
        while True:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                resp = self._call(self.subscriber.pull, "pull tasks to purge",
                                  subscription=self.subscription, max_messages=1000,
                                  return_immediately=True)
            if not resp.received_messages:
                return
            self._call(self.subscriber.acknowledge, "acknowledge purged tasks",
                       subscription=self.subscription,
                       ack_ids=[m.ack_id for m in resp.received_messages])

    def delete_all(self) -> None:
        """Delete the subscription and the topic (tests and teardown)."""
        from google.api_core import exceptions as gexc

        for fn, kw in ((self.subscriber.delete_subscription, {"subscription": self.subscription}),
                       (self.publisher.delete_topic, {"topic": self.topic})):
            with contextlib.suppress(gexc.NotFound):
                self._call(fn, "delete the queue", **kw)


def _ack_id(task: Any) -> str:
    ident = task if isinstance(task, str) else getattr(task, "id", None)
    if not isinstance(ident, str) or not ident:
        raise ValueError(f"not a leased Pub/Sub task (no ack id): {task!r}")
    return ident


def _first_line(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0]
