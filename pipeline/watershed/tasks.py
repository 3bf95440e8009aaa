"""Watershed queue tasks: `create_watershed_tasks(config, level)` and the task functions."""

from __future__ import annotations

from functools import partial

from taskqueue import queueable

from pipeline import storage
from pipeline.config import load_config
from pipeline.geometry import OctreeNode
from pipeline.segmentation import io
from pipeline.watershed import jobs
from pipeline.watershed.chunked import MARGIN, WatershedParams


def params_of(config) -> WatershedParams:
    s = config.segmentation
    return WatershedParams(s.ws_high, s.ws_low, s.ws_size, s.ws_dust)


@queueable
def ws_chunk(conf: dict, coord: list[int]) -> None:
    """Level 0 of atomic chunk ``coord``: basins, its graph resolved, face planes."""
    config = load_config(conf)
    lay = io.layout(config)
    box = lay.grid.chunk(tuple(coord))
    jobs.chunk_job(io.store(config), lay, tuple(coord), io.read_affinity(config, box, MARGIN),
                   params_of(config))  # no reference kept here: freed before the resolve


@queueable
def ws_faces(conf: dict, coord: list[int]) -> None:
    """Stitch chunk ``coord``'s low faces to its neighbours'."""
    config = load_config(conf)
    jobs.face_job(io.store(config), io.layout(config), tuple(coord))


@queueable
def ws_node(conf: dict, level: int, coord: list[int]) -> None:
    """Resolve octree node (level, coord)."""
    config = load_config(conf)
    jobs.node_job(io.store(config), io.layout(config), OctreeNode(level, tuple(coord)),
                  params_of(config))


@queueable
def ws_remap(conf: dict, coord: list[int]) -> None:
    """Write chunk ``coord`` of the supervoxel layer with final ids."""
    config = load_config(conf)
    lay = io.layout(config)
    labels = jobs.remap_job(io.store(config), lay, tuple(coord))
    storage.write(config.layer_path(config.segmentation.ws_layer), lay.grid.chunk(tuple(coord)),
                  labels)


def create_watershed_tasks(config, wave: str, level: int = 0) -> list[partial]:
    """The tasks of one watershed wave: "chunks", "faces", "nodes" (of ``level``), "remap"."""
    conf = config.to_dict()
    lay = io.layout(config)
    if wave == "nodes":
        return [partial(ws_node, conf, level, list(n.coord)) for n in lay.octree.nodes(level)]
    fn = {"chunks": ws_chunk, "faces": ws_faces, "remap": ws_remap}[wave]
    return [partial(fn, conf, list(c)) for c in lay.grid.coords()]
