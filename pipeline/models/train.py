"""Train the RSUNet boundary detector on ground truth: ``train(config) -> summary``.

The loop draws ``batch_size`` augmented patches per step (:mod:`pipeline.models.augment`),
computes affinity targets from their labels (:mod:`pipeline.models.affinity`) and minimises
the patch-wise rebalanced BCE (:func:`pipeline.models.data.rebalanced_bce`) with Adam.

Promises:

- **Reproducible.** All randomness flows from ``seed``: the weights from ``torch.manual_seed``,
  the patches and augmentations from one ``numpy`` Generator. Same config, same machine and
  thread count → the same loss sequence.
- **Exact resume.** ``out_dir/checkpoint.pt`` holds the weights, Adam's state, both RNG states,
  the step and the history; ``resume: true`` continues from it and produces the same losses as
  a run that never stopped (the learning rate is a function of the step). Validation uses its
  own fixed patches and draws no random numbers.
- **Outputs** under ``out_dir``: ``checkpoint.pt`` (to resume), ``model.pt`` (final weights
  and architecture only: what inference loads), ``best.pt`` (the same, at the validation with
  the lowest VI), ``history.json`` and ``curves.png`` (training and validation loss,
  validation VI and adapted Rand error after watershed + agglomeration).

It runs on CPU, and on CUDA with bf16 autocast when available (``device``/``precision`` auto).
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from pipeline.models import augment as aug
from pipeline.models.affinity import NEAREST
from pipeline.models.checkpoint import load_checkpoint, save_checkpoint
from pipeline.models.data import (
    DataError,
    Volume,
    as_image,
    fixed_patches,
    load_array,
    rebalanced_bce,
    sample_batch,
)
from pipeline.models.rsunet import LONG_RANGE_OFFSETS, ModelSpec, RSUNet

log = logging.getLogger("petarecon.train")


class TrainConfigError(ValueError):
    """A training config is invalid; ``problems`` holds (field, message) pairs."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = problems
        lines = "\n".join(f"  {f or '<root>'}: {m}" for f, m in problems)
        super().__init__(f"invalid training config:\n{lines}")


