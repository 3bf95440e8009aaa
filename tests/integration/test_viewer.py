"""The offline viewer: URL building, and the local server over real CloudVolume layers.

Layers are written with CloudVolume into a temporary data root; the server runs on port 0 and
is read over HTTP exactly as Neuroglancer reads it (chunk names ``x0-x1_y0-y1_z0-z1``).
"""

from __future__ import annotations

import gzip
import http.client
import json
import re
import urllib.error
import urllib.request
from pathlib import Path

import neuroglancer
import numpy as np
import pytest
from cloudvolume import CloudVolume
from cloudvolume.chunks import decode as cv_decode

from pipeline import viewer
from pipeline.viewer import LayerRef, ViewerServer, local_url, neuroglancer_state, public_url

pytestmark = pytest.mark.integration

TOKEN = "petarecon"


def _write_layer(
    root: Path,
    name: str,
    data: np.ndarray,
    encoding: str,
    layer_type: str = "image",
    compress: str | bool | None = None,
) -> None:
    info = CloudVolume.create_new_info(
        num_channels=data.shape[3],
        layer_type=layer_type,
        data_type=str(data.dtype),
        encoding=encoding,
        resolution=[4, 4, 40],
        voxel_offset=[0, 0, 0],
        chunk_size=[32, 32, 8],
        volume_size=list(data.shape[:3]),
    )
    vol = CloudVolume(
        f"file://{root / name}", info=info, parallel=1, progress=False, compress=compress
    )
    vol.commit_info()
    vol[:, :, :] = data


@pytest.fixture(scope="module")
def layers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    root = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(64, 64, 16, 1), dtype=np.uint8)
    seg = rng.integers(0, 5, size=(64, 64, 16, 1)).astype(np.uint64) + np.uint64(2**40)
    # Partial edge chunks in y and z; awkward floats to prove bit-exactness.
    aff = rng.standard_normal(size=(64, 48, 12, 3)).astype(np.float32)
    aff[0, 0, 0, :] = [-0.0, 1e-40, np.float32(np.pi)]
    _write_layer(root, "image", image, "raw")
    _write_layer(root, "image_br", image, "raw", compress="br")
    _write_layer(root, "seg", seg, "compressed_segmentation", layer_type="segmentation")
    _write_layer(root, "aff", aff, "fpzip")
    return {"root": root, "image": image, "seg": seg, "aff": aff}


@pytest.fixture(scope="module")
def server(layers: dict[str, object]):
    with ViewerServer(layers["root"], port=0, token=TOKEN) as srv:
        yield srv


