"""Inference speed: voxels/s of the chunked kernel against a naive peer, FLOPs per patch.

    .venv/bin/python bench/inference.py [--skip-paper] [--device cuda] [--precision bf16]

On CPU by default; ``--device cuda`` runs both the kernel and the peer on the GPU, and
``--precision`` (fp32, bf16, fp16) sets the kernel's autocast there.

1. The shipped demo model (pipeline/models/demo/rsunet_gala.pt) over the gala test cutout
   (200 x 100 x 50 voxels), chunked as the tasks run it: chunks of 128 x 128 x 32 read with
   their margins, patches 48 x 48 x 16 with overlap 12 x 12 x 4, batches of 4, bump-blended,
   under ``torch.inference_mode``; and the same as one chunk (the whole volume).
   Peer, same process, same patches: a naive loop that runs
   one patch at a time with autograd on and pastes each output over the previous ones
   (no batching, no blending, no chunking).
2. A paper-size RSUNet (widths 28-36-48-64-80, pool 2 x 2 x 1, input patch 256 x 256 x 20):
   too slow to sweep a volume on this CPU, so one patch is timed and the throughput
   extrapolated to the voxels a patch contributes with overlap 32 x 32 x 4
   (224 x 224 x 16 per patch).
FLOPs per patch are counted with ``torch.utils.flop_counter`` (multiply-add = 2 FLOPs).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.geometry import Bbox, ChunkGrid
from pipeline.inference.kernels import Tiling, autocast, infer_chunked
from pipeline.models.checkpoint import load_model
from pipeline.models.rsunet import ModelSpec, RSUNet

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "pipeline" / "models" / "demo" / "rsunet_gala.pt"


def flops_per_patch(spec: ModelSpec, patch_xyz: tuple[int, int, int]) -> float:
    """FLOPs of one forward pass on one patch, counted on the meta device (no compute)."""
    net = RSUNet(spec).to("meta")
    x = torch.empty(1, 1, *reversed(patch_xyz), device="meta")
    with FlopCounterMode(display=False) as counter:
        net(x)
    return float(counter.get_total_flops())


def naive(model: RSUNet, image: np.ndarray, tiling: Tiling, device: str) -> np.ndarray:
    """One patch at a time, autograd on, fp32, outputs pasted (last writer wins)."""
    out = np.zeros((*image.shape, 3), np.float32)
    img = image.astype(np.float32) / 255
    for p in tiling.patches(tiling.volume):
        x = torch.from_numpy(np.ascontiguousarray(img[p.slices()].transpose(2, 1, 0)))[None, None]
        y = model.predict(x.to(device))[0].detach().cpu().numpy().transpose(3, 2, 1, 0)
        out[p.slices()] = y
    return out


def sync(device: str) -> float:
    """perf_counter after the device's queued work has finished."""
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter()


