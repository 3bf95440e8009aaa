"""A fault-injecting HTTP proxy for storage services (S3, GCS) on loopback.

``FaultProxy`` listens on ``127.0.0.1:<port>`` and forwards every request to ``upstream``
(e.g. a moto_server). A ``rate`` of the requests of each method (reads and writes alike),
evenly spread from a seeded phase, is answered instead with ``503 Slow Down`` in S3's XML
error format, without reaching the upstream: a transient error that a correct client
retries. ``counts`` records what happened per method.

Point CloudVolume at the proxy with ``AWS_ENDPOINT_URL_S3=proxy.url``; retries the storage
layer makes show as warnings (see :func:`pipeline.storage.log_storage_retries`).
"""

from __future__ import annotations

import http.client
import random
import threading
import urllib.parse
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer",
        "upgrade", "proxy-authorization", "proxy-authenticate"}
SLOW_DOWN = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
             b"<Message>Please reduce your request rate. (injected fault)</Message></Error>")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    proxy: FaultProxy


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _forward(self) -> None:
        proxy = self.server.proxy
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        if proxy.should_fail(self.command):
            self.send_response(503)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(SLOW_DOWN)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(SLOW_DOWN)
            return
        up = urllib.parse.urlsplit(proxy.upstream)
        conn = http.client.HTTPConnection(up.hostname, up.port, timeout=60)
        try:
            headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP}
            conn.request(self.command, self.path, body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
            self.send_response(resp.status, resp.reason)
            for key, value in resp.getheaders():
                if key.lower() not in _HOP and key.lower() != "content-length":
                    self.send_header(key, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)
        finally:
            conn.close()

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward


class FaultProxy:
    """Forward HTTP to ``upstream``, failing a seeded ``rate`` of requests with 503.

    The socket is bound in the constructor (``port=0``: a free port). ``start()`` serves from a
    daemon thread, ``stop()`` closes; usable as a context manager. ``counts`` maps
    ``"<METHOD>"`` and ``"<METHOD> 503"`` to how many requests were forwarded or failed.
    """

    def __init__(self, upstream: str, rate: float = 0.05, seed: int = 0, port: int = 0) -> None:
        if not 0 <= rate < 1:
            raise ValueError(f"rate must be in [0, 1), got {rate}")
        self.upstream = upstream.rstrip("/")
        self.rate = rate
        self.counts: Counter[str] = Counter()
        self._rng = random.Random(seed)
        self._phase: dict[str, float] = {}
        self._seen: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._httpd = _Server(("127.0.0.1", port), _Handler)
        self._httpd.proxy = self
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>`` of the proxy."""
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def should_fail(self, method: str) -> bool:
        """Decide (and count) whether this request gets an injected 503.

        Per method, requests are failed evenly spread at ``rate`` from a seeded random phase
        (request n fails when ``floor((n + phase) * rate)`` steps up), so every method that
        sees 1/rate requests gets faults, whatever order concurrent requests arrive in.
        """
        with self._lock:
            if method not in self._phase:
                self._phase[method] = self._rng.random() / self.rate if self.rate else 0.0
            n = self._seen[method]
            self._seen[method] += 1
            x = (n + self._phase[method]) * self.rate
            fail = self.rate > 0 and int(x + self.rate) > int(x)
            self.counts[f"{method} 503" if fail else method] += 1
        return fail

    def start(self) -> FaultProxy:
        if self._thread is None:
            self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True,
                                            name="fault-proxy")
            self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join(timeout=10)
            self._thread = None
        self._httpd.server_close()

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
