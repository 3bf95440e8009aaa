"""The watershed's behaviour (pipeline.watershed: kernels + the single-chunk run)."""

from __future__ import annotations

import cc3d
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.metrics import contingency
from pipeline.watershed import kernels as k
from pipeline.watershed.chunked import WatershedParams, kept_edges
from pipeline.watershed.jobs import watershed_global

pytestmark = pytest.mark.unit

HIGH, LOW = 0.99, 0.01


def aff_from_labels(gt: np.ndarray, inside: float = 1.0, across: float = 0.0) -> np.ndarray:
    """Affinities in the pipeline convention: ``inside`` within a label, ``across`` between."""
    aff = np.zeros((*gt.shape, 3), np.float32)
    for c in range(3):
        cur = [slice(None)] * 3
        prev = [slice(None)] * 3
        cur[c], prev[c] = slice(1, None), slice(None, -1)
        same = gt[tuple(cur)] == gt[tuple(prev)]
        aff[(*cur, c)] = np.where(same, inside, across)
    return aff


def line_aff(edges: list[float]) -> np.ndarray:
    """A (len(edges) + 1, 1, 1) volume whose x-edges (i, i + 1) have the given affinities."""
    aff = np.zeros((len(edges) + 1, 1, 1, 3), np.float32)
    aff[1:, 0, 0, 0] = edges
    return aff


def voronoi(shape: tuple[int, int, int], n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    pts = rng.integers(0, shape, size=(n, 3))
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), axis=-1)
    d = ((grid[..., None, :] - pts) ** 2).sum(-1)
    return cc3d.connected_components(d.argmin(-1) + 1, connectivity=6).astype(np.uint64)


def is_one_to_one(a: np.ndarray, b: np.ndarray) -> bool:
    c = contingency(a, b)
    return len(c.counts) == len(np.unique(a)) == len(np.unique(b))


def brute_force_region_graph(aff: np.ndarray, labels: np.ndarray) -> dict[tuple[int, int], float]:
    best: dict[tuple[int, int], float] = {}
    for x, y, z in np.ndindex(labels.shape):
        for c, (dx, dy, dz) in enumerate([(1, 0, 0), (0, 1, 0), (0, 0, 1)]):
            p = (x - dx, y - dy, z - dz)
            if min(p) < 0:
                continue
            a, b = int(labels[x, y, z]), int(labels[p])
            if a == 0 or b == 0 or a == b:
                continue
            key = (min(a, b), max(a, b))
            best[key] = max(best.get(key, -np.inf), float(aff[x, y, z, c]))
    return best


def ws(aff: np.ndarray, high=HIGH, low=LOW, size=0, dust=0) -> np.ndarray:
    return watershed_global(aff, WatershedParams(high, low, size, dust))


def test_kept_edges_clamp_and_plateau_rule() -> None:
    aff = line_aff([0.5, 0.9, 0.9, 0.3])  # voxels 0..4 along x
    kept = kept_edges(aff, HIGH, LOW)[:, 0, 0]
    # 0 → +x (its only edge); 1 → +x (0.9 > 0.5); 2 is a plateau voxel (0.9 both ways) whose
    # -x neighbour 1 has the same maximum and +x neighbour 3 too: first direction (-x);
    # 3 → -x (0.9 > 0.3); 4 → -x.
    assert kept.tolist() == [8, 8, 1, 1, 1]
    clamped = kept_edges(line_aff([0.995, 0.999]), HIGH, LOW)[:, 0, 0]
    assert clamped.tolist() == [8, 9, 1]  # both ≥ high: a plateau at high keeps all edges


def test_plateau_at_high_is_one_segment() -> None:
    rng = np.random.default_rng(3)
    aff = rng.uniform(HIGH, 1.0, size=(10, 9, 8, 3)).astype(np.float32)
    labels = ws(aff)
    assert len(np.unique(labels)) == 1 and labels.min() == 1
    assert ws(aff, high=2.0).max() > 1  # without clamping the same noise gives many basins


def test_singletons_are_zero() -> None:
    rng = np.random.default_rng(4)
    aff = rng.uniform(0.2, 0.9, size=(8, 8, 8, 3)).astype(np.float32)
    lone = [(0, 0, 0), (3, 4, 5), (7, 7, 7)]
    for x, y, z in lone:  # cut every edge of the voxel to <= low
        aff[x, y, z, :] = LOW
        for c, nxt in enumerate([(x + 1, y, z), (x, y + 1, z), (x, y, z + 1)]):
            if max(nxt) < 8:
                aff[(*nxt, c)] = 0.0
    labels = ws(aff)
    assert all(labels[p] == 0 for p in lone)
    assert np.count_nonzero(labels == 0) == len(lone)
    assert not ws(np.full((3, 3, 3, 3), LOW, np.float32)).any()


