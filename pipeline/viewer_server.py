"""A local, offline Neuroglancer server over a directory of precomputed layers.

``ViewerServer`` promises, for a data root and a token:

* ``/v/<token>/`` serves the Neuroglancer web client bundled in the ``neuroglancer`` package
  (``index.html`` at ``/v/<token>/``); ``/`` redirects there. No internet is needed.
* ``/events/...`` answers with an event stream kept open (comments only) until the server
  stops, so the client shows no "Disconnected from Python server" banner. The client's other
  python-side endpoints (``/state/``, ``/action/``, ``/volume_response/``) are acknowledged.
* ``/data/<relpath>`` serves files under the data root, with CORS headers on every answer
  (404s included, so a browser sees the 404 and Neuroglancer treats the chunk as empty),
  OPTIONS preflight, HEAD, and single byte ranges on plain files (sharded layers).
* A missing ``<chunk>`` whose CloudVolume-compressed ``<chunk>.gz`` exists is answered with the
  gzip bytes and ``Content-Encoding: gzip`` when the client accepts gzip, else inflated;
  ``.br``/``.zstd``/``.xz``/``.bz2`` siblings are always inflated here.
* Layers whose ``info`` has a scale with encoding ``fpzip`` (which stock Neuroglancer cannot
  decode) get a rewritten ``info`` saying ``raw`` for those scales, and each chunk of those
  scales is decoded with ``fpzip`` and served as Neuroglancer's raw format: little-endian, x
  fastest, then y, z, channel. The floats are bit-identical to what CloudVolume stored.
* Paths never escape the data root (``..`` is refused).
"""

from __future__ import annotations

import gzip
import importlib.resources
import json
import os
import re
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np

#: Sibling suffixes CloudFiles writes for compressed files, with their codec names.
COMPRESSED_SUFFIXES: tuple[tuple[str, str], ...] = (
    (".gz", "gzip"),
    (".br", "br"),
    (".zstd", "zstd"),
    (".xz", "xz"),
    (".bz2", "bzip2"),
)
_STATIC_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\-.]*\.(?:js|map|css|wasm|html)$")
_MIME = {
    ".js": "application/javascript",
    ".css": "text/css",
    ".html": "text/html; charset=utf-8",
    ".map": "application/json",
    ".wasm": "application/wasm",
    ".json": "application/json",
}
_CHUNK_NAME = re.compile(r"^(\d+)-(\d+)_(\d+)-(\d+)_(\d+)-(\d+)$")
_KEEPALIVE_S = 15.0


def client_dir() -> Path:
    """Directory of the Neuroglancer web client bundled in the ``neuroglancer`` package."""
    return Path(str(importlib.resources.files("neuroglancer.static") / "client"))


def _decompress(data: bytes, codec: str) -> bytes:
    """Inflate ``data`` compressed with a CloudFiles codec name."""
    if codec == "gzip":
        return gzip.decompress(data)
    from cloudfiles import compression

    return compression.decompress(data, codec)


def _read_stored(path: Path) -> tuple[bytes, str | None] | None:
    """Bytes of ``path`` or of its compressed sibling, with the codec (None if plain)."""
    if path.is_file():
        return path.read_bytes(), None
    for suffix, codec in COMPRESSED_SUFFIXES:
        sibling = path.with_name(path.name + suffix)
        if sibling.is_file():
            return sibling.read_bytes(), codec
    return None


def _fpzip_scales(info: dict[str, Any]) -> set[str]:
    """Keys of the scales of a precomputed ``info`` whose encoding is fpzip."""
    return {s["key"] for s in info.get("scales", []) if s.get("encoding") == "fpzip"}


def rewrite_fpzip_info(info: dict[str, Any]) -> dict[str, Any]:
    """Copy of ``info`` with every fpzip scale's encoding changed to ``raw``."""
    out = json.loads(json.dumps(info))
    for scale in out.get("scales", []):
        if scale.get("encoding") == "fpzip":
            scale["encoding"] = "raw"
    return out


