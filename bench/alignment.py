"""Alignment throughput on CPU: field computation and rendering, against naive peers.

- NCC block matching: our batched FFT masked NCC (``pipeline.align.ncc.match_tiles``) vs a
  pure-numpy spatial search (every shift of every tile, the same tile grid and radius);
  the integer peaks must agree.
- Field computation: the whole classical model per section (3 pyramid levels, K = 3
  candidates against aligned neighbours, voting, refinement), in sections/s.
- Rendering: our chunk-exact bilinear warp (torch) vs ``scipy.ndimage.map_coordinates``
  (order 1) on the same field; the outputs must agree within one grey level.

Sizes are pixels at the mip the work runs at (mip 0 of a synthetic stack at 8 x 8 x 40 nm).
Run: .venv/bin/python bench/alignment.py [--quick]
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse
import time

import numpy as np
import torch
from numpy.lib.stride_tricks import sliding_window_view
from scipy import ndimage

from pipeline.align import ncc
from pipeline.align.blocks import align_block
from pipeline.align.fields import ClassicalFieldModel, ClassicalParams, lcn
from pipeline.align.render import render_section
from pipeline.align.synthetic import smooth_warp, warp_stack
from pipeline.align.warp import as_tensor
from pipeline.masks.detect import has_data
from pipeline.synth import synthesize


def naive_ncc(src: np.ndarray, tgt: np.ndarray, tile: int, radius: int) -> np.ndarray:
    """Integer shift per tile by brute-force NCC (tiles at multiples of tile // 2)."""
    s = tile // 2
    pad = s + radius
    sp = np.pad(src, pad)
    tp = np.pad(tgt, pad)
    cx = np.arange(0, src.shape[0], s)
    cy = np.arange(0, src.shape[1], s)
    tw = sliding_window_view(tp, (tile, tile))[cx + radius][:, cy + radius]   # (nx, ny, T, T)
    t = tw - tw.mean(axis=(2, 3), keepdims=True)
    tn = np.sqrt((t * t).sum(axis=(2, 3))) + 1e-9
    sw = sliding_window_view(sp, (tile, tile))
    best = np.full(tn.shape, -2.0)
    arg = np.zeros((*tn.shape, 2), np.int64)
    for dx in range(-radius, radius + 1):
        for dy in range(-radius, radius + 1):
            w = sw[cx + radius + dx][:, cy + radius + dy]
            w = w - w.mean(axis=(2, 3), keepdims=True)
            c = (w * t).sum(axis=(2, 3)) / (np.sqrt((w * w).sum(axis=(2, 3))) * tn + 1e-9)
            better = c > best
            best[better] = c[better]
            arg[better] = (dx, dy)
    return arg


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    size, Z = (256, 4) if args.quick else (512, 8)
    clean = synthesize((size, size, Z), 1, resolution=(8, 8, 40)).image
    image, _ = warp_stack(clean, 1, translation=8, amplitude=4, wavelength=2 * size)
    print(f"stack {size} x {size} x {Z} px at mip 0, CPU, 1 thread, torch {torch.__version__}")

    # NCC block matching, one level: FFT masked NCC vs numpy spatial search
    T, R = 32, 8
    a = image[..., 1].astype(np.float32)
    b = image[..., 2].astype(np.float32)
    ta, tb = as_tensor(a), as_tensor(b)
    ma, mb = (ta > 0).float(), (tb > 0).float()
    na, nb = lcn(ta, ma), lcn(tb, mb)
    p = ncc.MatchParams(tile=T, radius=R)
    ncc.match_tiles(na, ma, nb, mb, (0, 0), p)                         # warm up
    t0 = time.perf_counter()
    reps = 5
    for _ in range(reps):
        tf = ncc.match_tiles(na, ma, nb, mb, (0, 0), p)
    t_fft = (time.perf_counter() - t0) / reps
    t0 = time.perf_counter()
    arg = naive_ncc(na.numpy(), nb.numpy(), T, R)
    t_naive = time.perf_counter() - t0
    ours = torch.round(tf.disp).to(torch.int64).numpy()
    ok = tf.valid.numpy()
    agree = (ours[ok] == arg[ok]).all(axis=-1).mean()
    n = ours.shape[0] * ours.shape[1]
    print(f"\nNCC block matching, tile {T}, radius {R}, {n} tiles per section")
    print(f"{'method':34s} {'s/section':>10s} {'sections/s':>11s}")
    print(f"{'masked NCC, batched FFT (torch)':34s} {t_fft:10.4f} {1 / t_fft:11.2f}")
    print(f"{'NCC spatial search (numpy)':34s} {t_naive:10.4f} {1 / t_naive:11.2f}")
    print(f"speed-up {t_naive / t_fft:.1f}x; integer peaks agree on {agree:.1%} of valid tiles")

    # the whole field computation: 3 levels, K = 3 neighbours, vote, refinement
    model = ClassicalFieldModel(ClassicalParams())
    masks = has_data(image)
    align_block(image[..., :2], masks[..., :2], np.zeros_like(image[..., :2]),
                np.ones(2, bool), (0, 0), model, 3)                     # warm up
    t0 = time.perf_counter()
    fields = align_block(image, masks, np.zeros_like(image), np.ones(Z, bool), (0, 0), model, 3)
    t_fields = time.perf_counter() - t0
    print(f"\nfield computation (3 levels, K=3, vote, 40 refinement steps): "
          f"{Z / t_fields:.2f} sections/s ({t_fields / Z:.2f} s/section)")

    # rendering: exact chunk warp vs scipy map_coordinates
    rng = np.random.default_rng(0)
    f = smooth_warp((size, size), rng, 5.0, size, (3.3, -2.7))
    sec = clean[..., 0]
    m = int(np.ceil(np.abs(f).max())) + 1
    padded = np.pad(sec, m)
    ft = as_tensor(f)
    render_section(padded, ft, m)                                      # warm up
    reps = 10
    t0 = time.perf_counter()
    for _ in range(reps):
        ours_r = render_section(padded, ft, m)
    t_ours = (time.perf_counter() - t0) / reps
    gx, gy = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    t0 = time.perf_counter()
    for _ in range(reps):
        ref = ndimage.map_coordinates(sec.astype(np.float32), [gx + f[0], gy + f[1]], order=1,
                                      mode="constant", cval=0.0)
    t_scipy = (time.perf_counter() - t0) / reps
    ref = np.clip(np.rint(ref), 0, 255).astype(np.uint8)
    diff = np.abs(ours_r.astype(int) - ref.astype(int))[m:-m, m:-m].max()
    print(f"\nrendering {size} x {size} (bilinear)")
    print(f"{'method':34s} {'s/section':>10s} {'sections/s':>11s}")
    print(f"{'exact chunk warp (torch)':34s} {t_ours:10.4f} {1 / t_ours:11.2f}")
    print(f"{'scipy.ndimage.map_coordinates':34s} {t_scipy:10.4f} {1 / t_scipy:11.2f}")
    print(f"speed-up {t_scipy / t_ours:.1f}x; max difference {diff} grey level(s)")
    assert np.isfinite(fields).all()


if __name__ == "__main__":
    main()
