"""Defect detection in one section: empty (no data), folds, cracks and resin.

A detector maps a uint8 section ``(X, Y)`` (values up to :data:`NO_DATA` mean no data) to a
uint8 code image whose bits are :data:`EMPTY`, :data:`FOLD`, :data:`CRACK` and
:data:`RESIN`. :class:`DefectDetector` is the plug-in point for a CNN;
:class:`ClassicalDetector` is the default:

- *empty*: no-data pixels in connected areas of at least ``min_empty`` pixels, grown by
  ``grow`` px (rendering mixes their edge into neighbours);
- *folds* (dark) and *cracks* (bright): a difference-of-Gaussians ridge filter
  (``G(fine) - G(coarse)``) thresholded against the section's median, connected components,
  kept when long (``min_length`` px) and thin (length / width >= ``elongation``), grown by
  ``grow`` px. Membranes are thin but not that dark after the fine blur; mitochondria are
  dark but not elongated;
- *resin*: flat areas (local std below ``resin_std``) brighter than the median by ``resin``
  of the way to white, of at least ``min_empty`` pixels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
from scipy import ndimage
from skimage.measure import label, regionprops

EMPTY, FOLD, CRACK, RESIN = 1, 2, 4, 8
"""Bits of a defect code image."""
RELAX = FOLD | CRACK
"""Defects where a field may be discontinuous (alignment smoothness is relaxed)."""
NO_DATA = 2
"""Pixels at or below this value hold no data (0 in real stacks; the synthetic generator's
fold warp turns an empty border into 1s)."""


def has_data(section: np.ndarray) -> np.ndarray:
    """Pixels that hold data: above :data:`NO_DATA`."""
    return np.asarray(section) > NO_DATA


class DefectDetector(Protocol):
    """Maps a uint8 section ``(X, Y)`` to uint8 defect codes of the same shape."""

    def __call__(self, section: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True)
class ClassicalDetector:
    """Thresholds and sizes in pixels of the section's mip; intensities relative to the
    median of the section's nonzero pixels (see module doc)."""

    fine: float = 1.0
    coarse: float = 8.0
    dark: float = 0.4
    bright: float = 0.8
    contrast: float = 0.25
    min_length: float = 40.0
    elongation: float = 4.0
    min_empty: int = 16
    grow: int = 2
    resin_std: float = 3.0
    resin: float = 0.5

    def __call__(self, section: np.ndarray) -> np.ndarray:
        sec = np.asarray(section)
        codes = np.zeros(sec.shape, np.uint8)
        data = has_data(sec)
        empty = _large(~data, self.min_empty)
        codes[_grow(empty, self.grow)] |= EMPTY
        if data.sum() < 16:
            return codes
        img = sec.astype(np.float32)
        med = float(np.median(img[data]))
        fill = np.where(data, img, med)
        fine = ndimage.gaussian_filter(fill, self.fine)
        coarse = ndimage.gaussian_filter(fill, self.coarse)
        ridge = coarse - fine                                   # > 0 on dark ridges
        dark = (fine < self.dark * med) & (ridge > self.contrast * med) & data
        top = med + self.bright * (255.0 - med)
        bright = (fine > top) & (-ridge > self.contrast * (255.0 - med) * 0.5) & data
        codes[_grow(self._elongated(dark), self.grow)] |= FOLD
        codes[_grow(self._elongated(bright), self.grow)] |= CRACK
        mean2 = ndimage.gaussian_filter(fill * fill, 4.0)
        mean = ndimage.gaussian_filter(fill, 4.0)
        flat = np.sqrt(np.maximum(mean2 - mean * mean, 0)) < self.resin_std
        resin = _large(flat & (mean > med + self.resin * (255.0 - med)) & data,
                       self.min_empty)
        codes[resin] |= RESIN
        return codes

    def _elongated(self, mask: np.ndarray) -> np.ndarray:
        """Components of ``mask`` that are long and thin."""
        out = np.zeros_like(mask)
        if not mask.any():
            return out
        lab = label(mask, connectivity=2)
        for r in regionprops(lab):
            major = r.axis_major_length
            minor = max(r.axis_minor_length, 1.0)
            if major >= self.min_length and major / minor >= self.elongation:
                out[lab == r.label] = True
        return out


def _large(mask: np.ndarray, min_size: int) -> np.ndarray:
    """Components of ``mask`` (8-connected) with at least ``min_size`` pixels."""
    if not mask.any():
        return mask
    lab, _n = ndimage.label(mask, structure=np.ones((3, 3), bool))
    sizes = np.bincount(lab.ravel())
    keep = sizes >= min_size
    keep[0] = False
    return keep[lab]


def _grow(mask: np.ndarray, r: int) -> np.ndarray:
    return ndimage.binary_dilation(mask, iterations=r) if r > 0 and mask.any() else mask


def detect_stack(stack: np.ndarray, detector: DefectDetector | None = None) -> np.ndarray:
    """Defect codes of every section of ``stack`` ``(X, Y, Z)``."""
    det = detector or ClassicalDetector()
    out = np.zeros(stack.shape, np.uint8)
    for z in range(stack.shape[2]):
        out[..., z] = det(stack[..., z])
    return out


def section_flags(valid_fraction: np.ndarray, missing: float = 0.05,
                  partial: float = 0.95) -> dict[str, np.ndarray]:
    """Per-section flags from the fraction of pixels with data: ``missing`` (below
    ``missing``: skipped by alignment, never given a field) and ``partial`` (below
    ``partial``)."""
    v = np.asarray(valid_fraction, np.float64)
    return {"missing": v < missing, "partial": (v >= missing) & (v < partial)}