def fpzip_chunk_to_raw(data: bytes, shape_xyzc: tuple[int, int, int, int], dtype: str) -> bytes:
    """Decode an fpzip chunk (as CloudVolume writes it) to Neuroglancer raw bytes.

    Promise: the result is the little-endian ``dtype`` values in Fortran order of the
    (x, y, z, channel) array, i.e. exactly ``arr.astype('<f4').tobytes(order='F')``.
    """
    import fpzip

    arr = fpzip.decompress(data, order="F")
    if arr.size != int(np.prod(shape_xyzc)):
        raise ValueError(f"fpzip chunk has {arr.size} values, expected shape {shape_xyzc}")
    arr = arr.reshape(shape_xyzc, order="F")
    return arr.astype(np.dtype(dtype).newbyteorder("<"), copy=False).tobytes(order="F")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, addr: tuple[str, int], data_root: Path, token: str, verbose: bool):
        self.data_root = data_root
        self.token = token
        self.verbose = verbose
        self.stopping = threading.Event()
        self.static_dir = client_dir()
        self._info_cache: dict[Path, tuple[int, dict[str, Any]]] = {}
        self._info_lock = threading.Lock()
        super().__init__(addr, _Handler)

    def layer_info(self, layer_dir: Path) -> dict[str, Any] | None:
        """Parsed ``info`` of a layer directory (cached by mtime), or None if absent."""
        path = layer_dir / "info"
        try:
            mtime = path.stat().st_mtime_ns
        except OSError:
            return None
        with self._info_lock:
            hit = self._info_cache.get(path)
            if hit and hit[0] == mtime:
                return hit[1]
        try:
            info = json.loads(path.read_bytes())
        except (OSError, ValueError):
            return None
        with self._info_lock:
            self._info_cache[path] = (mtime, info)
        return info


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    timeout = 60

    def log_message(self, format: str, *args: Any) -> None:
        if self.server.verbose:
            super().log_message(format, *args)

    # -- responses ---------------------------------------------------------------------------

    def _cors(self) -> None:
        self.send_header("Access-Control-Allow-Origin", "*")
        self.send_header(
            "Access-Control-Expose-Headers",
            "Content-Length, Content-Range, Content-Encoding, Accept-Ranges",
        )

    def _send(
        self,
        status: int,
        body: bytes = b"",
        ctype: str = "application/octet-stream",
        headers: dict[str, str] | None = None,
    ) -> None:
        self.send_response(status)
        self._cors()
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD" and body:
            self.wfile.write(body)

    def _not_found(self, what: str = "not found") -> None:
        self._send(404, what.encode(), "text/plain; charset=utf-8")

    # -- methods -----------------------------------------------------------------------------

    def do_OPTIONS(self) -> None:
        self.send_response(204)
        self._cors()
        self.send_header("Access-Control-Allow-Methods", "GET, HEAD, POST, OPTIONS")
        asked = self.headers.get("Access-Control-Request-Headers")
        self.send_header("Access-Control-Allow-Headers", asked or "*")
        self.send_header("Access-Control-Allow-Private-Network", "true")
        self.send_header("Access-Control-Max-Age", "86400")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        path = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path)
        try:
            if path.startswith("/data/"):
                self._data(path[len("/data/") :])
            elif path.startswith("/v/"):
                self._static(path)
            elif path.startswith("/events/"):
                self._events()
            elif path in ("/", ""):
                self._send(302, headers={"Location": f"/v/{self.server.token}/"})
            else:
                self._not_found()
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        path = urllib.parse.urlsplit(self.path).path
        if path.startswith("/state/"):
            try:
                generation = json.loads(body or b"{}").get("g")
            except ValueError:
                generation = None
            self._send(200, json.dumps({"g": generation}).encode(), "application/json")
        elif path.startswith(("/action/", "/volume_response/")):
            self._send(200, b"", "text/plain")
        else:  # /credentials/ included: this server holds none.
            self._not_found()

    # -- endpoints ---------------------------------------------------------------------------

    def _static(self, path: str) -> None:
        parts = path.split("/", 3)  # ['', 'v', token, rest?]
        if len(parts) < 3 or parts[2] != self.server.token:
            self._not_found("unknown viewer token")
            return
        if len(parts) == 3:
            self._send(301, headers={"Location": f"/v/{self.server.token}/"})
            return
        name = parts[3] or "index.html"
        file = self.server.static_dir / name
        if not _STATIC_NAME.match(name) or not file.is_file():
            self._not_found()
            return
        ctype = _MIME.get(os.path.splitext(name)[1], "application/octet-stream")
        self._send(200, file.read_bytes(), ctype)

    def _events(self) -> None:
        """Keep an event stream open, sending only comments, until the server stops."""
        self.send_response(200)
        self._cors()
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        if self.command == "HEAD":
            return
        self.wfile.write(b": petarecon viewer\n\n")
        self.wfile.flush()
        while not self.server.stopping.wait(_KEEPALIVE_S):
            self.wfile.write(b": keepalive\n\n")
            self.wfile.flush()

    def _data(self, rel: str) -> None:
        parts = [p for p in rel.split("/") if p not in ("", ".")]
        if not parts or ".." in parts:
            self._not_found()
            return
        root = self.server.data_root
        target = root.joinpath(*parts)
        fpzip = self._fpzip_target(root, parts)
        if fpzip is not None:
            self._fpzip(target, *fpzip)
            return
        if parts[-1] == "info":
            info = self.server.layer_info(target.parent)
            if info is not None and _fpzip_scales(info):
                body = json.dumps(rewrite_fpzip_info(info)).encode()
                self._send(200, body, "application/json")
                return
        if target.is_file():
            self._plain_file(target)
            return
        stored = _read_stored(target)
        if stored is None:
            self._not_found()
            return
        data, codec = stored
        ctype = "application/json" if parts[-1] == "info" else "application/octet-stream"
        accepts_gzip = "gzip" in (self.headers.get("Accept-Encoding") or "")
        if codec == "gzip" and accepts_gzip:
            headers = {"Content-Encoding": "gzip", "Vary": "Accept-Encoding"}
            self._send(200, data, ctype, headers)
        else:
            self._send(200, _decompress(data, codec or ""), ctype, {"Vary": "Accept-Encoding"})

    def _fpzip_target(
        self, root: Path, parts: list[str]
    ) -> tuple[tuple[int, int, int, int], str] | None:
        """(shape, dtype) when ``parts`` names a chunk of an fpzip scale, else None."""
        match = _CHUNK_NAME.match(parts[-1])
        if match is None:
            return None
        for depth in range(len(parts) - 2, -1, -1):  # nearest ancestor holding an info
            info = self.server.layer_info(root.joinpath(*parts[:depth]))
            if info is None:
                continue
            key = "/".join(parts[depth:-1])
            if key not in _fpzip_scales(info):
                return None
            b = [int(g) for g in match.groups()]
            shape = (b[1] - b[0], b[3] - b[2], b[5] - b[4], int(info.get("num_channels", 1)))
            return shape, str(info.get("data_type", "float32"))
        return None

    def _fpzip(self, target: Path, shape: tuple[int, int, int, int], dtype: str) -> None:
        stored = _read_stored(target)
        if stored is None:
            self._not_found()
            return
        data, codec = stored
        if codec:
            data = _decompress(data, codec)
        try:
            body = fpzip_chunk_to_raw(data, shape, dtype)
        except Exception as exc:  # corrupt chunk: say so rather than drop the connection
            self._send(500, f"fpzip decode failed: {exc}".encode(), "text/plain")
            return
        self._send(200, body)

    def _plain_file(self, target: Path) -> None:
        size = target.stat().st_size
        ctype = "application/json" if target.name == "info" else "application/octet-stream"
        rng = _parse_range(self.headers.get("Range"), size)
        if rng is None:
            self._send(200, target.read_bytes(), ctype, {"Accept-Ranges": "bytes"})
            return
        start, stop = rng
        if start >= stop:
            self._send(416, b"", ctype, {"Content-Range": f"bytes */{size}"})
            return
        with target.open("rb") as f:
            f.seek(start)
            body = f.read(stop - start)
        headers = {"Accept-Ranges": "bytes", "Content-Range": f"bytes {start}-{stop - 1}/{size}"}
        self._send(206, body, ctype, headers)


