"""Scaling of the whole reconstruction chain: 1× and 8× the demo's synthetic volume.

    .venv/bin/python bench/scaling.py [--base X Y Z] [--out DIR]

Runs the `reconstruction` DAG (embedded default, the demo's synthetic config) on a synthetic
volume of ``--base`` (default: the demo's default size) and on one twice as large along each
axis (8× the voxels), then prints the wall-time ratio (goal ≤ 8.5×), each stage's ratio, and
the peak memory of the top octree level: the agglomeration tasks of the top level re-run
(idempotent) in a fresh process: their peak traced allocations (tracemalloc, which numpy
reports to) and the process's peak RSS above its post-import high-water mark.
Last, it projects the chain's cost for 1 mm³ at 8×8×40 nm from the 8× run's measured rates
(`petarecon cost`'s projection).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TOP_LEVEL = """
import json, resource, sys
from pipeline.chain import load
from pipeline.segmentation import stage
config = stage.sanity_check(load(json.loads(sys.argv[1])).model_copy(update={"overwrite": True}))
top = stage.top_level(config)
tasks = stage.agglomeration_tasks(config, "nodes" if top else "chunks", top)
import tracemalloc
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
tracemalloc.start()
for t in tasks:
    t.execute() if hasattr(t, "execute") else t()
traced = tracemalloc.get_traced_memory()[1]
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"level": top, "tasks": len(tasks), "baseline_mb": base / 1024,
                  "peak_mb": peak / 1024, "task_mb": (peak - base) / 1024,
                  "traced_peak_mb": traced / 2**20}))
"""


def run_chain(out: Path, shape: tuple[int, int, int]) -> dict:
    """The demo's synthetic chain at ``shape``; its wall time, stage times and config."""
    from pipeline.chain import load, record
    from pipeline.demo import synthetic_chain

    common = {"overwrite": True, "cluster": {"workers": 2}, "lease_seconds": 60}
    t0 = time.monotonic()
    synthetic_chain(out, common, shape, verbose=False)
    wall = time.monotonic() - t0
    doc_config = load(json.loads((out / "synthetic/recon/scratch/run.json").read_text())
                      ["config"])
    stages = {s: (record(doc_config, s) or {}).get("seconds")
              for s in ("alignment", "inference", "segmentation", "synapses", "postprocess")}
    return {"shape": shape, "wall_s": round(wall, 1), "stages": stages,
            "config": doc_config.to_dict(), "scratch": doc_config.scratch_path}


def top_level_memory(config: dict) -> dict:
    proc = subprocess.run([sys.executable, "-c", TOP_LEVEL, json.dumps(config)], cwd=ROOT,
                          capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    from pipeline import cost
    from pipeline.chain import load
    from pipeline.demo import SIZES

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", type=int, nargs=3, default=list(SIZES["default"]["synth"]))
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="petarecon-scaling-"))
    base = tuple(args.base)
    runs = []
    for k in (1, 2):
        shape = tuple(s * k for s in base)
        r = run_chain(out / f"x{k ** 3}", shape)
        r["top_level"] = top_level_memory(r["config"])
        runs.append(r)
        print(json.dumps({k_: v for k_, v in r.items() if k_ != "config"}), flush=True)
    one, eight = runs
    print(f"wall time ratio 8x/1x: {eight['wall_s'] / one['wall_s']:.2f} (goal <= 8.5)")
    for s, t in one["stages"].items():
        if t and eight["stages"].get(s):
            print(f"  {s}: {eight['stages'][s] / t:.2f}")
    print(f"top octree level peak memory (Python/numpy allocations, tracemalloc): "
          f"1x {one['top_level']['traced_peak_mb']:.1f} MB, "
          f"8x {eight['top_level']['traced_peak_mb']:.1f} MB; RSS above the post-import "
          f"high-water mark: 1x {one['top_level']['task_mb']:.1f} MB, "
          f"8x {eight['top_level']['task_mb']:.1f} MB")
    rates = cost.measure(eight["scratch"])
    proj = cost.project(load(eight["config"]), rates, extent_nm=(1e6, 1e6, 1e6))
    print(f"1 mm^3 at 8x8x40 nm ({proj['voxels']:.3e} voxels): "
          f"{proj['total']['core_hours']:.4g} core-hours, {proj['total']['gpu_hours']:.4g} "
          f"GPU-hours, {proj['total']['storage_bytes'] / 1e12:.4g} TB "
          f"(rates {proj['source']})")


if __name__ == "__main__":
    main()
