"""Validation and reporting around training: whole-volume prediction, segmentation scores,
learning-curve plots and the progress bar.

``predict_volume`` uses the same chunked, bump-blended kernel as the inference stage, so the
scores measure what the pipeline will produce; ``segment`` is the pipeline's watershed +
mean-affinity agglomeration run on one chunk (equal to the chunked run by design).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.geometry import Bbox, Vec
from pipeline.inference.kernels import Tiling, infer_chunked
from pipeline.models.data import Volume, rebalanced_bce
from pipeline.models.rsunet import RSUNet


def predict_volume(model: RSUNet, image_zyx: np.ndarray, patch: Vec, overlap: Vec | None = None,
                   batch_size: int = 2, device: str | torch.device = "cpu",
                   precision: str = "fp32") -> np.ndarray:
    """(X, Y, Z, C) probabilities of a (Z, Y, X) image (float in [0, 1] or uint8), from one
    global patch tiling (``overlap`` default: a quarter patch)."""
    img = np.ascontiguousarray(np.asarray(image_zyx).transpose(2, 1, 0))
    overlap = overlap or tuple(p // 4 for p in patch)  # type: ignore[assignment]
    tiling = Tiling(Bbox.from_shape(img.shape), patch, overlap)  # type: ignore[arg-type]
    model.eval()
    return infer_chunked(model.predict, img, tiling, img.shape, batch_size=batch_size,
                         device=device, precision=precision)


def segment(aff_xyzc: np.ndarray, ws_high: float = 0.9, ws_low: float = 0.1,
            ws_size: int = 200, ws_dust: int = 50, agg_threshold: float = 0.5) -> np.ndarray:
    """Watershed + mean-affinity agglomeration of (X, Y, Z, 3) affinities (first planes
    zeroed, as the segmentation stage reads them)."""
    from pipeline.agglomerate.chunked import AgglomerationParams
    from pipeline.agglomerate.jobs import agglomerate_global
    from pipeline.watershed.chunked import WatershedParams
    from pipeline.watershed.jobs import prepare_affinity, watershed_global

    aff = prepare_affinity(aff_xyzc[..., :3], (0, 0, 0), (0, 0, 0))
    ws = watershed_global(aff, WatershedParams(ws_high, ws_low, ws_size, ws_dust))
    return agglomerate_global(aff, ws, AgglomerationParams(agg_threshold))


def score(seg_xyz: np.ndarray, gt_xyz: np.ndarray) -> dict[str, float]:
    """VI (split, merge, total) and adapted Rand error of ``seg`` against ``gt``."""
    from pipeline.metrics import evaluate

    m = evaluate(seg_xyz, gt_xyz)
    return {k: round(float(m[k]), 4) for k in ("vi", "vi_split", "vi_merge",
                                               "adapted_rand_error")}


def validate(model: RSUNet, cfg: Any, vol: Volume, batch: tuple[np.ndarray, ...] | None,
             device: torch.device, amp: torch.dtype | None) -> dict[str, float]:
    """Validation loss on fixed patches, and VI / adapted Rand of the segmented prediction.
    Draws no random numbers (so that resuming stays exact)."""
    model.eval()
    out: dict[str, float] = {}
    if batch is not None:
        losses = []
        with torch.no_grad():
            for i in range(0, len(batch[0]), cfg.batch_size):
                x, t, m = (torch.from_numpy(a[i:i + cfg.batch_size]).to(device) for a in batch)
                with contextlib.ExitStack() as stack:
                    if amp is not None:
                        stack.enter_context(torch.autocast(device.type, dtype=amp))
                    logits = model(x)
                losses.append(float(rebalanced_bce(logits, t, m, cfg.soft_targets,
                                                   cfg.rebalance)))
        out["loss"] = round(float(np.mean(losses)), 5)
    aff = predict_volume(model, vol.image, cfg.patch_size, batch_size=cfg.batch_size,
                         device=device, precision="bf16" if amp is not None else "fp32")
    s = cfg.val_segmentation
    seg = segment(aff, s.ws_high, s.ws_low, s.ws_size, s.ws_dust, s.agg_threshold)
    out.update(score(seg, vol.labels.transpose(2, 1, 0)))
    model.train()
    return out


def plot_curves(history: dict[str, list], path: str | Path) -> None:
    """A PNG of the training loss (raw and moving average), the validation loss, and the
    validation VI and adapted Rand error against the step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    steps, loss = np.asarray(history["step"]), np.asarray(history["loss"])
    if len(loss):
        ax1.plot(steps, loss, color="0.75", lw=0.8, label="train")
        k = max(1, min(25, len(loss) // 5))
        avg = np.convolve(loss, np.ones(k) / k, mode="valid")
        ax1.plot(steps[k - 1:], avg, color="C0", label=f"train (mean of {k})")
    val = history.get("val", [])
    if val:
        vs = [v["step"] for v in val]
        if "loss" in val[0]:
            ax1.plot(vs, [v["loss"] for v in val], "o-", color="C1", label="validation")
        ax2.plot(vs, [v["vi"] for v in val], "o-", label="VI (bits)")
        ax2.plot(vs, [v["adapted_rand_error"] for v in val], "s-", label="adapted Rand error")
        ax2.legend()
    ax1.set(xlabel="step", ylabel="rebalanced BCE", title="loss")
    ax1.legend()
    ax2.set(xlabel="step", title="validation segmentation")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


@contextlib.contextmanager
def rich_progress(name: str, total: int, done: int = 0) -> Iterator[Callable[[int, float], None]]:
    """A rich progress bar (on a terminal) with the latest loss; yields ``advance(step, loss)``.
    """
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    console = Console(stderr=True)
    progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(),
                        MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn(),
                        TextColumn("loss {task.fields[loss]:.4f}"), console=console,
                        disable=not console.is_terminal)
    task = progress.add_task(name, total=total, completed=done, loss=float("nan"))

    def advance(step: int, loss: float) -> None:
        progress.update(task, completed=step, loss=loss)

    with progress:
        yield advance