def _parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """Half-open [start, stop) of a single ``bytes=`` range, or None to send the whole file."""
    m = re.fullmatch(r"\s*bytes=(\d*)-(\d*)\s*", header or "")
    if m is None or (not m.group(1) and not m.group(2)):
        return None
    if not m.group(1):  # suffix range: last N bytes
        return max(0, size - int(m.group(2))), size
    start = int(m.group(1))
    stop = min(size, int(m.group(2)) + 1) if m.group(2) else size
    return start, stop


class ViewerServer:
    """Local Neuroglancer server over ``data_root`` (see the module docstring for promises).

    The socket is bound in the constructor, so ``port`` and ``url`` are valid at once
    (``port=0`` picks a free port). ``start()`` serves from a daemon thread; ``stop()`` ends
    serving, closes open event streams and the socket, and may be called more than once.
    Used as a context manager it starts on entry and stops on exit.
    """

    def __init__(
        self,
        data_root: str | Path,
        host: str = "127.0.0.1",
        port: int = 0,
        token: str = "petarecon",
        verbose: bool = False,
    ) -> None:
        if not re.fullmatch(r"[A-Za-z0-9_\-.]+", token):
            raise ValueError(f"token must be a plain path segment, got {token!r}")
        self.data_root = Path(data_root).resolve()
        self.host = host
        self.token = token
        self._httpd = _Server((host, port), self.data_root, token, verbose)
        self._thread: threading.Thread | None = None
        self._foreground = False
        self._closed = False

    @property
    def port(self) -> int:
        """The bound TCP port."""
        return int(self._httpd.server_address[1])

    @property
    def url_host(self) -> str:
        """Host name to put in URLs (a wildcard bind address becomes 127.0.0.1)."""
        return "127.0.0.1" if self.host in ("", "0.0.0.0", "::") else self.host

    @property
    def base_url(self) -> str:
        """``http://host:port`` of this server."""
        return f"http://{self.url_host}:{self.port}"

    @property
    def url(self) -> str:
        """URL of the viewer client, ``http://host:port/v/<token>/`` (no state fragment)."""
        return f"{self.base_url}/v/{self.token}/"

    def start(self) -> ViewerServer:
        """Serve from a background daemon thread; returns self."""
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._httpd.serve_forever, name="petarecon-viewer", daemon=True
            )
            self._thread.start()
        return self

    def serve_forever(self) -> None:
        """Serve in the calling thread until ``stop()`` (from another thread) or Ctrl-C."""
        self._foreground = True
        try:
            self._httpd.serve_forever()
        finally:
            self._foreground = False
            self._httpd.stopping.set()

    def stop(self) -> None:
        """Stop serving and release the socket. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._httpd.stopping.set()
        if self._thread is not None or self._foreground:
            self._httpd.shutdown()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._httpd.server_close()

    def __enter__(self) -> ViewerServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
