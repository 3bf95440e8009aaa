"""Alignment queue tasks: ``create_alignment_tasks(config, wave)`` and the task functions.

Waves, in order: ``defects`` (per chunk at the field mip), ``fields`` (per block x xy
chunk), ``stitch`` (per xy chunk, sequential over blocks), ``compose`` (per chunk at the
field mip), ``render`` and ``masks`` (per chunk at the render mip). Every task is
idempotent: it reads layers and tables written by earlier waves and overwrites its own
output chunk (or store entry) whole.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch
from taskqueue import queueable

from pipeline.align import jobs
from pipeline.align.blocks import Block, blocks
from pipeline.align.fields import ClassicalParams
from pipeline.align.ncc import MatchParams
from pipeline.align.volumes import LayerVolume
from pipeline.config import RunConfig, load_config
from pipeline.geometry import Bbox, ChunkGrid, Vec
from pipeline.masks.rules import MisalignParams
from pipeline.octree_jobs import CloudStore


def to_mip(box: Bbox, src: int, dst: int) -> Bbox:
    """``box`` (x, y at mip ``src``) at mip ``dst``; z unchanged (outward rounding)."""
    if dst <= src:
        k = 2 ** (src - dst)
        return Bbox((box.start[0] * k, box.start[1] * k, box.start[2]),
                    (box.stop[0] * k, box.stop[1] * k, box.stop[2]))
    k = 2 ** (dst - src)
    return Bbox((box.start[0] // k, box.start[1] // k, box.start[2]),
                (-(-box.stop[0] // k), -(-box.stop[1] // k), box.stop[2]))


def default_margin(p: ClassicalParams) -> int:
    """Context of field tasks: the search reach of all levels, half a coarsest tile and
    twice the smoothing scale (field-mip px)."""
    L, m = p.levels, p.match
    return m.radius * (2 ** L - 1) + m.tile * 2 ** max(L - 2, 0) + math.ceil(2 * p.smooth)


def params_of(config: RunConfig) -> jobs.AlignParams:
    """The jobs' parameters from the run config's ``alignment`` section."""
    a = config.alignment
    assert a is not None
    model = ClassicalParams(match=MatchParams(tile=a.tile_size, radius=a.search_radius),
                            levels=a.levels, smooth=a.smooth, iterations=a.refine_iterations,
                            lr=a.refine_lr, smoothness=a.smoothness, relax=a.fold_relax)
    return jobs.AlignParams(
        model=model, neighbours=a.neighbours, block_size=a.block_size, overlap=a.overlap,
        margin=a.margin if a.margin is not None else default_margin(model),
        scale=2 ** (a.field_mip - a.render_mip),
        misalign=MisalignParams(tile=a.tile_size, radius=a.search_radius,
                                threshold=a.misalign_threshold),
        composite_partial=a.composite_partial)


@dataclass(frozen=True)
class Geometry:
    """The run's boxes and grids at the render and field mips."""

    render: Bbox
    field: Bbox
    chunk: Vec
    field_chunk: Vec

    @property
    def z0(self) -> int:
        return self.render.start[2]

    @property
    def z1(self) -> int:
        return self.render.stop[2]

    def render_grid(self) -> ChunkGrid:
        return ChunkGrid(self.render, self.chunk)

    def field_grid(self) -> ChunkGrid:
        return ChunkGrid(self.field, self.field_chunk)

    def xy_grid(self) -> ChunkGrid:
        f = self.field
        return ChunkGrid(Bbox(f.start, (f.stop[0], f.stop[1], f.start[2] + 1)),
                         (self.field_chunk[0], self.field_chunk[1], 1))

    def blocks(self, p: jobs.AlignParams,
               sections: dict[str, np.ndarray] | None = None) -> list[Block]:
        """The blocks; with the sections table, overlaps skip missing and folded sections."""
        valid = None if sections is None else jobs.steady_sections(sections)
        return blocks(self.z0, self.z1, p.block_size, p.overlap, valid)


