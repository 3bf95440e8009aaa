"""The alignment stage's jobs over volumes: defects → fields → stitch → compose → render → masks.

Tasks call them with :class:`~pipeline.align.volumes.LayerVolume`\\ s; :func:`align_in_memory`
calls them with arrays, chunk by chunk, exactly as the waves do. Boxes are at the field mip
for ``defects_job``, ``block_job``, ``stitch_job`` and ``compose_job`` and at the render mip
for ``render_job`` and ``masks_job``.

Chunking promises (see the tests): rendering a chunk equals the same pixels of a
whole-volume render exactly; fields, computed per chunk with ``margin`` pixels of context,
equal a whole-volume run to within a fraction of a pixel away from the volume's edge (tile
grids are global, so interior tiles match exactly; only the fill of invalid tiles, the
smoothing and the refinement see the chunk's edge, ``margin`` pixels away).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from pipeline.align.blocks import (
    Block,
    align_block,
    blocks,
    crossfade,
    crossfade_weight,
    global_field,
    stitch,
)
from pipeline.align.fields import ClassicalFieldModel, ClassicalParams, FieldModel
from pipeline.align.render import composite, fine_field, margin_for, partial_runs, render_section
from pipeline.align.volumes import ArrayVolume, Volume
from pipeline.align.warp import as_tensor, device
from pipeline.geometry import Bbox, ChunkGrid, Vec
from pipeline.masks.detect import (
    EMPTY,
    RELAX,
    ClassicalDetector,
    DefectDetector,
    detect_stack,
    has_data,
    section_flags,
)
from pipeline.masks.rules import MisalignParams, masks_for_stack

Tensor = torch.Tensor


@dataclass(frozen=True)
class AlignParams:
    """Everything the jobs need (see :class:`pipeline.config.AlignmentParams`)."""

    model: ClassicalParams = field(default_factory=ClassicalParams)
    neighbours: int = 3
    block_size: int = 16
    overlap: int = 2
    margin: int = 96
    scale: int = 1
    detector: ClassicalDetector = field(default_factory=ClassicalDetector)
    misalign: MisalignParams = field(default_factory=MisalignParams)
    composite_partial: bool = False
    missing: float = 0.05
    partial: float = 0.95

    @property
    def snap(self) -> int:
        """Field task regions start on multiples of this (the coarsest level's factor)."""
        return 2 ** (self.model.levels - 1)


def _xy(box: Bbox, z0: int, z1: int) -> Bbox:
    return Bbox((box.start[0], box.start[1], z0), (box.stop[0], box.stop[1], z1))


def _fields(data: np.ndarray) -> np.ndarray:
    """(x, y, z, 2) layer data → (z, 2, x, y) fields."""
    return np.ascontiguousarray(data.transpose(2, 3, 0, 1))


def defects_job(image: Volume, out: Volume, box: Bbox, p: AlignParams,
                detector: DefectDetector | None = None) -> dict[str, np.ndarray]:
    """Detect defects in ``box`` (read with a margin so that long folds are seen whole),
    write their codes, and return per-section counts of pixels with data."""
    m = int(p.detector.min_length)
    img = image.read(box, (m, m, 0))[..., 0]
    codes = detect_stack(img, detector or p.detector)
    inner = (slice(m, m + box.shape[0]), slice(m, m + box.shape[1]))
    out.write(box, codes[inner])
    data = has_data(img[inner]).sum(axis=(0, 1))
    relax = ((codes[inner] & RELAX) != 0).sum(axis=(0, 1))
    return {"z": np.arange(box.start[2], box.stop[2]), "data": data.astype(np.int64),
            "total": np.full(box.shape[2], box.shape[0] * box.shape[1], np.int64),
            "relax": relax.astype(np.int64)}


def sections_table(parts: list[dict[str, np.ndarray]], z0: int, z1: int,
                   p: AlignParams) -> dict[str, np.ndarray]:
    """Sum the chunks' counts: per section ``valid_fraction``, ``missing``, ``partial`` and
    ``folded`` (has fold or crack pixels)."""
    sums = {k: np.zeros(z1 - z0, np.int64) for k in ("data", "total", "relax")}
    for part in parts:
        for k, v in sums.items():
            np.add.at(v, part["z"] - z0, part[k])
    frac = sums["data"] / np.maximum(sums["total"], 1)
    return {"valid_fraction": frac, **section_flags(frac, p.missing, p.partial),
            "folded": sums["relax"] > 0}


def field_region(box: Bbox, p: AlignParams, bounds: Bbox | None = None) -> Bbox:
    """The xy region a field task reads: ``box`` grown by ``margin`` and clipped to
    ``bounds`` (the image's; beyond it there is no data), its start snapped down to a
    multiple of :attr:`AlignParams.snap` (so pyramid levels align globally)."""
    q = p.snap
    lo = [box.start[a] - p.margin for a in range(2)]
    hi = [box.stop[a] + p.margin for a in range(2)]
    if bounds is not None:
        lo = [max(lo[a], bounds.start[a]) for a in range(2)]
        hi = [min(hi[a], bounds.stop[a]) for a in range(2)]
    start = [(lo[a] // q) * q for a in range(2)]
    return Bbox((*start, box.start[2]), (*hi, box.stop[2]))


def block_job(image: Volume, codes: Volume, sections: dict[str, np.ndarray], block: Block,
              box: Bbox, z0: int, p: AlignParams, out: Volume,
              model: FieldModel | None = None) -> None:
    """Align the sections of ``block`` in the xy chunk ``box`` (with context) and write
    their fields (in the block's own frame) into ``out`` (the block parity's layer)."""
    region = field_region(_xy(box, block.start, block.stop), p, image.bounds)
    img = image.read(region)[..., 0]
    cd = codes.read(region)[..., 0]
    masks = has_data(img) & ((cd & EMPTY) == 0)
    sl = slice(block.start - z0, block.stop - z0)
    f = align_block(img, masks, cd & RELAX, ~sections["missing"][sl], region.start[:2],
                    model or ClassicalFieldModel(p.model), p.neighbours,
                    ~sections["folded"][sl])
    ox, oy = box.start[0] - region.start[0], box.start[1] - region.start[1]
    crop = f[:, :, ox:ox + box.shape[0], oy:oy + box.shape[1]]
    out.write(_xy(box, block.start, block.stop), crop.transpose(2, 3, 0, 1))


def _read_fields(vol: Volume, box: Bbox, z0: int, z1: int, margin: int,
                 dev: torch.device) -> Tensor:
    data = vol.read(_xy(box, z0, z1), (margin, margin, 0), clamp=True)
    return as_tensor(_fields(data), dev)


def steady_sections(sections: dict[str, np.ndarray]) -> np.ndarray:
    """Sections that neither are missing nor have folds: what block overlaps count and
    stitching trusts (a fold's field is least certain, and a stitch correction taken
    from it would shift the whole next block)."""
    return ~sections["missing"] & ~sections["folded"]


def stitch_job(fields: dict[str, Volume], sections: dict[str, np.ndarray],
               blks: list[Block], box: Bbox, z0: int, p: AlignParams) -> list[Tensor | None]:
    """Per block, the correction ``g_b`` (on the xy chunk ``box``) that brings it into the
    global frame (None for block 0). Sequential over blocks, pointwise in xy."""
    dev = device()
    M = p.margin
    valid = ~sections["missing"]
    steady = steady_sections(sections)
    out: list[Tensor | None] = [None]
    for b in range(1, len(blks)):
        prv, cur = blks[b - 1], blks[b]
        zs = [z for z in range(cur.start, cur.own) if steady[z - z0]] or \
            [z for z in range(cur.start, cur.own) if valid[z - z0]]
        fp = _read_fields(fields[prv.parity], box, prv.start, prv.stop, M, dev)
        previous = [global_field(out[-1], fp[z - prv.start], (M, M)) for z in zs]
        if zs:
            fc = _read_fields(fields[cur.parity], box, cur.start, cur.own, M, dev)
            current = [fc[z - cur.start] for z in zs]
            out.append(stitch(previous, current, (M, M)))
            continue
        # no valid overlap: the block's anchor is taken to sit where the previous block's
        # last valid section does (its raw frame)
        last = [z for z in range(prv.start, prv.stop) if valid[z - z0]]
        out.append(global_field(out[-1], fp[last[-1] - prv.start], (M, M)) if last
                   else out[-1])
    return out


def owner(z: int, z0: int, block_size: int) -> int:
    """Index of the block that owns section ``z``."""
    return (z - z0) // block_size


def compose_job(fields: dict[str, Volume], correction: Callable[[int], Tensor | None],
                blks: list[Block], box: Bbox, z0: int, p: AlignParams, out: Volume,
                sections: dict[str, np.ndarray] | None = None) -> None:
    """Write the final field of ``box`` (xy chunk x a z range): the owner block's field in
    the global frame, cross-faded into the next block's over that block's overlap (see
    :func:`pipeline.align.blocks.crossfade`). A folded section keeps its owner's field."""
    dev = device()
    M = p.margin
    res = np.zeros((*box.shape, 2), np.float32)
    for z in range(box.start[2], box.stop[2]):
        b = owner(z, z0, p.block_size)
        blk = blks[b]
        f = _read_fields(fields[blk.parity], box, z, z + 1, M, dev)[0]
        g = global_field(correction(b), f, (M, M))
        nxt = blks[b + 1] if b + 1 < len(blks) else None
        w = crossfade_weight(z, nxt)
        if w > 0 and nxt is not None and (sections is None or not sections["folded"][z - z0]):
            f2 = _read_fields(fields[nxt.parity], box, z, z + 1, M, dev)[0]
            g = crossfade(g, global_field(correction(b + 1), f2, (M, M)), w)
        res[:, :, z - box.start[2]] = torch.nan_to_num(g).permute(1, 2, 0).cpu().numpy()
    out.write(box, res)


def render_job(image: Volume, fields: Volume, box: Bbox, p: AlignParams, out: Volume,
               sections: dict[str, np.ndarray] | None = None, z0: int = 0) -> None:
    """Render ``box`` (render mip): each section pulled through the final field, upsampled
    from the field mip; with ``composite_partial``, runs of partial sections are replaced by
    their composite (largest to smallest, first non-zero pixel)."""
    s = p.scale
    zs = list(range(box.start[2], box.stop[2]))
    runs = []
    if p.composite_partial and sections is not None:
        runs = [r for r in partial_runs(sections["partial"], z0)
                if r[-1] >= box.start[2] and r[0] < box.stop[2]]
        zs = sorted(set(zs).union(*runs))
    lo = [math.floor(box.start[a] / s) - 1 for a in range(2)]
    hi = [math.ceil(box.stop[a] / s) + 1 for a in range(2)]
    fbox = Bbox((*lo, zs[0]), (*hi, zs[-1] + 1))
    F = fields.read(fbox, clamp=True)
    dev = device()
    fine = {z: fine_field(F[:, :, z - zs[0]].transpose(2, 0, 1), (lo[0], lo[1]), s,
                          box.start[:2], box.shape[:2], dev) for z in zs}
    m = max(margin_for(f) for f in fine.values())
    img = image.read(_xy(box, zs[0], zs[-1] + 1), (m, m, 0))[..., 0]
    aligned = {z: render_section(img[:, :, z - zs[0]], fine[z], m) for z in zs}
    for run in runs:
        comp = composite([aligned[z] for z in run],
                         [float(sections["valid_fraction"][z - z0]) for z in run])
        for z in run:
            aligned[z] = comp
    out.write(box, np.stack([aligned[z] for z in range(box.start[2], box.stop[2])], -1))


def masks_job(aligned: Volume, box: Bbox, p: AlignParams, outs: dict[str, Volume],
              detector: DefectDetector | None = None) -> None:
    """Defects, misalignment maps and the input/output masks of ``box`` (render mip), from
    the aligned image read with xy context and 3 sections above and below."""
    mxy = p.misalign.tile + p.misalign.radius
    mz = 3
    stack = aligned.read(box, (mxy, mxy, mz))[..., 0]
    codes = detect_stack(stack, detector or p.detector)
    res = masks_for_stack(stack, codes, (box.start[0] - mxy, box.start[1] - mxy), p.misalign)
    inner = (slice(mxy, mxy + box.shape[0]), slice(mxy, mxy + box.shape[1]),
             slice(mz, mz + box.shape[2]))
    for name, vol in outs.items():
        vol.write(box, res[name][inner])


def align_in_memory(image: np.ndarray, p: AlignParams, chunk: Vec | None = None,
                    model: FieldModel | None = None, masks: bool = True) -> dict[str, object]:
    """Run every job in memory on a stack ``(X, Y, Z)`` uint8 (field mip = render mip).

    ``chunk`` (x, y, z) is the task chunk (default: the whole volume, a single-chunk run).
    Returns ``codes``, ``sections``, ``fields`` ``(Z, 2, X, Y)``, ``aligned`` and, with
    ``masks``, ``input``, ``output`` and ``misalignment`` ``(X, Y, Z)``.
    """
    X, Y, Z = image.shape
    bbox = Bbox.from_shape(image.shape)
    grid = ChunkGrid(bbox, tuple(chunk or image.shape))
    xy = ChunkGrid(Bbox((0, 0, 0), (X, Y, 1)), (grid.chunk_size[0], grid.chunk_size[1], 1))
    img = ArrayVolume(image)
    codes = ArrayVolume.empty(bbox, "uint8")
    parts = [defects_job(img, codes, box, p) for box in grid]
    sections = sections_table(parts, 0, Z, p)
    blks = blocks(0, Z, p.block_size, p.overlap, steady_sections(sections))
    par: dict[str, Volume] = {k: ArrayVolume.empty(bbox, "float32", 2) for k in ("even", "odd")}
    for blk in blks:
        for box in xy:
            block_job(img, codes, sections, blk, box, 0, p, par[blk.parity], model)
    corr = {str(box): stitch_job(par, sections, blks, box, 0, p) for box in xy}
    final = ArrayVolume.empty(bbox, "float32", 2)
    for box in grid:
        key = str(_xy(box, 0, 1))
        compose_job(par, lambda b, key=key: corr[key][b], blks, box, 0, p, final, sections)
    aligned = ArrayVolume.empty(bbox, "uint8")
    for box in grid:
        render_job(img, final, box, p, aligned, sections)
    out: dict[str, object] = {"codes": codes.data[..., 0], "sections": sections,
                              "fields": _fields(final.data), "aligned": aligned.data[..., 0]}
    if masks:
        vols = {"input": ArrayVolume.empty(bbox, "uint8"),
                "output": ArrayVolume.empty(bbox, "uint8"),
                "misalignment": ArrayVolume.empty(bbox, "float32")}
        for box in grid:
            masks_job(aligned, box, p, vols)
        out.update({k: v.data[..., 0] for k, v in vols.items()})
    return out
