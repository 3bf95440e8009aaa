"""The `synapses` stage's steps, as the DAG and the CLI call them.

Outputs: the cleft layer (uint64; final ids), and under ``{scratch}/synapses/``:
``synapses.csv`` / ``synapses.parquet`` (cleft_id, pre, post, size, merged (clefts joined by
dedup), pre_point/post_point_{x,y,z} (where each partner meets the cleft), centroid_{x,y,z} in
voxels and ``_nm``, bbox_lo/hi_{x,y,z} inclusive), ``connectivity.csv`` (pre, post, count,
total_size) and ``synapses.ngstate.json`` (a Neuroglancer annotation layer of pre → post lines).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from cloudfiles import CloudFiles

from pipeline import reachability, storage
from pipeline.config import ConfigError, RunConfig, load_config
from pipeline.geometry import Bbox
from pipeline.synapses import jobs
from pipeline.synapses.tasks import create_synapse_tasks, image_path, layout, params_of, store


def sanity_check(conf: dict[str, Any] | RunConfig) -> RunConfig:
    """Validate the config against its layers; return it with ``bbox`` resolved."""
    config = reachability.checked(load_config(conf))
    s = config.synapses
    if s is None:
        raise ConfigError([("synapses", "the synapses stage needs a `synapses` section")])
    problems: list[tuple[str, str]] = []

    def layer(path: str, field: str, channels: int | None = None, dtype: str | None = None):
        try:
            vol = storage.open_layer(path, config.mip)
        except storage.LayerError as e:
            problems.append((field, str(e)))
            return None
        if (channels and vol.num_channels != channels) or (dtype and str(vol.dtype) != dtype):
            problems.append((field, f"layer {path} is {vol.num_channels}-channel {vol.dtype}; "
                                    f"expected {channels}-channel {dtype}"))
        return vol

    cleft = layer(s.cleft, "synapses.cleft", 1, "float32")
    bbox = config.bounds or (storage.layer_bounds(s.cleft, config.mip) if cleft else None)
    if cleft is not None and not storage.layer_bounds(s.cleft, config.mip).contains(bbox):
        problems.append(("bbox", f"{bbox.to_list()} lies outside the cleft layer"))
    if s.assign:
        if s.segmentation is None:
            problems.append(("synapses.segmentation", "partner assignment needs a "
                                                      "segmentation layer (or assign: false)"))
        elif (seg := layer(s.segmentation, "synapses.segmentation")) is not None and cleft:
            if not storage.layer_bounds(s.segmentation, config.mip).contains(bbox):
                problems.append(("synapses.segmentation", f"layer {s.segmentation} does not "
                                 f"cover the cleft bbox {bbox.to_list()}"))
            if not np.allclose(seg.resolution, cleft.resolution):
                problems.append(("synapses.segmentation", f"resolution {list(seg.resolution)} "
                                 f"differs from the cleft layer's {list(cleft.resolution)}"))
        if s.partner_model is None:
            if image_path(config) is None:
                problems.append(("synapses.image", "the geometric partner rule needs an image "
                                                   "layer (synapses.image or input)"))
            else:
                layer(image_path(config), "synapses.image", 1, "uint8")
    out = config.layer_path(s.cleft_layer)
    if why := storage.unwritable(config.output):
        problems.append(("output", why))
    elif not config.overwrite and storage.layer_has_data(out):
        problems.append(("output", f"layer {out} already holds data; set overwrite: true"))
    if problems:
        raise ConfigError(problems)
    return config.model_copy(update={"bbox": tuple(bbox.to_list())})


def prepare(config: RunConfig) -> None:
    s = config.synapses
    res = tuple(float(r) for r in storage.open_layer(s.cleft, config.mip).resolution)
    storage.create_layer(config.layer_path(s.cleft_layer), "segmentation",
                         Bbox.from_list(config.bbox), res, config.storage_chunk_size,
                         overwrite=True)
    cf = CloudFiles(f"{config.scratch_path}/synapses")
    cf.delete(list(cf.list()))


def tasks(config: RunConfig, wave: str) -> list:
    if wave in ("assign", "relabel") and not config.synapses.assign:
        return []
    return create_synapse_tasks(config, wave)


def resolution(config: RunConfig) -> tuple[float, float, float]:
    return tuple(float(r) for r in storage.open_layer(config.synapses.cleft,
                                                      config.mip).resolution)


def dedup(config: RunConfig) -> dict[str, int]:
    """Filter and merge clefts, then write the synapse table, connectivity and annotations."""
    if not config.synapses.assign:
        return {"synapses": 0}
    table = jobs.dedup_job(store(config), layout(config), params_of(config), resolution(config))
    write_tables(config, table)
    return {"synapses": len(table["cleft_id"])}


def write_tables(config: RunConfig, table: dict[str, np.ndarray]) -> None:
    import io

    import pyarrow as pa
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    cf = CloudFiles(f"{config.scratch_path}/synapses")
    t = pa.table({k: np.asarray(v) for k, v in table.items()})
    for name, writer in (("synapses.parquet", pq.write_table), ("synapses.csv",
                                                                 pcsv.write_csv)):
        buf = io.BytesIO()
        writer(t, buf)
        cf.put(name, buf.getvalue())
    edges = jobs.connectivity(table)
    buf = io.BytesIO()
    pcsv.write_csv(pa.table({k: np.asarray(v) for k, v in edges.items()}), buf)
    cf.put("connectivity.csv", buf.getvalue())
    res = resolution(config)
    lines = [{"type": "line", "id": str(int(c)),
              "pointA": [float(table[f"pre_point_{a}"][i]) + 0.5 for a in "xyz"],
              "pointB": [float(table[f"post_point_{a}"][i]) + 0.5 for a in "xyz"],
              "description": f"{int(table['pre'][i])} -> {int(table['post'][i])}"}
             for i, c in enumerate(table["cleft_id"])]
    state = {"type": "annotation", "name": "synapses",
             "source": {"url": "local://annotations",
                        "transform": {"outputDimensions": {a: [r * 1e-9, "m"] for a, r in
                                                           zip("xyz", res, strict=True)}}},
             "annotations": lines}
    cf.put_json("synapses.ngstate.json", state)


def finish(config: RunConfig) -> dict[str, tuple[str, str]]:
    """Mark the cleft layer complete; return the run's layers for the report."""
    storage.set_status(config.layer_path(config.synapses.cleft_layer), "complete")
    return layers(config)


def layers(config: RunConfig) -> dict[str, tuple[str, str]]:
    s = config.synapses
    out = {"cleft_probability": (s.cleft, "probability"),
           s.cleft_layer: (config.layer_path(s.cleft_layer), "segmentation")}
    if s.segmentation:
        out["segmentation"] = (s.segmentation, "segmentation")
    return out
