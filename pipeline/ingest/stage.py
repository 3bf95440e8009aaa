"""The ingest stage's steps, as the `ingest` DAG and the CLI call them."""

from __future__ import annotations

from typing import Any

from pipeline import reachability, storage
from pipeline.config import ConfigError, RunConfig, load_config
from pipeline.geometry import Bbox
from pipeline.ingest.stacks import Stack, StackError
from pipeline.ingest.tasks import create_ingest_tasks, create_pyramid_tasks


def sanity_check(conf: dict[str, Any] | RunConfig) -> RunConfig:
    """Validate the config against the data, then create the output layer.

    Return the config with ``bbox`` resolved. Raise ConfigError naming each bad field before
    anything is written.
    """
    config = reachability.checked(load_config(conf))
    if config.ingest is None:
        raise ConfigError([("ingest", "the ingest stage needs an `ingest` section")])
    problems: list[tuple[str, str]] = []
    try:
        stack = Stack(config.ingest.source, config.ingest.dataset, config.ingest.axes)
    except StackError as e:
        field = "ingest.dataset" if "dataset" in str(e) else "ingest.source"
        raise ConfigError([(field, str(e))]) from None
    if 0 in stack.bbox.shape:
        raise ConfigError([("ingest.source", f"{config.ingest.source} is empty "
                                             f"(shape {list(stack.bbox.shape)})")])
    bbox = config.bounds or stack.bbox
    if not stack.bbox.contains(bbox):
        problems.append(("bbox", f"{bbox.to_list()} lies outside the stack, whose bounds are "
                                 f"{stack.bbox.to_list()}"))
    layer = config.image_path
    if why := storage.unwritable(config.output):
        problems.append(("output", why))
    elif not config.overwrite and storage.layer_has_data(layer):
        problems.append(("output", f"layer {layer} already holds data; set overwrite: true "
                                   "to replace it"))
    if problems:
        raise ConfigError(problems)
    return config.model_copy(update={"bbox": tuple(bbox.to_list())})


def prepare(config: RunConfig) -> None:
    """Create the image layer with a full info, marked incomplete."""
    storage.create_layer(config.image_path, "image", Bbox.from_list(config.bbox),
                         config.resolution, config.storage_chunk_size, overwrite=True)


def ingest_tasks(config: RunConfig) -> list:
    return create_ingest_tasks(config)


def pyramid_tasks(config: RunConfig) -> list:
    assert config.ingest is not None
    return create_pyramid_tasks(config.image_path, config.resolution,
                                config.ingest.downsample_mips)


def finish(config: RunConfig) -> dict[str, tuple[str, str]]:
    """Mark the image layer complete; return the run's layers as {name: (path, kind)}."""
    storage.set_status(config.image_path, "complete")
    assert config.ingest is not None
    return {config.ingest.layer: (config.image_path, "image")}
