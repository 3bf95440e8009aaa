"""The run report: ``report.json`` under the run's scratch path and ``report.html`` next to
the outputs (``{output}/report.html``).

The HTML report holds every layer's Neuroglancer URL, per-stage and per-wave timings with a
plot, a segment size histogram, synapse counts and the connectivity summary, evaluation
metrics when ground truth is given (``chain.ground_truth``, ``chain.synapse_truth``), and the
config used with secrets redacted. Plots are matplotlib PNGs embedded as data URIs, so the
file stands alone.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import logging
import os
from typing import Any

import yaml
from cloudfiles import CloudFiles

from pipeline.config import RunConfig, local_path

log = logging.getLogger("petarecon.report")
VIEW_PORT = 8080


def data_root(config: RunConfig, layers: dict[str, tuple[str, str]]) -> str | None:
    """The folder `petarecon view` must serve for the report's links: the deepest folder
    holding the output and every file:// layer (None when nothing is local)."""
    paths = [local_path(p) for p, _ in layers.values()] + [local_path(config.output)]
    paths = [p for p in paths if p]
    return os.path.commonpath(paths) if paths else None


def view_hint(config: RunConfig, layers: dict[str, tuple[str, str]] | None = None) -> str:
    """How to open the run's local layers: the `petarecon view` command the links assume."""
    root = data_root(config, layers or {})
    return f"petarecon view {root} --port {VIEW_PORT}" if root else ""


def layer_urls(config: RunConfig, layers: dict[str, tuple[str, str]]) -> dict[str, str]:
    """A Neuroglancer URL per layer, plus ``"all"`` for every layer together.

    Cloud layers open in the public viewer; file:// layers open through the local server of
    :func:`view_hint` (the URL names it)."""
    from pipeline.viewer import LayerRef, local_url, public_url

    refs = [LayerRef(n, p, k) for n, (p, k) in layers.items()]
    root = data_root(config, layers)

    def url(rs: list[LayerRef]) -> str:
        if all(not r.cloudpath.startswith("file://") for r in rs):
            return public_url(rs)
        return local_url(rs, root or "/", VIEW_PORT)

    out = {r.name: url([r]) for r in refs}
    out["all"] = url(refs)
    return out


