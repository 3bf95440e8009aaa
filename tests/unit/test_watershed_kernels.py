"""Tests of the global affinity watershed kernels (pipeline.watershed.kernels)."""

from __future__ import annotations

import cc3d
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.metrics import contingency
from pipeline.watershed import kernels as k

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


def reference_basins(aff: np.ndarray, high: float, low: float) -> np.ndarray:
    """Slow, independent statement of steepest ascent + plateau division + basins."""
    shape = aff.shape[:3]
    steps = [(-1, 0, 0), (0, -1, 0), (0, 0, -1), (1, 0, 0), (0, 1, 0), (0, 0, 1)]
    f32 = np.float32

    def edges(v: tuple[int, int, int]) -> list[tuple[tuple[int, int, int], float]]:
        out = []
        for d, s in enumerate(steps):
            u = (v[0] + s[0], v[1] + s[1], v[2] + s[2])
            if all(0 <= u[i] < shape[i] for i in range(3)):
                a = aff[(*v, d)] if d < 3 else aff[(*u, d - 3)]
                out.append((u, min(a, f32(high))))
        return out

    voxels = list(np.ndindex(shape))
    out: dict = {}
    for v in voxels:
        es = [(u, a) for u, a in edges(v) if a > f32(low)]
        m = max((a for _, a in es), default=None)
        out[v] = [u for u, a in es if a == m]
    strict = {v: [u for u in out[v] if v not in out[u]] for v in voxels}
    dist = {v: 0 for v in voxels if strict[v]}
    frontier = [v for v in voxels if strict[v]]
    while frontier:
        nxt = []
        for v in frontier:
            for u in out[v]:
                if u not in dist and v in out[u]:
                    dist[u] = dist[v] + 1
                    nxt.append(u)
        frontier = nxt
    parent = {v: v for v in voxels}

    def find(v: tuple[int, int, int]) -> tuple[int, int, int]:
        while parent[v] != v:
            v = parent[v]
        return v

    for v in voxels:
        if v not in dist:
            keep = out[v]
        elif dist[v] == 0:
            keep = strict[v][:1]
        else:
            keep = [u for u in out[v] if dist.get(u) == dist[v] - 1][:1]
        for u in keep:
            parent[find(u)] = find(v)
    labels = np.zeros(shape, np.uint64)
    ids: dict = {}
    for v in voxels:
        if out[v]:
            labels[v] = ids.setdefault(find(v), len(ids) + 1)
    return labels


# --------------------------------------------------------------------------------------------
# steepest ascent and basins


def test_steepest_ascent_bits_and_clamping() -> None:
    # voxel 1 prefers +x (0.8 > 0.5); voxel 2 has only -x.
    assert k.steepest_ascent(line_aff([0.5, 0.8]), HIGH, LOW).ravel().tolist() == [8, 8, 1]
    # 0.995 and 0.999 are both >= high, so both count as high: voxel 1 keeps both edges.
    assert k.steepest_ascent(line_aff([0.995, 0.999]), HIGH, LOW).ravel().tolist() == [8, 9, 1]
    # An edge <= low is no edge: voxel 0 is a singleton.
    assert k.steepest_ascent(line_aff([LOW, 0.8]), HIGH, LOW).ravel().tolist() == [0, 8, 1]
    with pytest.raises(ValueError):
        k.steepest_ascent(line_aff([0.5]), 0.1, 0.2)


def test_plateau_divided_by_distance_to_exits() -> None:
    # {0,1} and {6,7} (resp. {7,8}) are maxima; the 0.5 plateau between them is split by
    # breadth-first distance to its two exits; a tie goes to the lower direction (-x).
    labels, counts = k.basins(k.steepest_ascent(line_aff([0.9] + [0.5] * 5 + [0.9]), HIGH, LOW))
    assert labels.ravel().tolist() == [1, 1, 1, 1, 2, 2, 2, 2]
    assert counts.tolist() == [0, 4, 4]
    labels, _ = k.basins(k.steepest_ascent(line_aff([0.9] + [0.5] * 6 + [0.9]), HIGH, LOW))
    assert labels.ravel().tolist() == [1, 1, 1, 1, 1, 2, 2, 2, 2]
    # A voxel with two strict ascents of equal height keeps only the first (-x) one.
    labels, _ = k.basins(k.steepest_ascent(line_aff([0.9, 0.5, 0.5, 0.9]), HIGH, LOW))
    assert labels.ravel().tolist() == [1, 1, 1, 2, 2]


@settings(max_examples=25, deadline=None)
@given(
    st.integers(0, 2**32 - 1),
    st.tuples(st.integers(1, 5), st.integers(1, 5), st.integers(1, 5)),
    st.sampled_from([(0.99, 0.01), (0.7, 0.3), (2.0, -1.0)]),
)
def test_basins_match_reference(seed: int, shape: tuple[int, int, int], thr: tuple) -> None:
    rng = np.random.default_rng(seed)
    aff = (rng.integers(0, 5, size=(*shape, 3)) / 4).astype(np.float32)  # plateaus and ties
    labels, _ = k.basins(k.steepest_ascent(aff, *thr))
    assert np.array_equal(labels, reference_basins(aff, *thr))


