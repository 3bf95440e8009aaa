"""Neuroglancer links for pipeline layers, and the offline viewer behind ``petarecon view``.

* ``public_url`` links the public Neuroglancer to ``gs://``/``s3://``/``http(s)://`` layers.
* ``local_url`` links the local ``ViewerServer`` (``pipeline.viewer_server``) to layers under a
  data root, read over ``http://host:port/data/<relpath>``; ``serve`` runs that server.

Layer kinds map to Neuroglancer layers: ``image``/``probability`` → image (default shader),
``segmentation`` → segmentation, ``affinity`` → image whose 3 channels are shown as RGB,
``field`` → image whose 2 channels (a displacement) are shown as red/green around grey. The
state travels in the URL fragment ``#!{json}`` and round-trips through ``neuroglancer.parse_url``.
"""

from __future__ import annotations

import json
import os
import urllib.parse
import webbrowser
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import neuroglancer

from pipeline.viewer_server import ViewerServer

__all__ = [
    "AFFINITY_SHADER",
    "FIELD_SHADER",
    "LAYER_KINDS",
    "PUBLIC_VIEWER",
    "LayerRef",
    "ViewerServer",
    "local_url",
    "neuroglancer_state",
    "public_source",
    "public_url",
    "serve",
]

PUBLIC_VIEWER = "https://neuroglancer-demo.appspot.com"
LAYER_KINDS = ("image", "segmentation", "affinity", "field", "probability")
#: Schemes the public Neuroglancer can read by itself.
PUBLIC_SCHEMES = ("gs", "s3", "http", "https")

#: Affinities (x, y, z channels; float in [0, 1] or uint8) as red, green, blue.
AFFINITY_SHADER = """void main() {
  emitRGB(vec3(toNormalized(getDataValue(0)),
               toNormalized(getDataValue(1)),
               toNormalized(getDataValue(2))));
}
"""
#: A 2-channel displacement field: x → red, y → green, zero displacement is grey.
FIELD_SHADER = """#uicontrol float gain slider(min=0.001, max=1, default=0.05)
void main() {
  vec2 v = vec2(toNormalized(getDataValue(0)), toNormalized(getDataValue(1))) * gain;
  emitRGB(vec3(clamp(0.5 + 0.5 * v.x, 0.0, 1.0), clamp(0.5 + 0.5 * v.y, 0.0, 1.0), 0.5));
}
"""


@dataclass(frozen=True)
class LayerRef:
    """A precomputed layer to show.

    ``cloudpath`` is a CloudVolume path (``file:///abs/x``, ``gs://b/x``, ``s3://b/x``; a
    ``precomputed://`` prefix or a bare filesystem path is accepted). ``kind`` is one of
    ``LAYER_KINDS``; anything else raises ValueError at construction.
    """

    name: str
    cloudpath: str
    kind: str

    def __post_init__(self) -> None:
        if self.kind not in LAYER_KINDS:
            raise ValueError(f"layer {self.name!r}: kind {self.kind!r} not in {LAYER_KINDS}")
        if not self.name:
            raise ValueError("layer name must not be empty")


def _split(cloudpath: str) -> tuple[str, str]:
    """(scheme, rest) of a cloudpath; bare paths are ``file`` with an absolute path."""
    path = cloudpath.removeprefix("precomputed://")
    if "://" not in path:
        return "file", os.path.abspath(path)
    scheme, rest = path.split("://", 1)
    if scheme == "file":
        rest = os.path.abspath(rest)
    return scheme, rest.rstrip("/")


def public_source(ref: LayerRef) -> str:
    """``precomputed://<scheme>://…`` for a layer the public viewer can read.

    Raises ValueError naming the layer for ``file://`` (serve those with ``petarecon view``)
    and for any scheme outside ``PUBLIC_SCHEMES``.
    """
    scheme, rest = _split(ref.cloudpath)
    if scheme == "file":
        raise ValueError(
            f"layer {ref.name!r} is local ({ref.cloudpath}); a public viewer cannot read "
            "file:// layers: use `petarecon view` to serve them"
        )
    if scheme not in PUBLIC_SCHEMES:
        raise ValueError(
            f"layer {ref.name!r}: scheme {scheme!r} is not readable by Neuroglancer "
            f"(supported: {', '.join(PUBLIC_SCHEMES)})"
        )
    return f"precomputed://{scheme}://{rest}"


def _layer(ref: LayerRef, source: str) -> neuroglancer.Layer:
    if ref.kind == "segmentation":
        return neuroglancer.SegmentationLayer(source=source)
    if ref.kind == "affinity":
        return neuroglancer.ImageLayer(source=source, shader=AFFINITY_SHADER)
    if ref.kind == "field":
        return neuroglancer.ImageLayer(source=source, shader=FIELD_SHADER)
    return neuroglancer.ImageLayer(source=source)


