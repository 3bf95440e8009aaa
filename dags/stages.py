"""The waves of every stage as DAG nodes: one ``<stage>_body(st, conf)`` per stage.

A body returns the stage's wave nodes in order, made with :class:`dags.common.Stage`. The
stage DAGs (dags/<stage>.py) and the reconstruction chain (dags/reconstruction.py) wrap the
same bodies, so both run the same waves. This module creates no DAG: importing it from a
DAG file does not register other DAGs there.
"""

from __future__ import annotations

from airflow.sdk.exceptions import AirflowSkipException

from dags.common import Stage, config_of, run_wave

MAX_LEVELS = 16  # pipeline.segmentation.stage.MAX_LEVELS, without importing it at parse time
AFTER_SKIPS = "none_failed"  # run when nothing upstream failed; skipped levels are fine
ALIGNMENT_WAVES = ("fields", "stitch", "compose", "render", "masks", "pyramid")
POSTPROCESS_WAVES = ("skeletons", "skeleton_merge", "clefts_pyramid")


def inference_pool(config) -> str:
    """The inference stage's worker pool, from the config ("gpu" for cuda)."""
    from pipeline.inference import stage

    return stage.pool(config)


def ingest_body(st: Stage, conf) -> list:
    """The stack into the image layer, then its pyramid."""
    return [st.wave("ingest_wave", "ingest", lambda c: st.module().ingest_tasks(c))(conf),
            st.wave("pyramid_wave", "pyramid", lambda c: st.module().pyramid_tasks(c))(conf)]


def alignment_body(st: Stage, conf) -> list:
    """Defects (then the sections table), then one node per alignment wave."""
    def defects(conf: dict) -> dict:
        out = run_wave(conf, "alignment defects", lambda c: st.module().tasks(c, "defects"),
                       stage=st.name, chain=st.chain)
        return {**out, "sections": st.module().reduce_sections(config_of(conf))}

    def wave(name: str):
        return st.wave(name, f"alignment {name}", lambda c: st.module().tasks(c, name))(conf)

    return [st.node("defects", defects)(conf)] + [wave(w) for w in ALIGNMENT_WAVES]


def inference_body(st: Stage, conf) -> list:
    """One wave: every chunk's affinities."""
    return [st.wave("inference_wave", "inference",
                    lambda c: st.module().inference_tasks(c))(conf)]


def segmentation_body(st: Stage, conf) -> list:
    """Watershed and agglomeration levels with their remaps, tables, pyramid, meshes. One
    node per octree level; levels above the run's top skip themselves."""
    def level(prefix: str, lvl: int):
        def work(conf: dict) -> list:
            stage = st.module()
            config = config_of(conf)
            if lvl > stage.top_level(config):
                raise AirflowSkipException(f"level {lvl} is above this run's octree top")
            make = stage.watershed_tasks if prefix == "ws" else stage.agglomeration_tasks
            waves = ["chunks", "faces"] if (prefix, lvl) == ("ws", 0) else \
                ["chunks"] if lvl == 0 else ["nodes"]
            return [run_wave(conf, f"{prefix} level {lvl} {w}", lambda c, w=w: make(c, w, lvl),
                             stage=st.name, chain=st.chain) for w in waves]
        return st.node(f"{prefix}_level_{lvl}", work, AFTER_SKIPS)(conf)

    def remap(prefix: str):
        def work(conf: dict) -> dict:
            stage = st.module()
            config = config_of(conf)
            make = stage.watershed_tasks if prefix == "ws" else stage.agglomeration_tasks
            out = run_wave(conf, f"{prefix} remap", lambda c: make(c, "remap"), stage=st.name,
                           chain=st.chain)
            s = config.segmentation
            stage.finish_layer(config, s.ws_layer if prefix == "ws" else s.seg_layer)
            return out
        return st.node(f"{prefix}_remap", work, AFTER_SKIPS)(conf)

    def wave(task_id: str, name: str, tasks_of):
        return st.wave(task_id, name, tasks_of, AFTER_SKIPS)(conf)

    nodes = []
    for prefix in ("ws", "agg"):
        nodes += [level(prefix, lvl) for lvl in range(MAX_LEVELS)] + [remap(prefix)]
    nodes += [st.node("tables", lambda conf: st.module().write_tables(config_of(conf)),
                      AFTER_SKIPS)(conf),
              wave("seg_pyramid", "seg pyramid", lambda c: st.module().pyramid_tasks(c)),
              wave("seg_meshes", "seg meshes", lambda c: st.module().mesh_tasks(c, "meshes")),
              wave("seg_manifests", "seg manifests",
                   lambda c: st.module().mesh_tasks(c, "manifests"))]
    return nodes


def synapses_body(st: Stage, conf) -> list:
    """Map, reduce, remap, assign; dedup (in the DAG node); relabel."""
    def wave(name: str):
        return st.wave(name, f"synapses {name}", lambda c: st.module().tasks(c, name))(conf)

    dedup = st.node("dedup", lambda conf: st.module().dedup(config_of(conf)))(conf)
    return [wave("map"), wave("reduce"), wave("remap"), wave("assign"), dedup,
            wave("relabel")]


def postprocess_body(st: Stage, conf) -> list:
    """One node per postprocess wave: skeletons, their merge, the cleft pyramid."""
    return [st.wave(w, f"postprocess {w}", lambda c, w=w: st.module().tasks(c, w))(conf)
            for w in POSTPROCESS_WAVES]
