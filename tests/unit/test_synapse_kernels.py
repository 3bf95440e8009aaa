"""Chunked cleft labelling equals single-volume cc3d; partners and dedup behave as promised."""

from __future__ import annotations

import cc3d
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.synapses import kernels
from pipeline.synapses.jobs import SynapseParams, synapses_in_memory
from pipeline.synth import synthesize


def filtered_cc(prob, threshold, connectivity, size):
    cc = cc3d.connected_components(prob > threshold, connectivity=connectivity)
    ids, counts = np.unique(cc, return_counts=True)
    cc[np.isin(cc, ids[(counts < size) & (ids > 0)])] = 0
    return cc


def same_partition(a, b) -> bool:
    pairs = np.unique(np.stack([a.ravel().astype(np.uint64), b.ravel().astype(np.uint64)], 1),
                      axis=0)
    return len(pairs) == len(np.unique(pairs[:, 0])) == len(np.unique(pairs[:, 1])) and \
        np.array_equal(a == 0, b == 0)


@pytest.mark.parametrize("connectivity", [6, 18, 26])
@pytest.mark.parametrize("chunk", [(8, 8, 4), (5, 7, 3), (16, 16, 16)])
def test_chunked_labels_and_stats_equal_cc3d(connectivity, chunk):
    rng = np.random.default_rng(connectivity)
    prob = rng.random((20, 18, 12)).astype(np.float32) ** 3  # sparse blobs
    # a diagonal staircase crosses chunk edges and corners (26-connected only)
    for i in range(12):
        prob[i, i, i] = 0.99
    params = SynapseParams(threshold=0.5, connectivity=connectivity, size_threshold=2)
    labels, _ = synapses_in_memory(prob, chunk, params)
    ref = filtered_cc(prob, 0.5, connectivity, 2)
    assert same_partition(labels, ref)
    # ids are the first voxel's linear index + 1, whatever the chunking
    for cid in np.unique(labels)[1:6]:
        assert cid == np.flatnonzero((labels == cid).transpose(2, 1, 0).ravel())[0] + 1


def test_stats_equal_single_volume():
    prob = np.zeros((30, 30, 10), np.float32)
    prob[3:20, 4:6, 2:9] = 0.9  # spans chunks
    prob[25:28, 25:28, 0:3] = 0.9  # small: 27 voxels
    from pipeline.octree_jobs import MemoryStore

    store = MemoryStore()
    synapses_in_memory(prob, (8, 8, 4), SynapseParams(size_threshold=30), store=store)
    red = store.get("syn/reduce")
    assert list(red["size"]) == [17 * 2 * 7]  # the small one is filtered
    assert np.allclose(red["centroid"][0], [11, 4.5, 5])
    assert red["lo"][0].tolist() == [3, 4, 2] and red["hi"][0].tolist() == [19, 5, 8]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_synthetic_clefts_and_partners(seed):
    vol = synthesize((128, 128, 24), seed=seed, resolution=(8, 8, 40))
    params = SynapseParams(threshold=0.5, connectivity=26, size_threshold=40)
    labels, table = synapses_in_memory(vol.cleft_probability, (48, 48, 12), params,
                                       vol.segmentation, vol.image, (8, 8, 40))
    truth = {(s["pre"], s["post"]) for s in vol.synapses}
    found = set(zip(table["pre"].tolist(), table["post"].tolist(), strict=True))
    # cleft detection F1 by voxel overlap with the generator's clefts
    tp = sum(1 for c in np.unique(labels)[1:] if vol.clefts[labels == c].max() > 0)
    precision = tp / max(len(np.unique(labels)) - 1, 1)
    recall = sum(1 for s in vol.synapses if labels[vol.clefts == s["cleft_id"]].max() > 0) \
        / len(vol.synapses)
    assert 2 * precision * recall / (precision + recall) >= 0.9
    assert len(found & truth) / len(truth) >= 0.9  # partner accuracy, direction included


def test_dedup_merges_exactly_pairs_within_distance():
    ids = np.array([10, 20, 30, 40, 50], np.uint64)
    pre = np.array([1, 1, 1, 2, 1], np.uint64)
    post = np.array([5, 5, 5, 5, 6], np.uint64)
    cen = np.array([[0, 0, 0], [699.9, 0, 0], [1400, 0, 0], [10, 0, 0], [5, 0, 0]], float)
    into = kernels.dedup(ids, pre, post, cen, 700.0)
    # 10-20 within 700 nm; 20-30 at 700.1 nm: not; 40 and 50 have other partners
    assert into.tolist() == [10, 10, 30, 40, 50]
    cen[2, 0] = 1399.8  # now 20-30 is within: the chain joins transitively
    assert kernels.dedup(ids, pre, post, cen, 700.0).tolist() == [10, 10, 10, 40, 50]


@given(st.integers(0, 1000))
@settings(max_examples=25, deadline=None)
def test_dedup_random_pairs(seed):
    rng = np.random.default_rng(seed)
    n = 12
    ids = np.arange(1, n + 1, dtype=np.uint64)
    pre = rng.integers(1, 3, n).astype(np.uint64)
    post = np.full(n, 9, np.uint64)
    cen = rng.random((n, 3)) * 2000
    into = kernels.dedup(ids, pre, post, cen, 700.0)
    for i in range(n):
        for j in range(n):
            close = pre[i] == pre[j] and np.linalg.norm(cen[i] - cen[j]) <= 700
            if close:
                assert into[i] == into[j]
    for group in np.unique(into):  # every merged group is connected by close pairs
        members = np.flatnonzero(into == group)
        assert ids[members].min() == group


def test_network_interface():
    """A stand-in network whose pre map marks dark voxels picks the vesicle side."""
    import torch

    class Darkness(torch.nn.Module):
        def forward(self, image, cleft):
            return 1 - image, image

    vol = synthesize((96, 96, 16), seed=4, resolution=(8, 8, 40))
    s = vol.synapses[0]
    pre, post, _ = kernels.assign_network(Darkness(), vol.image, vol.clefts, vol.segmentation,
                                          s["cleft_id"], (3, 3, 1))
    assert (pre, post) == (s["pre"], s["post"])
