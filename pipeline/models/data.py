"""Training data: volumes from disk or layers, the validation split, batches of augmented
patches with their affinity targets, and the rebalanced loss.

Volumes are (Z, Y, X): images float32 in [0, 1], labels int64 (0 = boundary).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.models.affinity import affinity_targets
from pipeline.models.augment import augment, sample_shape


class DataError(ValueError):
    """A training volume cannot be read; the message names the file and ``field``."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(message)


def load_array(path: str, dataset: str | None = None, axes: str = "zyx",
               field: str = "image") -> np.ndarray:
    """A 3D array from .h5/.hdf5 (``dataset``, default: the only one), .npy, or a precomputed
    layer (a cloud path or a folder with an ``info``), returned as (Z, Y, X)."""
    local = Path(path.removeprefix("file://")).expanduser()
    if ("://" in path and not path.startswith("file://")) or (local / "info").is_file():
        from pipeline import storage

        try:
            bounds = storage.layer_bounds(path)
            arr = storage.read(path, bounds)[..., 0].transpose(2, 1, 0)
        except (storage.LayerError, ValueError) as e:
            raise DataError(field, f"{path}: {e}") from None
        return np.ascontiguousarray(arr)
    if not local.is_file():
        raise DataError(field, f"{path}: no such file")
    suffix = local.suffix.lower()
    if suffix in (".h5", ".hdf5", ".hdf"):
        import h5py

        try:
            with h5py.File(local, "r") as f:
                names = [k for k in f if isinstance(f[k], h5py.Dataset)]
                key = dataset or (names[0] if len(names) == 1 else None)
                if key is None or key not in f:
                    raise DataError(f"{field}_dataset",
                                    f"{path}: give a dataset, one of {names}" if key is None
                                    else f"{path}: no dataset {key!r}; it has {names}")
                arr = f[key][...]
        except OSError as e:
            raise DataError(field, f"{path}: not a readable HDF5 file ({e})") from None
    elif suffix == ".npy":
        try:
            arr = np.load(local)
        except (OSError, ValueError) as e:
            raise DataError(field, f"{path}: not a readable .npy file ({e})") from None
    else:
        raise DataError(field, f"{path}: unsupported type {suffix!r}; use .h5, .npy or a "
                               "precomputed layer")
    if arr.ndim != 3:
        raise DataError(field, f"{path}: expected a 3D volume, got shape {arr.shape}")
    return np.ascontiguousarray(arr if axes == "zyx" else arr.transpose(2, 1, 0))


def as_image(arr: np.ndarray) -> np.ndarray:
    """uint8 → [0, 1] float32; floats are taken as already in [0, 1]."""
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / 255.0
    return arr.astype(np.float32)


@dataclass(frozen=True)
class Volume:
    """A training or validation volume: image (float32) and labels (int64), both (Z, Y, X)."""

    image: np.ndarray
    labels: np.ndarray

    def __post_init__(self) -> None:
        if self.image.shape != self.labels.shape:
            raise DataError("labels", f"labels shape {self.labels.shape} differs from the "
                                      f"image shape {self.image.shape} (z, y, x)")

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.image.shape)  # type: ignore[return-value]

    def split(self, fraction: float, axis: str) -> tuple[Volume, Volume]:
        """(train, val): the last ``fraction`` of the volume along ``axis`` is validation."""
        a = "zyx".index(axis)
        n = self.shape[a]
        cut = n - round(n * fraction)
        lo = [slice(None)] * 3
        hi = [slice(None)] * 3
        lo[a], hi[a] = slice(0, cut), slice(cut, n)
        return (Volume(self.image[tuple(lo)], self.labels[tuple(lo)]),
                Volume(self.image[tuple(hi)], self.labels[tuple(hi)]))


def _crop(vol: Volume, start: Sequence[int], shape: Sequence[int]) -> tuple[np.ndarray, ...]:
    sl = tuple(slice(s, s + n) for s, n in zip(start, shape, strict=True))
    return vol.image[sl], vol.labels[sl]


def sample_batch(vol: Volume, rng: np.random.Generator, batch_size: int,
                 patch_zyx: Sequence[int], offsets: Sequence[Sequence[int]],
                 names: Sequence[str], p_independent: float = 0.5, p_defect: float = 0.5,
                 d_max: int = 8) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(inputs (B, 1, Z, Y, X), targets (B, C, Z, Y, X), masks (B, C, Z, Y, X)) of random
    augmented patches; all randomness comes from ``rng``."""
    want = sample_shape(patch_zyx, names, d_max)
    xs, ts, ms = [], [], []
    for _ in range(batch_size):
        start = [int(rng.integers(0, n - w + 1)) for n, w in zip(vol.shape, want, strict=True)]
        img, lab = _crop(vol, start, want)
        img, lab, _ = augment(img, lab, rng, names, patch_zyx, p_independent=p_independent,
                              p_defect=p_defect, d_max=d_max)
        aff, mask = affinity_targets(lab, offsets)
        xs.append(img[None])
        ts.append(aff)
        ms.append(mask)
    return np.stack(xs), np.stack(ts), np.stack(ms)


def fixed_patches(vol: Volume, n: int, patch_zyx: Sequence[int], seed: int,
                  offsets: Sequence[Sequence[int]]) -> tuple[np.ndarray, ...]:
    """``n`` unaugmented patches at positions fixed by ``seed`` (validation loss)."""
    rng = np.random.default_rng(seed)
    xs, ts, ms = [], [], []
    for _ in range(n):
        start = [int(rng.integers(0, s - w + 1)) for s, w in zip(vol.shape, patch_zyx,
                                                                  strict=True)]
        img, lab = _crop(vol, start, patch_zyx)
        aff, mask = affinity_targets(lab, offsets)
        xs.append(img[None])
        ts.append(aff)
        ms.append(mask)
    return np.stack(xs), np.stack(ts), np.stack(ms)


def rebalanced_bce(logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
                   soft: bool = False, rebalance: bool = True) -> torch.Tensor:
    """Binary cross-entropy over masked voxels with patch-wise class rebalancing.

    For each patch and channel, positives and negatives (of the hard target) each get half of
    the total weight: ``w = n / (2 n_pos)`` on positives and ``n / (2 n_neg)`` on negatives
    (``n`` masked voxels; a class absent from the patch leaves the other at weight 1). With
    ``soft`` the targets become 0.9 / 0.1. The result is the weighted sum over the masked
    voxel count, so it equals plain mean BCE when the classes are balanced.
    """
    logits = logits.float()
    dims = tuple(range(2, target.ndim))
    if rebalance:
        n_pos = (target * mask).sum(dims, keepdim=True)
        n_neg = ((1 - target) * mask).sum(dims, keepdim=True)
        n = n_pos + n_neg
        w_pos = torch.where(n_pos > 0, n / (2 * n_pos.clamp(min=1)), torch.ones_like(n))
        w_neg = torch.where(n_neg > 0, n / (2 * n_neg.clamp(min=1)), torch.ones_like(n))
        w_pos = torch.where(n_neg > 0, w_pos, torch.ones_like(n))
        w_neg = torch.where(n_pos > 0, w_neg, torch.ones_like(n))
        weight = mask * torch.where(target > 0.5, w_pos, w_neg)
    else:
        weight = mask
    t = target * 0.8 + 0.1 if soft else target
    loss = F.binary_cross_entropy_with_logits(logits, t, weight=weight, reduction="sum")
    return loss / mask.sum().clamp(min=1)
