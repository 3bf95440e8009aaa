"""Ingest tasks: one per chunk of the run's bbox, then igneous' downsampling pyramid."""

from __future__ import annotations

import contextlib
import io
from functools import partial

from taskqueue import queueable

from pipeline import storage
from pipeline.config import RunConfig
from pipeline.geometry import Bbox, ChunkGrid, Vec
from pipeline.ingest.stacks import Stack


@queueable
def ingest_chunk(source: str, dataset: str | None, axes: str, layer: str,
                 bbox: list[int]) -> None:
    """Copy voxels ``bbox`` of the stack into the image layer (idempotent)."""
    box = Bbox.from_list(bbox)
    storage.write(layer, box, Stack(source, dataset, axes).read(box))


def create_ingest_tasks(config: RunConfig) -> list[partial]:
    """One :func:`ingest_chunk` task per chunk of the (resolved) run bbox."""
    assert config.ingest is not None and config.bounds is not None
    p = config.ingest
    grid = ChunkGrid(config.bounds, config.chunk_size)
    return [partial(ingest_chunk, p.source, p.dataset, p.axes, config.image_path, b.to_list())
            for b in grid]


def downsample_factor(resolution: tuple[float, float, float]) -> tuple[int, int, int]:
    """(2, 2, 1) for anisotropic data (z at least twice coarser), else (2, 2, 2)."""
    return (2, 2, 1) if resolution[2] >= 2 * min(resolution[:2]) else (2, 2, 2)


def pyramid_chunk_size(volume: Vec, chunk: Vec, factor: Vec, num_mips: int) -> Vec | None:
    """Stored chunk size for the new mips.

    None (keep the base chunk) when the volume spans ``factor**num_mips`` base chunks along
    every downsampled axis; else the base chunk shrunk to ``volume // factor**num_mips`` on the
    axes that need it, so that igneous can still build ``num_mips`` levels of a small volume.
    """
    if all(v >= c * f**num_mips for v, c, f in zip(volume, chunk, factor, strict=True) if f > 1):
        return None
    return tuple(max(1, min(c, v // f**num_mips)) if f > 1 else c
                 for v, c, f in zip(volume, chunk, factor, strict=True))  # type: ignore[return-value]


def create_pyramid_tasks(layer: str, resolution: tuple[float, float, float], num_mips: int):
    """igneous downsampling tasks adding ``num_mips`` mip levels to ``layer``."""
    import igneous.task_creation as tc

    if num_mips == 0:
        return []
    vol = storage.open_layer(layer)
    factor = downsample_factor(resolution)
    chunk = pyramid_chunk_size(tuple(int(v) for v in vol.volume_size),
                               tuple(int(c) for c in vol.chunk_size), factor, num_mips)
    with contextlib.redirect_stdout(io.StringIO()):  # igneous prints bounds to stdout
        return list(tc.create_downsampling_tasks(
            layer, mip=0, num_mips=num_mips, factor=factor, fill_missing=True,
            chunk_size=chunk))