def geometry(config: RunConfig) -> Geometry:
    a = config.alignment
    assert a is not None and config.bbox is not None
    render = to_mip(Bbox.from_list(config.bbox), config.mip, a.render_mip)
    s = 2 ** (a.field_mip - a.render_mip)
    c = config.chunk_size
    return Geometry(render, to_mip(render, a.render_mip, a.field_mip), c,
                    (max(1, c[0] // s), max(1, c[1] // s), c[2]))


def image_path(config: RunConfig) -> str:
    a = config.alignment
    assert a is not None
    return a.image or config.image_path


def scratch(config: RunConfig) -> str:
    return f"{config.scratch_path}/align"


def store(config: RunConfig) -> CloudStore:
    return CloudStore(scratch(config))


def layer_paths(config: RunConfig) -> dict[str, str]:
    """Every layer of the stage by role (``field`` is the one rendering reads)."""
    a = config.alignment
    assert a is not None
    out = {k: config.layer_path(getattr(a, f"{k}_layer")) for k in
           ("aligned", "input_mask", "output_mask", "defects", "misalignment")}
    out["computed_field"] = config.layer_path(a.field_layer)
    out["field"] = a.field or out["computed_field"]
    out["even"], out["odd"] = f"{scratch(config)}/field_even", f"{scratch(config)}/field_odd"
    return out


def _setup(conf: dict) -> tuple[RunConfig, jobs.AlignParams, Geometry, dict[str, str]]:
    torch.set_num_threads(1)
    config = load_config(conf)
    return config, params_of(config), geometry(config), layer_paths(config)


def _sections(config: RunConfig) -> dict[str, np.ndarray]:
    return store(config).get("sections")


@queueable
def align_defects(conf: dict, bbox: list[int]) -> None:
    """Defect codes of one chunk at the field mip, and its per-section data counts."""
    config, p, _geo, paths = _setup(conf)
    box = Bbox.from_list(bbox)
    a = config.alignment
    counts = jobs.defects_job(LayerVolume(image_path(config), a.field_mip),
                              LayerVolume(paths["defects"]), box, p)
    store(config).put(f"defects/{box}", counts)


@queueable
def align_fields(conf: dict, block: int, bbox: list[int]) -> None:
    """Fields of one block in one xy chunk (in the block's frame)."""
    config, p, geo, paths = _setup(conf)
    sections = _sections(config)
    blk = geo.blocks(p, sections)[block]
    jobs.block_job(LayerVolume(image_path(config), config.alignment.field_mip),
                   LayerVolume(paths["defects"]), sections, blk,
                   Bbox.from_list(bbox), geo.z0, p, LayerVolume(paths[blk.parity]))


def _parity(paths: dict[str, str]) -> dict[str, LayerVolume]:
    return {k: LayerVolume(paths[k]) for k in ("even", "odd")}


@queueable
def align_stitch(conf: dict, bbox: list[int]) -> None:
    """The corrections of every block in one xy chunk (sequential over blocks)."""
    config, p, geo, paths = _setup(conf)
    box = Bbox.from_list(bbox)
    sections = _sections(config)
    gs = jobs.stitch_job(_parity(paths), sections, geo.blocks(p, sections), box, geo.z0, p)
    st = store(config)
    for b, g in enumerate(gs):
        st.put(f"stitch/{box}/{b}", {} if g is None else {"g": g.cpu().numpy()})


@queueable
def align_compose(conf: dict, bbox: list[int]) -> None:
    """Final fields of one chunk at the field mip."""
    config, p, geo, paths = _setup(conf)
    box = Bbox.from_list(bbox)
    xy = Bbox((box.start[0], box.start[1], geo.field.start[2]),
              (box.stop[0], box.stop[1], geo.field.start[2] + 1))
    st = store(config)

    def correction(b: int) -> torch.Tensor | None:
        d = st.get(f"stitch/{xy}/{b}")
        return torch.from_numpy(d["g"]).to(jobs.device()) if "g" in d else None

    sections = _sections(config)
    jobs.compose_job(_parity(paths), correction, geo.blocks(p, sections), box, geo.z0, p,
                     LayerVolume(paths["computed_field"]), sections)


@queueable
def align_render(conf: dict, bbox: list[int]) -> None:
    """The aligned image of one chunk at the render mip."""
    config, p, geo, paths = _setup(conf)
    a = config.alignment
    jobs.render_job(LayerVolume(image_path(config), a.render_mip),
                    LayerVolume(paths["field"], a.field_mip if a.field else 0),
                    Bbox.from_list(bbox), p, LayerVolume(paths["aligned"]),
                    _sections(config), geo.z0)


@queueable
def align_masks(conf: dict, bbox: list[int]) -> None:
    """Input/output masks and the misalignment map of one chunk at the render mip."""
    _config, p, _geo, paths = _setup(conf)
    outs = {"input": LayerVolume(paths["input_mask"]),
            "output": LayerVolume(paths["output_mask"]),
            "misalignment": LayerVolume(paths["misalignment"])}
    jobs.masks_job(LayerVolume(paths["aligned"]), Bbox.from_list(bbox), p, outs)


WAVES = ("defects", "fields", "stitch", "compose", "render", "masks")


def create_alignment_tasks(config: RunConfig, wave: str) -> list[partial]:
    """The tasks of one wave (see module doc)."""
    if wave not in WAVES:
        raise ValueError(f"unknown alignment wave {wave!r}; one of {WAVES}")
    p, geo = params_of(config), geometry(config)
    conf = config.to_dict()
    if wave == "defects":
        return [partial(align_defects, conf, b.to_list()) for b in geo.field_grid()]
    if wave == "fields":
        return [partial(align_fields, conf, blk.index, b.to_list())
                for blk in geo.blocks(p) for b in geo.xy_grid()]
    if wave == "stitch":
        return [partial(align_stitch, conf, b.to_list()) for b in geo.xy_grid()]
    if wave == "compose":
        return [partial(align_compose, conf, b.to_list()) for b in geo.field_grid()]
    fn = align_render if wave == "render" else align_masks
    return [partial(fn, conf, b.to_list()) for b in geo.render_grid()]
