"""Watershed + mean-affinity agglomeration: ours (global and octree) against waterz.

    .venv/bin/python bench/segmentation.py [--quick]

Every method runs in its own fresh process (the same script with ``--worker``), one thread,
on the same saved input, so that peak memory is per method. Times are CPU seconds of that
process (the machine is shared, so wall time is printed as well); voxels/s divide the input's
voxel count by them. Quality: VI (split, merge, in bits) and adapted Rand error against the
ground truth (gt 0 ignored, segment 0 counted as a segment) at matching thresholds: ours merges
while mean affinity > t, waterz while 1 - mean < 1 - t.
"""

from __future__ import annotations

import os

for _v in ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_v] = "1"

import argparse  # noqa: E402
import contextlib  # noqa: E402
import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
GALA = Path("/work/shared/data/gala_fibsem_example")
THRESHOLDS = (0.3, 0.5, 0.7)
PRIMARY = 0.5
WS = {"high": 0.9999, "low": 0.0001, "size": 100, "dust": 0}
"""Our watershed; waterz keeps its defaults (low 0.0001, high 0.9999, no size merging)."""


# ---- inputs -------------------------------------------------------------------------------

def gt_affinities(gt: np.ndarray, seed: int, sigma: float = 1.0, noise: float = 0.15
                  ) -> np.ndarray:
    """1 between voxels of one nonzero label, else 0; blurred, with noise, clipped to [0, 1]."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    aff = np.zeros((*gt.shape, 3), np.float32)
    for c in range(3):
        hi, lo = [slice(None)] * 3, [slice(None)] * 3
        hi[c], lo[c] = slice(1, None), slice(0, -1)
        aff[(*hi, c)] = (gt[tuple(hi)] == gt[tuple(lo)]) & (gt[tuple(hi)] != 0)
        aff[..., c] = ndimage.gaussian_filter(aff[..., c], sigma)
    aff += rng.normal(0, noise, aff.shape).astype(np.float32)
    return np.clip(aff, 0, 1).astype(np.float32)


def boundary_affinities(p: np.ndarray) -> np.ndarray:
    """aff[v, c] = 1 - max(p[v], p[v - e_c]) (0 on the first plane along c)."""
    aff = np.zeros((*p.shape, 3), np.float32)
    for c in range(3):
        hi, lo = [slice(None)] * 3, [slice(None)] * 3
        hi[c], lo[c] = slice(1, None), slice(0, -1)
        aff[(*hi, c)] = 1 - np.maximum(p[tuple(hi)], p[tuple(lo)])
    return aff


def make_inputs(quick: bool, out: Path) -> list[str]:
    """Save ``<name>_aff.npy`` (X, Y, Z, 3) and ``<name>_gt.npy``; return the names."""
    import h5py

    from pipeline.synth.kernels import cell_labels

    n = 128 if quick else 250
    names = []
    gt, _ = cell_labels(np.random.default_rng(0), (n, n, n), (8.0, 8.0, 8.0))
    np.save(out / f"synth{n}_gt.npy", gt)
    np.save(out / f"synth{n}_aff.npy", gt_affinities(gt, seed=1))
    names.append(f"synth{n}")
    for part in ("train", "test"):
        with h5py.File(GALA / f"{part}-p1.lzf.h5") as f:
            p = np.ascontiguousarray(f["stack"][:].transpose(2, 1, 0), np.float32)
        with h5py.File(GALA / f"{part}-gt.lzf.h5") as f:
            g = np.ascontiguousarray(f["stack"][:].transpose(2, 1, 0)).astype(np.uint64)
        np.save(out / f"gala-{part}_gt.npy", g)
        np.save(out / f"gala-{part}_aff.npy", boundary_affinities(p))
        names.append(f"gala-{part}")
    if not quick:  # one 512 x 512 x 256 chunk, mirrored out of the synthetic input
        aff = np.load(out / f"synth{n}_aff.npy")
        big = np.pad(aff, ((0, 512 - n), (0, 512 - n), (0, 256 - n), (0, 0)), mode="symmetric")
        np.save(out / "chunk512_aff.npy", big)
    return names


# ---- measuring, in a worker process --------------------------------------------------------

def _rss_mib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _reset_peak() -> None:
    with contextlib.suppress(OSError):  # Linux >= 4.0: reset VmHWM to the current RSS
        Path("/proc/self/clear_refs").write_text("5")


class Clock:
    def __init__(self) -> None:
        self.cpu, self.wall = time.process_time(), time.perf_counter()

    def lap(self) -> tuple[float, float]:
        cpu, wall = time.process_time(), time.perf_counter()
        out = (cpu - self.cpu, wall - self.wall)
        self.cpu, self.wall = cpu, wall
        return out


def to_waterz(aff: np.ndarray) -> np.ndarray:
    """Ours (X, Y, Z, c in x, y, z) to waterz (c in z, y, x; Z, Y, X): same predecessor sense."""
    return np.ascontiguousarray(aff.transpose(3, 2, 1, 0)[::-1])


def from_waterz(seg: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(seg.transpose(2, 1, 0))


def check_waterz_convention() -> None:
    """Clean affinities of a label volume must give back its (6-connected) labels."""
    import cc3d
    import waterz

    from pipeline.synth.kernels import cell_labels

    gt, _ = cell_labels(np.random.default_rng(5), (40, 36, 24), (8.0, 8.0, 8.0))
    gt = cc3d.connected_components(gt, connectivity=6).astype(np.uint64)
    aff = gt_affinities(gt, 0, sigma=0.0, noise=0.0)
    seg = from_waterz(next(iter(waterz.agglomerate(to_waterz(aff), [0.0]))))
    pairs = np.unique(np.stack([gt.ravel(), seg.ravel()], 1), axis=0)
    fg = pairs[pairs[:, 0] != 0]
    ok = (len(np.unique(fg[:, 0])) == len(fg) == len(np.unique(fg[:, 1]))
          and (seg[gt == 0] == 0).all())
    if not ok:
        raise SystemExit("waterz convention check failed")


def quality(seg: np.ndarray, gt: np.ndarray) -> dict:
    from pipeline.metrics import adapted_rand_error, variation_of_information

    split, merge = variation_of_information(seg, gt)
    return {"vi_split": split, "vi_merge": merge, "are": adapted_rand_error(seg, gt)[0],
            "n": len(np.unique(seg))}


def _run(method: str, aff: np.ndarray, waff: np.ndarray | None, t: float, clock: Clock
         ) -> tuple[tuple, tuple, np.ndarray, np.ndarray | None]:
    """One timed run: (ws (cpu, wall), agg (cpu, wall), segmentation, our supervoxels)."""
    from pipeline.agglomerate.chunked import AgglomerationParams
    from pipeline.agglomerate.jobs import agglomerate_global, agglomerate_octree
    from pipeline.watershed.chunked import WatershedParams
    from pipeline.watershed.jobs import watershed_global, watershed_octree

    wp = WatershedParams(**WS)
    if method == "ours":
        ws = watershed_global(aff, wp)
        t_ws = clock.lap()
        seg = agglomerate_global(aff, ws, AgglomerationParams(t))
        return t_ws, clock.lap(), seg, ws
    if method == "octree":
        chunk = tuple(-(-s // 2) for s in aff.shape[:3])
        ws = watershed_octree(aff, chunk, wp)
        t_ws = clock.lap()
        seg = agglomerate_octree(aff, ws, chunk, AgglomerationParams(t))
        return t_ws, clock.lap(), seg, ws
    import waterz  # the total, then agglomeration alone on its own fragments

    seg = from_waterz(next(iter(waterz.agglomerate(waff, [1 - t]))))
    total = clock.lap()
    frags = next(iter(waterz.agglomerate(waff, [0.0])))
    clock.lap()
    next(iter(waterz.agglomerate(waff, [1 - t], fragments=frags)))
    agg = clock.lap()
    return (total[0] - agg[0], total[1] - agg[1]), agg, seg, None


def _repeats(name: str, quick: bool) -> int:
    """Timed runs per method (the least CPU time is kept): more for the 1 M voxel gala
    cutouts, whose ~0.1 s runs vary by 10-30 % from run to run."""
    return 1 if quick else 7 if name.startswith("gala") else 2


def worker(job: dict) -> dict:
    from pipeline.agglomerate.chunked import AgglomerationParams
    from pipeline.agglomerate.jobs import agglomerate_global, agglomerate_octree
    from pipeline.watershed.chunked import WatershedParams
    from pipeline.watershed.jobs import watershed_octree

    d = Path(job["dir"])
    aff = np.load(d / f"{job['input']}_aff.npy")
    method, t = job["method"], PRIMARY
    small = np.ascontiguousarray(aff[:12, :12, :12])  # load the compiled code, untimed
    if method == "waterz":
        import waterz

        for _ in waterz.agglomerate(to_waterz(small), [0.5]):
            pass
    else:
        ws_small = watershed_octree(small, (6, 6, 6), WatershedParams(**WS))
        agglomerate_octree(small, ws_small, (6, 6, 6), AgglomerationParams(0.5))
    waff = to_waterz(aff) if method == "waterz" else None
    out: dict = {"method": method, "input": job["input"], "voxels": int(np.prod(aff.shape[:3])),
                 "base_mib": _rss_mib("VmRSS"), "peak_mib": 0.0}
    for i in range(job["repeats"]):  # keep the run of least CPU time, the first's peak
        _reset_peak()
        t_ws, t_agg, seg, ws = _run(method, aff, waff, t, Clock())
        out["peak_mib"] = out["peak_mib"] if i else _rss_mib("VmHWM")
        if "ws" not in out or t_ws[0] + t_agg[0] < out["ws"][0] + out["agg"][0]:
            out["ws"], out["agg"] = t_ws, t_agg
    if method == "ours":
        np.save(d / f"{job['input']}_ours_ws.npy", ws)
        np.save(d / f"{job['input']}_ours_seg.npy", seg)
    elif method == "octree":
        out["chunk"] = [-(-s // 2) for s in aff.shape[:3]]
        out["equal"] = bool(np.array_equal(ws, np.load(d / f"{job['input']}_ours_ws.npy"))
                            and np.array_equal(seg, np.load(d / f"{job['input']}_ours_seg.npy")))
        return out
    gt = np.load(d / f"{job['input']}_gt.npy")
    out["quality"] = {}
    if method == "ours":
        for th in THRESHOLDS:
            s = seg if th == t else agglomerate_global(aff, ws, AgglomerationParams(th))
            out["quality"][str(th)] = quality(s, gt)
    else:
        import waterz

        segs = waterz.agglomerate(waff, sorted(1 - th for th in THRESHOLDS))
        for th, s in zip(sorted(THRESHOLDS, reverse=True), segs, strict=True):
            out["quality"][str(th)] = quality(from_waterz(s), gt)
    return out


def _read_grown(path: Path, lo: int, hi: int) -> np.ndarray:
    """The array saved at ``path`` (X, Y, Z[, C]) grown by ``lo``/``hi`` zero voxels on the
    low/high sides of x, y, z, read x-plane by x-plane straight into the result (as a storage
    read fills its output chunk by chunk, with no second copy of the whole)."""
    with open(path, "rb") as f:
        np.lib.format.read_magic(f)
        shape, _, dtype = np.lib.format.read_array_header_1_0(f)
        out = np.zeros((*(n + lo + hi for n in shape[:3]), *shape[3:]), dtype)
        plane = np.empty(shape[1:], dtype)
        for x in range(shape[0]):
            f.readinto(memoryview(plane).cast("B"))
            out[lo + x, lo:lo + shape[1], lo:lo + shape[2]] = plane
    return out


def chunk_worker(job: dict) -> dict:
    """Peak memory and time of the level-0 tasks of an inner 512 x 512 x 256 chunk (of a
    2 x 2 x 2 grid), as a worker runs them:
    ``step`` "ws" (read the padded affinities, watershed, resolve the chunk's graph) or "agg"
    (read the affinities and supervoxels, region graph, agglomerate). Each is its own task in
    the pipeline (here its own process), so the chunk's peak is the larger of the two."""
    from pipeline.agglomerate import jobs as agg_jobs
    from pipeline.agglomerate.chunked import AgglomerationParams
    from pipeline.agglomerate.jobs import agglomerate_global
    from pipeline.geometry import Bbox
    from pipeline.octree_jobs import CloudStore, Layout
    from pipeline.watershed import jobs as ws_jobs
    from pipeline.watershed.chunked import MARGIN, WatershedParams
    from pipeline.watershed.jobs import prepare_affinity, watershed_global

    d = Path(job["dir"])
    small = np.zeros((12, 12, 12, 3), np.float32) + 0.5
    wp = WatershedParams(**WS)
    agglomerate_global(small, watershed_global(small, wp), AgglomerationParams(PRIMARY))
    base = _rss_mib("VmRSS")
    _reset_peak()
    clock = Clock()
    shape = (512, 512, 256)  # an inner chunk: its faces toward neighbours are frozen
    layout = Layout(Bbox.from_shape(tuple(2 * n for n in shape)), shape)
    store = CloudStore(f"file://{d}/store-{job['step']}")  # as tasks keep their tables
    coord = (1, 1, 1)
    box = layout.grid.chunk(coord)
    if job["step"] == "ws":
        ws_jobs.chunk_job(store, layout, coord, prepare_affinity(  # as the task passes it
            _read_grown(d / "chunk512_aff.npy", MARGIN, MARGIN), box.grow(MARGIN).start,
            (0, 0, 0), copy=False), wp)
        times, peak = clock.lap(), _rss_mib("VmHWM")
        # supervoxels for the "agg" step (from a run on the chunk alone; not measured)
        np.save(d / "chunk512_ws.npy", watershed_global(np.load(d / "chunk512_aff.npy"), wp))
    else:
        aff = np.load(d / "chunk512_aff.npy")
        ws_low = _read_grown(d / "chunk512_ws.npy", 1, 0)
        agg_jobs.chunk_job(store, layout, coord, ws_low, aff, AgglomerationParams(PRIMARY))
        times, peak = clock.lap(), _rss_mib("VmHWM")
    return {"method": "chunk512", "step": job["step"], "voxels": 512 * 512 * 256,
            "total": times, "peak_mib": peak, "base_mib": base}


def run_worker(job: dict) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--worker", json.dumps(job)],
                          capture_output=True, text=True, check=False)
    if proc.returncode:
        raise SystemExit(f"worker {job} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---- report --------------------------------------------------------------------------------

def _speed_row(r: dict) -> str:
    nv = r["voxels"]
    ws, agg = r["ws"][0], r["agg"][0]
    tot, wall = ws + agg, r["ws"][1] + r["agg"][1]
    return (f"{r['input']:<11} {r['method']:<7} {ws:7.2f} {agg:7.2f} {tot:8.2f} {wall:8.2f}"
            f" {nv / ws / 1e6:7.2f} {nv / agg / 1e6:8.2f} {nv / tot / 1e6:8.2f}"
            f" {r['peak_mib']:9.0f} {r['peak_mib'] - r['base_mib']:+8.0f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="128^3 synthetic input, no 512 chunk")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        job = json.loads(args.worker)
        if job["method"] == "check":
            check_waterz_convention()
            res: dict = {"ok": True}
        else:
            res = chunk_worker(job) if job["method"] == "chunk512" else worker(job)
        print(json.dumps(res), flush=True)
        return
    run_worker({"method": "check"})
    print("waterz convention check (clean affinities give back the labels): ok")
    print(f"our watershed: {WS}; agglomeration threshold {PRIMARY} (waterz {1 - PRIMARY});"
          " one thread, a fresh process per method")
    with tempfile.TemporaryDirectory(prefix="bench-seg-") as tmp:
        d = Path(tmp)
        names = make_inputs(args.quick, d)
        results = {}
        for name in names:
            for method in ("ours", "octree", "waterz"):
                results[name, method] = run_worker({"dir": tmp, "input": name, "method": method,
                                                    "repeats": _repeats(name, args.quick)})
        chunk = None if args.quick else [run_worker({"dir": tmp, "method": "chunk512",
                                                     "step": step}) for step in ("ws", "agg")]
    print("\nspeed (s: CPU seconds; wall: wall seconds; Mvox/s from CPU; peak: VmHWM of the"
          " method's process, +: above its RSS before the run, input loaded)")
    print(f"{'input':<11} {'method':<7} {'ws s':>7} {'agg s':>7} {'total s':>8} {'wall s':>8}"
          f" {'ws Mv/s':>7} {'agg Mv/s':>8} {'tot Mv/s':>8} {'peak MiB':>9} {'+MiB':>8}")
    for name in names:
        for method in ("ours", "octree", "waterz"):
            print(_speed_row(results[name, method]))
    print()
    for name in names:
        c = results[name, "octree"]
        tot = {m: results[name, m]["ws"][0] + results[name, m]["agg"][0]
               for m in ("ours", "octree", "waterz")}
        wall = {m: results[name, m]["ws"][1] + results[name, m]["agg"][1]
                for m in ("ours", "octree", "waterz")}
        print(f"{name:<11} ours/waterz total throughput: {tot['waterz'] / tot['ours']:.2f}x "
              f"(wall {wall['waterz'] / wall['ours']:.2f}x); octree chunks {c['chunk']} "
              f"time / global: {tot['octree'] / tot['ours']:.2f}x; "
              f"octree output == global: {c['equal']}")
    print("\nquality (VI in bits; ARE = adapted Rand error; n = segments incl. 0)")
    print(f"{'input':<11} {'t':>4} {'method':<7} {'VI split':>8} {'VI merge':>8} {'VI':>7}"
          f" {'ARE':>7} {'n':>8}")
    for name in names:
        for th in THRESHOLDS:
            for method in ("ours", "waterz"):
                q = results[name, method]["quality"][str(th)]
                print(f"{name:<11} {th:4.1f} {method:<7} {q['vi_split']:8.3f} "
                      f"{q['vi_merge']:8.3f} {q['vi_split'] + q['vi_merge']:7.3f} "
                      f"{q['are']:7.3f} {q['n']:8d}")
        for method in ("ours", "waterz"):
            qs = results[name, method]["quality"]
            best = min(qs, key=lambda k: qs[k]["vi_split"] + qs[k]["vi_merge"])
            print(f"{name:<11} best VI {method}: "
                  f"{qs[best]['vi_split'] + qs[best]['vi_merge']:.3f} at t = {best}")
    if chunk:
        print("\none 512x512x256 chunk, level-0 tasks (each its own process, inputs read as "
              "the task reads them)")
        for c in chunk:
            print(f"  {c['step']:<4} {c['total'][0]:6.1f} s CPU ({c['total'][1]:.1f} s wall, "
                  f"{c['voxels'] / c['total'][0] / 1e6:.2f} Mvox/s); peak RSS "
                  f"{c['peak_mib']:.0f} MiB (process before the task: {c['base_mib']:.0f} MiB)")
        print(f"  chunk peak (the larger task): {max(c['peak_mib'] for c in chunk):.0f} MiB "
              "(target <= 4096)")
    else:
        print("\nchunk step 512x512x256: skipped (--quick)")


if __name__ == "__main__":
    main()
