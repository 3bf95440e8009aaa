"""Scaling of the whole reconstruction chain: 1× and 8× the demo's synthetic volume.

    .venv/bin/python bench/scaling.py [--base X Y Z] [--out DIR]

Runs the `reconstruction` DAG (embedded default, the demo's synthetic config) on a synthetic
volume of ``--base`` (default: the demo's default size) and on one twice as large along each
axis (8× the voxels), then prints the wall-time ratio (goal ≤ 8.5×), each stage's ratio, and
the peak memory of the top octree level: its watershed and agglomeration tasks re-run
(idempotent) in a fresh process, with their peak traced allocations (tracemalloc, which numpy
reports to).
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
import json, sys, tracemalloc
from pipeline.chain import load
from pipeline.segmentation import stage
config = stage.sanity_check(load(json.loads(sys.argv[1])).model_copy(update={"overwrite": True}))
top = stage.top_level(config)
wave = "nodes" if top else "chunks"
out = {"level": top}
tracemalloc.start()
for name, make in (("watershed", stage.watershed_tasks), ("agglomeration",
                                                          stage.agglomeration_tasks)):
    tasks = make(config, wave, top)
    tracemalloc.reset_peak()
    for t in tasks:
        t.execute() if hasattr(t, "execute") else t()
    out[name] = {"tasks": len(tasks), "traced_peak_mb": tracemalloc.get_traced_memory()[1] / 2**20}
print(json.dumps(out))
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
    for stage_ in ("watershed", "agglomeration"):
        print(f"top octree level (level {one['top_level']['level']} / "
              f"{eight['top_level']['level']}) {stage_} peak memory (Python/numpy allocations, "
              f"tracemalloc): 1x {one['top_level'][stage_]['traced_peak_mb']:.1f} MB, "
              f"8x {eight['top_level'][stage_]['traced_peak_mb']:.1f} MB")
    rates = cost.measure(eight["scratch"])
    proj = cost.project(load(eight["config"]), rates, extent_nm=(1e6, 1e6, 1e6))
    print(f"1 mm^3 at 8x8x40 nm ({proj['voxels']:.3e} voxels): "
          f"{proj['total']['core_hours']:.4g} core-hours, {proj['total']['gpu_hours']:.4g} "
          f"GPU-hours, {proj['total']['storage_bytes'] / 1e12:.4g} TB "
          f"(rates {proj['source']})")


if __name__ == "__main__":
    main()
