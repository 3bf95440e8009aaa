"""Defect detection and the inference mask rules, on constructed cases."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch

from pipeline.align import synthetic as sy
from pipeline.masks.detect import (
    CRACK,
    EMPTY,
    FOLD,
    RESIN,
    ClassicalDetector,
    detect_stack,
    section_flags,
)
from pipeline.masks.rules import MisalignParams, classify, masks_for_stack, runs_of_three
from pipeline.synth import DefectSpec, synthesize
from pipeline.synth.features import _translate
from tests.conftest import REPO


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def clean() -> np.ndarray:
    return synthesize((96, 96, 8), 3, resolution=(8, 8, 10)).image


def test_detector_finds_generator_folds_and_nothing_on_clean_sections():
    vol = synthesize((128, 128, 12), 6, defects=DefectSpec(shifts=True, folds=2, missing=1,
                                                           partial_missing=1))
    codes = detect_stack(vol.image)
    folded = [z for z in range(12) if (codes[..., z] & FOLD).any()]
    assert folded == vol.defects["folds"]
    for key, line in vol.defects["fold_lines"].items():
        stripe = sy.fold_stripe((128, 128), line)
        assert ((codes[..., int(key)] & FOLD)[stripe] > 0).mean() >= 0.9
    assert not (codes & CRACK).any()
    (z_missing,) = vol.defects["missing"]
    assert ((codes[..., z_missing] & EMPTY) > 0).all()
    (z_part,) = vol.defects["partial_missing"]
    lost = vol.image[..., z_part] == 0
    assert ((codes[..., z_part] & EMPTY) > 0)[lost].all()


def test_detector_finds_a_crack_and_resin_and_no_false_positive_on_real_em(clean):
    sec = clean[..., 0].copy()
    sec[:, 40:44] = 255                                    # a bright tear across the section
    sec[50:, 50:] = 240                                    # a flat bright patch (resin)
    codes = ClassicalDetector()(sec)
    assert ((codes & CRACK) > 0)[10:50, 40:44].mean() > 0.9
    assert ((codes & RESIN) > 0)[62:, 62:].all()
    assert not (codes & FOLD).any()
    with h5py.File(REPO / "tests/data/gala_fibsem_example/train-image.h5") as h:
        gala = h["stack"][:10].transpose(2, 1, 0)
    assert not detect_stack(gala).any()


def test_three_consecutive_masked_sections_zero_the_output():
    m = np.zeros((4, 4, 7), bool)
    m[0, 0, 1:4] = True        # three in a row: all three go to the output mask
    m[1, 1, 1:3] = True        # two in a row: not
    m[2, 2, [1, 3, 5]] = True  # alternating: not
    m[3, 3, 2:7] = True        # five in a row: all five
    out = runs_of_three(m)
    assert out[0, 0].tolist() == [False, True, True, True, False, False, False]
    assert not out[1, 1].any() and not out[2, 2].any()
    assert out[3, 3, 2:].all() and not out[3, 3, :2].any()


def test_classify_slip_and_step():
    big, small = np.full((1, 3), 6.0), np.zeros((1, 3))
    slip, step = classify(big, big, small, 2.0)            # z off both ways, neighbours agree
    assert slip.all() and not step.any()
    slip, step = classify(big, small, big, 2.0)            # offset persists from z onwards
    assert step.all() and not slip.any()
    slip, step = classify(small, small, small, 2.0)
    assert not slip.any() and not step.any()


def _stack_masks(stack: np.ndarray) -> dict[str, np.ndarray]:
    return masks_for_stack(stack, detect_stack(stack), (0, 0),
                           MisalignParams(tile=32, radius=8, threshold=2.0))


def test_a_slipped_section_is_in_the_input_mask_only(clean):
    stack = clean.copy()
    stack[..., 3] = _translate(clean[..., 3], 6, 0)
    out = _stack_masks(stack)
    inner = (slice(16, 80), slice(16, 80))
    assert out["slip"][..., 3][inner].mean() > 0.8
    assert out["misalignment"][..., 3][inner].mean() > 4
    assert out["input"][..., 3][inner].mean() > 0.8
    others = [z for z in range(8) if z != 3]
    assert out["slip"][..., others][inner].mean() < 0.05
    assert out["step"][inner].mean() < 0.02 and out["output"][inner].mean() < 0.02


def test_a_step_is_in_the_output_mask_not_the_input_mask(clean):
    stack = clean.copy()
    for z in range(3, 8):
        stack[..., z] = _translate(clean[..., z], 0, -6)
    out = _stack_masks(stack)
    inner = (slice(16, 80), slice(16, 80))
    assert out["step"][..., 3][inner].mean() > 0.8
    assert out["output"][..., 3][inner].mean() > 0.8
    assert out["slip"][inner].mean() < 0.02
    others = [z for z in range(8) if z != 3]
    assert out["output"][..., others][inner].mean() < 0.05


def test_defects_in_three_consecutive_sections_reach_the_output_mask(clean):
    stack = clean.copy()
    stack[20:50, 20:50, 2:5] = 0                           # a hole through three sections
    stack[60:90, 60:90, 5:7] = 0                           # a hole through two
    out = _stack_masks(stack)
    assert out["input"][25:45, 25:45, 2:5].all() and out["input"][65:85, 65:85, 5:7].all()
    assert out["output"][25:45, 25:45, 2:5].all()
    assert not out["output"][65:85, 65:85, 5:7].any()


def test_section_flags():
    flags = section_flags(np.array([0.0, 0.02, 0.5, 0.97, 1.0]))
    assert flags["missing"].tolist() == [True, True, False, False, False]
    assert flags["partial"].tolist() == [False, False, True, False, False]