def _get(
    srv: ViewerServer, path: str, headers: dict[str, str] | None = None, method: str = "GET"
) -> tuple[int, http.client.HTTPMessage, bytes]:
    req = urllib.request.Request(srv.base_url + path, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.headers, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.headers, err.read()


def _chunk_name(info: dict, index: tuple[int, int, int]) -> tuple[str, tuple[slice, ...]]:
    """Neuroglancer's chunk file name for chunk ``index`` of scale 0, and its slices."""
    scale = info["scales"][0]
    bounds = []
    for axis in range(3):
        lo = scale["voxel_offset"][axis] + index[axis] * scale["chunk_sizes"][0][axis]
        hi = min(
            lo + scale["chunk_sizes"][0][axis], scale["voxel_offset"][axis] + scale["size"][axis]
        )
        bounds.append((lo, hi))
    name = "_".join(f"{lo}-{hi}" for lo, hi in bounds)
    return f"{scale['key']}/{name}", tuple(slice(lo, hi) for lo, hi in bounds)


def _info(srv: ViewerServer, layer: str) -> dict:
    status, headers, body = _get(srv, f"/data/{layer}/info")
    assert status == 200
    assert headers["Access-Control-Allow-Origin"] == "*"
    return json.loads(body)


def _body(headers: http.client.HTTPMessage, body: bytes) -> bytes:
    return gzip.decompress(body) if headers.get("Content-Encoding") == "gzip" else body


# -- server: data ------------------------------------------------------------------------------


def test_raw_chunk_gz_served_by_plain_name(server: ViewerServer, layers: dict) -> None:
    info = _info(server, "image")
    assert info["scales"][0]["encoding"] == "raw"
    path, sl = _chunk_name(info, (1, 0, 1))
    assert not (layers["root"] / "image" / path).exists()  # only the .gz is on disk
    expected = layers["image"][sl].tobytes(order="F")

    status, headers, body = _get(server, f"/data/image/{path}", {"Accept-Encoding": "gzip"})
    assert status == 200
    assert headers["Content-Encoding"] == "gzip"
    assert headers["Access-Control-Allow-Origin"] == "*"
    assert _body(headers, body) == expected

    status, headers, body = _get(server, f"/data/image/{path}")  # client without gzip
    assert status == 200 and headers.get("Content-Encoding") is None
    assert body == expected


def test_brotli_chunk_inflated(server: ViewerServer, layers: dict) -> None:
    path, sl = _chunk_name(_info(server, "image_br"), (0, 1, 0))
    assert (layers["root"] / "image_br" / (path + ".br")).exists()
    status, headers, body = _get(server, f"/data/image_br/{path}", {"Accept-Encoding": "gzip"})
    assert status == 200 and headers.get("Content-Encoding") is None
    assert body == layers["image"][sl].tobytes(order="F")


def test_segmentation_chunk(server: ViewerServer, layers: dict) -> None:
    info = _info(server, "seg")
    scale = info["scales"][0]
    assert scale["encoding"] == "compressed_segmentation"
    path, sl = _chunk_name(info, (0, 1, 1))
    status, headers, body = _get(server, f"/data/seg/{path}", {"Accept-Encoding": "gzip"})
    assert status == 200
    chunk = layers["seg"][sl]
    decoded = cv_decode(
        _body(headers, body),
        "compressed_segmentation",
        shape=chunk.shape,
        dtype=np.uint64,
        block_size=scale["compressed_segmentation_block_size"],
    )
    np.testing.assert_array_equal(decoded, chunk)


def test_fpzip_layer_served_as_raw(server: ViewerServer, layers: dict) -> None:
    on_disk = json.loads((layers["root"] / "aff" / "info").read_text())
    assert on_disk["scales"][0]["encoding"] == "fpzip"
    info = _info(server, "aff")
    assert [s["encoding"] for s in info["scales"]] == ["raw"]
    assert info["num_channels"] == 3 and info["data_type"] == "float32"
    for index in [(0, 0, 0), (1, 1, 1)]:  # (1, 1, 1) is a partial edge chunk
        path, sl = _chunk_name(info, index)
        status, headers, body = _get(server, f"/data/aff/{path}", {"Accept-Encoding": "gzip"})
        assert status == 200 and headers["Access-Control-Allow-Origin"] == "*"
        expected = np.asfortranarray(layers["aff"][sl]).astype("<f4").tobytes(order="F")
        assert _body(headers, body) == expected
    # The decoded layout is what Neuroglancer's raw decoder reads: x fastest, then y, z, c.
    path, sl = _chunk_name(info, (1, 1, 1))
    _, headers, body = _get(server, f"/data/aff/{path}")
    shape = layers["aff"][sl].shape
    back = np.frombuffer(body, dtype="<f4").reshape(shape, order="F")
    assert back.view(np.uint32).tolist() == layers["aff"][sl].view(np.uint32).tolist()


def test_missing_chunks_404_with_cors(server: ViewerServer) -> None:
    for path in [
        "/data/image/4_4_40/64-96_0-32_0-8",
        "/data/aff/4_4_40/64-96_0-32_0-8",
        "/data/nope/info",
        "/data/%2E%2E/etc/passwd",
    ]:
        status, headers, _ = _get(server, path)
        assert status == 404, path
        assert headers["Access-Control-Allow-Origin"] == "*"


def test_options_preflight_and_range(server: ViewerServer, layers: dict) -> None:
    status, headers, _ = _get(
        server,
        "/data/image/info",
        {
            "Origin": "https://neuroglancer-demo.appspot.com",
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "range",
        },
        method="OPTIONS",
    )
    assert status == 204
    assert headers["Access-Control-Allow-Origin"] == "*"
    assert "GET" in headers["Access-Control-Allow-Methods"]
    assert "range" in headers["Access-Control-Allow-Headers"].lower()

    whole = (layers["root"] / "image" / "info").read_bytes()
    status, headers, body = _get(server, "/data/image/info", {"Range": "bytes=2-11"})
    assert status == 206 and body == whole[2:12]
    assert headers["Content-Range"] == f"bytes 2-11/{len(whole)}"


# -- server: client ----------------------------------------------------------------------------


def test_client_index_and_asset(server: ViewerServer) -> None:
    assert server.url == f"http://127.0.0.1:{server.port}/v/{TOKEN}/"
    status, headers, body = _get(server, f"/v/{TOKEN}/")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    html = body.decode()
    assert "<html" in html and "<script" in html
    scripts = re.findall(r'src="([^"]+\.js)"', html)
    assert scripts
    status, headers, body = _get(server, f"/v/{TOKEN}/{scripts[-1]}")
    assert status == 200 and "javascript" in headers["Content-Type"] and len(body) > 1000

    assert _get(server, f"/v/{TOKEN}/../../etc/passwd")[0] == 404
    assert _get(server, "/v/wrong-token/")[0] == 404


def test_events_stream_stays_open(server: ViewerServer) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        conn.request("GET", f"/events/{TOKEN}?c=client&gc=0")
        resp = conn.getresponse()
        assert resp.status == 200
        assert resp.headers["Content-Type"] == "text/event-stream"
        assert resp.fp.readline().startswith(b":")  # a comment, not an event or EOF
    finally:
        conn.close()


def test_stop_is_prompt_with_open_event_stream(layers: dict) -> None:
    srv = ViewerServer(layers["root"]).start()
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10)
    conn.request("GET", f"/events/{TOKEN}")
    assert conn.getresponse().status == 200
    srv.stop()
    srv.stop()  # idempotent
    conn.close()
    with pytest.raises(OSError):
        urllib.request.urlopen(srv.base_url + "/", timeout=2)