def test_deterministic_and_layout_independent() -> None:
    aff = np.random.default_rng(6).random((24, 24, 12, 3), dtype=np.float32)
    a = ws(aff, size=20, dust=5)
    for other in (aff.copy(), np.asfortranarray(aff), aff.astype(np.float64)):
        b = ws(other, size=20, dust=5)
        assert b.dtype == np.uint64 and np.array_equal(a, b)


@pytest.mark.parametrize("size", [0, 1000])
def test_recovers_known_labels(size: int) -> None:
    gt = voronoi((24, 24, 12), 30, seed=7)
    ids, counts = np.unique(gt, return_counts=True)
    expected = np.where(np.isin(gt, ids[counts == 1]), 0, gt)  # lone voxels become singletons
    labels = ws(aff_from_labels(gt), size=size)
    assert np.array_equal(labels == 0, expected == 0)
    assert is_one_to_one(labels, expected)


def test_size_threshold_merges_into_max_affinity_neighbour() -> None:
    gt = np.zeros((12, 4, 4), np.uint64)
    gt[:5], gt[5], gt[6:] = 1, 2, 3  # big | small slab (16 voxels) | big
    aff = aff_from_labels(gt)
    aff[5, :, :, 0] = 0.6  # small-to-left faces
    aff[6, :, :, 0] = 0.4  # small-to-right faces
    assert is_one_to_one(ws(aff), gt)
    assert is_one_to_one(ws(aff, size=20), np.where(gt == 2, 1, gt))  # merged left only
    aff[5, :, :, 0] = aff[6, :, :, 0] = LOW  # neither merge when the edges are <= low
    assert is_one_to_one(ws(aff, size=20), gt)


def test_dust_removes_small_isolated_segments() -> None:
    gt = np.ones((10, 6, 6), np.uint64)
    gt[2:4, 2:4, 2] = 2  # a 4-voxel island cut off by affinities 0
    aff = aff_from_labels(gt)
    assert is_one_to_one(ws(aff), gt)
    labels = ws(aff, dust=5)
    assert np.array_equal(labels == 0, gt == 2) and len(np.unique(labels)) == 2


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**32 - 1),
       st.tuples(st.integers(1, 7), st.integers(1, 7), st.integers(1, 7)),
       st.sampled_from([(0.99, 0.01), (0.7, 0.3), (0.5, 0.5)]), st.integers(0, 30),
       st.integers(0, 10), st.booleans())
def test_watershed_invariants(seed, shape, thresholds, size, dust, quantize) -> None:
    rng = np.random.default_rng(seed)
    aff = rng.random((*shape, 3), dtype=np.float32)
    if quantize:  # coarse values make plateaus and ties common
        aff = np.round(aff * 4).astype(np.float32) / 4
    high, low = thresholds
    labels = ws(aff, high, low, size, dust)
    ids, counts = np.unique(labels[labels > 0], return_counts=True)
    # every segment is 6-connected, at least `dust` voxels, and named by its first voxel
    assert cc3d.connected_components(labels, connectivity=6, return_N=True)[1] == len(ids)
    assert np.all(counts >= dust)
    for sid in ids[:5]:
        assert sid == np.flatnonzero((labels == sid).transpose(2, 1, 0).ravel())[0] + 1
    # single linkage left no small segment joined to another by an edge above low
    edges, weights = k.region_graph(aff, labels)
    size_of = dict(zip(ids.tolist(), counts.tolist(), strict=True))
    for (a, b), w in zip(edges.tolist(), weights.tolist(), strict=True):
        if w > low:
            assert size_of[a] >= size and size_of[b] >= size


# --------------------------------------------------------------------------------------------
# region graph


@settings(max_examples=20, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(2, 5), st.booleans())
def test_region_graph_against_brute_force(seed: int, n_ids: int, sparse: bool) -> None:
    rng = np.random.default_rng(seed)
    labels = np.repeat(rng.integers(0, n_ids, size=(3, 4, 1)), 8, axis=2)  # long runs along z
    noise = rng.random(labels.shape) < 0.3
    labels[noise] = rng.integers(0, n_ids, size=int(noise.sum()))
    labels = labels.astype(np.uint64)
    if sparse:  # ids far above the voxel count take the renumbering path
        labels = np.where(labels > 0, labels * np.uint64(10**12) + np.uint64(3), 0)
    aff = rng.choice(np.float32([0.1, 0.25, 0.5, 0.75]), size=(3, 4, 8, 3))  # many ties
    edges, weights = k.region_graph(aff, labels)
    expected = brute_force_region_graph(aff, labels)
    got = {(int(a), int(b)): float(w) for (a, b), w in zip(edges, weights, strict=True)}
    assert got == expected and len(got) == len(edges)
    order = sorted(got, key=lambda e: (-got[e], e))
    assert [tuple(map(int, e)) for e in edges] == order
