"""Chaos: every stage's waves survive repeated SIGKILLs of 20 % of the workers, bit for bit.

For each stage (ingest, alignment, inference, segmentation, synapses) a small run goes through
the real fq:// queue to 5 LocalCluster worker processes while a chaos thread kills a random
20 % of them (one worker) every 1.5–4 s (ingest, whose waves are short: 0.5–1.5 s) and scales
the pool back up. Killed workers' tasks are re-leased when their 5 s lease expires. The run
must complete, and every computed file must be byte-identical to a clean in-process run of
the same stage (``bench.chaos``).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.chaos import STAGES, Chaos, diff, run_stage, snapshot, stage_conf
from bench.chaos import make_inputs as _make_inputs
from pipeline import storage

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return _make_inputs(tmp_path_factory.mktemp("chaos-in"))


@pytest.mark.parametrize("stage", STAGES)
def test_stage_survives_killing_20_percent_of_workers(stage: str, inputs: dict[str, str],
                                                      tmp_path: Path) -> None:
    clean = run_stage(stage, stage_conf(stage, inputs, tmp_path / "clean"))
    gaps = (0.5, 1.5) if stage == "ingest" else (1.5, 4.0)  # ingest's waves are short
    chaos = Chaos(fraction=0.2, min_gap=gaps[0], max_gap=gaps[1], seed=STAGES.index(stage))
    run = run_stage(stage, stage_conf(stage, inputs, tmp_path / "chaos"), "workers",
                    workers=5, chaos=chaos)
    assert chaos.kills >= 2, "the chaos thread never killed a worker twice"
    want, got = snapshot(clean.output), snapshot(run.output)
    assert len(want) > 5
    assert diff(want, got) == []
    root = Path(run.output.removeprefix("file://"))
    layers = [p.parent for p in root.rglob("info") if (p.parent / storage.STATUS_FILE).exists()
              and "scratch" not in p.relative_to(root).parts]
    assert layers
    for layer in layers:  # no output layer left marked half-written (scratch ones may be)
        assert storage.get_status(f"file://{layer}") == "complete", layer
