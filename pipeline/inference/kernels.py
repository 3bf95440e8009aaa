"""Chunked, seam-free inference: global patch tiling, batched forward passes, bump blending.

Arrays are (X, Y, Z[, C]) like the layers of :mod:`pipeline.storage`; the net sees
(N, 1, Z, Y, X) float32 tensors of the uint8 image divided by 255.

**What chunking promises.** Patches come from one *global* tiling of the run's bbox
(:class:`Tiling`): along each axis they start at the bbox start and step by
``patch - overlap``; the last patch is flush with the far face (a bbox shorter than a patch
gets one patch, zero-padded beyond the bbox). A chunk is computed from exactly the global
patches that intersect it (:meth:`Tiling.patches`, read from :meth:`Tiling.read_box`, the
chunk plus its margin) and accumulates their outputs in global order. Every voxel therefore
sums the *same patches with the same weights in the same order* as a single pass over the
whole bbox: chunked inference equals the whole-volume pass bit for bit whenever the net gives
each patch the same output. That holds for any per-patch model (InstanceNorm normalises each
patch by itself, so a patch's output depends on that patch only), up to the conv backend's
batch-composition effects (observed 0 on CPU; bounded by 1e-5 in the tests).

**Exact normalisation.** The bump window is quantised to integers (at least 1, at most
``2**20``) and outputs are accumulated in float64: each product ``w * y`` of a float32 ``y``
is exact, so is the weight-sum map ``W`` (an integer below ``2**29``), and the blend is
``sum(w_i * y_i) / W``. The normalised weights ``w_i / W`` sum to exactly 1 and a constant
(or identity) model is reproduced exactly: ``(y * W) / W == y`` in IEEE arithmetic.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from pipeline.geometry import Bbox, Vec, vec

Predict = Callable[[torch.Tensor], torch.Tensor]
"""A net: (N, 1, Z, Y, X) float32 → (N, C, Z, Y, X) (probabilities)."""
MAX_WEIGHT_SUM = 2**29
"""Weight sums stay below this so that ``y * W`` is exact in float64 (24 + 29 bits)."""


def patch_starts(length: int, patch: int, overlap: int) -> list[int]:
    """Patch starts (relative) tiling ``[0, length)``: stride ``patch - overlap``, the last
    patch flush with the end; ``[0]`` when ``length <= patch``."""
    if not 0 <= overlap < patch:
        raise ValueError(f"need 0 <= overlap < patch, got overlap {overlap}, patch {patch}")
    if length <= patch:
        return [0]
    starts = list(range(0, length - patch + 1, patch - overlap))
    if starts[-1] != length - patch:
        starts.append(length - patch)
    return starts


def bump_window(patch_zyx: Sequence[int], max_cover: int = 8) -> np.ndarray:
    """The integer-valued float64 bump window of a (Z, Y, X) patch.

    chunkflow's bump ``prod_axes exp(-1 / (t (1 - t)))`` with ``t = (i + 1) / (n + 1)``,
    normalised to a peak of ``scale`` and rounded, floored at 1 (every voxel of a patch
    counts). ``scale = min(2**20, MAX_WEIGHT_SUM // max_cover)`` for at most ``max_cover``
    patches over one voxel, so weight sums stay exact.
    """
    scale = min(2**20, MAX_WEIGHT_SUM // max(1, max_cover))
    w = np.ones((1, 1, 1))
    for axis, n in enumerate(patch_zyx):
        t = (np.arange(n) + 1.0) / (n + 1.0)
        b = np.exp(-1.0 / (t * (1.0 - t)) + 4.0)  # peak exp(0) = 1 at the centre
        b = b / b.max()
        shape = [1, 1, 1]
        shape[axis] = n
        w = w * b.reshape(shape)
    return np.maximum(1.0, np.rint(w * scale))


@dataclass(frozen=True)
class Tiling:
    """The global patch tiling of ``volume`` (the run's bbox); sizes x, y, z."""

    volume: Bbox
    patch: Vec
    overlap: Vec

    def __post_init__(self) -> None:
        object.__setattr__(self, "patch", vec(self.patch))
        object.__setattr__(self, "overlap", vec(self.overlap))
        for a in range(3):
            if not 0 <= self.overlap[a] < self.patch[a]:
                raise ValueError(f"overlap {self.overlap} must be >= 0 and below the patch "
                                 f"size {self.patch} on every axis")

    def starts(self, axis: int) -> list[int]:
        """Absolute patch starts along ``axis``."""
        o = self.volume.start[axis]
        return [o + s for s in patch_starts(self.volume.shape[axis], self.patch[axis],
                                            self.overlap[axis])]

    @property
    def max_cover(self) -> int:
        """An upper bound of the number of patches over one voxel."""
        return math.prod(-(-p // (p - o)) + 1 for p, o in zip(self.patch, self.overlap,
                                                               strict=True))

    def window(self) -> np.ndarray:
        """The (Z, Y, X) integer bump window of this tiling."""
        return bump_window(tuple(reversed(self.patch)), self.max_cover)

    def patches(self, box: Bbox) -> list[Bbox]:
        """The global patches intersecting ``box``, z-major then y then x (global order)."""
        per_axis = []
        for a in range(3):
            per_axis.append([s for s in self.starts(a)
                             if s < box.stop[a] and s + self.patch[a] > box.start[a]])
        return [Bbox.from_shape(self.patch, (x, y, z))
                for z in per_axis[2] for y in per_axis[1] for x in per_axis[0]]

    def read_box(self, box: Bbox) -> Bbox:
        """The input ``box`` needs: the union of its patches (the chunk plus its margin)."""
        ps = self.patches(box)
        return Bbox(tuple(min(p.start[a] for p in ps) for a in range(3)),
                    tuple(max(p.stop[a] for p in ps) for a in range(3)))


@contextlib.contextmanager
def autocast(device: torch.device, precision: str) -> Iterator[None]:
    """Run the block under ``precision``: "bf16"/"fp16" autocast; "fp32" is IEEE fp32 on every
    device (on a GPU, cuDNN's TF32 convolutions are off, so results match the CPU's)."""
    if precision == "fp32":
        cudnn = torch.backends.cudnn
        with cudnn.flags(enabled=cudnn.enabled, benchmark=cudnn.benchmark,
                         deterministic=cudnn.deterministic, allow_tf32=False):
            yield
        return
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    with torch.autocast(device_type=device.type, dtype=dtype):
        yield


def run_batches(predict: Predict, inputs: Sequence[np.ndarray], batch_size: int = 1,
                device: str | torch.device = "cpu", precision: str = "fp32",
                ) -> Iterator[np.ndarray]:
    """Yield the net's (C, Z, Y, X) float32 output for each (Z, Y, X) float32 input, in order,
    running ``batch_size`` patches per forward pass under ``torch.inference_mode``."""
    dev = torch.device(device)
    for i in range(0, len(inputs), batch_size):
        batch = torch.from_numpy(np.stack(inputs[i:i + batch_size])[:, None]).to(dev)
        with torch.inference_mode(), autocast(dev, precision):
            out = predict(batch)
        yield from out.float().cpu().numpy()


def infer_block(predict: Predict, image: np.ndarray, image_box: Bbox, out_box: Bbox,
                tiling: Tiling, *, batch_size: int = 1, device: str | torch.device = "cpu",
                precision: str = "fp32", input_mask: np.ndarray | None = None,
                output_mask: np.ndarray | None = None) -> np.ndarray:
    """Blended net output over ``out_box`` as an (X, Y, Z, C) float32 array.

    ``image`` (X, Y, Z; uint8 → /255, or float) covers ``image_box``, which must contain
    ``tiling.read_box(out_box)``. ``input_mask`` (same shape as ``image``): nonzero voxels are
    zeroed in the input. ``output_mask`` (shape of ``out_box``): nonzero voxels are zeroed in
    the output. See the module docstring for what equals what.
    """
    need = tiling.read_box(out_box)
    if not image_box.contains(need):
        raise ValueError(f"image box {image_box} does not hold the patches of {out_box}: {need}")
    if tuple(image.shape[:3]) != image_box.shape:
        raise ValueError(f"image shape {image.shape} does not match its box {image_box}")
    img = image.astype(np.float32) / 255.0 if image.dtype == np.uint8 else \
        image.astype(np.float32, copy=True)
    if input_mask is not None:
        img[np.asarray(input_mask) != 0] = 0
    img = np.ascontiguousarray(img.transpose(2, 1, 0))  # (Z, Y, X)
    patches = tiling.patches(out_box)
    win = tiling.window()
    inputs = []
    for p in patches:
        s = tuple(reversed(p.slices(image_box.start)))
        inputs.append(img[s])
    out_shape = tuple(reversed(out_box.shape))
    acc: np.ndarray | None = None
    wsum = np.zeros(out_shape, np.float64)
    for p, y in zip(patches, run_batches(predict, inputs, batch_size, device, precision),
                    strict=True):
        have = p.intersection(out_box)
        dst = tuple(reversed(have.slices(out_box.start)))
        src = tuple(reversed(have.slices(p.start)))
        if acc is None:
            acc = np.zeros((y.shape[0], *out_shape), np.float64)
        w = win[src]
        acc[(slice(None), *dst)] += y[(slice(None), *src)].astype(np.float64) * w
        wsum[dst] += w
    assert acc is not None and wsum.min() > 0 and wsum.max() < MAX_WEIGHT_SUM
    out = (acc / wsum).astype(np.float32).transpose(3, 2, 1, 0)
    if output_mask is not None:
        out[np.asarray(output_mask) != 0] = 0
    return np.ascontiguousarray(out)


def padded(image: np.ndarray, volume: Bbox, want: Bbox, fill: float = 0) -> np.ndarray:
    """``want`` cut from an in-memory (X, Y, Z[, C]) array covering ``volume``; ``fill``
    outside it (as :func:`pipeline.storage.read` fills outside a layer)."""
    out = np.full((*want.shape, *image.shape[3:]), fill, image.dtype)
    have = want.intersection(volume)
    if not have.empty():
        out[have.slices(want.start)] = image[have.slices(volume.start)]
    return out


def infer_chunked(predict: Predict, image: np.ndarray, tiling: Tiling, chunk_size: Vec, *,
                  input_mask: np.ndarray | None = None, output_mask: np.ndarray | None = None,
                  **kwargs) -> np.ndarray:
    """In-memory chunked inference of ``image`` (X, Y, Z) covering ``tiling.volume``: each chunk
    of a ``chunk_size`` grid is computed from its own margin-padded read, as the tasks do
    (masks, if given, cover the volume too). With ``chunk_size`` = the volume shape it is the
    whole-volume pass."""
    from pipeline.geometry import ChunkGrid

    vol = tiling.volume
    out: np.ndarray | None = None
    for box in ChunkGrid(vol, chunk_size):
        need = tiling.read_box(box)
        block = padded(image, vol, need)
        imask = None if input_mask is None else padded(input_mask, vol, need)
        omask = None if output_mask is None else output_mask[box.slices(vol.start)]
        y = infer_block(predict, block, need, box, tiling, input_mask=imask, output_mask=omask,
                        **kwargs)
        if out is None:
            out = np.zeros((*tiling.volume.shape, y.shape[3]), np.float32)
        out[box.slices(tiling.volume.start)] = y
    assert out is not None
    return out
