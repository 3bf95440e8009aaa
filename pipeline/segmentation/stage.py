"""The `segmentation` stage's steps, as the DAG and the CLI call them.

Outputs: the ``ws`` and ``seg`` layers (uint64, compressed_segmentation), and under
``{scratch}/segmentation/``: ``segment_sizes.csv`` (segment_id, voxels),
``region_graph.csv`` (segment_a, segment_b, mean_affinity, faces; the final segments' mean
affinity graph) and ``merge_history.csv`` (stage, node, merged, into, value, size: every merge
in the order each octree node made it; value is the max affinity for the watershed's single
linkage, the mean affinity for agglomeration).
"""

from __future__ import annotations

import csv
import io as stdio
from typing import Any

import numpy as np
from cloudfiles import CloudFiles

from pipeline import reachability, storage
from pipeline.agglomerate.tasks import create_agglomeration_tasks
from pipeline.config import ConfigError, RunConfig, load_config
from pipeline.geometry import Bbox
from pipeline.regiongraph import FIXED_POINT, Edges, Segments
from pipeline.segmentation import io
from pipeline.watershed.tasks import create_watershed_tasks

MAX_LEVELS = 16
"""Octree levels the DAG can run (2**15 chunks along an axis); higher levels are skipped."""


def _check_layer(path: str, field: str, channels: int, dtypes: tuple[str, ...], bbox: Bbox | None,
                 mip: int, problems: list[tuple[str, str]]) -> Bbox | None:
    try:
        vol = storage.open_layer(path, mip)
    except storage.LayerError as e:
        problems.append((field, str(e)))
        return None
    if mip not in vol.available_mips:
        problems.append((field, f"layer {path} has no mip {mip}"))
        return None
    if vol.num_channels != channels or str(vol.dtype) not in dtypes:
        problems.append((field, f"layer {path} is {vol.num_channels}-channel {vol.dtype}; "
                                f"expected {channels}-channel {' or '.join(dtypes)}"))
    if not storage.layer_has_data(path):
        problems.append((field, f"layer {path} holds no data (an empty volume)"))
    bounds = storage.layer_bounds(path, mip)
    if bbox is not None and not bounds.contains(bbox):
        problems.append((field, f"layer {path} (bounds {bounds.to_list()}) does not cover "
                                f"bbox {bbox.to_list()}"))
    return bounds


def sanity_check(conf: dict[str, Any] | RunConfig) -> RunConfig:
    """Validate the config against its layers; return it with ``bbox`` resolved.

    Raise ConfigError naming each bad field before anything is written.
    """
    config = reachability.checked(load_config(conf))
    s = config.segmentation
    if s is None:
        raise ConfigError([("segmentation", "the segmentation stage needs a `segmentation` "
                                            "section")])
    problems: list[tuple[str, str]] = []
    field, path, channels = (("segmentation.affinity", s.affinity, 3) if s.affinity
                             else ("segmentation.boundary", s.boundary, 1))
    bounds = _check_layer(path, field, channels, ("float32",), config.bounds, config.mip,
                          problems)
    bbox = config.bounds or bounds
    for name, layer, ch, dt in (("semantic", s.semantic, 1, ("uint8", "uint16", "uint32",
                                                              "uint64", "int32")),
                                ("myelin", s.myelin, 1, ("float32",))):
        if layer:
            _check_layer(layer, f"segmentation.{name}", ch, dt, bbox, config.mip, problems)
    if why := storage.unwritable(config.output):
        problems.append(("output", why))
    for name in (s.ws_layer, s.seg_layer):
        if not config.overwrite and storage.layer_has_data(config.layer_path(name)):
            problems.append(("output", f"layer {config.layer_path(name)} already holds data; "
                                       "set overwrite: true to replace it"))
    if problems:
        raise ConfigError(problems)
    assert bbox is not None
    return config.model_copy(update={"bbox": tuple(bbox.to_list())})


def prepare(config: RunConfig) -> None:
    """Create the ws and seg layers with full infos, marked incomplete."""
    s = config.segmentation
    src = storage.open_layer(s.affinity or s.boundary, config.mip)
    res = tuple(float(r) for r in src.resolution)
    bbox = Bbox.from_list(config.bbox)
    for name in (s.ws_layer, s.seg_layer):
        storage.create_layer(config.layer_path(name), "segmentation", bbox, res,
                             config.storage_chunk_size, overwrite=True,
                             mesh=name == s.seg_layer and s.mesh)
    CloudFiles(f"{config.scratch_path}/segmentation").delete(
        list(CloudFiles(f"{config.scratch_path}/segmentation").list()))


def top_level(config: RunConfig) -> int:
    return io.layout(config).octree.top


def watershed_tasks(config: RunConfig, wave: str, level: int = 0) -> list:
    return create_watershed_tasks(config, wave, level)


