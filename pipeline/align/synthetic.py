"""Known misalignments for tests and benchmarks: smooth warps, and residuals against truth.

A *truth field* ``W`` ``(Z, 2, X, Y)`` is the pull map that made each misaligned section from
the clean one: ``misaligned_z(p) = clean_z(p + W_z(p))``. An alignment field ``f_z`` maps the
aligned frame onto section ``z``; aligned to the frame of the anchor section ``a`` (the first
valid one), it is exact when ``f_z(p) + W_z(p + f_z(p)) = W_a(p)``. :func:`residuals` returns
the length of the difference, per pixel.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage

from pipeline.align.warp import as_tensor, sample, warp
from pipeline.masks.detect import NO_DATA
from pipeline.synth import DefectSpec, synthesize
from pipeline.synth.features import apply_defects


def smooth_warp(shape: tuple[int, int], rng: np.random.Generator, amplitude: float,
                wavelength: float, translation: tuple[float, float] = (0.0, 0.0)) -> np.ndarray:
    """A smooth pull field ``(2, X, Y)``: ``translation`` plus a random sum of sinusoids of
    ``wavelength`` px whose peak displacement is about ``amplitude`` px."""
    X, Y = shape
    gx, gy = np.meshgrid(np.arange(X, dtype=np.float64), np.arange(Y, dtype=np.float64),
                         indexing="ij")
    out = np.zeros((2, X, Y))
    for c in range(2):
        for _ in range(2):
            theta = rng.uniform(0, 2 * np.pi)
            phase = rng.uniform(0, 2 * np.pi)
            k = 2 * np.pi / wavelength
            out[c] += np.sin(k * (np.cos(theta) * gx + np.sin(theta) * gy) + phase)
        out[c] *= amplitude / 2
        out[c] += translation[c]
    return out.astype(np.float32)


def fold_field(shape: tuple[int, int], line: dict) -> np.ndarray:
    """The pull field of a generator fold (see :func:`pipeline.synth.features._fold`)."""
    X, Y = shape
    gx, gy = np.meshgrid(np.arange(X, dtype=np.float64), np.arange(Y, dtype=np.float64),
                         indexing="ij")
    n, p, w = np.asarray(line["normal"]), np.asarray(line["point"]), line["width"]
    d = (gx - p[0]) * n[0] + (gy - p[1]) * n[1]
    s = np.sign(d)
    return np.stack([s * w * n[0], s * w * n[1]]).astype(np.float32)


def fold_stripe(shape: tuple[int, int], line: dict, pad: float = 0.0) -> np.ndarray:
    """Pixels of a generator fold's dark stripe, widened by ``pad`` px each side."""
    X, Y = shape
    gx, gy = np.meshgrid(np.arange(X), np.arange(Y), indexing="ij")
    n, p, w = np.asarray(line["normal"]), np.asarray(line["point"]), line["width"]
    return np.abs((gx - p[0]) * n[0] + (gy - p[1]) * n[1]) <= w / 2 + pad


