"""Tests of pipeline.metrics against skimage.metrics and hand-computed cases."""

from __future__ import annotations

import itertools
import math
import warnings

import numpy as np
import pytest
import skimage.metrics as skm
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline import metrics as m

pytestmark = pytest.mark.unit


@st.composite
def label_pairs(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray]:
    """Small random (seg, gt) volumes with gt partly 0 and big, sparse ids sometimes."""
    shape = tuple(draw(st.lists(st.integers(2, 6), min_size=1, max_size=3)))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    k_seg = draw(st.integers(1, 6))
    k_gt = draw(st.integers(1, 5))
    seg = rng.integers(0, k_seg, size=shape)
    gt = rng.integers(0, k_gt, size=shape)
    gt.flat[0] = 1  # at least one labelled voxel
    gt.flat[-1] = 1  # and at least one labelled pair
    if draw(st.booleans()):
        seg = seg.astype(np.uint64) * np.uint64(10**12) + np.uint64(7)
    return seg, gt


def _skimage_are(seg: np.ndarray, gt: np.ndarray) -> tuple[float, float, float]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        # skimage builds a dense-indexed sparse table, so it needs small ids.
        _, seg_small = np.unique(seg, return_inverse=True)
        return skm.adapted_rand_error(gt, seg_small.reshape(seg.shape))


def _close(a: float, b: float, tol: float = 1e-9) -> bool:
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return abs(a - b) <= tol


@settings(max_examples=40, deadline=None)
@given(label_pairs())
def test_adapted_rand_matches_skimage(pair: tuple[np.ndarray, np.ndarray]) -> None:
    seg, gt = pair
    are, prec, rec = m.adapted_rand_error(seg, gt)
    sk_are, sk_prec, sk_rec = _skimage_are(seg, gt)
    assert _close(are, sk_are)
    # skimage swaps the two (scikit-image issue #6485); ours carry their documented meaning.
    assert _close(prec, sk_rec)
    assert _close(rec, sk_prec)


@settings(max_examples=40, deadline=None)
@given(label_pairs())
def test_vi_matches_skimage(pair: tuple[np.ndarray, np.ndarray]) -> None:
    seg, gt = pair
    _, seg_small = np.unique(seg, return_inverse=True)
    split, merge = m.variation_of_information(seg, gt)
    sk_split, sk_merge = skm.variation_of_information(
        gt, seg_small.reshape(seg.shape), ignore_labels=[0]
    )
    assert _close(split, sk_split)
    assert _close(merge, sk_merge)


@settings(max_examples=25, deadline=None)
@given(label_pairs(), st.integers(1, 4))
def test_chunked_reduce_equals_whole(pair: tuple[np.ndarray, np.ndarray], n_chunks: int) -> None:
    seg, gt = pair
    whole = m.contingency(seg, gt)
    s, g = seg.reshape(-1), gt.reshape(-1)
    cuts = np.linspace(0, s.size, n_chunks + 1).astype(int)
    parts = [m.contingency(s[a:b], g[a:b]) for a, b in itertools.pairwise(cuts)]
    assert m.reduce_contingency(parts) == whole
    summed = m.Contingency.empty()
    for p in reversed(parts):
        summed = summed + p
    assert summed == whole
    assert whole.n_voxels == seg.size
    a, b = m.evaluate_contingency(whole), m.evaluate_contingency(m.reduce_contingency(parts))
    assert a.keys() == b.keys()
    assert all(_close(a[k], b[k], 0.0) for k in a)


def test_contingency_promises() -> None:
    seg = np.array([[3, 3, 1], [1, 0, 0]], dtype=np.uint32)
    gt = np.array([[0, 2, 2], [2, 0, 5]], dtype=np.int16)
    c = m.contingency(seg, gt)
    assert c.seg.dtype == np.uint64 and c.gt.dtype == np.uint64 and c.counts.dtype == np.int64
    pairs = list(zip(c.seg.tolist(), c.gt.tolist(), c.counts.tolist(), strict=True))
    assert pairs == [(0, 0, 1), (0, 5, 1), (1, 2, 2), (3, 0, 1), (3, 2, 1)]
    with pytest.raises(ValueError):
        m.contingency(seg, gt[:, :2])
    with pytest.raises(ValueError):
        m.contingency(seg, -gt)


