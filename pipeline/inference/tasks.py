"""Inference queue tasks: ``create_inference_tasks(config)`` and one task per chunk.

A task reads its chunk plus the margin its patches need (:meth:`Tiling.read_box`) from the
image layer, runs every checkpoint of the ensemble through the blending kernel, averages them,
and writes float32 affinities (3 channels x, y, z; fpzip) and, when asked, the myelin
probability. Tasks are idempotent: same inputs and device, same bytes.

Promise: a chunk's output equals the whole-bbox pass of the same tiling (see
:mod:`pipeline.inference.kernels`), with one deliberate exception: a chunk whose whole read
region is 0 (no data) is written as zeros without running the net.
"""

from __future__ import annotations

from functools import lru_cache, partial

import numpy as np
import torch
from taskqueue import queueable

from pipeline import storage
from pipeline.config import InferenceParams, RunConfig, load_config
from pipeline.geometry import Bbox, ChunkGrid
from pipeline.inference.kernels import Tiling, infer_block
from pipeline.models.checkpoint import build_model, load_checkpoint, spec_of
from pipeline.models.rsunet import ModelSpec, RSUNet


def resolve_device(device: str) -> str:
    """"auto" → "cuda" when a GPU is visible, else "cpu"."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def given_spec(inf: InferenceParams) -> ModelSpec | None:
    return None if inf.model is None else ModelSpec.model_validate(inf.model)


@lru_cache(maxsize=4)
def _ensemble(checkpoints: tuple[str, ...], model_json: str | None,
              device: str) -> tuple[tuple[RSUNet, ModelSpec], ...]:
    given = None if model_json is None else ModelSpec.model_validate_json(model_json)
    out = []
    for path in checkpoints:
        ckpt = load_checkpoint(path)
        spec = spec_of(ckpt, path, given)
        out.append((build_model(ckpt, spec, path).to(device), spec))
    return tuple(out)


def load_ensemble(inf: InferenceParams, device: str) -> tuple[tuple[RSUNet, ModelSpec], ...]:
    """The checkpoints' nets in eval mode on ``device``, cached per worker process."""
    spec = given_spec(inf)
    return _ensemble(tuple(inf.checkpoints), None if spec is None else spec.model_dump_json(),
                     device)


def output_channels(spec: ModelSpec, myelin: bool) -> list[int]:
    """The net channels a task writes: the 3 affinities, then myelin if asked."""
    return [0, 1, 2] + ([spec.myelin_channel] if myelin else [])  # type: ignore[list-item]


def input_path(config: RunConfig) -> str:
    """The image layer inference reads."""
    assert config.inference is not None
    return config.inference.input or config.image_path


def predict_chunk(config: RunConfig, box: Bbox, image: np.ndarray, read_box: Bbox,
                  input_mask: np.ndarray | None = None,
                  output_mask: np.ndarray | None = None) -> np.ndarray:
    """The ensemble's mean (X, Y, Z, C) output over ``box`` from ``image`` covering
    ``read_box`` (C = 3 affinities, + myelin when asked)."""
    inf = config.inference
    assert inf is not None
    tiling = Tiling(Bbox.from_list(config.bbox), inf.patch_size, inf.overlap)
    device = resolve_device(inf.device)
    total: np.ndarray | None = None
    models = load_ensemble(inf, device)
    for model, spec in models:
        keep = output_channels(spec, inf.myelin)
        y = infer_block(partial(_predict, model, keep), image, read_box, box, tiling,
                        batch_size=inf.batch_size, device=device, precision=inf.precision,
                        input_mask=input_mask, output_mask=output_mask)
        total = y if total is None else total + y
    assert total is not None
    return total if len(models) == 1 else total / np.float32(len(models))


def _predict(model: RSUNet, keep: list[int], x: torch.Tensor) -> torch.Tensor:
    return model.predict(x)[:, keep]


def _read_zeroed(path: str, want: Bbox, run: Bbox, mip: int) -> np.ndarray:
    """``want`` of layer ``path`` (first channel), 0 outside the run's bbox."""
    data = storage.read(path, want, 0, mip)[..., 0]
    inside = want.intersection(run)
    if inside != want:
        keep = np.zeros(want.shape, bool)
        keep[inside.slices(want.start)] = True
        data = np.where(keep, data, 0).astype(data.dtype)
    return data


@queueable
def inference_chunk(conf: dict, bbox: list[int]) -> None:
    """Affinities (and myelin) of chunk ``bbox`` ([x0, y0, z0, x1, y1, z1]) of a resolved run."""
    config = load_config(conf)
    inf = config.inference
    assert inf is not None and config.bbox is not None
    box = Bbox.from_list(bbox)
    run = Bbox.from_list(config.bbox)
    need = Tiling(run, inf.patch_size, inf.overlap).read_box(box)
    image = _read_zeroed(input_path(config), need, run, config.mip)
    n_out = 3 + int(inf.myelin)
    if not image.any():
        out = np.zeros((*box.shape, n_out), np.float32)
    else:
        imask = None if inf.input_mask is None else \
            _read_zeroed(inf.input_mask, need, run, config.mip)
        omask = None if inf.output_mask is None else \
            storage.read(inf.output_mask, box, 0, config.mip)[..., 0]
        out = predict_chunk(config, box, image, need, imask, omask)
    storage.write(config.layer_path(inf.output_layer), box, out[..., :3])
    if inf.myelin:
        storage.write(config.layer_path(inf.myelin_layer), box, out[..., 3])


def create_inference_tasks(config: RunConfig) -> list[partial]:
    """One :func:`inference_chunk` task per chunk of the resolved run bbox."""
    assert config.inference is not None and config.bounds is not None
    conf = config.to_dict()
    return [partial(inference_chunk, conf, box.to_list())
            for box in ChunkGrid(config.bounds, config.chunk_size)]
