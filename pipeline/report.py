"""The run report: every layer of a run with the URL that opens it in Neuroglancer."""

from __future__ import annotations

import json
import logging
from typing import Any

from cloudfiles import CloudFiles

from pipeline.config import RunConfig, local_path

log = logging.getLogger("petarecon.report")


def view_hint(config: RunConfig) -> str:
    """How to open the run's layers: a public URL for cloud layers, `petarecon view` for local."""
    root = local_path(config.output)
    return f"petarecon view {root}" if root else ""


def write_report(config: RunConfig, layers: dict[str, tuple[str, str]],
                 extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write ``report.json`` under the run's scratch path and return its content.

    ``layers`` maps a layer name to (cloud path, kind). Cloud layers get a public Neuroglancer
    URL; file:// layers get the `petarecon view` command that serves them.
    """
    from pipeline.storage import neuroglancer_url
    from pipeline.viewer import LayerRef

    refs = [LayerRef(name, path, kind) for name, (path, kind) in layers.items()]
    local = [r for r in refs if r.cloudpath.startswith("file://")]
    report = {
        "run": config.name,
        "output": config.output,
        "layers": {r.name: {"path": r.cloudpath, "kind": r.kind} for r in refs},
        "neuroglancer": None if local else neuroglancer_url(layers),
        "view": view_hint(config) if local else None,
        "config": config.to_dict(),
        **(extra or {}),
    }
    CloudFiles(config.scratch_path).put(
        "report.json", json.dumps(report, indent=2).encode(), content_type="application/json")
    for r in refs:
        log.info("layer %s (%s): %s", r.name, r.kind, r.cloudpath)
    if report["neuroglancer"]:
        log.info("neuroglancer: %s", report["neuroglancer"])
    else:
        log.info("view the layers with: %s", report["view"])
    return report
