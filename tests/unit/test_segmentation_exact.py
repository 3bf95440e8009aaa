"""Chunked watershed and agglomeration equal the single-chunk run exactly, for any chunking."""

from __future__ import annotations

from unittest import mock

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage

from pipeline import regiongraph
from pipeline.agglomerate.chunked import AgglomerationParams
from pipeline.agglomerate.jobs import agglomerate_global, agglomerate_octree
from pipeline.watershed.chunked import WatershedParams
from pipeline.watershed.jobs import watershed_global, watershed_octree

CHUNKS = [(8, 8, 4), (7, 5, 3), (13, 11, 9)]  # the last two do not divide the volume


def gt_affinities(shape, seed, noise=0.15):
    """Affinities of a blobby label volume, blurred, with noise: like a good boundary net."""
    rng = np.random.default_rng(seed)
    gt = ndimage.label(ndimage.gaussian_filter(rng.random(shape), 2.0) > 0.5)[0]
    aff = np.zeros((*shape, 3), np.float32)
    for c in range(3):
        hi = [slice(None)] * 3
        lo = [slice(None)] * 3
        hi[c], lo[c] = slice(1, None), slice(0, -1)
        plane = np.zeros(shape, np.float32)
        plane[tuple(hi)] = (gt[tuple(hi)] == gt[tuple(lo)]) & (gt[tuple(hi)] != 0)
        aff[..., c] = plane
    aff = ndimage.gaussian_filter(aff, (1, 1, 1, 0)) + rng.normal(0, noise, aff.shape)
    return np.clip(aff, 0, 1).astype(np.float32), gt


DEFER = [0.0, 1 / 3, 2.0]  # every node with a frozen segment passes its graph up; ours; none


@pytest.mark.parametrize("defer", DEFER)
@pytest.mark.parametrize("chunk", CHUNKS)
def test_watershed_and_agglomeration_chunked_equal_global_on_gt_affinities(chunk, defer,
                                                                          monkeypatch):
    monkeypatch.setattr(regiongraph, "DEFER_FROZEN", defer)
    aff, _ = gt_affinities((26, 22, 18), seed=1, noise=0.3)
    wp = WatershedParams(high=0.999, low=0.05, size=10, dust=2)
    ws = watershed_global(aff, wp)
    assert len(np.unique(ws)) > 5
    assert np.array_equal(watershed_octree(aff, chunk, wp), ws)
    ap = AgglomerationParams(threshold=0.4)
    seg = agglomerate_global(aff, ws, ap)
    assert len(np.unique(seg)) < len(np.unique(ws))
    assert np.array_equal(agglomerate_octree(aff, ws, chunk, ap), seg)


def test_ids_are_chunking_invariant_and_meaningful():
    aff, _ = gt_affinities((20, 16, 12), seed=2)
    wp = WatershedParams(0.95, 0.05, 30, 5)
    ws = watershed_global(aff, wp)
    for sid in np.unique(ws)[1:5]:
        # a supervoxel's id is 1 + the linear index (x fastest) of its first voxel
        first = np.flatnonzero((ws == sid).transpose(2, 1, 0).ravel())[0]
        assert sid == first + 1
    seg = agglomerate_global(aff, ws, AgglomerationParams(0.4))
    for sid in np.unique(seg)[1:5]:
        assert sid == ws[seg == sid].min()  # a segment's id is its smallest supervoxel id


@given(seed=st.integers(0, 10_000), levels=st.sampled_from([0, 2, 4, 10]),
       shape=st.tuples(st.integers(3, 12), st.integers(3, 12), st.integers(2, 9)),
       chunk=st.tuples(st.integers(2, 6), st.integers(2, 6), st.integers(1, 5)),
       high=st.sampled_from([0.8, 0.95, 1.0]), low=st.sampled_from([0.0, 0.1, 0.3]),
       size=st.integers(0, 40), dust=st.integers(0, 8), threshold=st.sampled_from([0.2, 0.5]),
       constrained=st.booleans(), defer=st.sampled_from(DEFER))
@settings(max_examples=60, deadline=None)
def test_random_affinities_chunked_equal_global(seed, levels, shape, chunk, high, low, size,
                                                dust, threshold, constrained, defer):
    """Random (optionally quantized, so full of ties) affinities, constraints on or off, nodes
    deciding or passing their graphs up."""
    with mock.patch.object(regiongraph, "DEFER_FROZEN", defer):
        _random_case(seed, levels, shape, chunk, high, low, size, dust, threshold, constrained)


def _random_case(seed, levels, shape, chunk, high, low, size, dust, threshold, constrained):
    rng = np.random.default_rng(seed)
    aff = rng.random((*shape, 3)).astype(np.float32)
    if levels:
        aff = (np.round(aff * levels) / levels).astype(np.float32)
    wp = WatershedParams(high, low, size, dust)
    ws = watershed_global(aff, wp)
    assert np.array_equal(watershed_octree(aff, chunk, wp), ws)
    kwargs = {}
    ap = AgglomerationParams(threshold)
    if constrained:
        kwargs = {"semantic": rng.integers(0, 3, shape), "n_classes": 3,
                  "myelin": rng.random(shape).astype(np.float32)}
        ap = AgglomerationParams(threshold, size_limit=10, size_affinity=0.7,
                                 semantic_affinity=0.8, myelin_threshold=0.9)
    seg = agglomerate_global(aff, ws, ap, **kwargs)
    assert np.array_equal(agglomerate_octree(aff, ws, chunk, ap, **kwargs), seg)


def test_watershed_recovers_clean_labels():
    """Clean affinities of a label volume: supervoxels equal the labels (up to renaming)."""
    _, gt = gt_affinities((24, 20, 10), seed=3)
    aff = np.zeros((*gt.shape, 3), np.float32)
    for c in range(3):
        hi = [slice(None)] * 3
        lo = [slice(None)] * 3
        hi[c], lo[c] = slice(1, None), slice(0, -1)
        aff[(*hi, c)] = (gt[tuple(hi)] == gt[tuple(lo)]) & (gt[tuple(hi)] != 0)
    ws = watershed_octree(aff, (7, 7, 4), WatershedParams(0.99, 0.01, 0, 0))
    pairs = np.unique(np.stack([ws.ravel(), gt.ravel().astype(np.uint64)], 1), axis=0)
    inside = pairs[(pairs[:, 1] != 0)]
    sizes = np.bincount(gt.ravel())
    # every label of more than one voxel maps to exactly one supervoxel and vice versa
    big = inside[sizes[inside[:, 1]] > 1]
    assert len(np.unique(big[:, 0])) == len(big) == len(np.unique(big[:, 1]))
    assert (ws[gt == 0] == 0).all()