def test_plateau_at_high_is_one_segment() -> None:
    rng = np.random.default_rng(3)
    aff = rng.uniform(HIGH, 1.0, size=(10, 9, 8, 3)).astype(np.float32)
    labels, counts = k.basins(k.steepest_ascent(aff, HIGH, LOW))
    assert np.all(labels == 1) and counts.tolist() == [0, labels.size]
    # Without clamping (high above every value) the same noise gives many basins.
    labels, _ = k.basins(k.steepest_ascent(aff, 2.0, LOW))
    assert labels.max() > 1


def test_singletons_are_zero() -> None:
    rng = np.random.default_rng(4)
    aff = rng.uniform(0.2, 0.9, size=(8, 8, 8, 3)).astype(np.float32)
    lone = [(0, 0, 0), (3, 4, 5), (7, 7, 7)]
    for x, y, z in lone:  # cut every edge of the voxel to <= low
        aff[x, y, z, :] = LOW
        for c, nxt in enumerate([(x + 1, y, z), (x, y + 1, z), (x, y, z + 1)]):
            if max(nxt) < 8:
                aff[(*nxt, c)] = 0.0
    labels, counts = k.basins(k.steepest_ascent(aff, HIGH, LOW))
    assert counts[0] == len(lone)
    assert all(labels[p] == 0 for p in lone)
    assert np.count_nonzero(labels == 0) == len(lone)
    ws, *_ = k.watershed(aff, HIGH, LOW, 0, 0)
    assert all(ws[p] == 0 for p in lone)
    # Every affinity <= low: the whole volume is singletons.
    labels, counts = k.basins(k.steepest_ascent(np.full((3, 3, 3, 3), LOW, np.float32), HIGH, LOW))
    assert not labels.any() and counts.tolist() == [27]


# --------------------------------------------------------------------------------------------
# whole watershed


def test_output_shapes_dtypes_and_sizes() -> None:
    aff = np.random.default_rng(5).random((24, 24, 12, 3), dtype=np.float32)
    labels, edges, weights, sizes = k.watershed(aff, HIGH, LOW, 20, 5)
    assert labels.shape == (24, 24, 12) and labels.dtype == np.uint64
    assert labels.flags["C_CONTIGUOUS"]
    assert edges.dtype == np.uint64 and edges.ndim == 2 and edges.shape[1] == 2
    assert weights.dtype == np.float32 and weights.shape == (len(edges),)
    assert sizes.dtype == np.uint64 and len(sizes) == labels.max() + 1
    assert np.array_equal(sizes, np.bincount(labels.ravel().astype(np.intp)))
    assert np.array_equal(np.unique(labels[labels > 0]), np.arange(1, labels.max() + 1))


def test_deterministic_and_layout_independent() -> None:
    aff = np.random.default_rng(6).random((24, 24, 12, 3), dtype=np.float32)
    a = k.watershed(aff, HIGH, LOW, 20, 5)
    b = k.watershed(aff.copy(), HIGH, LOW, 20, 5)
    c = k.watershed(np.asfortranarray(aff), HIGH, LOW, 20, 5)  # CloudVolume hands out F order
    d = k.watershed(aff.astype(np.float64), HIGH, LOW, 20, 5)
    for other in (b, c, d):
        for x, y in zip(a, other, strict=True):
            assert x.dtype == y.dtype and np.array_equal(x, y)


@pytest.mark.parametrize("size", [0, 1000])
def test_recovers_known_labels(size: int) -> None:
    gt = voronoi((24, 24, 12), 30, seed=7)
    ids, counts = np.unique(gt, return_counts=True)
    expected = np.where(np.isin(gt, ids[counts == 1]), 0, gt)  # lone voxels become singletons
    labels, _, weights, _ = k.watershed(aff_from_labels(gt), HIGH, LOW, size, 0)
    assert np.array_equal(labels == 0, expected == 0)
    assert is_one_to_one(labels, expected)
    assert np.all(weights == 0.0)  # every boundary has affinity 0


def test_size_threshold_merges_into_max_affinity_neighbour() -> None:
    gt = np.zeros((12, 4, 4), np.uint64)
    gt[:5], gt[5], gt[6:] = 1, 2, 3  # big | small slab (16 voxels) | big
    aff = aff_from_labels(gt)
    aff[5, :, :, 0] = 0.6  # small-to-left faces
    aff[6, :, :, 0] = 0.4  # small-to-right faces
    labels, edges, weights, sizes = k.watershed(aff, HIGH, LOW, 0, 0)
    assert is_one_to_one(labels, gt)
    labels, edges, weights, sizes = k.watershed(aff, HIGH, LOW, 20, 0)
    assert is_one_to_one(labels, np.where(gt == 2, 1, gt))  # merged left, not right
    assert sizes.tolist() == [0, 96, 96]
    assert edges.tolist() == [[1, 2]] and weights.tolist() == [pytest.approx(0.4)]
    # Neither merge happens when the edges are <= low.
    aff[5, :, :, 0] = aff[6, :, :, 0] = LOW
    labels, *_ = k.watershed(aff, HIGH, LOW, 20, 0)
    assert is_one_to_one(labels, gt)