def bench_demo(device: str, precision: str) -> None:
    import h5py

    with h5py.File(REPO / "tests" / "data" / "gala_fibsem_example" / "test-image.h5") as f:
        image = f["stack"][...].transpose(2, 1, 0).copy()
    model = load_model(str(DEMO)) if DEMO.is_file() else RSUNet(
        ModelSpec(widths=(8, 16, 32), pool=(2, 2, 2))).eval()
    model = model.to(device)
    run = {"batch_size": 4, "device": device, "precision": precision}
    patch, overlap = (48, 48, 16), (12, 12, 4)
    tiling = Tiling(Bbox.from_shape(image.shape), patch, overlap)
    n_patches = len(tiling.patches(tiling.volume))
    voxels = math.prod(image.shape)
    infer_chunked(model.predict, image[:48, :48, :16], Tiling(Bbox.from_shape((48, 48, 16)),
                                                               patch, overlap), (48, 48, 16),
                  **run)
    chunk = (128, 128, 32)
    evaluated = sum(len(tiling.patches(b)) for b in ChunkGrid(tiling.volume, chunk))
    t = sync(device)
    ours = infer_chunked(model.predict, image, tiling, chunk, **run)
    t_ours = sync(device) - t
    t = sync(device)
    infer_chunked(model.predict, image, tiling, image.shape, **run)
    t_whole = sync(device) - t
    t = sync(device)
    peer = naive(model, image, tiling, device)
    t_peer = sync(device) - t
    flops = flops_per_patch(model.spec, patch)
    print(f"demo RSUNet widths {list(model.spec.widths)}, volume {image.shape} "
          f"({voxels / 1e6:.2f} Mvox), {n_patches} patches of {patch}, overlap {overlap}, "
          f"{device} {precision}")
    print(f"  FLOPs per patch: {flops / 1e9:.2f} GFLOP")
    print(f"  chunked+batched+blended (ours): {t_ours:6.2f} s  {voxels / t_ours:12,.0f} vox/s  "
          f"{flops * evaluated / t_ours / 1e9:6.1f} GFLOP/s  ({evaluated} patch passes: "
          f"chunks of {chunk} recompute the patches they share)")
    print(f"  one chunk = whole volume (ours): {t_whole:5.2f} s  {voxels / t_whole:12,.0f} vox/s  "
          f"{flops * n_patches / t_whole / 1e9:6.1f} GFLOP/s")
    print(f"  naive per-patch loop (peer):    {t_peer:6.2f} s  {voxels / t_peer:12,.0f} vox/s")
    print(f"  ratio ours/peer: {t_peer / t_ours:.2f}x   "
          f"(mean |ours - peer| = {np.abs(ours - peer).mean():.4f}: the peer does not blend)")


def bench_paper(device: str, precision: str) -> None:
    spec = ModelSpec(widths=(28, 36, 48, 64, 80), pool=(2, 2, 1))
    patch, overlap = (256, 256, 20), (32, 32, 4)
    flops = flops_per_patch(spec, patch)
    torch.manual_seed(0)
    net = RSUNet(spec).eval().to(device)
    repeats = 1 if device == "cpu" else 10
    with torch.inference_mode(), autocast(torch.device(device), precision):
        net.predict(torch.rand(1, 1, 4, 32, 32, device=device))  # warm-up on a small input
        x = torch.rand(1, 1, *reversed(patch), device=device)
        if device != "cpu":
            net.predict(x)  # the GPU's kernel choice for this shape
        t = sync(device)
        for _ in range(repeats):
            net.predict(x)
        dt = (sync(device) - t) / repeats
    contrib = math.prod(p - o for p, o in zip(patch, overlap, strict=True))
    print(f"paper-size RSUNet widths {list(spec.widths)}, patch {patch} "
          f"({math.prod(patch) / 1e6:.2f} Mvox), {sum(p.numel() for p in net.parameters()):,} "
          "parameters")
    print(f"  FLOPs per patch: {flops / 1e9:.1f} GFLOP")
    print(f"  one patch ({device} {precision}, mean of {repeats}, inference_mode): {dt:.3f} s = "
          f"{flops / dt / 1e9:.1f} GFLOP/s")
    print(f"  extrapolated: {contrib / dt:,.0f} vox/s with overlap {overlap} "
          f"({contrib:,} new voxels per patch); {math.prod(patch) / dt:,.0f} vox/s of input")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-paper", action="store_true", help="only the demo model")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA GPU is visible")
    if args.precision == "fp16" and args.device == "cpu":
        parser.error("--precision fp16 needs --device cuda")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} (a shared machine)")
    if args.device == "cuda":
        torch.backends.cudnn.allow_tf32 = False  # the peer in IEEE fp32 too, as ours at fp32
        print(f"GPU: {torch.cuda.get_device_name()}")
    bench_demo(args.device, args.precision)
    if not args.skip_paper:
        bench_paper(args.device, args.precision)


if __name__ == "__main__":
    main()