def test_perfect_segmentation() -> None:
    rng = np.random.default_rng(1)
    gt = rng.integers(0, 6, size=(5, 6, 7))
    seg = gt * 13 + 2  # relabelled; gt==0 region gets a segment id of its own
    r = m.evaluate(seg, gt)
    assert r["adapted_rand_error"] == pytest.approx(0.0, abs=1e-12)
    assert r["vi"] == pytest.approx(0.0, abs=1e-12)
    for k in ("rand_f_score", "rand_split", "rand_merge", "info_f_score", "info_split"):
        assert r[k] == pytest.approx(1.0, abs=1e-12), k
    assert r["info_merge"] == pytest.approx(1.0, abs=1e-12)
    assert r["n_voxels"] == gt.size and r["n_labelled"] == np.count_nonzero(gt)


def test_hand_computed_split_case() -> None:
    # gt: one object of 4 voxels; seg splits it 2 + 2.
    gt = np.array([1, 1, 1, 1, 0, 0])
    seg = np.array([1, 1, 2, 2, 9, 9])
    are, prec, rec = m.adapted_rand_error(seg, gt)
    # P = 2*4 - 4 = 4; seg pairs = 8 - 4 = 4; gt pairs = 16 - 4 = 12.
    assert prec == pytest.approx(1.0) and rec == pytest.approx(4 / 12)
    assert are == pytest.approx(1 - 8 / 16)
    split, merge = m.variation_of_information(seg, gt)
    assert split == pytest.approx(1.0) and merge == pytest.approx(0.0)
    f, rs, rm = m.rand_scores(seg, gt)
    # p = [.5, .5]: sum p^2 = .5; sum s^2 = .5; sum t^2 = 1.
    assert (rs, rm, f) == pytest.approx((0.5, 1.0, 2 * 0.5 / 1.5))
    f_i, is_, im = m.info_scores(seg, gt)
    # H(seg) = 1, H(gt) = 0, I = 0: split 0/1 = 0, merge 0/0 -> 1, F = 0.
    assert (f_i, is_, im) == pytest.approx((0.0, 0.0, 1.0))


def test_hand_computed_merge_case() -> None:
    gt = np.array([[1, 1, 2, 2]])
    seg = np.array([[4, 4, 4, 4]])
    are, prec, rec = m.adapted_rand_error(seg, gt)
    # P = 4 + 4 - 4 = 4 ... n = [2, 2]: sum n^2 = 8, P = 4; seg pairs 12; gt pairs 4.
    assert (prec, rec) == pytest.approx((4 / 12, 1.0))
    assert are == pytest.approx(0.5)
    assert m.variation_of_information(seg, gt) == pytest.approx((0.0, 1.0))
    assert m.rand_scores(seg, gt) == pytest.approx((2 * 0.5 / 1.5, 1.0, 0.5))


def test_pixel_scores_hand_computed() -> None:
    pred = np.array([1, 1, 0, 0, 1, 0], dtype=bool)
    truth = np.array([1, 0, 1, 0, 1, 0], dtype=np.uint8) * 5
    s = m.pixel_scores(pred, truth)
    # tp = 2, fp = 1, fn = 1.
    assert s["precision"] == pytest.approx(2 / 3) and s["recall"] == pytest.approx(2 / 3)
    assert s["f1"] == s["dice"] == pytest.approx(4 / 6)
    assert s["jaccard"] == pytest.approx(2 / 4)
    empty = np.zeros(4, np.uint8)
    assert m.pixel_scores(empty, empty)["f1"] == 1.0
    assert m.pixel_scores(np.ones(4, np.uint8), empty)["f1"] == 0.0
    # Through a contingency of labelled volumes the masks are "id != 0".
    c = m.contingency(np.where(pred, 7, 0), truth)
    assert m.pixel_scores(c) == s


def test_unlabelled_everywhere_gives_nan_rand() -> None:
    seg = np.arange(8).reshape(2, 4)
    gt = np.zeros_like(seg)
    r = m.evaluate(seg, gt)
    assert math.isnan(r["adapted_rand_error"]) and math.isnan(r["rand_f_score"])
    assert r["vi"] == 0.0 and r["n_labelled"] == 0.0
