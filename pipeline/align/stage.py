"""The `alignment` stage's steps, as the DAG and the CLI call them.

Outputs under ``output`` (names from :class:`pipeline.config.AlignmentParams`):

- ``field`` (float32, 2 channels x, y: pull displacements in pixels at ``field_mip``),
- ``aligned`` (uint8 image at ``render_mip``, with an igneous pyramid),
- ``input_mask`` / ``output_mask`` (uint8, 1 = masked, at ``render_mip``): give their paths
  to the inference stage as ``inference.input_mask`` / ``inference.output_mask``,
- ``defects`` (uint8 codes of the raw image at ``field_mip``: 1 empty, 2 fold, 4 crack,
  8 resin) and ``misalignment`` (float32 residual px against the previous section),

and under ``{scratch}/align/``: the block fields (``field_even``/``field_odd``), the sections
table (``sections.npz``: valid_fraction, missing, partial) and the stitch corrections.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from cloudfiles import CloudFiles

from pipeline import reachability, storage
from pipeline.align import jobs
from pipeline.align.tasks import (
    create_alignment_tasks,
    geometry,
    image_path,
    layer_paths,
    params_of,
    scratch,
    store,
    to_mip,
)
from pipeline.config import ConfigError, RunConfig, load_config
from pipeline.geometry import Bbox
from pipeline.ingest.tasks import create_pyramid_tasks


def _check_image(config: RunConfig, problems: list[tuple[str, str]]):
    a = config.alignment
    field = "alignment.image" if a.image else "input"
    if not a.image and not config.input and config.ingest is None:
        problems.append(("alignment.image", "the alignment stage needs an image layer: give "
                                            "`alignment.image` or `input`"))
        return None
    path = image_path(config)
    try:
        vol = storage.open_layer(path)
    except storage.LayerError as e:
        problems.append((field, str(e)))
        return None
    if vol.num_channels != 1 or str(vol.dtype) != "uint8":
        problems.append((field, f"layer {path} is {vol.num_channels}-channel {vol.dtype}; "
                                "expected a 1-channel uint8 image"))
    scales = vol.info["scales"]
    n = len(scales)
    for name, mip in (("alignment.field_mip", a.field_mip),
                      ("alignment.render_mip", a.render_mip)):
        if mip >= n:
            problems.append((name, f"the image layer {path} has mips 0..{n - 1}; mip {mip} is "
                                   "missing (add a downsampling pyramid first)"))
        elif scales[mip]["size"][2] != scales[0]["size"][2]:
            problems.append((name, f"mip {mip} of the image layer {path} is downsampled in z "
                                   f"(resolution {scales[mip]['resolution']}); alignment needs "
                                   "sections: an x, y-only pyramid (factor 2, 2, 1)"))
    return vol


def sanity_check(conf: dict[str, Any] | RunConfig) -> RunConfig:
    """Validate the config against its layers; return it with ``bbox`` resolved (at
    ``mip``). Writes nothing. Raise ConfigError naming each bad field."""
    config = reachability.checked(load_config(conf))
    a = config.alignment
    if a is None:
        raise ConfigError([("alignment", "the alignment stage needs an `alignment` section")])
    problems: list[tuple[str, str]] = []
    vol = _check_image(config, problems)
    if a.field:
        try:
            fvol = storage.open_layer(a.field, a.field_mip)
            if fvol.num_channels != 2 or str(fvol.dtype) != "float32":
                problems.append(("alignment.field", f"layer {a.field} is {fvol.num_channels}"
                                 f"-channel {fvol.dtype}; a field layer is 2-channel float32 "
                                 "(x, y displacement)"))
        except storage.LayerError as e:
            problems.append(("alignment.field", str(e)))
    s = 2 ** (a.field_mip - a.render_mip)
    for name in ("chunk_size", "storage_chunk_size"):
        v = getattr(config, name)
        if v[0] % s or v[1] % s:
            problems.append((name, f"x and y ({v[0]}, {v[1]}) must be multiples of {s} "
                                   "(2**(alignment.field_mip - alignment.render_mip))"))
    bbox = None
    if vol is not None:
        b = vol.bounds
        bounds = to_mip(Bbox(tuple(b.minpt), tuple(b.maxpt)), 0, config.mip)
        bbox = config.bounds or bounds
        if not bounds.contains(bbox):
            problems.append(("bbox", f"{bbox.to_list()} lies outside the image, whose bounds "
                                     f"are {bounds.to_list()}"))
        render = to_mip(bbox, config.mip, a.render_mip)
        if render.start[0] % s or render.start[1] % s:
            problems.append(("bbox", f"x and y start {render.start[:2]} (at render_mip) must "
                                     f"be multiples of {s}"))
    if why := storage.unwritable(config.output):
        problems.append(("output", why))
    elif not config.overwrite:
        for path in layer_paths(config).values():
            if path != a.field and storage.layer_exists(path) and storage.layer_has_data(path):
                problems.append(("output", f"layer {path} already holds data; set "
                                           "overwrite: true"))
                break
    if problems:
        raise ConfigError(problems)
    return config.model_copy(update={"bbox": tuple(bbox.to_list())})


def prepare(config: RunConfig) -> None:
    """Create every layer of the stage (full info, status incomplete) and clear the
    stage's scratch tables."""
    a = config.alignment
    geo = geometry(config)
    paths = layer_paths(config)
    img = storage.open_layer(image_path(config))
    res = {m: tuple(float(r) for r in img.scales[m]["resolution"])
           for m in (a.field_mip, a.render_mip)}
    s = 2 ** (a.field_mip - a.render_mip)
    sc = config.storage_chunk_size
    fchunk = (max(1, sc[0] // s), max(1, sc[1] // s), 1)
    create = storage.create_layer
    create(paths["defects"], "image", geo.field, res[a.field_mip],
           (fchunk[0], fchunk[1], sc[2]), overwrite=True)
    roles = ["even", "odd"] + ([] if a.field else ["computed_field"])
    for role in roles:
        create(paths[role], "field", geo.field, res[a.field_mip], fchunk, overwrite=True)
    for role in ("aligned", "input_mask", "output_mask"):
        create(paths[role], "image", geo.render, res[a.render_mip], sc, overwrite=True)
    create(paths["misalignment"], "probability", geo.render, res[a.render_mip], sc,
           overwrite=True)
    cf = CloudFiles(scratch(config))
    cf.delete([n for n in cf.list() if n.endswith(".npz")])


def tasks(config: RunConfig, wave: str) -> list:
    """The tasks of ``wave``; "pyramid" gives igneous downsampling of the aligned image.
    With ``alignment.field`` given, the field waves are empty (its field is rendered)."""
    a = config.alignment
    if wave == "pyramid":
        res = tuple(float(r) for r in storage.open_layer(layer_paths(config)["aligned"])
                    .resolution)
        return create_pyramid_tasks(layer_paths(config)["aligned"], res, a.downsample_mips)
    if a.field and wave in ("fields", "stitch", "compose"):
        return []
    return create_alignment_tasks(config, wave)


def reduce_sections(config: RunConfig) -> dict[str, Any]:
    """After the defects wave: sum the chunks' counts into the sections table."""
    geo = geometry(config)
    st = store(config)
    parts = [st.get(f"defects/{b}") for b in geo.field_grid()]
    table = jobs.sections_table(parts, geo.z0, geo.z1, params_of(config))
    st.put("sections", table)
    z = np.arange(geo.z0, geo.z1)
    return {"missing": z[table["missing"]].tolist(), "partial": z[table["partial"]].tolist()}


def finish(config: RunConfig) -> None:
    """Mark every output layer complete."""
    for role, path in layer_paths(config).items():
        if role not in ("even", "odd") and path != config.alignment.field:
            storage.set_status(path, "complete")


def layers(config: RunConfig) -> dict[str, tuple[str, str]]:
    """The stage's layers for the run report: {name: (path, kind)}."""
    a = config.alignment
    p = layer_paths(config)
    return {"image": (image_path(config), "image"), a.field_layer: (p["field"], "field"),
            a.aligned_layer: (p["aligned"], "image"), a.defects_layer: (p["defects"], "image"),
            a.input_mask_layer: (p["input_mask"], "image"),
            a.output_mask_layer: (p["output_mask"], "image"),
            a.misalignment_layer: (p["misalignment"], "probability")}
