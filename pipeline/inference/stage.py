"""The `inference` stage's steps, as the DAG and the CLI call them.

Outputs: the affinity layer (``inference.output_layer``, float32, 3 channels x, y, z, fpzip)
and, with ``inference.myelin``, a myelin probability layer (float32, 1 channel, fpzip), both
over the run's bbox at the input layer's resolution.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from pipeline import reachability, storage
from pipeline.config import ConfigError, InferenceParams, RunConfig, load_config
from pipeline.geometry import Bbox
from pipeline.inference.tasks import create_inference_tasks, input_path
from pipeline.models.checkpoint import CheckpointError, build_model, load_checkpoint, spec_of
from pipeline.models.rsunet import ModelSpec


def pool(config: RunConfig) -> str:
    """The worker pool of the stage: "gpu" when the config asks for cuda, else "cpu"."""
    return "gpu" if config.inference is not None and config.inference.device == "cuda" \
        else "cpu"


def _input_field(config: RunConfig) -> str:
    if config.inference is not None and config.inference.input:
        return "inference.input"
    return "input" if config.input else "ingest"


def check_models(inf: InferenceParams, problems: list[tuple[str, str]]) -> list[ModelSpec]:
    """Load every checkpoint (architecture and weights); append a problem per bad one."""
    given = None
    if inf.model is not None:
        try:
            given = ModelSpec.model_validate(inf.model)
        except ValidationError as e:
            problems += [("inference.model." + ".".join(map(str, err["loc"])),
                          err["msg"].removeprefix("Value error, ")) for err in e.errors()]
            return []
    specs = []
    for path in inf.checkpoints:
        try:
            ckpt = load_checkpoint(path)
            spec = spec_of(ckpt, path, given)
            build_model(ckpt, spec, path)
        except CheckpointError as e:
            problems.append((f"inference.{e.field}", str(e)))
            continue
        if spec.in_channels != 1:
            problems.append(("inference.checkpoints", f"checkpoint {path} takes "
                                                      f"{spec.in_channels} input channels; "
                                                      "the image has 1"))
        if inf.myelin and not spec.myelin:
            problems.append(("inference.myelin", f"checkpoint {path} has no myelin output"))
        specs.append(spec)
    return specs


def _check_mask(path: str, field: str, bbox: Bbox | None, mip: int,
                problems: list[tuple[str, str]]) -> None:
    try:
        vol = storage.open_layer(path, mip)
    except storage.LayerError as e:
        problems.append((field, str(e)))
        return
    if vol.num_channels != 1:
        problems.append((field, f"layer {path} has {vol.num_channels} channels; a mask has 1"))
    bounds = storage.layer_bounds(path, mip)
    if bbox is not None and not bounds.contains(bbox):
        problems.append((field, f"layer {path} (bounds {bounds.to_list()}) does not cover "
                                f"bbox {bbox.to_list()}"))


def sanity_check(conf: dict[str, Any] | RunConfig) -> RunConfig:
    """Validate the config against its checkpoints and layers; return it with ``bbox``
    resolved. Writes nothing. Raise ConfigError naming each bad field: a missing or corrupt
    checkpoint, a channel count or architecture that does not match the config, an input that
    is missing or not 1-channel uint8, a patch that does not fit the net or exceeds the chunk,
    an output that holds data without ``overwrite``."""
    config = reachability.checked(load_config(conf))
    inf = config.inference
    if inf is None:
        raise ConfigError([("inference", "the inference stage needs an `inference` section")])
    problems: list[tuple[str, str]] = []
    specs = check_models(inf, problems)
    for spec in specs:
        mult = spec.patch_multiple
        bad = [f"{a}={p} is not a multiple of {m}"
               for a, p, m in zip("xyz", inf.patch_size, mult, strict=True) if p % m]
        if bad:
            problems.append(("inference.patch_size", "must fit the net's pooling: "
                                                     + "; ".join(bad)))
            break
    over = [f"{a}={p} > chunk {c}" for a, p, c in zip("xyz", inf.patch_size, config.chunk_size,
                                                      strict=True) if p > c]
    if over:
        problems.append(("inference.patch_size", "must not exceed chunk_size: "
                                                 + "; ".join(over)))
    bbox = config.bounds
    path = input_path(config)
    field = _input_field(config)
    try:
        vol = storage.open_layer(path, config.mip)
        if vol.num_channels != 1 or str(vol.dtype) != "uint8":
            problems.append((field, f"layer {path} is {vol.num_channels}-channel {vol.dtype}; "
                                    "inference needs a 1-channel uint8 image"))
        if not storage.layer_has_data(path):
            problems.append((field, f"layer {path} holds no data (an empty volume)"))
        bounds = storage.layer_bounds(path, config.mip)
        if bbox is not None and not bounds.contains(bbox):
            problems.append(("bbox", f"{bbox.to_list()} lies outside the input layer, whose "
                                     f"bounds are {bounds.to_list()}"))
        bbox = bbox or bounds
    except storage.LayerError as e:
        problems.append((field, str(e)))
    for name in ("input_mask", "output_mask"):
        mask = getattr(inf, name)
        if mask:
            _check_mask(mask, f"inference.{name}", bbox, config.mip, problems)
    if why := storage.unwritable(config.output):
        problems.append(("output", why))
    outputs = [inf.output_layer] + ([inf.myelin_layer] if inf.myelin else [])
    for name in outputs:
        out = config.layer_path(name)
        if out == path:
            problems.append(("inference.output_layer", f"{out} is the input layer"))
        elif not config.overwrite and storage.layer_has_data(out):
            problems.append(("output", f"layer {out} already holds data; set overwrite: true "
                                       "to replace it"))
    if problems:
        raise ConfigError(problems)
    assert bbox is not None
    return config.model_copy(update={"bbox": tuple(bbox.to_list())})


def prepare(config: RunConfig) -> None:
    """Create the affinity (and myelin) layers with full infos, marked incomplete."""
    inf = config.inference
    assert inf is not None and config.bbox is not None
    src = storage.open_layer(input_path(config), config.mip)
    res = tuple(float(r) for r in src.resolution)
    bbox = Bbox.from_list(config.bbox)
    storage.create_layer(config.layer_path(inf.output_layer), "affinity", bbox, res,
                         config.storage_chunk_size, overwrite=True)
    if inf.myelin:
        storage.create_layer(config.layer_path(inf.myelin_layer), "probability", bbox, res,
                             config.storage_chunk_size, overwrite=True)


def inference_tasks(config: RunConfig) -> list:
    return create_inference_tasks(config)


def layers(config: RunConfig) -> dict[str, tuple[str, str]]:
    """The run's layers as {name: (path, kind)}: the input image and the outputs."""
    inf = config.inference
    assert inf is not None
    out = {"image": (input_path(config), "image"),
           inf.output_layer: (config.layer_path(inf.output_layer), "affinity")}
    if inf.myelin:
        out[inf.myelin_layer] = (config.layer_path(inf.myelin_layer), "probability")
    return out


def finish(config: RunConfig) -> dict[str, tuple[str, str]]:
    """Mark the output layers complete; return the run's layers."""
    found = layers(config)
    for name, (path, _) in found.items():
        if name != "image":
            storage.set_status(path, "complete")
    return found