def agglomeration_tasks(config: RunConfig, wave: str, level: int = 0) -> list:
    return create_agglomeration_tasks(config, wave, level)


def wave_plan(config: RunConfig) -> list[tuple[str, Any]]:
    """Every wave of the stage in DAG order, as (name, tasks-of-config function)."""
    top = top_level(config)
    plan: list[tuple[str, Any]] = []
    for prefix, make in (("ws", watershed_tasks), ("agg", agglomeration_tasks)):
        first = ["chunks", "faces"] if prefix == "ws" else ["chunks"]
        plan += [(f"{prefix} level 0 {w}", lambda c, w=w, m=make: m(c, w, 0)) for w in first]
        plan += [(f"{prefix} level {lvl} nodes", lambda c, lvl=lvl, m=make: m(c, "nodes", lvl))
                 for lvl in range(1, top + 1)]
        plan.append((f"{prefix} remap", lambda c, m=make: m(c, "remap")))
    return plan


def write_tables(config: RunConfig) -> dict[str, int]:
    """Reduce the per-chunk tables into the run's CSV tables; return their row counts."""
    st = io.store(config)
    lay = io.layout(config)
    segs, edges = [], []
    for coord in lay.grid.coords():
        t = st.get(f"tables/0_{coord[0]}_{coord[1]}_{coord[2]}")
        n = len(t["ids"])
        segs.append(Segments(t["ids"], t["size"], t["ids"], np.zeros((n, 3), np.int64),
                             np.zeros((n, 3), np.int64), np.zeros((n, 0), np.int64)))
        edges.append(Edges(t["a"], t["b"], np.zeros(len(t["a"]), np.float32), t["wsum"],
                           t["count"]))
    seg = Segments.concat(segs)
    graph = Edges.concat(edges)
    history = []
    for stage in ("ws", "agg"):
        for level in range(lay.octree.n_levels):
            for node in lay.octree.nodes(level):
                h = st.get(f"{stage}/nodes/{node.tag}")["history"]
                history += [(stage, node.tag, int(r["a"]), int(r["b"]), float(r["value"]),
                             int(r["size"])) for r in h]
    out = CloudFiles(f"{config.scratch_path}/segmentation")
    out.put("segment_sizes.csv", _csv(("segment_id", "voxels"),
                                      zip(seg.ids.tolist(), seg.size.tolist(), strict=True)))
    out.put("region_graph.csv", _csv(
        ("segment_a", "segment_b", "mean_affinity", "faces"),
        zip(graph.a.tolist(), graph.b.tolist(),
            np.round(graph.wsum / np.maximum(graph.count, 1) / FIXED_POINT, 6).tolist(),
            graph.count.tolist(), strict=True)))
    out.put("merge_history.csv", _csv(("stage", "node", "merged", "into", "value", "size"),
                                      history))
    return {"segments": len(seg), "edges": len(graph), "merges": len(history)}


def _csv(header, rows) -> bytes:
    buf = stdio.StringIO()
    w = csv.writer(buf)
    w.writerow(header)
    w.writerows(rows)
    return buf.getvalue().encode()


def mesh_tasks(config: RunConfig, wave: str) -> list:
    """igneous meshing ("meshes") or mesh manifest ("manifests") tasks for ``seg``."""
    import igneous.task_creation as tc

    if not config.segmentation.mesh:
        return []
    path = config.layer_path(config.segmentation.seg_layer)
    if wave == "meshes":
        shape = tuple(c * 2 for c in config.chunk_size)
        return list(tc.create_meshing_tasks(path, mip=0, shape=shape, mesh_dir="mesh",
                                            sharded=False, spatial_index=False))
    return list(tc.create_mesh_manifest_tasks(path, mesh_dir="mesh"))


def pyramid_tasks(config: RunConfig) -> list:
    from pipeline.ingest.tasks import create_pyramid_tasks

    s = config.segmentation
    return create_pyramid_tasks(config.layer_path(s.seg_layer),
                                tuple(storage.open_layer(config.layer_path(s.seg_layer))
                                      .resolution), s.downsample_mips)


def finish_layer(config: RunConfig, layer: str) -> None:
    """Mark one output layer complete (after its remap wave)."""
    storage.set_status(config.layer_path(layer), "complete")


def finish(config: RunConfig) -> dict[str, tuple[str, str]]:
    """The run's layers for the report (each was marked complete by its remap)."""
    return layers(config)


def layers(config: RunConfig) -> dict[str, tuple[str, str]]:
    s = config.segmentation
    src = s.affinity or s.boundary
    return {"affinity" if s.affinity else "boundary": (src, "affinity" if s.affinity
                                                       else "probability"),
            s.ws_layer: (config.layer_path(s.ws_layer), "segmentation"),
            s.seg_layer: (config.layer_path(s.seg_layer), "segmentation")}
