"""The reconstruction chain: alignment → inference → segmentation → synapses → postprocess,
from one RunConfig.

**Wiring.** Each stage reads the previous one's output unless the config says otherwise
(:func:`wire`, applied to the raw document before validation):

- inference reads the aligned image (``alignment.aligned_layer``) and takes the alignment's
  input and output masks;
- segmentation reads the affinities (``inference.output_layer``);
- synapses take partners from ``seg`` and the geometric rule's image from the aligned image.

**Cleft probability.** There is no cleft network in petarecon: the RSUNet is trained for
boundaries only, and a cleft map made up from affinities would be dishonest. ``synapses.cleft``
therefore names a cleft probability layer made elsewhere (the synthetic generator writes one,
``cleft_probability``; at scale it is a cleft detector's output, as in the paper).

**Skip and resume.** A stage in ``chain.skip`` does not run (its outputs must exist). Every
stage that runs leaves a record ``{scratch}/chain/<stage>.json``. A stage is *verified* when
its record says complete with the same fingerprint (a hash of everything the stage reads:
its config section, the wired inputs, bbox, mip and chunk sizes), every output layer's status
file says ``complete``, and every output layer holds at mip 0 the number of chunks its grid
requires (counted when the stage finished and again now). A rerun skips a verified stage's
waves; a stage that is not verified reruns, and so does every stage after one that reran
since they finished.

**Resume within a stage.** While a stage runs, each wave that finishes (every task done) is
added to the record's ``waves_done`` with the chunk counts of the stage's output layers then.
A rerun of an interrupted stage (record still ``running``: cancelled, failed or killed) with
the same fingerprint, no upstream stage finished since it started and every output layer
still holding at least those chunks, keeps its layers and scratch tables (no prepare) and
skips the waves done; otherwise the stage starts over (its prepare resets its tables).
"""

from __future__ import annotations

import hashlib
import importlib
import json
import time
from pathlib import Path
from typing import Any

import yaml
from cloudfiles import CloudFiles

from pipeline import storage
from pipeline.config import ConfigError, RunConfig, load_config, to_cloudpath

CHAIN = ("alignment", "inference", "segmentation", "synapses", "postprocess")
MODULES = {"alignment": "pipeline.align.stage", "inference": "pipeline.inference.stage",
           "segmentation": "pipeline.segmentation.stage",
           "synapses": "pipeline.synapses.stage", "postprocess": "pipeline.postprocess.stage"}
INPUT_NAMES = {"image", "affinity", "boundary", "cleft_probability", "segmentation"}


def module(stage: str):
    """The stage module (sanity_check, prepare, finish, layers) behind chain stage ``stage``."""
    return importlib.import_module(MODULES[stage])


# --- the document: reading and wiring ---------------------------------------------------
def read_document(source: str | Path | dict[str, Any]) -> dict[str, Any]:
    """The raw config document of a YAML/JSON file or dict; ConfigError when unreadable."""
    if isinstance(source, dict):
        return source
    path = Path(source)
    if not path.is_file():
        raise ConfigError([("", f"config file not found: {path}")], str(source))
    try:
        text = path.read_text()
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as e:
        raise ConfigError([("", f"cannot parse {path.name}: {e}")], str(source)) from None
    if not isinstance(data, dict):
        raise ConfigError([("", "a run config must be a mapping of fields")], str(source))
    return data


def is_chain(data: dict[str, Any]) -> bool:
    """A document asks for the chain when it has a ``chain`` section or several stages."""
    return "chain" in data or sum(
        1 for s in CHAIN[:4] if isinstance(data.get(s), dict)) >= 2


def wire(data: dict[str, Any]) -> dict[str, Any]:
    """A copy of document ``data`` whose stage sections read the previous stages' outputs
    (fields the document sets explicitly are kept)."""
    d = json.loads(json.dumps(data))
    out = to_cloudpath(str(d.get("output", "out"))).rstrip("/")
    d.setdefault("chain", {})
    al, inf, seg, syn = (d.get(s) for s in CHAIN[:4])
    aligned = None
    if isinstance(al, dict):
        aligned = f"{out}/{al.get('aligned_layer', 'aligned')}"
        if isinstance(inf, dict):
            inf.setdefault("input", aligned)
            inf.setdefault("input_mask", f"{out}/{al.get('input_mask_layer', 'input_mask')}")
            inf.setdefault("output_mask",
                           f"{out}/{al.get('output_mask_layer', 'output_mask')}")
    if isinstance(seg, dict) and isinstance(inf, dict) and not (
            seg.get("affinity") or seg.get("boundary")):
        seg["affinity"] = f"{out}/{inf.get('output_layer', 'aff')}"
    if isinstance(syn, dict):
        if isinstance(seg, dict):
            syn.setdefault("segmentation", f"{out}/{seg.get('seg_layer', 'seg')}")
        if aligned:
            syn.setdefault("image", aligned)
    return d


