"""Precomputed layers through CloudVolume: creation with a full info, bbox reads and writes.

Arrays are x, y, z, channel (CloudVolume's order). Every layer the pipeline writes carries a
``petarecon.json`` status file: ``"incomplete"`` from creation until the wave that fills it has
finished, so a half-written layer is never mistaken for a finished one.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from cloudfiles import CloudFiles
from cloudvolume import CloudVolume
from cloudvolume.exceptions import InfoUnavailableError, ScaleUnavailableError

from pipeline.geometry import Bbox, Vec

log = logging.getLogger("petarecon.storage")
LayerKind = Literal["image", "affinity", "segmentation", "field", "probability"]
STATUS_FILE = "petarecon.json"


@dataclass(frozen=True)
class LayerSpec:
    """What a layer kind stores: Neuroglancer layer type, dtype, channels and encoding."""

    layer_type: str
    dtype: str
    channels: int
    encoding: str


LAYER_SPECS: dict[str, LayerSpec] = {
    "image": LayerSpec("image", "uint8", 1, "raw"),
    "affinity": LayerSpec("image", "float32", 3, "fpzip"),
    "probability": LayerSpec("image", "float32", 1, "fpzip"),
    "segmentation": LayerSpec("segmentation", "uint64", 1, "compressed_segmentation"),
    "field": LayerSpec("image", "float32", 2, "raw"),
}


class LayerError(ValueError):
    """A layer is missing, or not what a stage needs; the message names the layer."""


def open_layer(path: str, mip: int = 0, **kwargs) -> CloudVolume:
    """Open an existing layer for bbox reads/writes; raise LayerError if it has no info."""
    try:
        return CloudVolume(path, mip=mip, fill_missing=True, bounded=True, progress=False,
                           parallel=1, non_aligned_writes=False, **kwargs)
    except InfoUnavailableError:
        raise LayerError(f"layer {path}: no precomputed info file (does the layer exist?)") \
            from None
    except (ScaleUnavailableError, IndexError):
        raise LayerError(f"layer {path} has no mip {mip}") from None
    except ValueError as e:
        raise LayerError(f"layer {path}: {e}") from None


def layer_exists(path: str) -> bool:
    """True when ``path`` holds a precomputed info file."""
    return CloudFiles(path).exists("info")


def unwritable(path: str) -> str | None:
    """Why outputs cannot be written under local ``path`` (None when they can, or when
    ``path`` is not ``file://``: cloud permissions show on the first write).

    Writes nothing: the nearest existing ancestor must be a writable directory.
    """
    if not path.startswith("file://"):
        return None
    local = Path(path[len("file://"):])
    probe = local
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        return f"{local} is not writable: {probe} is not a directory"
    if not os.access(probe, os.W_OK | os.X_OK):
        return f"{local} is not writable: no write permission on {probe}"
    return None


def layer_has_data(path: str) -> bool:
    """True when ``path`` holds anything besides its info and status files."""
    return any(name not in ("info", "provenance", STATUS_FILE)
               for name in CloudFiles(path).list())


def create_layer(path: str, kind: LayerKind, bbox: Bbox, resolution: tuple[float, float, float],
                 chunk_size: Vec, *, channels: int | None = None, overwrite: bool = False,
                 mesh: bool = False) -> CloudVolume:
    """Write a full ``info`` for a new layer covering ``bbox`` at mip 0 and mark it incomplete.

    Raise LayerError if the layer already holds data and ``overwrite`` is false. With
    ``overwrite``, old chunks are left in place to be replaced by the new run's writes.
    """
    spec = LAYER_SPECS[kind]
    if not overwrite and layer_has_data(path):
        raise LayerError(f"layer {path} already holds data; set overwrite: true to replace it")
    info = CloudVolume.create_new_info(
        num_channels=channels or spec.channels,
        layer_type=spec.layer_type,
        data_type=spec.dtype,
        encoding=spec.encoding,
        resolution=list(resolution),
        voxel_offset=list(bbox.start),
        volume_size=list(bbox.shape),
        chunk_size=list(chunk_size),
        mesh="mesh" if mesh else None,
    )
    vol = CloudVolume(path, info=info, progress=False)
    vol.commit_info()
    vol.provenance.description = f"petarecon {kind} layer"
    vol.commit_provenance()
    set_status(path, "incomplete")
    return open_layer(path)


def set_status(path: str, status: Literal["incomplete", "complete"], **extra) -> None:
    """Record whether the wave that fills layer ``path`` has finished."""
    CloudFiles(path).put_json(STATUS_FILE, {"status": status, **extra})


def get_status(path: str) -> str | None:
    """The layer's status (``"incomplete"`` / ``"complete"``), or None if never set."""
    data = CloudFiles(path).get_json(STATUS_FILE)
    return None if data is None else data.get("status")


def layer_bounds(path: str, mip: int = 0) -> Bbox:
    """The voxel bounds of layer ``path`` at ``mip``."""
    b = open_layer(path, mip).bounds
    return Bbox(tuple(b.minpt), tuple(b.maxpt))


def read(path: str | CloudVolume, bbox: Bbox, margin: int | Vec = 0, mip: int = 0,
         fill: float = 0) -> np.ndarray:
    """Read ``bbox`` grown by ``margin`` as an (x, y, z, c) array.

    Voxels outside the layer's bounds (the margin at volume edges) are ``fill``; the result
    always has shape ``bbox.grow(margin).shape + (channels,)``.
    """
    vol = open_layer(path, mip) if isinstance(path, str) else path
    want = bbox.grow(margin)
    bounds = Bbox(tuple(vol.bounds.minpt), tuple(vol.bounds.maxpt))
    have = want.intersection(bounds)
    out = np.full((*want.shape, vol.num_channels), fill, dtype=vol.dtype)
    if not have.empty():
        data = vol[have.start[0]:have.stop[0], have.start[1]:have.stop[1],
                   have.start[2]:have.stop[2]]
        out[have.slices(want.start)] = np.asarray(data)
    return out


def write(path: str | CloudVolume, bbox: Bbox, data: np.ndarray, mip: int = 0) -> None:
    """Write ``data`` (x, y, z[, c]) into ``bbox``; the bbox must be aligned to stored chunks."""
    vol = open_layer(path, mip) if isinstance(path, str) else path
    if data.ndim == 3:
        data = data[..., np.newaxis]
    if tuple(data.shape[:3]) != bbox.shape:
        raise ValueError(f"data shape {data.shape[:3]} does not match bbox {bbox} ({bbox.shape})")
    vol[bbox.start[0]:bbox.stop[0], bbox.start[1]:bbox.stop[1],
        bbox.start[2]:bbox.stop[2]] = data.astype(vol.dtype, copy=False)


def neuroglancer_url(layers: dict[str, tuple[str, str]]) -> str:
    """A Neuroglancer URL showing ``{name: (cloudpath, kind)}``.

    gs:// and s3:// sources give a public-viewer URL; file:// sources need ``petarecon view``,
    which serves them locally (see :mod:`pipeline.viewer`).
    """
    from pipeline.viewer import LayerRef, public_url

    return public_url([LayerRef(n, p, k) for n, (p, k) in layers.items()])


def layer_kind(info: dict) -> str:
    """The layer kind (see :data:`LAYER_SPECS`) an info describes."""
    if info.get("type") == "segmentation":
        return "segmentation"
    channels = info.get("num_channels", 1)
    if info.get("data_type") == "float32":
        return {3: "affinity", 2: "field"}.get(channels, "probability")
    return "image"


def discover_layers(root: str | os.PathLike) -> dict[str, tuple[str, str]]:
    """Every precomputed layer under local folder ``root``: {relative name: (path, kind)}."""
    root = Path(root).resolve()
    found = {}
    for info in sorted(root.rglob("info")):
        try:
            meta = json.loads(info.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if "scales" not in meta:
            continue
        name = str(info.parent.relative_to(root)) if info.parent != root else root.name
        found[name] = ("file://" + str(info.parent), layer_kind(meta))
    return found


class _RetryWarning(logging.Filter):
    """Turns botocore's silent retry notes into ``petarecon.storage`` warnings; drops the rest
    of botocore.endpoint's debug chatter so that enabling it costs no output."""

    def filter(self, record: logging.LogRecord) -> bool:
        if str(record.msg).startswith("Response received to retry"):
            delay = record.args[0] if isinstance(record.args, tuple) and record.args else "?"
            log.warning("storage: transient error from the object store; retrying in %.2f s",
                        float(delay) if isinstance(delay, int | float) else 0.0)
        return record.levelno >= logging.WARNING


def log_storage_retries() -> None:
    """Make every retry of an S3 request (boto retries 5xx, throttling and connection errors
    by itself, silently) log a warning on ``petarecon.storage``. Idempotent; applied when
    this module is imported, so workers log their retries too."""
    endpoint = logging.getLogger("botocore.endpoint")
    if not any(isinstance(f, _RetryWarning) for f in endpoint.filters):
        endpoint.addFilter(_RetryWarning())
        endpoint.setLevel(logging.DEBUG)


log_storage_retries()