def then(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Truth of applying pull ``second`` to an image already pulled by ``first``:
    ``out(p) = img(p + second(p) + first(p + second(p)))``."""
    s, f = as_tensor(second, torch.device("cpu")), as_tensor(first, torch.device("cpu"))
    return (s + sample(f, s, padding="border")).numpy()


def warp_stack(clean: np.ndarray, seed: int, *, translation: float = 10.0,
               amplitude: float = 6.0, wavelength: float = 256.0,
               anchor_clean: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Pull each section of ``clean`` ``(X, Y, Z)`` uint8 through an independent smooth warp
    (uniform translation within ``translation`` px plus sinusoids of ``amplitude`` px and
    ``wavelength``); 0 where nothing maps in. Returns (image, truth ``(Z, 2, X, Y)``). With
    ``anchor_clean`` section 0 is left unwarped."""
    rng = np.random.default_rng(seed + 1000)
    X, Y, Z = clean.shape
    cpu = torch.device("cpu")
    truth = np.zeros((Z, 2, X, Y), np.float32)
    out = np.zeros_like(clean)
    for z in range(Z):
        if z > 0 or not anchor_clean:
            t = rng.uniform(-translation, translation, 2)
            truth[z] = smooth_warp((X, Y), rng, amplitude, wavelength, (t[0], t[1]))
        img = warp(as_tensor(clean[..., z], cpu), as_tensor(truth[z], cpu)).numpy()
        inside = warp(torch.ones((X, Y)), as_tensor(truth[z], cpu)).numpy() > 0.999
        out[..., z] = np.where(inside, np.clip(np.rint(img), NO_DATA + 1, 255), 0)
    return out, truth


def warped_volume(shape: tuple[int, int, int], seed: int, *, translation: float = 10.0,
                  amplitude: float = 6.0, wavelength: float = 256.0, folds: int = 0,
                  missing: int = 0, resolution: tuple[float, float, float] = (8, 8, 40),
                  anchor_clean: bool = True,
                  clean: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, dict]:
    """A synthetic volume (or ``clean``, a stack ``(X, Y, Z)`` of that shape) put through
    :func:`warp_stack`, then given generator folds and missing sections. Returns (image,
    truth ``(Z, 2, X, Y)``, defect record)."""
    if clean is None:
        clean = synthesize(shape, seed, resolution=resolution).image
    out, truth = warp_stack(clean, seed, translation=translation, amplitude=amplitude,
                            wavelength=wavelength, anchor_clean=anchor_clean)
    X, Y, _ = shape
    image, record = apply_defects(out, DefectSpec(folds=folds, missing=missing),
                                  np.random.default_rng(seed + 2000))
    for key, line in record["fold_lines"].items():
        z = int(key)
        truth[z] = then(truth[z], fold_field((X, Y), line))
    return image, truth, record


def still_tissue(shape: tuple[int, int, int], seed: int, noise: float = 8.0,
                 resolution: tuple[float, float, float] = (8, 8, 10)) -> np.ndarray:
    """A clean stack whose tissue does not move along z: every section is the generator's
    first section plus its own Gaussian noise of ``noise`` grey levels. Whatever an
    alignment of it drifts is the alignment's own error compounding, not the tissue."""
    first = synthesize(shape, seed, resolution=resolution).image[..., :1].astype(np.float32)
    rng = np.random.default_rng(seed + 3000)
    noisy = first + rng.normal(0.0, noise, shape).astype(np.float32)
    return np.clip(np.rint(noisy), NO_DATA + 1, 255).astype(np.uint8)


def shifted_truth(record: dict, shape: tuple[int, int, int]) -> np.ndarray:
    """Truth fields of a generator volume (``synthesize`` with ``DefectSpec(shifts=True)``
    and folds): a shift ``[dx, dy]`` is the pull ``-[dx, dy]``, then the fold's pull."""
    X, Y, Z = shape
    truth = np.zeros((Z, 2, X, Y), np.float32)
    for key, (dx, dy) in record.get("shifts", {}).items():
        truth[int(key), 0], truth[int(key), 1] = -dx, -dy
    for key, line in record.get("fold_lines", {}).items():
        truth[int(key)] = then(truth[int(key)], fold_field((X, Y), line))
    return truth


def residuals(fields: np.ndarray, truth: np.ndarray, image: np.ndarray, record: dict,
              border: int = 8) -> dict[int, np.ndarray]:
    """Per valid section, the residual lengths (px) at valid pixels: pixels ``border`` px
    inside the section whose aligned source has data, off fold stripes (widened by their
    width) and off no-data regions. The anchor is the first valid section with a zero field
(the alignment's reference frame)."""
    Z = fields.shape[0]
    dev = torch.device("cpu")
    valid_z = [z for z in range(Z) if (image[..., z] > NO_DATA).mean() > 0.05]
    anchor = next((z for z in valid_z if not fields[z].any()), valid_z[0])
    w0 = as_tensor(truth[anchor], dev)
    out = {}
    for z in valid_z:
        f = as_tensor(fields[z], dev)
        r = f + sample(as_tensor(truth[z], dev), f, padding="border") - w0
        mag = r.norm(dim=0).numpy()
        ok = image[..., z] > NO_DATA
        line = record.get("fold_lines", {}).get(str(z))
        if line is not None:
            ok &= ~fold_stripe(ok.shape, line, line["width"])
        ok = ndimage.binary_erosion(ok, iterations=2)
        src_ok = warp(as_tensor(ok, dev), f).numpy() > 0.999
        keep = np.zeros_like(ok)
        keep[border:-border, border:-border] = True
        sel = src_ok & keep
        if sel.any():
            out[z] = mag[sel]
    return out


def summary(res: dict[int, np.ndarray]) -> dict[str, float]:
    """Median residual overall, per-section medians' slope vs z, first/last quarter medians."""
    zs = sorted(res)
    meds = np.array([np.median(res[z]) for z in zs])
    q = max(1, len(zs) // 4)
    slope = float(np.polyfit(zs, meds, 1)[0]) if len(zs) > 1 else 0.0
    return {"median": float(np.median(np.concatenate([res[z] for z in zs]))),
            "slope": slope, "first_quarter": float(np.median(meds[:q])),
            "last_quarter": float(np.median(meds[-q:])), "max_section": float(meds.max())}


def consistency(fields: np.ndarray, truth: np.ndarray, reference: np.ndarray,
                image: np.ndarray, record: dict, border: int = 8) -> dict[int, np.ndarray]:
    """Like :func:`residuals`, but against ``reference``: the fields the same method gives
    on the defect-free volume (anchored at the same section, whose truth must be a plain
    translation). What remains is the error the injected misalignments and defects caused;
    the drift that any neighbour-based alignment picks up from oblique structures (the
    tissue itself moving from section to section) is common to both runs and cancels."""
    dev = torch.device("cpu")
    res = {}
    anchor = next(z for z in range(fields.shape[0]) if (image[..., z] > NO_DATA).mean() > 0.05
                  and not fields[z].any())
    w0 = as_tensor(truth[anchor], dev)
    for z, _ in residuals(fields, truth, image, record, border).items():
        f = as_tensor(fields[z], dev)
        p_def = f + sample(as_tensor(truth[z], dev), f, padding="border")
        p_ref = sample(as_tensor(reference[z], dev), w0, padding="border") + w0
        r = (p_def - p_ref).norm(dim=0).numpy()
        ok = image[..., z] > NO_DATA
        line = record.get("fold_lines", {}).get(str(z))
        if line is not None:
            ok &= ~fold_stripe(ok.shape, line, line["width"])
        ok = ndimage.binary_erosion(ok, iterations=2)
        sel = warp(as_tensor(ok, dev), f).numpy() > 0.999
        keep = np.zeros_like(ok)
        keep[border:-border, border:-border] = True
        if (sel & keep).any():
            res[z] = r[sel & keep]
    return res