def load(source: str | Path | dict[str, Any]) -> RunConfig:
    """Load a run config; a chain document is wired first (see :func:`wire`)."""
    data = read_document(source)
    where = None if isinstance(source, dict) else str(source)
    try:
        return load_config(wire(data) if is_chain(data) else data)
    except ConfigError as e:
        raise ConfigError(e.problems, where) from None


def stages(config: RunConfig) -> list[str]:
    """The chain's stages this config has, in order (postprocess follows segmentation)."""
    have = [s for s in CHAIN[:4] if getattr(config, s) is not None]
    if config.segmentation is not None:
        have.append("postprocess")
    return have


def enabled(config: RunConfig) -> list[str]:
    """The stages that run: :func:`stages` less ``chain.skip``."""
    skip = set(config.chain.skip) if config.chain else set()
    return [s for s in stages(config) if s not in skip]


# --- records -------------------------------------------------------------------------------
def _cf(config: RunConfig) -> CloudFiles:
    return CloudFiles(f"{config.scratch_path}/chain")


def record(config: RunConfig, stage: str) -> dict[str, Any] | None:
    """The stage's record, or None."""
    return _cf(config).get_json(f"{stage}.json")


def _section(config: RunConfig, stage: str) -> Any:
    if stage == "postprocess":
        return [config.chain.model_dump(mode="json", exclude={"skip", "ground_truth",
                                                              "synapse_truth"})
                if config.chain else None, config.segmentation.seg_layer,
                config.synapses.cleft_layer if config.synapses else None]
    return getattr(config, stage).model_dump(mode="json")


def fingerprint(config: RunConfig, stage: str) -> str:
    """A hash of everything ``stage`` reads: its section, bbox, mip, chunk sizes, output."""
    doc = {"section": _section(config, stage), "bbox": config.bbox, "mip": config.mip,
           "chunk": config.chunk_size, "storage": config.storage_chunk_size,
           "input": config.input, "output": config.output, "resolution": config.resolution}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]


def outputs(config: RunConfig, stage: str) -> dict[str, tuple[str, str]]:
    """The layers ``stage`` writes (its layers less its inputs): {name: (path, kind)}."""
    if stage == "postprocess":
        return {}
    found = module(stage).layers(config)
    return {n: pk for n, pk in found.items()
            if n not in INPUT_NAMES and pk[0].startswith(config.output + "/")}


