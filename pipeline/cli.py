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

    return (*USER_ERRORS, StackError, LayerError, WaveFailed, DagRunFailed)


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
    from pipeline.runner import dag_for, run_embedded

    _logging(verbose)
    cfg = load_config(config)
    report = run_embedded(cfg, dag or dag_for(cfg), verbose)
    _print_report(report)


@app.command()
@friendly
def check(config: Annotated[Path, typer.Argument(help="run config (YAML or JSON)")]) -> None:
    """Validate a run config against its data without writing anything."""
    from pipeline.runner import dag_for, preflight

    cfg = load_config(config)
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
         verbose: Annotated[bool, typer.Option("-v", "--verbose")] = False) -> None:
    """The demo: ingest the gala FIB-SEM cutout and a synthetic volume, then print how to view."""
    from pipeline.demo import run_demo

    _logging(verbose)
    for report in run_demo(out, workers=workers, verbose=verbose):
        _print_report(report)
    console.print(f"\nView every layer in Neuroglancer:  [bold]petarecon view {out}[/]")


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


if __name__ == "__main__":
    app()
