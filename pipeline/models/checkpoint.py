"""Self-describing RSUNet checkpoints on local disk or cloud storage.

A checkpoint is a ``torch.save``d dict::

    {"format": "petarecon-rsunet/1", "spec": ModelSpec fields, "state_dict": weights,
     ...training state (optimizer, RNG, step, history) for checkpoints written mid-training}

It loads with ``weights_only=True`` (no code runs on load). A file holding a bare state dict
loads too when the architecture is given separately.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import torch
from cloudfiles import CloudFiles
from pydantic import ValidationError

from pipeline.models.rsunet import ModelSpec, RSUNet

FORMAT = "petarecon-rsunet/1"


class CheckpointError(ValueError):
    """A checkpoint is missing, unreadable, or does not fit its architecture. ``field`` says
    what is at fault: ``"checkpoints"`` (the file) or ``"model"`` (the given architecture)."""

    def __init__(self, message: str, field: str = "checkpoints") -> None:
        self.field = field
        super().__init__(message)


def _split(path: str) -> tuple[str, str]:
    """(directory cloudpath, file name) of a local or cloud path."""
    if "://" not in path:
        path = "file://" + os.path.abspath(os.path.expanduser(path))
    head, _, name = path.rpartition("/")
    return head, name


def read_bytes(path: str) -> bytes:
    """The bytes of ``path`` (local, file://, gs://, s3://); CheckpointError if absent."""
    head, name = _split(path)
    try:
        data = CloudFiles(head).get(name)
    except Exception as e:  # any storage error means "cannot read"
        raise CheckpointError(f"checkpoint {path}: cannot read ({type(e).__name__}: {e})") \
            from None
    if data is None:
        raise CheckpointError(f"checkpoint {path}: no such file")
    return data


def write_bytes(path: str, data: bytes) -> None:
    """Write ``data`` to ``path``; local files are replaced atomically."""
    if "://" not in path or path.startswith("file://"):
        local = Path(path.removeprefix("file://")).expanduser()
        local.parent.mkdir(parents=True, exist_ok=True)
        tmp = local.with_name(local.name + ".tmp")
        tmp.write_bytes(data)
        tmp.replace(local)
        return
    head, name = _split(path)
    CloudFiles(head).put(name, data, compress=None, content_type="application/octet-stream")


def save_checkpoint(path: str, spec: ModelSpec, state_dict: dict[str, torch.Tensor],
                    **extra: Any) -> None:
    """Save weights with their architecture (and any ``extra`` training state)."""
    buf = io.BytesIO()
    torch.save({"format": FORMAT, "spec": spec.model_dump(mode="json"),
                "state_dict": {k: v.detach().cpu() for k, v in state_dict.items()}, **extra},
               buf)
    write_bytes(path, buf.getvalue())


def load_checkpoint(path: str) -> dict[str, Any]:
    """The checkpoint dict at ``path``; CheckpointError if missing or not a torch file."""
    data = read_bytes(path)
    try:
        obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt files raise many kinds
        raise CheckpointError(f"checkpoint {path}: not a readable torch checkpoint "
                              f"({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"checkpoint {path}: holds a {type(obj).__name__}, not a dict")
    if "state_dict" not in obj:  # a bare state dict
        if not all(isinstance(v, torch.Tensor) for v in obj.values()):
            raise CheckpointError(f"checkpoint {path}: neither a petarecon checkpoint nor a "
                                  "state dict")
        obj = {"format": None, "spec": None, "state_dict": obj}
    return obj


def spec_of(ckpt: dict[str, Any], path: str, given: ModelSpec | None = None) -> ModelSpec:
    """The checkpoint's architecture; ``given`` must equal it when both exist."""
    if ckpt.get("spec") is None:
        if given is None:
            raise CheckpointError(f"checkpoint {path} carries no architecture; give the model "
                                  "fields (inference.model)", "model")
        return given
    try:
        spec = ModelSpec.model_validate(ckpt["spec"])
    except ValidationError as e:
        raise CheckpointError(f"checkpoint {path}: invalid architecture ({e})") from None
    if given is not None and given != spec:
        raise CheckpointError(f"checkpoint {path} has architecture {spec.model_dump()} "
                              f"({spec.out_channels} output channels), the config says "
                              f"{given.model_dump()} ({given.out_channels} channels)", "model")
    return spec


def build_model(ckpt: dict[str, Any], spec: ModelSpec, path: str) -> RSUNet:
    """An RSUNet of ``spec`` with the checkpoint's weights, in eval mode; CheckpointError when
    the weights do not fit (e.g. a different output channel count)."""
    model = RSUNet(spec)
    state = ckpt["state_dict"]
    out_w = state.get("out.weight")
    if out_w is not None and out_w.shape[0] != spec.out_channels:
        raise CheckpointError(f"checkpoint {path} has {out_w.shape[0]} output channels; its "
                              f"architecture needs {spec.out_channels}")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).splitlines()[0:3]
        raise CheckpointError(f"checkpoint {path}: weights do not fit the architecture "
                              f"({' '.join(first)[:300]})") from None
    return model.eval()


def load_model(path: str, spec: ModelSpec | None = None) -> RSUNet:
    """Load the RSUNet at ``path`` in eval mode (its stored architecture, or ``spec``)."""
    ckpt = load_checkpoint(path)
    return build_model(ckpt, spec_of(ckpt, path, spec), path)