class ValSegmentation(BaseModel):
    """Watershed + agglomeration parameters of the validation metric."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    ws_high: float = 0.9
    ws_low: float = 0.1
    ws_size: int = 200
    ws_dust: int = 50
    agg_threshold: float = 0.5


class TrainConfig(BaseModel):
    """A training run. Sizes are x, y, z; volumes are read with ``axes`` order."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    image: str = Field(description=".h5, .npy or precomputed image layer (uint8 or [0, 1])")
    image_dataset: str | None = None
    labels: str = Field(description="ground-truth segmentation, 0 = boundary")
    labels_dataset: str | None = None
    axes: Literal["zyx", "xyz"] = "zyx"
    val_image: str | None = Field(None, description="separate validation volume (optional)")
    val_image_dataset: str | None = None
    val_labels: str | None = None
    val_labels_dataset: str | None = None
    val_fraction: float = Field(0.2, ge=0.0, lt=1.0,
                                description="else: the last fraction along val_axis")
    val_axis: Literal["x", "y", "z"] = "x"
    patch_size: tuple[int, int, int] = (64, 64, 16)
    widths: tuple[int, ...] = Field((8, 16, 32), min_length=1, max_length=8)
    depth: int | None = Field(None, ge=1, description="must equal len(widths) when given")
    pool: tuple[int, int, int] = (2, 2, 1)
    steps: int = Field(1000, ge=1)
    stop_at: int | None = Field(None, ge=1, description="stop after this step (checkpointed) "
                                                        "to go on later with resume")
    batch_size: int = Field(4, ge=1)
    lr: float = Field(1e-3, gt=0)
    lr_schedule: Literal["constant", "cosine"] = Field(
        "cosine", description="cosine: lr * (1 + cos(pi * step / steps)) / 2")
    seed: int = 0
    augment: tuple[str, ...] = aug.ALL
    p_independent: float = Field(0.5, ge=0, le=1)
    p_defect: float = Field(0.5, ge=0, le=1)
    d_max: int = Field(8, ge=0, description="largest misalignment, voxels")
    soft_targets: bool = False
    rebalance: bool = True
    long_range: bool = False
    val_every: int = Field(100, ge=1)
    val_patches: int = Field(8, ge=1)
    val_segmentation: ValSegmentation = Field(default_factory=ValSegmentation)
    checkpoint_every: int = Field(100, ge=1)
    out_dir: str
    resume: bool = False
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["auto", "fp32", "bf16"] = "auto"

    @field_validator("augment")
    @classmethod
    def _augment(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        bad = [n for n in v if n not in aug.ALL]
        if bad:
            raise ValueError(f"unknown augmentation(s) {bad}; known: {list(aug.ALL)}")
        return v

    def spec(self) -> ModelSpec:
        return ModelSpec(widths=self.widths, pool=self.pool,
                         long_range=LONG_RANGE_OFFSETS if self.long_range else ())

    @property
    def offsets(self) -> tuple[tuple[int, int, int], ...]:
        return NEAREST + (LONG_RANGE_OFFSETS if self.long_range else ())

    @property
    def patch_zyx(self) -> tuple[int, int, int]:
        return tuple(reversed(self.patch_size))  # type: ignore[return-value]


def load_train_config(source: TrainConfig | dict[str, Any] | str | Path) -> TrainConfig:
    """Validate a TrainConfig from a model, dict, or YAML/JSON file; TrainConfigError names
    each bad field (static checks: types, ranges, depth, patch divisibility)."""
    if isinstance(source, TrainConfig):
        cfg = source
    else:
        data = source
        if isinstance(source, str | Path):
            path = Path(source)
            if not path.is_file():
                raise TrainConfigError([("", f"config file not found: {path}")])
            data = yaml.safe_load(path.read_text())
        try:
            cfg = TrainConfig.model_validate(data)
        except ValidationError as e:
            raise TrainConfigError([(".".join(map(str, err["loc"])),
                                     err["msg"].removeprefix("Value error, "))
                                    for err in e.errors()]) from None
    problems = []
    if cfg.depth is not None and cfg.depth != len(cfg.widths):
        problems.append(("depth", f"{cfg.depth} != len(widths) = {len(cfg.widths)}"))
    try:
        mult = cfg.spec().patch_multiple
    except ValidationError as e:
        problems.append(("pool", str(e.errors()[0]["msg"])))
        mult = (1, 1, 1)
    bad = [f"{a}={p} is not a multiple of {m}" for a, p, m in zip("xyz", cfg.patch_size, mult,
                                                                    strict=True) if p % m]
    if bad or min(cfg.patch_size) < 1:
        problems.append(("patch_size", "must be positive multiples of pool**(depth-1): "
                                       + "; ".join(bad)))
    if (cfg.val_image is None) != (cfg.val_labels is None):
        problems.append(("val_labels", "give both val_image and val_labels, or neither"))
    if problems:
        raise TrainConfigError(problems)
    return cfg


def load_volumes(cfg: TrainConfig) -> tuple[Volume, Volume | None]:
    """(train, val) volumes; val is None when there is no validation data."""
    def read(img: str, img_ds: str | None, lab: str, lab_ds: str | None, prefix: str) -> Volume:
        image = as_image(load_array(img, img_ds, cfg.axes, f"{prefix}image"))
        labels = load_array(lab, lab_ds, cfg.axes, f"{prefix}labels").astype(np.int64)
        return Volume(image, labels)

    try:
        train = read(cfg.image, cfg.image_dataset, cfg.labels, cfg.labels_dataset, "")
        if cfg.val_image is not None:
            val = read(cfg.val_image, cfg.val_image_dataset, cfg.val_labels,  # type: ignore
                       cfg.val_labels_dataset, "val_")
        elif cfg.val_fraction > 0:
            train, val = train.split(cfg.val_fraction, cfg.val_axis)
        else:
            val = None
    except DataError as e:
        raise TrainConfigError([(e.field, str(e))]) from None
    want = aug.sample_shape(cfg.patch_zyx, cfg.augment, cfg.d_max)
    for name, vol, need in (("train", train, want), ("val", val, cfg.patch_zyx)):
        if vol is not None and any(v < w for v, w in zip(vol.shape, need, strict=True)):
            raise TrainConfigError([("patch_size", f"the {name} volume (z, y, x) {vol.shape} "
                                                   f"is smaller than its samples {need}")])
    return train, val


def _device(cfg: TrainConfig) -> tuple[torch.device, torch.dtype | None]:
    cuda = torch.cuda.is_available()
    if cfg.device == "cuda" and not cuda:
        raise TrainConfigError([("device", "cuda is not available on this machine")])
    dev = torch.device("cuda" if cfg.device == "cuda" or (cfg.device == "auto" and cuda)
                       else "cpu")
    bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and dev.type == "cuda")
    return dev, (torch.bfloat16 if bf16 else None)


def learning_rate(cfg: TrainConfig, step: int) -> float:
    """The learning rate of step ``step`` (0-based): a function of the step only, so that a
    resumed run needs no scheduler state."""
    if cfg.lr_schedule == "constant":
        return cfg.lr
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * step / cfg.steps))


def _forward(model: torch.nn.Module, x: torch.Tensor, amp: torch.dtype | None) -> torch.Tensor:
    if amp is None:
        return model(x)
    with torch.autocast(device_type=x.device.type, dtype=amp):
        return model(x)