def _viewer_state(
    layers: Sequence[LayerRef],
    source_for: Callable[[LayerRef], str],
    position: Sequence[float] | None,
    voxel_size: Sequence[float] | None,
) -> neuroglancer.ViewerState:
    names = [ref.name for ref in layers]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"duplicate layer names: {dupes}")
    state = neuroglancer.ViewerState()
    if voxel_size is not None:
        state.dimensions = neuroglancer.CoordinateSpace(
            names=["x", "y", "z"], units="nm", scales=[float(v) for v in voxel_size]
        )
    if position is not None:
        state.position = [float(p) for p in position]
    for ref in layers:
        state.layers[ref.name] = _layer(ref, source_for(ref))
    return state


def neuroglancer_state(
    layers: Sequence[LayerRef],
    source_for: Callable[[LayerRef], str] = public_source,
    position: Sequence[float] | None = None,
    voxel_size: Sequence[float] | None = None,
) -> dict[str, Any]:
    """Neuroglancer state (plain JSON-able dict) showing ``layers`` in order.

    ``source_for`` maps a layer to its Neuroglancer source URL (default: ``public_source``).
    ``position`` is x, y, z in the global coordinates; pass ``voxel_size`` (nm) to pin the
    dimensions so that ``position`` is in voxels of that size (else Neuroglancer takes the
    first layer's). Raises ValueError on duplicate layer names or sources ``source_for``
    rejects.
    """
    state = _viewer_state(layers, source_for, position, voxel_size)
    return json.loads(neuroglancer.url_state.to_json_dump(state))


def _url(prefix: str, state: neuroglancer.ViewerState) -> str:
    return neuroglancer.to_url(state, prefix=prefix)


def public_url(
    layers: Sequence[LayerRef],
    viewer: str = PUBLIC_VIEWER,
    position: Sequence[float] | None = None,
    voxel_size: Sequence[float] | None = None,
) -> str:
    """``<viewer>/#!{state}`` with ``precomputed://gs://…``/``s3://…`` sources.

    Raises ValueError naming the layer if any layer is ``file://`` (those need
    ``petarecon view``).
    """
    state = _viewer_state(layers, public_source, position, voxel_size)
    return _url(viewer.rstrip("/") + "/", state)


def local_source(ref: LayerRef, data_root: str | Path, base_url: str) -> str:
    """Source for ``ref`` through a local server at ``base_url`` serving ``data_root``.

    ``file://`` layers under ``data_root`` become ``precomputed://<base_url>/data/<relpath>``;
    public ones pass through as ``public_source``; a ``file://`` layer outside ``data_root``
    raises ValueError naming it.
    """
    scheme, rest = _split(ref.cloudpath)
    if scheme != "file":
        return public_source(ref)
    root = Path(data_root).resolve()
    try:
        rel = Path(rest).resolve().relative_to(root)
    except ValueError:
        raise ValueError(
            f"layer {ref.name!r} ({ref.cloudpath}) is not under the served data root {root}"
        ) from None
    return f"precomputed://{base_url}/data/{urllib.parse.quote(rel.as_posix())}"


def local_url(
    layers: Sequence[LayerRef],
    data_root: str | Path,
    port: int,
    host: str = "127.0.0.1",
    token: str = "petarecon",
    position: Sequence[float] | None = None,
    voxel_size: Sequence[float] | None = None,
) -> str:
    """URL into a local ``ViewerServer``: ``http://host:port/v/<token>/#!{state}``.

    Sources are ``precomputed://http://host:port/data/<path relative to data_root>``
    (see ``local_source``).
    """
    base = f"http://{host}:{port}"

    def source_for(ref: LayerRef) -> str:
        return local_source(ref, data_root, base)

    state = _viewer_state(layers, source_for, position, voxel_size)
    return _url(f"{base}/v/{token}/", state)


def serve(
    data_root: str | Path,
    layers: Sequence[LayerRef],
    port: int = 0,
    open_browser: bool = False,
    host: str = "127.0.0.1",
    token: str = "petarecon",
    verbose: bool = False,
    position: Sequence[float] | None = None,
    voxel_size: Sequence[float] | None = None,
) -> None:
    """Serve ``data_root`` and the viewer until Ctrl-C, printing the viewer URL first.

    The URL shows ``layers`` (validated before the server starts listening for requests);
    with ``open_browser`` it is also opened in the default browser.
    """
    server = ViewerServer(data_root, host=host, port=port, token=token, verbose=verbose)
    try:
        url = local_url(
            layers,
            server.data_root,
            server.port,
            host=server.url_host,
            token=token,
            position=position,
            voxel_size=voxel_size,
        )
        print(f"Neuroglancer: {url}", flush=True)
        print("Press Ctrl-C to stop.", flush=True)
        if open_browser:
            webbrowser.open(url)
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
