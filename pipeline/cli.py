"""The `petarecon` command. Thin: each command parses arguments and calls one pipeline function.

User mistakes (bad configs, missing files, failed waves) print a one-line-per-problem error
and exit non-zero, never a traceback.
"""

from __future__ import annotations

import functools
import json
import logging
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from pipeline.config import ConfigError, load_config

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="petarecon: petascale neural circuit reconstruction from EM.")
console = Console(stderr=True, soft_wrap=True)

USER_ERRORS: tuple[type[BaseException], ...] = (ConfigError, FileNotFoundError, ValueError)


def _user_errors() -> tuple[type[BaseException], ...]:
    from dags.embedded import DagRunFailed
    from pipeline.ingest.stacks import StackError
    from pipeline.queue import WaveFailed
    from pipeline.storage import LayerError
    from pipeline.submit import AirflowError

    return (*USER_ERRORS, StackError, LayerError, WaveFailed, DagRunFailed, AirflowError)


def friendly(fn):
    """Turn user errors raised by ``fn`` into a red message and exit code 2."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except _user_errors() as e:
            console.print(f"[bold red]error:[/] {e}", highlight=False, markup=True)
            raise typer.Exit(2) from None
    return wrapper


def _logging(verbose: bool) -> None:
    from rich.logging import RichHandler

    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        handlers=[RichHandler(console=console, show_path=False)], force=True)
    logging.getLogger("petarecon").setLevel(logging.INFO)


@app.command()
@friendly
def run(config: Annotated[Path, typer.Argument(help="run config (YAML or JSON)")],
        dag: Annotated[str | None, typer.Option(help="DAG to run (default: from the config)")]
        = None,
        verbose: Annotated[bool, typer.Option("-v", "--verbose")] = False) -> None:
    """Run a DAG on the embedded default: Airflow in this process, local workers."""
    from pipeline.chain import load
    from pipeline.runner import dag_for, run_embedded

    _logging(verbose)
    cfg = load(config)
    report = run_embedded(cfg, dag or dag_for(cfg), verbose)
    _print_report(report)


@app.command()
@friendly
def check(config: Annotated[Path, typer.Argument(help="run config (YAML or JSON)")]) -> None:
    """Validate a run config against its data without writing anything."""
    from pipeline.chain import load
    from pipeline.runner import dag_for, preflight

    cfg = load(config)
    cfg = preflight(cfg, dag_for(cfg))
    console.print(f"[green]ok[/]: run {cfg.name}, bbox {list(cfg.bbox or [])}")


@app.command()
@friendly
def ingest(source: Annotated[str, typer.Argument(help="HDF5/TIFF/.npy file or PNG folder")],
           output: Annotated[str, typer.Option(help="output root (path or cloud path)")],
           name: Annotated[str, typer.Option(help="run name")] = "ingest",
           layer: Annotated[str, typer.Option(help="image layer name")] = "image",
           dataset: Annotated[str | None, typer.Option(help="HDF5 dataset")] = None,
           axes: Annotated[str, typer.Option(help="zyx or xyz")] = "zyx",
           resolution: Annotated[tuple[float, float, float], typer.Option()] = (8, 8, 40),
           chunk_size: Annotated[tuple[int, int, int], typer.Option()] = (128, 128, 32),
           workers: Annotated[int, typer.Option()] = 2,
           mips: Annotated[int, typer.Option(help="pyramid levels to add")] = 2,
           overwrite: Annotated[bool, typer.Option()] = False,
           verbose: Annotated[bool, typer.Option("-v", "--verbose")] = False) -> None:
    """Turn an image stack into a precomputed layer with a pyramid (the `ingest` DAG)."""
    from pipeline.runner import run_embedded

    _logging(verbose)
    cfg = load_config({
        "name": name, "output": output, "resolution": resolution, "chunk_size": chunk_size,
        "overwrite": overwrite, "cluster": {"workers": workers},
        "ingest": {"source": source, "dataset": dataset, "axes": axes, "layer": layer,
                   "downsample_mips": mips},
    })
    _print_report(run_embedded(cfg, "ingest", verbose))


@app.command()
@friendly
def worker(queue_url: Annotated[str, typer.Argument(help="fq://, sqs:// or pubsub:// queue")],
           dead_letter: Annotated[str, typer.Option(help="cloud path for dead letters")] = "",
           lease_seconds: Annotated[int, typer.Option()] = 600,
           max_attempts: Annotated[int, typer.Option()] = 3,
           max_tasks: Annotated[int | None, typer.Option()] = None,
           idle_exit: Annotated[float | None, typer.Option(help="exit after idle seconds")] = None,
           ) -> None:
    """Drain a task queue: lease, run, delete; SIGTERM finishes the current task, then exits."""
    from workers import run_worker

    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if not dead_letter:
        if not queue_url.startswith("fq://"):
            raise ConfigError([("--dead-letter", "required for non-fq:// queues")])
        dead_letter = "file://" + queue_url[len("fq://"):].rstrip("/") + "_dead_letter"
    run_worker(queue_url, dead_letter, lease_seconds, max_attempts, max_tasks, idle_exit)


@app.command()
@friendly
def synth(output: Annotated[str, typer.Argument(help="output root (path or cloud path)")],
          shape: Annotated[tuple[int, int, int], typer.Option(help="x y z")] = (256, 256, 32),
          seed: Annotated[int, typer.Option()] = 0,
          resolution: Annotated[tuple[float, float, float], typer.Option()] = (8, 8, 40),
          misalign: Annotated[bool, typer.Option(help="inject per-section shifts")] = False,
          folds: Annotated[int, typer.Option(help="sections with a fold")] = 0,
          missing: Annotated[int, typer.Option(help="missing sections")] = 0,
          overwrite: Annotated[bool, typer.Option()] = False) -> None:
    """Write a synthetic EM volume with exact ground truth (image, segmentation, clefts)."""
    from pipeline.synth.io import write_synthetic

    layers = write_synthetic(output, shape, seed, resolution, misalign=misalign, folds=folds,
                             missing=missing, overwrite=overwrite)
    for name, (path, kind) in layers.items():
        console.print(f"{name:14s} {kind:13s} {path}")


@app.command()
@friendly
def train(config: Annotated[Path, typer.Argument(help="training config (YAML or JSON)")],
          resume: Annotated[bool, typer.Option(help="continue from out_dir's checkpoint")]
          = False) -> None:
    """Train the RSUNet boundary detector (see pipeline/models/demo/train_gala.yaml)."""
    from pipeline.models.train import load_train_config
    from pipeline.models.train import train as run_training

    cfg = load_train_config(config)
    if resume:
        cfg = cfg.model_copy(update={"resume": True})
    summary = run_training(cfg)
    console.print_json(json.dumps(summary, default=str))


@app.command()
@friendly
def evaluate(seg: Annotated[str, typer.Argument(help="segmentation: layer path or .h5/.npy")],
             gt: Annotated[str, typer.Argument(help="ground truth: layer path or .h5/.npy")],
             json_out: Annotated[bool, typer.Option("--json", help="print JSON")] = False
             ) -> None:
    """Adapted Rand, VI split/merge, Rand and information F-scores, pixel F1 of SEG vs GT."""
    from rich.table import Table

    from pipeline.evaluate import evaluate_paths

    scores = evaluate_paths(seg, gt)
    if json_out:
        print(json.dumps(scores, indent=2))
        return
    console.print(f"{seg} vs {gt}", highlight=False)
    table = Table("metric", "value")
    for k, v in scores.items():
        table.add_row(k, f"{v:.6g}")
    Console().print(table)


@app.command()
@friendly
def view(root: Annotated[Path, typer.Argument(help="folder holding precomputed layers")],
         port: Annotated[int, typer.Option()] = 8080,
         host: Annotated[str, typer.Option()] = "127.0.0.1",
         open_browser: Annotated[bool, typer.Option("--open")] = False) -> None:
    """Serve local layers with CORS and an offline Neuroglancer; prints the viewer URL."""
    from pipeline.storage import discover_layers
    from pipeline.viewer import LayerRef, serve

    layers = discover_layers(root)
    if not layers:
        raise FileNotFoundError(f"{root}: no precomputed layers (folders with an info file)")
    serve(root, [LayerRef(n, p, k) for n, (p, k) in layers.items()], port=port, host=host,
          open_browser=open_browser)


@app.command()
@friendly
def demo(out: Annotated[Path, typer.Option(help="where the demo writes")] = Path("petarecon-data"),
         workers: Annotated[int, typer.Option()] = 2,
         size: Annotated[str, typer.Option(help="default, or small (for tests)")] = "default",
         verbose: Annotated[bool, typer.Option("-v", "--verbose")] = False) -> None:
    """The demo: the whole reconstruction chain on synthetic EM (misaligned, with defects and
    synapses) and on the gala FIB-SEM cutout; prints each run's report and URLs."""
    import time

    from pipeline.demo import SIZES, run_demo

    if size not in SIZES:
        raise ValueError(f"--size must be one of {', '.join(SIZES)}, got {size!r}")
    _logging(verbose)
    t0 = time.monotonic()
    for report in run_demo(out, workers=workers, size=size, verbose=verbose):
        _print_report(report)
    console.print(f"\ndemo done in {time.monotonic() - t0:.0f} s. Each report's Neuroglancer "
                  "links open once its `petarecon view` command (printed above) runs.")

