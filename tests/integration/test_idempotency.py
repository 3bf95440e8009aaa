"""Idempotency: every task of every stage run twice gives the same bytes as running it once.

Each stage (ingest, alignment, inference, segmentation, synapses) runs in-process with every
task called twice in a row, and is compared byte for byte with a run calling each task once.
Then the segmentation stage runs through the real queue and worker processes, and after each
wave every task is delivered again (a duplicate delivery after completion): still identical.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.chaos import STAGES, diff, run_stage, snapshot, stage_conf
from bench.chaos import make_inputs as _make_inputs

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return _make_inputs(tmp_path_factory.mktemp("idem-in"))


@pytest.mark.parametrize("stage", STAGES)
def test_every_task_twice_is_identical(stage: str, inputs: dict[str, str],
                                       tmp_path: Path) -> None:
    once = run_stage(stage, stage_conf(stage, inputs, tmp_path / "once"))
    twice = run_stage(stage, stage_conf(stage, inputs, tmp_path / "twice"), repeat=2)
    want = snapshot(once.output)
    assert len(want) > 5
    assert diff(want, snapshot(twice.output)) == []


def test_duplicate_delivery_after_workers_is_harmless(inputs: dict[str, str],
                                                      tmp_path: Path) -> None:
    once = run_stage("segmentation", stage_conf("segmentation", inputs, tmp_path / "once"))
    dup = run_stage("segmentation", stage_conf("segmentation", inputs, tmp_path / "dup"),
                    "workers", workers=2, duplicate=True)
    assert diff(snapshot(once.output), snapshot(dup.output)) == []