def train(config: TrainConfig | dict[str, Any] | str | Path) -> dict[str, Any]:
    """Train (or resume) as ``config`` says; return a summary: steps, last loss, last
    validation metrics, seconds, and the paths of checkpoint, model, history and plot."""
    from pipeline.models.validate import plot_curves, rich_progress, validate

    cfg = load_train_config(config)
    t0 = time.monotonic()
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    train_vol, val_vol = load_volumes(cfg)
    dev, amp = _device(cfg)
    spec = cfg.spec()
    torch.manual_seed(cfg.seed)
    fmt = torch.channels_last_3d if dev.type == "cpu" else torch.contiguous_format
    model = RSUNet(spec).to(dev, memory_format=fmt)  # channels-last: faster CPU backward
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    rng = np.random.default_rng(cfg.seed)
    history: dict[str, list] = {"step": [], "loss": [], "val": []}
    step = 0
    ckpt_path = out / "checkpoint.pt"
    if cfg.resume and ckpt_path.is_file():
        ckpt = load_checkpoint(str(ckpt_path))
        if ModelSpec.model_validate(ckpt["spec"]) != spec:
            raise TrainConfigError([("resume", f"{ckpt_path} holds another architecture")])
        model.load_state_dict(ckpt["state_dict"])
        opt.load_state_dict(ckpt["optimizer"])
        rng.bit_generator.state = json.loads(ckpt["numpy_rng"])
        torch.set_rng_state(ckpt["torch_rng"])
        step, history = int(ckpt["step"]), json.loads(ckpt["history"])
        log.info("resumed from %s at step %d", ckpt_path, step)
    val_batch = None if val_vol is None else fixed_patches(
        val_vol, cfg.val_patches, cfg.patch_zyx, cfg.seed + 1, cfg.offsets)

    def save() -> None:
        save_checkpoint(str(ckpt_path), spec, model.state_dict(), optimizer=opt.state_dict(),
                        numpy_rng=json.dumps(rng.bit_generator.state),
                        torch_rng=torch.get_rng_state(), step=step,
                        history=json.dumps(history), config=cfg.model_dump_json())

    with rich_progress("train", cfg.steps, step) as advance:
        while step < min(cfg.steps, cfg.stop_at or cfg.steps):
            x, t, m = (torch.from_numpy(a).to(dev) for a in sample_batch(
                train_vol, rng, cfg.batch_size, cfg.patch_zyx, cfg.offsets, cfg.augment,
                cfg.p_independent, cfg.p_defect, cfg.d_max))
            x = x.contiguous(memory_format=fmt)
            for group in opt.param_groups:
                group["lr"] = learning_rate(cfg, step)
            model.train()
            loss = rebalanced_bce(_forward(model, x, amp), t, m, cfg.soft_targets,
                                  cfg.rebalance)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            history["step"].append(step)
            history["loss"].append(float(loss.detach()))
            if val_vol is not None and (step % cfg.val_every == 0 or step == cfg.steps):
                metrics = validate(model, cfg, val_vol, val_batch, dev, amp)
                history["val"].append({"step": step, **metrics})
                log.info("step %d: loss %.4f, val %s", step, history["loss"][-1], metrics)
                if metrics["vi"] <= min(v["vi"] for v in history["val"]):
                    save_checkpoint(str(out / "best.pt"), spec, model.state_dict(), step=step,
                                    val=json.dumps(metrics))
            if step % cfg.checkpoint_every == 0 or step in (cfg.steps, cfg.stop_at):
                save()
                plot_curves(history, out / "curves.png")
            advance(step, history["loss"][-1])
    save_checkpoint(str(out / "model.pt"), spec, model.state_dict(), step=step)
    (out / "history.json").write_text(json.dumps(history))
    plot_curves(history, out / "curves.png")
    return {"steps": step, "loss": history["loss"][-1] if history["loss"] else None,
            "val": history["val"][-1] if history["val"] else None,
            "seconds": round(time.monotonic() - t0, 1), "checkpoint": str(ckpt_path),
            "model": str(out / "model.pt"), "best": str(out / "best.pt"),
            "history": str(out / "history.json"),
            "plot": str(out / "curves.png")}


def main(argv: list[str] | None = None) -> None:
    """``python -m pipeline.models.train CONFIG.yaml [--resume]``: train, print the summary."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("config")
    parser.add_argument("--resume", action="store_true", help="continue from out_dir")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    cfg = load_train_config(args.config)
    if args.resume:
        cfg = cfg.model_copy(update={"resume": True})
    print(json.dumps(train(cfg), indent=2))


if __name__ == "__main__":
    main()