@app.command()
@friendly
def submit(config: Annotated[Path, typer.Argument(help="run config (YAML or JSON)")],
           airflow: Annotated[str, typer.Option(help="Airflow API base URL, e.g. "
                                                     "http://airflow:8080")],
           user: Annotated[str | None, typer.Option(help="Airflow user (or "
                                                         "$PETARECON_AIRFLOW_USER)")] = None,
           password: Annotated[str | None, typer.Option(
               help="password (prefer $PETARECON_AIRFLOW_PASSWORD)")] = None,
           dag: Annotated[str | None, typer.Option(help="DAG (default: from the config)")]
           = None,
           run_id: Annotated[str | None, typer.Option(help="DAG run id")] = None) -> None:
    """Submit a run to an Airflow deployment through its REST API v2 (JWT auth)."""
    from pipeline.chain import load
    from pipeline.runner import dag_for
    from pipeline.submit import Airflow

    cfg = load(config)
    dag_id = dag or dag_for(cfg)
    run = Airflow(airflow, user, password).trigger(dag_id, cfg.to_dict(), run_id)
    print(json.dumps({"dag_id": dag_id, "dag_run_id": run["dag_run_id"],
                      "state": run.get("state")}))


@app.command()
@friendly
def status(run: Annotated[str, typer.Argument(help="the run's config file, output or "
                                                   "scratch path")],
           json_out: Annotated[bool, typer.Option("--json", help="print JSON")] = False
           ) -> None:
    """Stages, waves (done/total, ETA), failures and dead letters of a run."""
    from rich.table import Table

    from pipeline.status import resolve_scratch, run_status

    st = run_status(resolve_scratch(run))
    if json_out:
        print(json.dumps(st, indent=2, default=str))
        return
    out = Console()
    out.print(f"run [bold]{st['run']}[/] (DAG {st['dag']})"
              + ("  [red]cancel requested[/]" if st["cancel_requested"] else ""))
    if st["stages"]:
        t = Table("stage", "state", "seconds", "note")
        for s in st["stages"]:
            t.add_row(s["stage"], s.get("state", "?"), f"{s.get('seconds', 0) or 0:.1f}",
                      s.get("why") or "")
        out.print(t)
    t = Table("stage", "wave", "done/total", "ETA", "state")
    for w in st["waves"]:
        eta = "-" if w.get("eta") is None else f"{w['eta']:.0f}s"
        t.add_row(w.get("stage", ""), w["wave"], f"{w.get('done', 0)}/{w.get('total', 0)}",
                  eta, w.get("state", "?") + (f": {w['error']}" if w.get("error") else ""))
    out.print(t)
    out.print(f"failed attempts: {st['failed_attempts']}; dead letters: "
              f"{len(st['dead_letters'])}")
    for d in st["dead_letters"]:
        out.print(f"  [red]dead[/] after {d['attempts']} attempt(s): {d['error']}",
                  highlight=False)


