"""Agglomeration queue tasks: `create_agglomeration_tasks(config, wave)` and task functions."""

from __future__ import annotations

from functools import partial

from taskqueue import queueable

from pipeline import storage
from pipeline.agglomerate import jobs
from pipeline.agglomerate.chunked import AgglomerationParams, chunk_graph
from pipeline.config import load_config
from pipeline.geometry import OctreeNode
from pipeline.segmentation import io


def params_of(config) -> AgglomerationParams:
    s = config.segmentation
    return AgglomerationParams(
        s.agg_threshold, size_limit=s.size_limit,
        size_affinity=s.size_affinity if s.size_limit else -1.0,
        semantic_affinity=s.semantic_affinity if s.semantic else -1.0,
        myelin_threshold=s.myelin_threshold)


def _inputs(config, box):
    s = config.segmentation
    ws = io.read_low_padded(config.layer_path(s.ws_layer), box, 0)
    aff = io.read_affinity(config, box, 0)
    semantic = (storage.read(s.semantic, box, 0, config.mip)[..., 0]
                if s.semantic else None)
    myelin = io.read_low_padded(s.myelin, box, config.mip) if s.myelin else None
    return ws, aff, semantic, myelin


@queueable
def agg_chunk(conf: dict, coord: list[int]) -> None:
    """Level 0 of atomic chunk ``coord``: its supervoxel graph, resolved."""
    config = load_config(conf)
    lay = io.layout(config)
    ws, aff, semantic, myelin = _inputs(config, lay.grid.chunk(tuple(coord)))
    jobs.chunk_job(io.store(config), lay, tuple(coord), ws, aff, params_of(config), semantic,
                   config.segmentation.semantic_classes, myelin)


@queueable
def agg_node(conf: dict, level: int, coord: list[int]) -> None:
    config = load_config(conf)
    jobs.node_job(io.store(config), io.layout(config), OctreeNode(level, tuple(coord)),
                  params_of(config))


@queueable
def agg_remap(conf: dict, coord: list[int]) -> None:
    """Write chunk ``coord`` of the segmentation, and its size and region-graph tables."""
    config = load_config(conf)
    lay = io.layout(config)
    box = lay.grid.chunk(tuple(coord))
    st = io.store(config)
    # margin voxels next to the chunk's supervoxels resolve through this chunk's chain too
    seg = jobs.remap_job(st, lay, tuple(coord))
    storage.write(config.layer_path(config.segmentation.seg_layer), box, seg[1:, 1:, 1:])
    aff = io.read_affinity(config, box, 0)
    segments, edges, _, _ = chunk_graph(seg, aff, box.start, lay.bbox.start, params_of(config))
    real = segments.size > 0
    st.put(f"tables/{OctreeNode(0, tuple(coord)).tag}",
           {"ids": segments.ids[real], "size": segments.size[real], "a": edges.a,
            "b": edges.b, "wsum": edges.wsum, "count": edges.count})


def create_agglomeration_tasks(config, wave: str, level: int = 0) -> list[partial]:
    """The tasks of one agglomeration wave: "chunks", "nodes" (of ``level``), "remap"."""
    conf = config.to_dict()
    lay = io.layout(config)
    if wave == "nodes":
        return [partial(agg_node, conf, level, list(n.coord)) for n in lay.octree.nodes(level)]
    fn = {"chunks": agg_chunk, "remap": agg_remap}[wave]
    return [partial(fn, conf, list(c)) for c in lay.grid.coords()]