def expected_chunks(path: str) -> int:
    """Chunks the layer's mip-0 grid holds (volume size / chunk size, rounded up)."""
    scale = storage.open_layer(path).info["scales"][0]
    n = 1
    for size, chunk in zip(scale["size"], scale["chunk_sizes"][0], strict=True):
        n *= -(-int(size) // int(chunk))
    return n


def chunk_count(path: str) -> int:
    """Chunk files stored at the layer's mip 0."""
    key = storage.open_layer(path).info["scales"][0]["key"]
    return sum(1 for n in CloudFiles(path).list(prefix=f"{key}/") if "_" in n.split("/")[-1])


def layer_bytes(path: str) -> int | None:
    """Bytes a file:// layer holds on disk (every mip, meshes, skeletons); None elsewhere."""
    from pipeline.config import local_path

    root = local_path(path)
    if root is None:
        return None
    return sum(f.stat().st_size for f in Path(root).rglob("*") if f.is_file())


def verify(config: RunConfig, stage: str) -> tuple[bool, str]:
    """Is ``stage``'s output complete and verified (see the module doc)? (ok, why not)."""
    rec = record(config, stage)
    if rec is None or rec.get("state") != "complete":
        return False, "no complete record"
    if rec.get("fingerprint") != fingerprint(config, stage):
        return False, "config changed"
    for name, layer in rec.get("layers", {}).items():
        if storage.get_status(layer["path"]) != "complete":
            return False, f"layer {name} not marked complete"
        if chunk_count(layer["path"]) != layer["chunks"] or layer["chunks"] != \
                expected_chunks(layer["path"]):
            return False, f"layer {name} is missing chunks"
    return True, ""


def _resumable(config: RunConfig, rec: dict[str, Any]) -> list[dict[str, Any]]:
    """The waves an interrupted attempt (``rec``) finished whose outputs are all still
    there; [] when it cannot be resumed."""
    done = rec.get("waves_done") or []
    if rec.get("state") != "running" or not done or \
            rec.get("fingerprint") != fingerprint(config, rec["stage"]):
        return []
    for name, count in done[-1].get("layers", {}).items():
        path = outputs(config, rec["stage"]).get(name, ("",))[0]
        if not path or chunk_count(path) < count:
            return []
    return done


def plan(config: RunConfig, stage: str) -> dict[str, Any]:
    """Decide whether ``stage`` runs now; write the decision into its record and return it.

    Skipped by config → state "skipped"; verified and no earlier stage finished after it →
    "complete" kept (its waves are skipped); otherwise "running" with a new fingerprint,
    carrying the finished waves of an interrupted attempt it can resume (``waves_done``).
    """
    rec = record(config, stage) or {}
    order = CHAIN.index(stage)
    if stage not in enabled(config):
        rec = {**rec, "stage": stage, "order": order, "state": "skipped", "why": "chain.skip"}
    else:
        ok, why = verify(config, stage)
        since = rec.get("finished") or rec.get("started") or 0
        newer = [s for s in enabled(config)[:enabled(config).index(stage)]
                 if (record(config, s) or {}).get("finished", 0) > since]
        if ok and not newer:
            rec.update(resumed=True, why="complete and verified")
            _cf(config).put_json(f"{stage}.json", rec)
            return rec
        done = [] if newer else _resumable(config, rec)
        if done:
            why = f"resumed after {len(done)} finished wave(s)"
        elif newer:
            why = f"upstream {newer[0]} reran"
        rec = {"stage": stage, "order": order, "state": "running", "started": time.time(),
               "fingerprint": fingerprint(config, stage), "why": why, "waves_done": done}
    _cf(config).put_json(f"{stage}.json", rec)
    return rec


def wave_done(config: RunConfig, stage: str, wave: str) -> dict[str, Any] | None:
    """The record of ``wave`` if the running attempt of ``stage`` resumes it as finished."""
    rec = record(config, stage) or {}
    if rec.get("state") != "running":
        return None
    return next((w for w in rec.get("waves_done", []) if w["wave"] == wave), None)


def mark_wave_done(config: RunConfig, stage: str, out: dict[str, Any]) -> None:
    """Add a finished wave (``run_wave``'s summary) to the running stage's record."""
    rec = record(config, stage) or {}
    if rec.get("state") != "running":
        return
    layers = {n: chunk_count(p) for n, (p, _) in outputs(config, stage).items()}
    rec["waves_done"] = [*rec.get("waves_done", []), {**out, "layers": layers}]
    _cf(config).put_json(f"{stage}.json", rec)


def runs(config: RunConfig, stage: str) -> bool:
    """True while ``stage`` is planned to run (its waves must not be skipped)."""
    return (record(config, stage) or {}).get("state") == "running"


def stage_config(config: RunConfig, stage: str, prior: dict | None = None) -> RunConfig:
    """The config ``stage`` runs with: the chain's, with ``overwrite`` on when an earlier
    run of this chain already started the stage (``prior``, default: the stage's record), so
    an interrupted stage can be redone; foreign data stays protected."""
    rec = record(config, stage) if prior is None else prior
    if (rec or {}).get("fingerprint") and not config.overwrite:
        return config.model_copy(update={"overwrite": True})
    return config


def begin(config: RunConfig, stage: str) -> RunConfig:
    """Plan ``stage``; when it runs: sanity check, then prepare. Return its config."""
    prior = record(config, stage) or {}
    rec = plan(config, stage)
    if rec["state"] != "running":
        return config
    mod = module(stage)
    checked = mod.sanity_check(stage_config(config, stage, prior))
    if not rec.get("waves_done"):  # a resumed attempt keeps its layers and tables
        mod.prepare(checked)
    return checked


def complete(config: RunConfig, stage: str, waves: list[dict] | None = None) -> dict[str, Any]:
    """After the stage's waves: its ``finish`` (marks layers complete), then the record with
    chunk counts and timings. Return the record."""
    module(stage).finish(config)
    rec = record(config, stage) or {}
    layers = {n: {"path": p, "kind": k, "chunks": chunk_count(p), "bytes": layer_bytes(p)}
              for n, (p, k) in outputs(config, stage).items()}
    now = time.time()
    box = config.bounds
    rec.pop("waves_done", None)
    rec.update(state="complete", finished=now, seconds=round(now - rec.get("started", now), 3),
               layers=layers, waves=waves or [], workers=config.cluster.workers,
               voxels=int(box.volume) if box is not None else None)
    _cf(config).put_json(f"{stage}.json", rec)
    return rec


def preflight(config: RunConfig) -> RunConfig:
    """Checks before a chain starts: stage sections present, skip names valid, and the first
    stage that runs passes its sanity check (later stages check when they start, since their
    inputs are written by the chain)."""
    todo = enabled(config)
    if not stages(config):
        raise ConfigError([("chain", "the reconstruction chain needs at least one of the "
                                     "alignment, inference, segmentation, synapses sections")])
    for stage in todo:
        if verify(config, stage)[0]:
            continue
        module(stage).sanity_check(stage_config(config, stage))
        break
    return config
