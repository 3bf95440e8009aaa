"""Synapse queue tasks: `create_synapse_tasks(config, wave)` and the task functions."""

from __future__ import annotations

import functools
from functools import partial

import numpy as np
from taskqueue import queueable

from pipeline import storage
from pipeline.config import RunConfig, load_config
from pipeline.geometry import Bbox
from pipeline.octree_jobs import CloudStore, Layout
from pipeline.synapses import jobs


def params_of(config: RunConfig) -> jobs.SynapseParams:
    s = config.synapses
    return jobs.SynapseParams(s.cc_threshold, s.connectivity, s.size_threshold,
                              s.merge_distance_nm, s.max_segment_size, s.partner_radius)


def layout(config: RunConfig) -> Layout:
    return Layout(Bbox.from_list(config.bbox), config.chunk_size)


def store(config: RunConfig) -> CloudStore:
    return CloudStore(f"{config.scratch_path}/synapses")


def image_path(config: RunConfig) -> str | None:
    return config.synapses.image or config.input


def _read(path: str, box: Bbox, margin, mip: int, run: Bbox) -> np.ndarray:
    """First channel of ``box`` grown by ``margin``, 0 outside the run."""
    a = storage.read(path, box, margin, mip)[..., 0]
    want = box.grow(margin)
    mask = np.zeros(want.shape, bool)
    mask[want.intersection(run).slices(want.start)] = True
    a[~mask] = 0
    return a


@queueable
def syn_map(conf: dict, coord: list[int]) -> None:
    """Threshold and label one chunk; record its components, continuations, segment sizes."""
    config = load_config(conf)
    lay = layout(config)
    box = lay.grid.chunk(tuple(coord))
    s = config.synapses
    prob = _read(s.cleft, box, 1, config.mip, lay.bbox)
    seg = storage.read(s.segmentation, box, 0, config.mip)[..., 0] if s.segmentation else None
    jobs.map_job(store(config), lay, tuple(coord), prob, params_of(config), seg)


@queueable
def syn_reduce(conf: dict) -> None:
    """Stitch every chunk's components into global clefts (one task)."""
    config = load_config(conf)
    jobs.reduce_job(store(config), layout(config), params_of(config))


@queueable
def syn_remap(conf: dict, coord: list[int], final: bool) -> None:
    """Write one chunk of the cleft layer (after the reduce, or the final ids)."""
    config = load_config(conf)
    lay = layout(config)
    labels = jobs.cleft_labels(store(config), tuple(coord), final)
    storage.write(config.layer_path(config.synapses.cleft_layer), lay.grid.chunk(tuple(coord)),
                  labels)


@functools.lru_cache(maxsize=2)
def _model(path: str):
    import io

    import torch
    from cloudfiles import CloudFiles

    blob = CloudFiles(path.rsplit("/", 1)[0]).get(path.rsplit("/", 1)[1])
    return torch.jit.load(io.BytesIO(blob), map_location="cpu").eval()


@queueable
def syn_assign(conf: dict, coord: list[int]) -> None:
    """Assign partners to the clefts whose home is this chunk."""
    config = load_config(conf)
    lay = layout(config)
    box = lay.grid.chunk(tuple(coord))
    s = config.synapses
    r = s.partner_radius
    clefts = _read(config.layer_path(s.cleft_layer), box, r, 0, lay.bbox)
    seg = _read(s.segmentation, box, r, config.mip, lay.bbox)
    image = _read(image_path(config), box, r, config.mip, lay.bbox) if image_path(config) \
        else None
    model = _model(s.partner_model) if s.partner_model else None
    jobs.assign_job(store(config), lay, tuple(coord), clefts, seg, image, params_of(config),
                    model)


def create_synapse_tasks(config: RunConfig, wave: str) -> list[partial]:
    """Tasks of one wave: "map", "remap", "assign" (per chunk), "reduce" (one), "relabel"."""
    conf = config.to_dict()
    coords = [list(c) for c in layout(config).grid.coords()]
    if wave == "reduce":
        return [partial(syn_reduce, conf)]
    if wave in ("remap", "relabel"):
        return [partial(syn_remap, conf, c, wave == "relabel") for c in coords]
    return [partial({"map": syn_map, "assign": syn_assign}[wave], conf, c) for c in coords]