def write_report(config: RunConfig, layers: dict[str, tuple[str, str]],
                 extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write ``report.json`` (scratch) and ``report.html`` (output) for ``layers``
    ({name: (cloud path, kind)}); return the JSON content, whose ``html`` names the page."""
    from pipeline.status import redact
    from pipeline.storage import neuroglancer_url

    local = any(p.startswith("file://") for p, _ in layers.values())
    report = {
        "run": config.name,
        "output": config.output,
        "layers": {n: {"path": p, "kind": k} for n, (p, k) in layers.items()},
        "neuroglancer": None if local else neuroglancer_url(layers),
        "view": view_hint(config, layers) if local else None,
        "config": redact(config.to_dict()),
        **(extra or {}),
    }
    report["html"] = write_html(config, layers, report)
    CloudFiles(config.scratch_path).put(
        "report.json", json.dumps(report, indent=2, default=str).encode(),
        content_type="application/json")
    for n, (p, k) in layers.items():
        log.info("layer %s (%s): %s", n, k, p)
    log.info("run report: %s", report["html"])
    return report


# --- what the run left ------------------------------------------------------------------
def _csv(config: RunConfig, name: str) -> list[dict[str, str]] | None:
    data = CloudFiles(config.scratch_path).get(name)
    return None if data is None else list(csv.DictReader(io.StringIO(data.decode())))


def timings(config: RunConfig) -> dict[str, Any]:
    """Seconds per stage (chain records, else summed waves) and per wave, from the records."""
    from pipeline.status import run_status

    st = run_status(config.scratch_path)
    waves = [{"stage": w.get("stage", ""), "wave": w["wave"], "tasks": w.get("total", 0),
              "seconds": float(w.get("elapsed") or 0.0), "state": w.get("state")}
             for w in st["waves"]]
    stages: dict[str, float] = {}
    ran: dict[str, str] = {}
    for s in st["stages"]:
        if s.get("state") == "complete" and "seconds" in s:
            stages[s["stage"]] = float(s["seconds"])
            ran[s["stage"]] = "earlier run (verified, skipped now)" if s.get("resumed") \
                else "this run"
        elif s.get("state") == "skipped":
            ran[s["stage"]] = "skipped by config"
    for w in waves:
        if w["stage"] and w["stage"] not in {s["stage"] for s in st["stages"]}:
            stages[w["stage"]] = stages.get(w["stage"], 0.0) + w["seconds"]
            ran[w["stage"]] = "this run"
    return {"stages": stages, "ran": ran, "waves": waves}


def segment_sizes(config: RunConfig) -> list[int]:
    """Voxel counts of the final segments (the segmentation stage's table), or []."""
    rows = _csv(config, "segmentation/segment_sizes.csv") or []
    return [int(r["voxels"]) for r in rows if int(r["segment_id"]) != 0]


def synapse_summary(config: RunConfig) -> dict[str, Any] | None:
    """Synapse count, connected pairs, neurons involved and the strongest edges, or None."""
    rows = _csv(config, "synapses/synapses.csv")
    edges = _csv(config, "synapses/connectivity.csv")
    if rows is None:
        return None
    edges = edges or []
    neurons = {r["pre"] for r in rows} | {r["post"] for r in rows}
    top = sorted(edges, key=lambda e: -int(e["count"]))[:10]
    return {"synapses": len(rows), "connected_pairs": len(edges), "neurons": len(neurons),
            "top_edges": [{k: int(float(v)) for k, v in e.items()} for e in top]}


def evaluation(config: RunConfig) -> dict[str, float]:
    """Metrics against the ground truth the chain section names (empty when none)."""
    chain = config.chain
    out: dict[str, float] = {}
    if chain is None:
        return out
    if chain.ground_truth and config.segmentation is not None:
        from pipeline.evaluate import evaluate_paths

        seg = config.layer_path(config.segmentation.seg_layer)
        scores = evaluate_paths(seg, chain.ground_truth, config.bounds)
        out.update({k: round(float(v), 4) for k, v in scores.items()})
    if chain.synapse_truth:
        truth_rows = _read_truth(chain.synapse_truth)
        found = {(int(r["pre"]), int(r["post"]))
                 for r in _csv(config, "synapses/synapses.csv") or []}
        seg_layer = config.synapses.segmentation if config.synapses else None
        if chain.ground_truth and seg_layer and seg_layer != chain.ground_truth:
            # partners are ids of our segmentation: name each by its ground-truth cell
            ids = sorted({i for pair in found for i in pair})
            to_gt = majority_map(seg_layer, chain.ground_truth, ids, config.bounds)
            found = {(to_gt.get(a, 0), to_gt.get(b, 0)) for a, b in found}
        known = {(int(r["pre"]), int(r["post"])) for r in truth_rows}
        hit = len(found & known)
        out.update(synapses_true=len(known), synapses_found=len(found), partners_correct=hit,
                   partner_precision=round(hit / max(len(found), 1), 4),
                   partner_recall=round(hit / max(len(known), 1), 4))
    return out


def majority_map(seg: str, gt: str, ids: list[int], bbox=None) -> dict[int, int]:
    """For each segment id in ``ids``: the nonzero ground-truth id it overlaps most, counted
    chunk by chunk over ``bbox`` (default: the overlap of both)."""
    import numpy as np

    from pipeline.evaluate import LabelSource
    from pipeline.geometry import ChunkGrid

    a, b = LabelSource(seg), LabelSource(gt)
    box = bbox or a.bounds.intersection(b.bounds)
    counts: dict[tuple[int, int], int] = {}
    want = np.asarray(ids, dtype=np.uint64)
    for c in ChunkGrid(box, (256, 256, 64)):
        s, g = a.read(c).astype(np.uint64), b.read(c).astype(np.uint64)
        keep = np.isin(s, want) & (g != 0)
        pairs, n = np.unique(np.stack([s[keep], g[keep]]), axis=1, return_counts=True)
        for (si, gi), k in zip(pairs.T.tolist(), n.tolist(), strict=True):
            counts[(si, gi)] = counts.get((si, gi), 0) + k
    best: dict[int, tuple[int, int]] = {}
    for (si, gi), k in counts.items():
        if k > best.get(si, (0, -1))[1]:
            best[si] = (gi, k)
    return {si: gi for si, (gi, _) in best.items()}


def _read_truth(path: str) -> list[dict[str, str]]:
    from pipeline.config import to_cloudpath

    cloud = to_cloudpath(path)
    base, name = cloud.rsplit("/", 1)
    data = CloudFiles(base).get(name)
    if data is None:
        raise FileNotFoundError(f"synapse truth {path} not found")
    return list(csv.DictReader(io.StringIO(data.decode())))


# --- plots and page ----------------------------------------------------------------------
def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def timing_plot(t: dict[str, Any]) -> str | None:
    """Horizontal bars: seconds per stage and per wave (PNG data URI), None when no waves."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not t["waves"] and not t["stages"]:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(11, max(2.5, 0.22 * len(t["waves"]) + 1)))
    names = list(t["stages"])
    axes[0].barh(names, [t["stages"][n] for n in names], color="#4c72b0")
    axes[0].invert_yaxis()
    axes[0].set_xlabel("seconds")
    axes[0].set_title("per stage")
    axes[1].barh([w["wave"] for w in t["waves"]], [w["seconds"] for w in t["waves"]],
                 color="#dd8452")
    axes[1].invert_yaxis()
    axes[1].tick_params(axis="y", labelsize=7)
    axes[1].set_xlabel("seconds")
    axes[1].set_title("per wave")
    return _png(fig)


def size_histogram(sizes: list[int]) -> str | None:
    """Log-binned histogram of segment sizes (PNG data URI), None without segments."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    if not sizes:
        return None
    fig, ax = plt.subplots(figsize=(6, 3.2))
    bins = np.logspace(0, np.log10(max(sizes) + 1), 30)
    ax.hist(sizes, bins=bins, color="#55a868")
    ax.set_xscale("log")
    ax.set_xlabel("segment size (voxels)")
    ax.set_ylabel("segments")
    ax.set_title(f"{len(sizes)} segments")
    return _png(fig)


def _table(rows: list[list[Any]], header: list[str]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def write_html(config: RunConfig, layers: dict[str, tuple[str, str]],
               report: dict[str, Any]) -> str:
    """Render the report page to ``{output}/report.html``; return its cloud path."""
    from pipeline.status import redact

    urls = layer_urls(config, layers)
    t = timings(config)
    sizes = segment_sizes(config)
    syn = synapse_summary(config)
    metrics = report.get("metrics") or {}
    esc = html.escape
    parts = [f"<h1>petarecon run <code>{esc(config.name)}</code></h1>",
             f"<p>output: <code>{esc(config.output)}</code></p>", "<h2>Layers</h2>"]
    if report.get("view"):
        parts.append(f"<p>Local layers: run <code>{esc(report['view'])}</code>, then open the "
                     "links.</p>")
    rows = [[esc(n), esc(k), f"<code>{esc(p)}</code>",
             f'<a href="{esc(urls.get(n, ""))}">open</a>' if urls.get(n) else "-"]
            for n, (p, k) in layers.items()]
    parts.append(_table(rows, ["layer", "kind", "path", "Neuroglancer"]))
    if urls.get("all"):
        parts.append(f'<p><a href="{esc(urls["all"])}">all layers in one view</a></p>')
    parts.append("<h2>Timings</h2>")
    plot = timing_plot(t)
    if plot:
        parts.append(f'<img alt="timings" src="{plot}">')
    parts.append("<h3>per stage</h3>" + _table(
        [[esc(s), f"{t['stages'].get(s, 0.0):.1f}", esc(r)] for s, r in t["ran"].items()],
        ["stage", "seconds", "ran in"]))
    waves = [[esc(w["stage"]), esc(w["wave"]), w["tasks"], f"{w['seconds']:.1f}",
              esc(str(w["state"]))] for w in t["waves"]]
    parts.append("<h3>per wave</h3>" + _table(waves, ["stage", "wave", "tasks", "seconds",
                                                      "state"]))
    if sizes:
        parts += ["<h2>Segments</h2>", f'<img alt="segment sizes" src="{size_histogram(sizes)}">']
    if syn is not None:
        parts += ["<h2>Synapses</h2>",
                  f"<p>{syn['synapses']} synapses between {syn['neurons']} segments; "
                  f"{syn['connected_pairs']} connected (pre, post) pairs.</p>",
                  _table([[e["pre"], e["post"], e["count"], e["total_size"]]
                          for e in syn["top_edges"]],
                         ["pre", "post", "synapses", "total size (voxels)"])]
    if metrics:
        parts += ["<h2>Evaluation against ground truth</h2>",
                  _table([[esc(k), v] for k, v in metrics.items()], ["metric", "value"])]
    parts += ["<h2>Config</h2>",
              f"<pre>{esc(yaml.safe_dump(redact(config.to_dict()), sort_keys=False))}</pre>"]
    page = ("<!doctype html><html><head><meta charset='utf-8'><title>petarecon "
            f"{esc(config.name)}</title><style>body{{font-family:sans-serif;margin:2em}}"
            "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;"
            "padding:2px 8px;font-size:13px}img{max-width:100%}</style></head><body>"
            + "\n".join(parts) + "</body></html>")
    CloudFiles(config.output).put("report.html", page.encode(), content_type="text/html")
    return f"{config.output}/report.html"


def write_run_report(config: RunConfig) -> str:
    """The reconstruction chain's report: every stage's layers, timings, tables and the
    evaluation; return the HTML report's path."""
    from pipeline import chain

    layers: dict[str, tuple[str, str]] = {}
    if config.input:
        layers["image"] = (config.input, "image")
    for stage in chain.stages(config):
        if stage != "postprocess":
            for name, (path, kind) in chain.module(stage).layers(config).items():
                if all(path != p for p, _ in layers.values()):  # each layer once
                    layers[name] = (path, kind)
    rep = write_report(config, layers, {"metrics": evaluation(config),
                                        "synapses": synapse_summary(config),
                                        "timings": timings(config)})
    return rep["html"]
