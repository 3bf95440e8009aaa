"""A loopback Google Cloud Storage server that CloudVolume and cloudfiles can use.

``python -m tests.infra.gcs_emulator --port P [--data-dir D]`` serves the GCS JSON API on
127.0.0.1:P until SIGTERM/SIGINT. It is gcp-storage-emulator with two gaps filled that
CloudVolume depends on:

- **Content-Encoding on downloads.** cloudfiles uploads chunks gzip-compressed with
  ``contentEncoding: gzip`` in the object's metadata and downloads them raw; it decompresses only
  when the download answers ``Content-Encoding: gzip`` (as real GCS does). The stock emulator
  drops that header, so every compressed chunk would be read as garbage.
- **Batched GET.** cloudfiles checks many objects at once (``files_exist``) through the JSON
  API's batch endpoint with nested ``GET`` requests; the stock emulator answers those 404.

Clients find the server through :func:`client_env` (``STORAGE_EMULATOR_HOST``); they must not
have a ``google-secret.json`` in their CloudVolume secrets folder, so that google-cloud-storage
uses anonymous credentials.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]


def client_env(port: int) -> dict[str, str]:
    """Environment variables that point google-cloud-storage (hence cloudfiles and
    CloudVolume) at the emulator on 127.0.0.1:``port``."""
    return {"STORAGE_EMULATOR_HOST": f"http://127.0.0.1:{port}"}


def _patch_emulator() -> None:
    """Teach gcp-storage-emulator the two behaviours described in the module docstring."""
    from gcp_storage_emulator import server
    from gcp_storage_emulator.exceptions import NotFound
    from gcp_storage_emulator.handlers import objects

    stock_download = objects.download
    if getattr(stock_download, "_petarecon", False):
        return

    def download(request: Any, response: Any, storage: Any, *args: Any, **kwargs: Any) -> None:
        stock_download(request, response, storage, *args, **kwargs)
        if response.status.value >= 300:
            return
        try:
            obj = storage.get_file_obj(request.params["bucket_name"],
                                       request.params["object_id"])
        except NotFound:
            return
        if obj.get("contentEncoding"):
            response["Content-Encoding"] = obj["contentEncoding"]

    download._petarecon = True  # type: ignore[attr-defined]
    # objects.get (alt=media) calls the module-level name; the route table holds the function.
    objects.download = download
    server.HANDLERS = tuple(
        (regex, {method: download if handler is stock_download else handler
                 for method, handler in handlers.items()})
        for regex, handlers in server.HANDLERS)

    def batch_get(request: Any, item: dict, storage: Any, bucket_name: str,
                  object_id: str | None, meta: Any, response: Any) -> bool:
        """One nested ``GET .../b/B/o/O`` of a batch: the object's resource, or 404."""
        if not object_id:
            return False
        try:
            obj = storage.get_file_obj(bucket_name, object_id)
        except NotFound:
            return False
        objects._batch_write_json(response, "HTTP/1.1 200 OK", obj)
        return True

    objects._BATCH_METHOD_HANDLERS["GET"] = batch_get


def serve(port: int, host: str = "127.0.0.1", data_dir: str | None = None,
          buckets: tuple[str, ...] = ()) -> None:
    """Serve until SIGTERM or SIGINT. Data lives in memory unless ``data_dir`` is given."""
    from gcp_storage_emulator.handlers.buckets import create_bucket
    from gcp_storage_emulator.server import create_server

    _patch_emulator()
    srv = create_server(host, port, in_memory=data_dir is None, data_dir=data_dir)
    for name in buckets:
        create_bucket(name, srv._storage)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    srv.start()
    print(f"gcs emulator on http://{host}:{port}", flush=True)
    try:
        stop.wait()
    finally:
        srv.stop()


def wait_for_port(port: int, timeout: float, proc: subprocess.Popen | None = None) -> None:
    """Block until 127.0.0.1:``port`` accepts connections; raise RuntimeError after
    ``timeout`` seconds or as soon as ``proc`` exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"emulator exited with code {proc.returncode} before serving "
                               f"port {port}")
        with contextlib.suppress(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout:.0f} s")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running(port: int | None = None, buckets: tuple[str, ...] = (),
            log: Path | None = None) -> Iterator[dict[str, str]]:
    """Run the emulator in a child process for the duration of the block.

    Yield the client environment (:func:`client_env`); the child is stopped (SIGTERM, then
    SIGKILL) when the block exits, however it exits.
    """
    port = port or free_port()
    out = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115
    cmd = [sys.executable, "-m", "tests.infra.gcs_emulator", "--port", str(port)]
    for b in buckets:
        cmd += ["--bucket", b]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        wait_for_port(port, 30, proc)
        yield client_env(port)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        if log:
            out.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--data-dir", default=None, help="keep objects here (default: memory)")
    parser.add_argument("--bucket", action="append", default=[], help="create this bucket")
    args = parser.parse_args(argv)
    serve(args.port, args.host, args.data_dir, tuple(args.bucket))


if __name__ == "__main__":
    main()
