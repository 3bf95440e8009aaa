"""The `postprocess` stage: what a reconstruction adds for annotators after segmentation.

Waves (igneous tasks on the run's queue, so the same workers and pools run them):

- ``skeletons``: kimimaro TEASAR skeletons of the ``seg`` layer, per task chunk (igneous
  ``create_skeletonizing_tasks``, unsharded, into ``seg/skeletons``);
- ``skeleton_merge``: fragments of one segment fused into one skeleton per segment;
- ``clefts_pyramid``: a downsampling pyramid of the cleft layer when the run found synapses.

The segmentation stage already builds the ``seg`` pyramid and meshes.
"""

from __future__ import annotations

import contextlib
import io
from typing import Any

from pipeline import reachability, storage
from pipeline.config import ConfigError, RunConfig, load_config

WAVES = ("skeletons", "skeleton_merge", "clefts_pyramid")


def seg_path(config: RunConfig) -> str:
    """The segmentation layer postprocess works on (the segmentation stage's ``seg``)."""
    if config.segmentation is None:
        raise ConfigError([("segmentation", "postprocess needs a `segmentation` section")])
    return config.layer_path(config.segmentation.seg_layer)


def sanity_check(conf: dict[str, Any] | RunConfig) -> RunConfig:
    """Check the seg layer (and the cleft layer, with synapses) exist; return the config
    with ``bbox`` resolved from seg. Writes nothing."""
    config = reachability.checked(load_config(conf))
    try:
        bounds = storage.layer_bounds(seg_path(config), config.mip)
    except storage.LayerError as e:
        raise ConfigError([("segmentation.seg_layer", str(e))]) from None
    if config.synapses is not None and not storage.layer_exists(
            config.layer_path(config.synapses.cleft_layer)):
        raise ConfigError([("synapses.cleft_layer", "layer "
                            f"{config.layer_path(config.synapses.cleft_layer)} does not exist "
                            "(run the synapses stage first)")])
    bbox = config.bounds or bounds
    return config.model_copy(update={"bbox": tuple(bbox.to_list())})


def prepare(config: RunConfig) -> None:
    """Nothing to create: igneous adds the skeleton entry to the seg info itself."""


def tasks(config: RunConfig, wave: str) -> list:
    """The igneous tasks of ``wave`` (one of :data:`WAVES`); empty when switched off."""
    import igneous.task_creation as tc

    chain = config.chain
    dust = chain.skeleton_dust if chain else 100
    if wave in ("skeletons", "skeleton_merge") and chain is not None and not chain.skeletons:
        return []
    path = seg_path(config)
    res = storage.open_layer(path).resolution
    with contextlib.redirect_stdout(io.StringIO()):  # igneous prints bounds to stdout
        if wave == "skeletons":
            shape = tuple(int(c) for c in config.chunk_size)
            scale_nm = float(max(res[0], res[1]))
            return list(tc.create_skeletonizing_tasks(
                path, mip=0, shape=shape, teasar_params={"scale": 4, "const": 10 * scale_nm},
                dust_threshold=dust, sharded=False, spatial_index=False, fill_missing=True,
                fix_avocados=False))
        if wave == "skeleton_merge":
            # one task per id prefix of 10**magnitude: few for small volumes
            voxels = storage.layer_bounds(path).volume
            return list(tc.create_unsharded_skeleton_merge_tasks(
                path, magnitude=1 if voxels < 10**8 else 3, dust_threshold=dust,
                tick_threshold=0))
    if wave == "clefts_pyramid":
        if config.synapses is None:
            return []
        from pipeline.ingest.tasks import create_pyramid_tasks

        cleft = config.layer_path(config.synapses.cleft_layer)
        return create_pyramid_tasks(cleft, tuple(storage.open_layer(cleft).resolution), 1)
    raise ValueError(f"postprocess has no wave {wave!r}; one of {WAVES}")


def layers(config: RunConfig) -> dict[str, tuple[str, str]]:
    """Layers postprocess adds to: seg (skeletons, meshes) and the clefts (pyramid)."""
    out = {config.segmentation.seg_layer: (seg_path(config), "segmentation")}
    if config.synapses is not None:
        out[config.synapses.cleft_layer] = (config.layer_path(config.synapses.cleft_layer),
                                            "segmentation")
    return out


def finish(config: RunConfig) -> dict[str, tuple[str, str]]:
    """The layers postprocess touched (their status was set by their own stages)."""
    return layers(config)