# -- URLs --------------------------------------------------------------------------------------

REMOTE = [
    LayerRef("em", "gs://bucket/run/image", "image"),
    LayerRef("aff", "s3://bucket/run/aff/", "affinity"),
    LayerRef("seg", "precomputed://gs://bucket/run/seg", "segmentation"),
    LayerRef("field", "gs://bucket/run/field", "field"),
]


def test_public_url_round_trips() -> None:
    url = public_url(REMOTE)
    assert url.startswith("https://neuroglancer-demo.appspot.com/#!")
    state = neuroglancer.parse_url(url)
    got = {layer.name: (layer.type, layer.source[0].url) for layer in state.layers}
    assert got == {
        "em": ("image", "precomputed://gs://bucket/run/image"),
        "aff": ("image", "precomputed://s3://bucket/run/aff"),
        "seg": ("segmentation", "precomputed://gs://bucket/run/seg"),
        "field": ("image", "precomputed://gs://bucket/run/field"),
    }
    assert "getDataValue(2)" in state.layers["aff"].shader
    assert "getDataValue(1)" in state.layers["field"].shader
    assert [layer.name for layer in state.layers] == ["em", "aff", "seg", "field"]


def test_state_position_and_json() -> None:
    state = neuroglancer_state(REMOTE[:1], position=[10, 20, 3], voxel_size=[4, 4, 40])
    json.dumps(state)  # plain JSON
    assert state["position"] == [10.0, 20.0, 3.0]
    assert state["dimensions"]["z"] == [4e-08, "m"]


def test_public_url_rejects_file_layers(tmp_path: Path) -> None:
    layers = [*REMOTE, LayerRef("local_em", f"file://{tmp_path}/image", "image")]
    with pytest.raises(ValueError, match="local_em"):
        public_url(layers)
    with pytest.raises(ValueError, match="kind"):
        LayerRef("x", "gs://b/x", "mesh")


def test_local_url_sources(tmp_path: Path) -> None:
    refs = [
        LayerRef("em", f"file://{tmp_path}/run/image", "image"),
        LayerRef("aff", f"{tmp_path}/run/aff", "affinity"),
        LayerRef("remote", "gs://bucket/seg", "segmentation"),
    ]
    url = local_url(refs, tmp_path, 8123)
    assert url.startswith(f"http://127.0.0.1:8123/v/{TOKEN}/#!")
    sources = [layer.source[0].url for layer in neuroglancer.parse_url(url).layers]
    assert sources == [
        "precomputed://http://127.0.0.1:8123/data/run/image",
        "precomputed://http://127.0.0.1:8123/data/run/aff",
        "precomputed://gs://bucket/seg",
    ]
    with pytest.raises(ValueError, match="outside"):
        local_url([LayerRef("outside", "file:///elsewhere/x", "image")], tmp_path, 8123)


def test_serve_prints_url(layers: dict, monkeypatch, capsys) -> None:
    def interrupted(self: ViewerServer) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(ViewerServer, "serve_forever", interrupted)
    viewer.serve(layers["root"], [LayerRef("em", f"file://{layers['root']}/image", "image")])
    out = capsys.readouterr().out
    assert re.search(r"http://127\.0\.0\.1:\d+/v/petarecon/#!", out)
    assert "/data/image" in out
