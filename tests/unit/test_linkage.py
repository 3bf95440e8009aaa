"""Single linkage by union-find: equal to the general merge queue with nothing frozen; with
frozen segments it decides everything the queue decides the same way, and more (exactness
against the global run is tested in test_segmentation_exact)."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.regiongraph_kernel import MODE_SINGLE_LINKAGE, resolve_dense
from pipeline.watershed.linkage import single_linkage_dense


def _graph(seed: int, n: int, m: int, levels: int, frozen_frac: float):
    rng = np.random.default_rng(seed)
    size = rng.integers(1, 40, n).astype(np.int64)
    key = rng.permutation(4 * n)[:n].astype(np.uint64)
    frozen = rng.random(n) < frozen_frac
    a = rng.integers(0, n, m)
    b = rng.integers(0, n, m)
    keep = a != b
    a, b = a[keep], b[keep]
    pairs = np.unique(np.sort(np.stack([a, b], 1), 1), axis=0)  # one edge per pair
    w = (rng.integers(0, levels, len(pairs)) / (levels - 1)).astype(np.float32)
    return size, key, frozen, pairs[:, 0].copy(), pairs[:, 1].copy(), w


def _outcome(root, tainted, final_val, res, A, B, wmax, size, key, merges):
    """What :func:`pipeline.regiongraph.resolve` reads from a result."""
    n = root.size
    final = (root == np.arange(n)) & ~tainted
    edges = sorted((int(A[e]), int(B[e]), float(wmax[e])) for e in np.flatnonzero(res))
    roots = root == np.arange(n)
    return (root.tolist(), tainted.tolist(), final_val[final].tolist(), edges,
            size[roots].tolist(), key[roots].tolist(),
            sorted(map(tuple, merges.tolist())))


@pytest.mark.parametrize("seed", range(40))
@pytest.mark.parametrize("frozen_frac", [0.0, 0.05, 0.3])
@pytest.mark.parametrize("levels", [4, 1000])
def test_union_find_against_merge_queue(seed: int, frozen_frac: float, levels: int) -> None:
    """Nothing frozen: the same merges, sizes, keys and finals as ``resolve_dense``, with
    heavily tied weights (4 levels) and nearly distinct ones. Frozen: it taints a subset of
    what the queue taints, and every segment both decide gets the same root and final id."""
    n = 60
    size, key, frozen, a, b, w = _graph(seed, n, 150, levels, frozen_frac)
    hist = np.zeros((n, 0), np.int64)
    zeros = np.zeros(len(w), np.int64)
    thr, size_thr, dust = 0.2, 30, 10
    got = single_linkage_dense(size, key, frozen, hist, a.copy(), b.copy(), w, thr, size_thr,
                               dust)
    assert got[0]
    ref = resolve_dense(size, key, frozen, hist, a.copy(), b.copy(), w, zeros, zeros,
                        MODE_SINGLE_LINKAGE, thr, size_thr, dust, 0, 0.0, 0.0)
    root, tainted, final_val, res, A, B, wmax, _, _, _, size_r, key_r, merges = ref
    if not frozen.any():
        assert _outcome(*got[1:8], got[9], got[10], got[11]) == _outcome(
            root, tainted, final_val, res, A, B, wmax, size_r, key_r, merges)
        return
    g_root, g_tainted, g_final = got[1], got[2], got[3]
    assert (frozen <= g_tainted).all() and (g_tainted <= tainted).all()
    both = ~tainted[root] & ~g_tainted[g_root]
    assert np.array_equal(g_root[both], root[both])
    assert np.array_equal(g_final[g_root[both]], final_val[root[both]])


@pytest.mark.parametrize("tie", [False, True])
def test_a_small_segment_certainly_joins_a_frozen_cluster(tie: bool) -> None:
    """Frozen t (60 voxels) and small x (50): x surely joins t's segment (it is below
    ws_size, whatever t's outside part), so that segment has >= 110 voxels, and big y (200)
    is rejected for certain: decided here. The merge queue taints y instead. With ``tie``
    another edge elsewhere shares x's weight (x has no other edge at it)."""
    size = np.array([60, 50, 200, 40, 40], np.int64)
    key = np.arange(5, dtype=np.uint64) * 7
    frozen = np.array([True, False, False, False, False])
    a = np.array([0, 1, 3])
    b = np.array([1, 2, 4])
    w = np.array([0.9, 0.8, 0.9 if tie else 0.85], np.float32)
    hist = np.zeros((5, 0), np.int64)
    got = single_linkage_dense(size, key, frozen, hist, a.copy(), b.copy(), w, 0.1, 100, 0)
    assert got[0]
    assert got[2].tolist() == [True, True, False, False, False]
    assert got[3][2] == key[2] + 1  # y is final, on its own
    zeros = np.zeros(3, np.int64)
    ref = resolve_dense(size, key, frozen, hist, a.copy(), b.copy(), w, zeros, zeros,
                        MODE_SINGLE_LINKAGE, 0.1, 100, 0, 0, 0.0, 0.0)
    assert ref[1].tolist() == [True, True, True, False, False]


def test_a_members_residual_edges_move_to_its_cluster() -> None:
    """Small x surely joins frozen t at 0.9; its later edge to frozen u (0.5) is passed up as
    t–u, and x keeps one edge, its join (x–t at 0.9): the parent re-decides less."""
    size = np.array([60, 50, 60, 30], np.int64)
    key = np.arange(4, dtype=np.uint64)
    frozen = np.array([True, False, True, True])
    a, b = np.array([0, 1, 1, 2]), np.array([1, 2, 3, 3])
    w = np.array([0.9, 0.5, 0.4, 0.3], np.float32)
    got = single_linkage_dense(size, key, frozen, np.zeros((4, 0), np.int64), a.copy(),
                               b.copy(), w, 0.1, 100, 0)
    assert got[0] and got[2].tolist() == [True, True, True, True]
    res, A, B, W = got[4:8]
    assert sorted((int(A[e]), int(B[e]), round(float(W[e]), 3)) for e in np.flatnonzero(res)
                  ) == [(0, 1, 0.9), (0, 2, 0.5), (0, 3, 0.4), (2, 3, 0.3)]
