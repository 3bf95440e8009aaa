"""Chunked cleft map-reduce vs single-volume cc3d on the same probability map, one core.

Prints the time ratio (target ≤ 1.5) and voxels/s (best of --repeat interleaved rounds)
against three single-volume cc3d runs: its default uint32 labels; uint64 labels (the cleft
layer's dtype); and uint32 labels plus ``cc3d.statistics`` (per-cleft size, centroid and
bbox: the outputs the map-reduce also gives). Checks the labels agree.
Run: .venv/bin/python bench/synapses.py [--quick]
"""

from __future__ import annotations

import os

os.environ.setdefault("NUMBA_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse
import time

import cc3d
import numpy as np
from scipy import ndimage

from pipeline.geometry import Bbox
from pipeline.octree_jobs import Layout, MemoryStore
from pipeline.synapses.jobs import (
    SynapseParams,
    cleft_labels,
    map_job,
    padded,
    reduce_job,
)


def map_reduce(prob: np.ndarray, chunk, params) -> tuple[float, list]:
    """Map every chunk, reduce, remap every chunk to final uint64 ids; time only that work
    (not cutting chunks out of the in-memory volume, which storage reads do)."""
    run = Bbox.from_shape(prob.shape)
    layout = Layout(run, chunk)
    store = MemoryStore()
    inputs = [(c, padded(prob, run, layout.grid.chunk(c), 1)) for c in layout.grid.coords()]
    t0 = time.perf_counter()
    for coord, block in inputs:
        map_job(store, layout, coord, block, params)
    reduce_job(store, layout, params)
    outputs = [(layout.grid.chunk(c), cleft_labels(store, c, final=False))
               for c in layout.grid.coords()]
    return time.perf_counter() - t0, outputs


def probability_map(shape, seed=0) -> np.ndarray:
    """Sparse flat blobs like a cleft detector's output (about 0.5 % foreground)."""
    rng = np.random.default_rng(seed)
    noise = ndimage.gaussian_filter(rng.random(shape, dtype=np.float32), (3, 3, 1))
    return np.clip((noise - noise.mean()) / noise.std() / 6 + 0.1, 0, 1).astype(np.float32)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--repeat", type=int, default=7, help="rounds (best time of each counts)")
    args = ap.parse_args()
    shape = (128, 128, 64) if args.quick else (512, 512, 128)
    chunk = (64, 64, 32) if args.quick else (256, 256, 64)
    prob = probability_map(shape)
    params = SynapseParams(threshold=0.5, connectivity=26, size_threshold=0)
    # rounds run cc3d and ours in turn and keep each one's best time: fair on a loaded machine
    # (the first round also compiles/loads the numba kernels)
    t_cc3d = t_cc3d64 = t_stats = t_ours = float("inf")
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        ref = cc3d.connected_components(prob > 0.5, connectivity=26)
        t_cc3d = min(t_cc3d, time.perf_counter() - t0)
        t0 = time.perf_counter()
        cc3d.connected_components(prob > 0.5, connectivity=26, out_dtype=np.uint64)
        t_cc3d64 = min(t_cc3d64, time.perf_counter() - t0)
        t0 = time.perf_counter()
        cc3d.statistics(cc3d.connected_components(prob > 0.5, connectivity=26))
        t_stats = min(t_stats, time.perf_counter() - t0)
        t, pieces = map_reduce(prob, chunk, params)
        t_ours = min(t_ours, t)
    ours = np.zeros(prob.shape, np.uint64)
    for box, labels in pieces:
        ours[box.slices()] = labels
    n = prob.size
    pairs = np.unique(np.stack([ours.ravel(), ref.ravel().astype(np.uint64)], 1), axis=0)
    agree = len(pairs) == len(np.unique(pairs[:, 0])) == len(np.unique(pairs[:, 1]))
    print(f"volume {shape}, chunks {chunk}, foreground {(prob > 0.5).mean():.3%}, "
          f"clefts {int(ref.max())}")
    print(f"{'method':28s} {'seconds':>8s} {'Mvoxel/s':>9s}")
    print(f"{'cc3d, single volume':28s} {t_cc3d:8.2f} {n / t_cc3d / 1e6:9.1f}")
    print(f"{'cc3d, single volume, uint64':28s} {t_cc3d64:8.2f} {n / t_cc3d64 / 1e6:9.1f}")
    print(f"{'cc3d + cc3d.statistics':28s} {t_stats:8.2f} {n / t_stats / 1e6:9.1f}")
    print(f"{'petarecon map-reduce':28s} {t_ours:8.2f} {n / t_ours / 1e6:9.1f}")
    print(f"time ratio (target <= 1.5) ours/cc3d: {t_ours / t_cc3d:.2f}; ours/cc3d uint64: "
          f"{t_ours / t_cc3d64:.2f}; ours/(cc3d + statistics): {t_ours / t_stats:.2f}; "
          f"labels agree: {agree}")


if __name__ == "__main__":
    main()