def test_single_linkage_and_dust_by_hand() -> None:
    edges = np.array([[1, 2], [2, 3], [1, 3]], np.uint64)
    weights = np.array([0.9, 0.5, 0.3], np.float32)
    sizes = np.array([7, 5, 3, 20], np.uint64)
    sdsl = k.size_dependent_single_linkage
    assert sdsl(edges, weights, sizes, 10, LOW).tolist() == [0, 1, 1, 1]
    assert sdsl(edges, weights, sizes, 4, LOW).tolist() == [0, 1, 1, 2]
    assert sdsl(edges, weights, sizes, 10, 0.6).tolist() == [0, 1, 1, 2]  # 0.5 edge <= low
    assert sdsl(edges, weights, sizes, 0, LOW, dust=6).tolist() == [0, 0, 0, 1]
    assert sdsl(edges, weights, sizes, 0, LOW, dust=5).tolist() == [0, 1, 0, 2]
    assert sdsl(edges, weights, sizes, 4, LOW, dust=10).tolist() == [0, 0, 0, 1]
    assert sdsl(edges, weights, np.array([0, 5, 0, 20]), 0, LOW).tolist() == [0, 1, 0, 2]
    with pytest.raises(ValueError):
        sdsl(edges[::-1], weights[::-1], sizes, 10, LOW)


def test_dust_removes_small_isolated_segments() -> None:
    gt = np.ones((10, 6, 6), np.uint64)
    gt[2:4, 2:4, 2] = 2  # a 4-voxel island cut off by affinities 0
    aff = aff_from_labels(gt)
    labels, *_ = k.watershed(aff, HIGH, LOW, 0, 0)
    assert is_one_to_one(labels, gt)
    labels, edges, _, sizes = k.watershed(aff, HIGH, LOW, 0, 5)
    assert np.array_equal(labels, (gt == 1).astype(np.uint64))
    assert sizes.tolist() == [4, gt.size - 4] and len(edges) == 0


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


# --------------------------------------------------------------------------------------------
# invariants on random affinities


@settings(max_examples=30, deadline=None)
@given(
    st.integers(0, 2**32 - 1),
    st.tuples(st.integers(1, 7), st.integers(1, 7), st.integers(1, 7)),
    st.sampled_from([(0.99, 0.01), (0.7, 0.3), (0.5, 0.5), (2.0, -1.0)]),
    st.integers(0, 30),
    st.integers(0, 10),
    st.booleans(),
)
def test_watershed_invariants(
    seed: int,
    shape: tuple[int, int, int],
    thresholds: tuple[float, float],
    size: int,
    dust: int,
    quantize: bool,
) -> None:
    rng = np.random.default_rng(seed)
    aff = rng.random((*shape, 3), dtype=np.float32)
    if quantize:  # coarse values make plateaus and ties common
        aff = np.round(aff * 4).astype(np.float32) / 4
    high, low = thresholds
    graph = k.steepest_ascent(aff, high, low)
    basin, counts = k.basins(graph)
    labels, edges, weights, sizes = k.watershed(aff, high, low, size, dust)
    n = int(labels.max())

    # Basins: every non-singleton voxel labelled, singletons 0, counts exact, 6-connected.
    assert np.array_equal(basin == 0, graph == 0)
    assert np.array_equal(counts, np.bincount(basin.ravel().astype(np.intp)))
    assert cc3d.connected_components(basin, connectivity=6, return_N=True)[1] == basin.max()

    # Final labels: contiguous ids numbered by first voxel in C order, 6-connected, unions of
    # basins, no segment under the dust size.
    nz = labels.ravel()[labels.ravel() > 0]
    assert np.array_equal(np.unique(nz), np.arange(1, n + 1))
    _, first = np.unique(nz, return_index=True)
    assert np.all(np.diff(first) > 0)
    assert cc3d.connected_components(labels, connectivity=6, return_N=True)[1] == n
    c = contingency(labels, basin)
    assert len(np.unique(c.gt)) == len(c.gt)  # each basin lies in one final label
    assert np.all(labels[basin == 0] == 0)
    assert np.array_equal(sizes, np.bincount(labels.ravel().astype(np.intp), minlength=n + 1))
    assert np.all(sizes[1:] >= dust)

    # Region graph: equal to the one of the final labels; size-threshold promise holds.
    e2, w2 = k.region_graph(aff, labels)
    assert np.array_equal(edges, e2) and np.array_equal(weights, w2)
    assert np.all(edges[:, 0] < edges[:, 1])
    assert np.all(np.diff(weights) <= 0)
    strong = weights > np.float32(low)
    assert np.all(sizes[edges[strong].ravel()] >= size)
