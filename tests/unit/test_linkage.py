"""Single linkage by union-find equals the general merge queue, frozen segments included."""

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
def test_union_find_equals_merge_queue(seed: int, frozen_frac: float, levels: int) -> None:
    """Same merges, taint, residual edges (with max weights), sizes and keys as
    ``resolve_dense``, with heavily tied weights (4 levels) and nearly distinct ones."""
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
    assert _outcome(*got[1:8], got[9], got[10], got[11]) == _outcome(
        root, tainted, final_val, res, A, B, wmax, size_r, key_r, merges)
    assert tainted.sum() >= frozen.sum()