@app.command()
@friendly
def cancel(run: Annotated[str, typer.Argument(help="the run's config file, output or "
                                                   "scratch path")],
           airflow: Annotated[str | None, typer.Option(help="also mark the Airflow DAG run "
                                                            "failed at this API URL")] = None,
           dag: Annotated[str, typer.Option(help="DAG id (with --airflow)")] = "reconstruction",
           run_id: Annotated[str | None, typer.Option(help="DAG run id (with --airflow)")]
           = None,
           user: Annotated[str | None, typer.Option()] = None) -> None:
    """Cancel a run: its waves stop, its worker pools scale to zero, its queue is purged."""
    from pipeline.status import cancel as cancel_run
    from pipeline.status import resolve_scratch

    if airflow:
        from pipeline.submit import Airflow

        if not run_id:
            raise ValueError("--airflow needs --run-id")
        Airflow(airflow, user).fail(dag, run_id)
    print(json.dumps(cancel_run(resolve_scratch(run))))


@app.command()
@friendly
def cost(config: Annotated[Path, typer.Argument(help="run config (YAML or JSON)")],
         rates_from: Annotated[str | None, typer.Option(
             "--rates-from", help="a finished run (config, output or scratch path) whose "
                                  "records give the rates; default: the shipped table")] = None,
         extent_nm: Annotated[tuple[float, float, float] | None, typer.Option(
             help="project for this x y z extent in nm instead of the config's bbox")] = None,
         json_out: Annotated[bool, typer.Option("--json", help="print JSON")] = False) -> None:
    """Project core-hours, GPU-hours and storage of a run from measured per-stage rates."""
    from rich.table import Table

    from pipeline import cost as cost_
    from pipeline.chain import load
    from pipeline.status import resolve_scratch

    cfg = load(config)
    rates = cost_.measure(resolve_scratch(rates_from)) if rates_from else cost_.shipped()
    proj = cost_.project(cfg, rates, extent_nm)
    if json_out:
        print(json.dumps(proj, indent=2))
        return
    out = Console()
    out.print(f"{proj['voxels']:.3e} voxels; rates {proj['source']} ({proj['measured']})",
              highlight=False)
    t = Table("stage", "core-hours", "GPU-hours", "storage (GB)")
    for name, row in [*proj["stages"].items(), ("total", proj["total"])]:
        t.add_row(name, f"{row['core_hours']:.4g}", f"{row['gpu_hours']:.4g}",
                  f"{row['storage_bytes'] / 1e9:.4g}")
    out.print(t)
    for note in proj["notes"] + [f"no measured rate for stage {s}" for s in proj["unmeasured"]]:
        out.print(f"note: {note}", highlight=False)


def _print_report(report: dict) -> None:
    console.print(f"[bold green]run {report['run']} done[/]")
    for name, layer in report["layers"].items():
        console.print(f"  {name:12s} {layer['kind']:13s} {layer['path']}")
    if report.get("neuroglancer"):
        console.print(f"  neuroglancer: {report['neuroglancer']}")
    elif report.get("view"):
        console.print(f"  view: {report['view']}")
    if report.get("metrics"):
        console.print("  vs ground truth: " + json.dumps(report["metrics"]))
    if report.get("html"):
        console.print(f"  report: {report['html']}")


if __name__ == "__main__":
    app()
