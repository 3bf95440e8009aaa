"""Behaviour of the synthetic EM generator (pipeline.synth): truth, image look, clefts, defects."""

from __future__ import annotations

import json
import time

import cc3d
import fastremap
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage

from pipeline.synth import DefectSpec, SynthVolume, synthesize
from pipeline.synth.features import mitochondria

pytestmark = pytest.mark.unit

SHAPE = (64, 64, 16)
XY5 = np.ones((5, 5, 1), dtype=bool)


@pytest.fixture(scope="module")
def vol() -> SynthVolume:
    return synthesize(SHAPE, seed=7, n_synapses=3)


@pytest.fixture(scope="module", params=[0, 1, 2])
def syn_vol(request: pytest.FixtureRequest) -> SynthVolume:
    return synthesize((96, 96, 16), seed=request.param, n_synapses=4)


def test_deterministic_for_a_seed_and_different_across_seeds() -> None:
    a = synthesize(SHAPE, seed=3)
    b = synthesize(SHAPE, seed=3)
    c = synthesize(SHAPE, seed=4)
    for name in ("image", "segmentation", "clefts", "cleft_probability"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name
    assert a.synapses == b.synapses
    assert a.defects == b.defects
    assert not np.array_equal(a.image, c.image)
    assert not np.array_equal(a.segmentation, c.segmentation)


def test_dtypes_and_shapes(vol: SynthVolume) -> None:
    assert vol.image.dtype == np.uint8
    assert vol.segmentation.dtype == np.uint64
    assert vol.clefts.dtype == np.uint64
    assert vol.cleft_probability.dtype == np.float32
    for arr in (vol.image, vol.segmentation, vol.clefts, vol.cleft_probability):
        assert arr.shape == SHAPE
    assert vol.cleft_probability.min() >= 0.0 and vol.cleft_probability.max() <= 1.0
    assert vol.image.min() >= 1  # 0 is reserved for missing data


def test_segmentation_has_many_cells_and_a_thin_boundary(vol: SynthVolume) -> None:
    seg = vol.segmentation
    ids = fastremap.unique(seg)
    assert ids[0] == 0
    assert len(ids) - 1 >= 6
    assert np.array_equal(ids[1:], np.arange(1, len(ids)))  # ids are 1..n
    boundary = seg == 0
    assert 0.03 < boundary.mean() < 0.3
    # thin: nearly every boundary voxel has a cell voxel within 1 px in its section
    near_cell = ndimage.binary_dilation(seg > 0, structure=np.ones((3, 3, 1), bool))
    assert near_cell[boundary].mean() > 0.98
    # every cell is one 6-connected piece
    _, n = cc3d.connected_components(seg, connectivity=6, return_N=True)
    assert n == len(ids) - 1


def test_cells_are_elongated_along_z_in_physical_units(vol: SynthVolume) -> None:
    res = np.array([8, 8, 40])
    extents = []
    for sl in ndimage.find_objects(vol.segmentation.astype(np.int64)):
        if sl is not None:
            extents.append([(s.stop - s.start) * r for s, r in zip(sl, res, strict=True)])
    ext = np.array(extents)
    assert np.median(ext[:, 2]) > np.median(np.maximum(ext[:, 0], ext[:, 1]))


def test_image_dark_on_membranes_bright_inside(vol: SynthVolume) -> None:
    img = vol.image.astype(np.float64)
    inside = img[vol.segmentation > 0].mean()
    membrane = img[vol.segmentation == 0].mean()
    assert 150 <= inside <= 200
    assert 40 <= membrane <= 90
    assert inside - membrane > 60


def test_synapse_records_match_clefts(syn_vol: SynthVolume) -> None:
    clefts, seg = syn_vol.clefts, syn_vol.segmentation
    assert len(syn_vol.synapses) >= 2
    assert [s["cleft_id"] for s in syn_vol.synapses] == list(range(1, len(syn_vol.synapses) + 1))
    assert int(clefts.max()) == len(syn_vol.synapses)
    json.dumps(syn_vol.synapses)
    for s in syn_vol.synapses:
        mask = clefts == s["cleft_id"]
        assert int(mask.sum()) == s["size"] >= 40
        assert np.allclose(np.argwhere(mask).mean(axis=0), s["centroid"])
        assert s["pre"] != s["post"] and s["pre"] > 0 and s["post"] > 0
        assert np.all(seg[mask] == 0)  # on the membrane band
        for cell in (s["pre"], s["post"]):
            near = ndimage.binary_dilation(seg == cell, structure=XY5)
            assert near[mask].all(), f"cleft {s['cleft_id']} not within 2 px of cell {cell}"
        _, n = cc3d.connected_components(mask, connectivity=26, return_N=True)
        assert n == 1


def test_clefts_do_not_touch(syn_vol: SynthVolume) -> None:
    clefts = syn_vol.clefts
    grown = ndimage.grey_dilation(clefts, size=(3, 3, 3))
    touching = (grown != clefts) & (clefts > 0)
    assert not touching.any()


def test_presynaptic_side_is_darker(syn_vol: SynthVolume) -> None:
    img, seg = syn_vol.image.astype(np.float64), syn_vol.segmentation
    for s in syn_vol.synapses:
        near = ndimage.binary_dilation(
            syn_vol.clefts == s["cleft_id"], structure=np.ones((17, 17, 1), bool)
        )
        pre = img[near & (seg == s["pre"])].mean()
        post = img[near & (seg == s["post"])].mean()
        assert pre < post - 5, (s, pre, post)


def test_thresholded_probability_recovers_clefts(syn_vol: SynthVolume) -> None:
    cc = cc3d.connected_components(syn_vol.cleft_probability > 0.5)
    assert np.array_equal(cc > 0, syn_vol.clefts > 0)
    pairs = np.unique(np.stack([cc[cc > 0], syn_vol.clefts[cc > 0]]), axis=1)
    # a one-to-one relabelling
    assert pairs.shape[1] == len(syn_vol.synapses)
    assert len(np.unique(pairs[0])) == len(np.unique(pairs[1])) == pairs.shape[1]
    prob = syn_vol.cleft_probability
    assert prob[syn_vol.clefts > 0].min() >= 0.75
    assert prob[syn_vol.clefts == 0].mean() < 0.15


def test_default_volume_has_synapses_and_is_fast() -> None:
    t0 = time.perf_counter()
    v = synthesize((128, 128, 32), seed=0)
    assert time.perf_counter() - t0 < 3.0
    assert len(v.synapses) >= 3
    assert min(s["size"] for s in v.synapses) >= 40


def test_mitochondria_lie_inside_single_cells(vol: SynthVolume) -> None:
    mito = mitochondria(np.random.default_rng(0), vol.segmentation, vol.clefts, (8, 8, 40))
    assert mito.any()
    assert np.all(vol.segmentation[mito] > 0)
    comps = cc3d.connected_components(mito, connectivity=6)
    for i in range(1, int(comps.max()) + 1):
        assert len(np.unique(vol.segmentation[comps == i])) == 1


def test_missing_sections_are_zero_and_truth_is_untouched(vol: SynthVolume) -> None:
    v = synthesize(SHAPE, seed=7, n_synapses=3, defects=DefectSpec(missing=2, partial_missing=1))
    assert len(v.defects["missing"]) == 2 and len(v.defects["partial_missing"]) == 1
    for z in v.defects["missing"]:
        assert not v.image[..., z].any()
    (zp,) = v.defects["partial_missing"]
    zero = v.image[..., zp] == 0
    assert 0.15 < zero.mean() < 0.6
    region = v.defects["partial_regions"][str(zp)]
    gx, gy = np.meshgrid(np.arange(SHAPE[0]), np.arange(SHAPE[1]), indexing="ij")
    proj = gx * region["normal"][0] + gy * region["normal"][1]
    assert np.array_equal(zero, proj > region["offset"])
    untouched = sorted(set(range(SHAPE[2])) - {*v.defects["missing"], zp})
    assert np.array_equal(v.image[..., untouched], vol.image[..., untouched])
    assert np.array_equal(v.segmentation, vol.segmentation)
    assert np.array_equal(v.clefts, vol.clefts)
    assert np.array_equal(v.cleft_probability, vol.cleft_probability)
    assert v.synapses == vol.synapses


def test_shifts_are_recorded_and_applied(vol: SynthVolume) -> None:
    v = synthesize(SHAPE, seed=7, n_synapses=3, defects=DefectSpec(shifts=True, max_shift=5))
    shifts = v.defects["shifts"]
    assert set(shifts) == {str(z) for z in range(SHAPE[2])}
    assert any(dx or dy for dx, dy in shifts.values())
    X, Y, _ = SHAPE
    for z in range(SHAPE[2]):
        dx, dy = shifts[str(z)]
        assert max(abs(dx), abs(dy)) <= 5
        sec, clean = v.image[..., z], vol.image[..., z]
        dst = (slice(max(dx, 0), X + min(dx, 0)), slice(max(dy, 0), Y + min(dy, 0)))
        src = (slice(max(-dx, 0), X - max(dx, 0)), slice(max(-dy, 0), Y - max(dy, 0)))
        assert np.array_equal(sec[dst], clean[src])
        assert int((sec == 0).sum()) == X * Y - sec[dst].size  # uncovered = no data
        if dx or dy:
            assert not np.array_equal(sec, clean)
    assert np.array_equal(v.segmentation, vol.segmentation)


def test_folds_draw_a_dark_stripe_and_tear_the_image(vol: SynthVolume) -> None:
    v = synthesize(SHAPE, seed=7, n_synapses=3, defects=DefectSpec(folds=2))
    assert len(v.defects["folds"]) == 2
    gx, gy = np.meshgrid(np.arange(SHAPE[0]), np.arange(SHAPE[1]), indexing="ij")
    for z in v.defects["folds"]:
        line = v.defects["fold_lines"][str(z)]
        (px, py), (nx, ny) = line["point"], line["normal"]
        d = (gx - px) * nx + (gy - py) * ny
        stripe = np.abs(d) <= line["width"] / 2
        assert stripe.any()
        assert v.image[..., z][stripe].mean() < 45
        assert not np.array_equal(v.image[..., z][~stripe], vol.image[..., z][~stripe])


def test_all_defects_json_serialisable_and_distinct() -> None:
    spec = DefectSpec(shifts=True, folds=2, missing=2, partial_missing=2)
    v = synthesize((32, 32, 8), seed=11, defects=spec)
    d = v.defects
    assert json.loads(json.dumps(d)) == d
    assert d["seed"] == 11
    zs = d["folds"] + d["missing"] + d["partial_missing"]
    assert len(set(zs)) == 6 and all(0 <= z < 8 for z in zs)
    with pytest.raises(ValueError):
        synthesize((32, 32, 4), seed=0, defects=DefectSpec(missing=3, folds=2))


@settings(max_examples=8, deadline=None)
@given(
    x=st.integers(12, 48),
    y=st.integers(12, 48),
    z=st.integers(1, 8),
    seed=st.integers(0, 2**32 - 1),
)
def test_invariants_on_random_small_volumes(x: int, y: int, z: int, seed: int) -> None:
    v = synthesize((x, y, z), seed=seed, n_synapses=2)
    assert v.image.shape == v.segmentation.shape == v.clefts.shape == (x, y, z)
    assert int(v.clefts.max()) == len(v.synapses)
    assert np.all(v.segmentation[v.clefts > 0] == 0)
    assert np.array_equal(v.cleft_probability > 0.5, v.clefts > 0)
    for s in v.synapses:
        assert int((v.clefts == s["cleft_id"]).sum()) == s["size"]
