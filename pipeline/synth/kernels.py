"""Synthetic serial-section EM with exact ground truth: a pure kernel (arrays out, no I/O).

:func:`synthesize` renders a volume in x, y, z axis order (the CloudVolume convention):

- cells: a smoothly distorted Voronoi tessellation in physical units, stretched along z so that
  cells run through many sections like neurites. Membranes are the 2-voxel band, drawn in each
  section, where xy-neighbouring voxels belong to different cells; they are 0 in the
  segmentation. Every nonzero id is one 6-connected component.
- image: bright textured cytoplasm (about 150-200) with per-cell tone, dark membranes (about
  40-90), dark mitochondria (labelled as their cell, as in real ground truth), synapses with a
  presynaptic vesicle cloud and a postsynaptic density, an in-plane blur, noise, and a small
  per-section contrast jitter. Values are 1..255; 0 means "no data" (defects only).
- clefts: flat patches on the membrane band between two cells, ids 1..n, with a partner record
  each, and a detector-like ``cleft_probability`` whose ``> 0.5`` set is exactly the clefts.
- defects (image only; the truth stays aligned): section shifts, folds, missing and partially
  missing sections, described in a JSON-serialisable dict.

Every random stream is derived from ``seed`` alone, one stream per part, so a volume rendered
with defects is the defect-free volume with the recorded defects applied.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cc3d
import fastremap
import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

from pipeline.synth.features import (
    apply_defects,
    interface_partner,
    mitochondria,
    place_synapses,
)

__all__ = ["DefectSpec", "SynthVolume", "cell_labels", "smooth_noise", "synthesize"]

Shape3 = tuple[int, int, int]
Res3 = tuple[float, float, float]

_STREAMS = ("cells", "synapses", "mito", "texture", "probability", "defects")

MEMBRANE_VALUE = 45.0
"""Intensity painted on membranes before the blur (ends near 70 after it)."""
CYTOPLASM_VALUE = 172.0
"""Mean cytoplasm intensity."""


@dataclass(frozen=True)
class DefectSpec:
    """Which image defects to inject.

    shifts: random per-section xy translations (a clipped random walk), at most ``max_shift`` px.
    folds: number of sections with a fold (a dark stripe, the image torn across it).
    missing: number of all-zero sections.
    partial_missing: number of sections with a zeroed region (a half-plane).
    """

    shifts: bool = False
    max_shift: int = 6
    folds: int = 0
    missing: int = 0
    partial_missing: int = 0


@dataclass
class SynthVolume:
    """A synthetic EM volume and its truth; every array has shape (X, Y, Z)."""

    image: np.ndarray
    """uint8 EM image; 0 only where a defect removed data."""
    segmentation: np.ndarray
    """uint64 cell ids 1..n; 0 on membranes (a thin band)."""
    clefts: np.ndarray
    """uint64 cleft ids 1..n_clefts; 0 elsewhere."""
    cleft_probability: np.ndarray
    """float32 in [0, 1]; ``> 0.5`` exactly on cleft voxels."""
    synapses: list[dict] = field(default_factory=list)
    """One per cleft: cleft_id, pre, post, centroid ([x, y, z] voxels), size (voxels)."""
    defects: dict = field(default_factory=dict)
    """shifts {str(z): [dx, dy]}, folds, missing, partial_missing (z lists), details, seed."""


def _rngs(seed: int) -> dict[str, np.random.Generator]:
    """One independent generator per part of the volume, all derived from ``seed``."""
    children = np.random.SeedSequence(seed).spawn(len(_STREAMS))
    return {name: np.random.default_rng(s) for name, s in zip(_STREAMS, children, strict=True)}


def smooth_noise(
    rng: np.random.Generator, shape: Shape3, wavelength_vox: tuple[float, float, float]
) -> np.ndarray:
    """Smooth random field of ``shape`` with zero mean and unit standard deviation (float32).

    Gaussian noise on a grid with one node per ``wavelength_vox`` voxels along each axis
    (reaching one node beyond the volume), spread by a separable Gaussian kernel of
    0.6 wavelength: features are about one wavelength across.
    """
    mats = []
    for n, w in zip(shape, wavelength_vox, strict=True):
        w = max(float(w), 1e-3)
        nodes = (np.arange(int(np.ceil(n / w)) + 3) - 1) * w
        d = (np.arange(n)[:, None] - nodes[None, :]) / (0.6 * w)
        mats.append(np.exp(-0.5 * d**2).astype(np.float32))
    out = rng.standard_normal([m.shape[1] for m in mats]).astype(np.float32)
    out = np.tensordot(mats[0], out, axes=(1, 0))
    out = np.tensordot(out, mats[1], axes=(1, 1))
    out = np.tensordot(out, mats[2], axes=(1, 1))
    out -= out.mean()
    out /= max(float(out.std()), 1e-6)
    return np.ascontiguousarray(out, dtype=np.float32)


def cell_labels(
    rng: np.random.Generator,
    shape: Shape3,
    resolution: Res3,
    n_cells: int | None = None,
    *,
    cell_size_nm: float = 160.0,
    elongation: float = 4.0,
    min_cell_voxels: int = 30,
) -> tuple[np.ndarray, np.ndarray]:
    """Cell segmentation ``seg`` (uint64, 0 on membranes) and the membrane-filled ``lab``.

    Seeds sit on a jittered grid in a space where z is shrunk by ``elongation`` (so cells are
    elongated along z); each voxel takes the nearest seed after a smooth displacement of its
    physical position. Membranes are the voxels with an xy 4-neighbour in another cell.
    Components of ``seg`` are split to be 6-connected; those under ``min_cell_voxels`` join
    the membrane. ids are 1..n. ``lab`` equals ``seg`` off membranes and holds the in-plane
    nearest cell on them (0 only in a section without cells).
    """
    res = np.asarray(resolution, dtype=np.float64)
    scale = np.array([1.0, 1.0, 1.0 / elongation])
    ext = np.asarray(shape) * res * scale
    if n_cells is None:
        n_cells = max(2, round(float(np.prod(ext)) / cell_size_nm**3))
    spacing = (float(np.prod(ext)) / n_cells) ** (1 / 3)
    counts = np.maximum(1, np.round(ext / spacing)).astype(int)
    step = ext / counts
    grid = np.stack(np.meshgrid(*[np.arange(c) for c in counts], indexing="ij"), -1).reshape(-1, 3)
    seeds = (grid + 0.5 + rng.uniform(-0.4, 0.4, grid.shape)) * step
    tree = cKDTree(seeds)

    amp = 0.22 * spacing
    wave = tuple(float(1.3 * spacing / (r * s)) for r, s in zip(res, scale, strict=True))
    disp = [amp * smooth_noise(rng, shape, wave) for _ in range(3)]
    xs = (np.arange(shape[0]) + 0.5) * res[0]
    ys = (np.arange(shape[1]) + 0.5) * res[1]
    px, py = np.meshgrid(xs, ys, indexing="ij")
    raw = np.empty(shape, dtype=np.uint32)
    for z in range(shape[2]):
        pz = (z + 0.5) * res[2] * scale[2]
        q = np.stack([px + disp[0][..., z], py + disp[1][..., z], pz + disp[2][..., z]], axis=-1)
        raw[..., z] = tree.query(q.reshape(-1, 3), k=1)[1].reshape(shape[:2]) + 1

    membrane = np.zeros(shape, dtype=bool)
    for axis in (0, 1):
        a = [slice(None)] * 3
        b = [slice(None)] * 3
        a[axis], b[axis] = slice(1, None), slice(None, -1)
        diff = raw[tuple(a)] != raw[tuple(b)]
        membrane[tuple(a)] |= diff
        membrane[tuple(b)] |= diff
    seg = np.where(membrane, 0, raw)
    seg = cc3d.connected_components(seg, connectivity=6)
    seg = cc3d.dust(seg, threshold=min_cell_voxels, connectivity=6, in_place=True)
    seg, _ = fastremap.renumber(seg, preserve_zero=True, in_place=True)
    seg = seg.astype(np.uint64)

    lab = seg.copy()
    for z in range(shape[2]):
        sec = seg[..., z]
        if sec.any() and not sec.all():
            idx = ndimage.distance_transform_edt(
                sec == 0, return_distances=False, return_indices=True
            )
            lab[..., z] = sec[idx[0], idx[1]]
    return seg, lab


def _compose_image(
    rng: np.random.Generator,
    seg: np.ndarray,
    mito: np.ndarray,
    darkening: dict[str, np.ndarray],
) -> np.ndarray:
    """Render the defect-free uint8 image (1..255) from the truth masks."""
    shape = seg.shape
    n = int(seg.max()) + 1
    tone = rng.uniform(-8.0, 8.0, n).astype(np.float32)
    img = CYTOPLASM_VALUE + tone[seg.astype(np.intp)]
    img += 7.0 * smooth_noise(rng, shape, (5.0, 5.0, 1.0))
    img += 4.0 * smooth_noise(rng, shape, (2.0, 2.0, 1.0))
    img[seg == 0] = MEMBRANE_VALUE

    if mito.any():
        rim = mito & ~ndimage.binary_erosion(mito, structure=np.ones((3, 3, 1), bool))
        cristae = 12.0 * smooth_noise(rng, shape, (2.0, 2.0, 1.0))
        img[mito] = 105.0 + cristae[mito]
        img[rim] = 70.0
    img[darkening["psd"]] = 105.0
    img[darkening["vesicle_rim"]] = 65.0
    img[darkening["vesicle_lumen"]] = 125.0

    img = ndimage.gaussian_filter(img, sigma=(0.6, 0.6, 0.0))
    img += rng.normal(0.0, 7.0, shape).astype(np.float32)
    gain = rng.normal(1.0, 0.03, shape[2]).astype(np.float32)
    bias = rng.normal(0.0, 3.0, shape[2]).astype(np.float32)
    img = img * gain + bias
    return np.clip(np.rint(img), 1, 255).astype(np.uint8)


def _cleft_probability(rng: np.random.Generator, seg: np.ndarray, clefts: np.ndarray) -> np.ndarray:
    """Detector-like cleft map: 0.78-1 on clefts, a smooth halo and noise capped at 0.47 off."""
    on = clefts > 0
    halo = ndimage.gaussian_filter(on.astype(np.float32), sigma=(1.5, 1.5, 0.6))
    halo = np.clip(halo * 2.5, 0.0, 1.0)
    noise = rng.uniform(0.0, 0.06, clefts.shape).astype(np.float32)
    off = 0.4 * halo + noise + 0.08 * (seg == 0)
    prob = np.where(on, 0.8 + 0.2 * halo - noise, np.minimum(off, 0.47))
    return np.clip(prob, 0.0, 1.0).astype(np.float32)


def synthesize(
    shape: tuple[int, int, int],
    seed: int = 0,
    *,
    resolution: tuple[float, float, float] = (8, 8, 40),
    n_cells: int | None = None,
    n_synapses: int | None = None,
    defects: DefectSpec = DefectSpec(),
) -> SynthVolume:
    """Render a synthetic EM volume of ``shape`` (x, y, z voxels) at ``resolution`` nm.

    Deterministic in ``seed``. ``n_cells`` defaults to about one cell per
    160 nm x 160 nm x 640 nm. ``n_synapses`` defaults to about 4 per cubic micron (at least 1);
    fewer are placed when the volume has no room for more (clefts keep at least 200 nm apart
    and have at least 40 voxels). Defects change ``image`` only.
    """
    shape = tuple(int(s) for s in shape)  # type: ignore[assignment]
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"shape must be three positive ints (x, y, z), got {shape}")
    res = tuple(float(r) for r in resolution)
    if len(res) != 3 or min(res) <= 0:
        raise ValueError(f"resolution must be three positive numbers (nm), got {resolution}")
    rngs = _rngs(seed)

    seg, lab = cell_labels(rngs["cells"], shape, res, n_cells)
    other = interface_partner(lab, seg)
    if n_synapses is None:
        volume_um3 = float(np.prod(np.asarray(shape) * np.asarray(res))) / 1e9
        n_synapses = max(1, round(4.0 * volume_um3))
    clefts, synapses, darkening = place_synapses(rngs["synapses"], seg, lab, other, res, n_synapses)
    mito = mitochondria(rngs["mito"], seg, clefts, res)
    clean = _compose_image(rngs["texture"], seg, mito, darkening)
    prob = _cleft_probability(rngs["probability"], seg, clefts)
    image, record = apply_defects(clean, defects, rngs["defects"])
    record["seed"] = int(seed)
    return SynthVolume(
        image=image,
        segmentation=seg,
        clefts=clefts,
        cleft_probability=prob,
        synapses=synapses,
        defects=record,
    )
