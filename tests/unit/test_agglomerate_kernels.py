"""The agglomeration's chunk graph and greedy mean merging against brute force."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.agglomerate.chunked import AgglomerationParams, chunk_graph
from pipeline.agglomerate.jobs import _low_padded, agglomerate_global
from pipeline.geometry import Bbox
from pipeline.regiongraph import FIXED_POINT


def brute_face_sums(ws: np.ndarray, aff: np.ndarray,
                    start: tuple[int, ...] = (0, 0, 0)) -> dict[tuple[int, int], tuple[int, int]]:
    """(fixed-point sum, count) per pair of distinct nonzero supervoxels over the faces between
    a voxel at or after ``start`` and its predecessor (in the volume)."""
    out: dict[tuple[int, int], tuple[int, int]] = {}
    for v in np.ndindex(ws.shape):
        for c in range(3):
            if min(v[i] - start[i] for i in range(3)) < 0:
                continue
            if v[c] == 0:
                continue
            u = tuple(v[i] - (i == c) for i in range(3))
            a, b = int(ws[v]), int(ws[u])
            if a == 0 or b == 0 or a == b:
                continue
            k = (min(a, b), max(a, b))
            s, n = out.get(k, (0, 0))
            out[k] = (s + int(np.round(np.float64(aff[(*v, c)]) * FIXED_POINT)), n + 1)
    return out


def brute_agglomerate(ws: np.ndarray, aff: np.ndarray, threshold: float) -> np.ndarray:
    """Merge the pair of highest mean face affinity while it is above ``threshold``."""
    sums = brute_face_sums(ws, aff)
    owner = {int(i): int(i) for i in np.unique(ws) if i}
    while True:
        merged: dict[tuple[int, int], list[int]] = {}
        for (a, b), (s, n) in sums.items():
            ra, rb = owner[a], owner[b]
            if ra != rb:
                k = (min(ra, rb), max(ra, rb))
                acc = merged.setdefault(k, [0, 0])
                acc[0], acc[1] = acc[0] + s, acc[1] + n
        if not merged:
            break
        (a, b), (s, n) = max(merged.items(), key=lambda kv: kv[1][0] / kv[1][1])
        if s / n / FIXED_POINT <= threshold:
            break
        for k, r in owner.items():
            if r == b:
                owner[k] = a
    out = np.zeros_like(ws)
    for k, r in owner.items():
        out[ws == k] = r
    return out


def random_case(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Blocky supervoxels (some 0) and random affinities."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 12, size=(4, 4, 3)).astype(np.uint64) * 37
    ws = np.kron(coarse, np.ones((2, 2, 2), np.uint64))[1:, 1:, 1:]  # faces at planes 0|1
    return ws, rng.random((*ws.shape, 3)).astype(np.float32)


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    pairs = np.unique(np.stack([a.ravel(), b.ravel()]), axis=1)
    return len(np.unique(pairs[0])) == len(np.unique(pairs[1])) == pairs.shape[1]


@pytest.mark.parametrize("start", [(0, 0, 0), (3, 2, 1)])
@pytest.mark.parametrize("fine", [False, True])
def test_chunk_graph_sums_every_face_it_owns(start: tuple[int, int, int], fine: bool) -> None:
    """Faces on the run's first planes count too; a chunk inside the run also owns the faces
    toward its low neighbours (read from its 1-voxel margin). ``fine``: a supervoxel per voxel,
    thousands of pairs (the pair table grows)."""
    ws, aff = random_case(1)
    if fine:
        rng = np.random.default_rng(2)
        ws = rng.permutation(np.arange(18 * 17 * 16, dtype=np.uint64)).reshape(18, 17, 16)
        aff = rng.random((*ws.shape, 3)).astype(np.float32)
    run = Bbox.from_shape(ws.shape)
    box = Bbox(start, ws.shape)
    padded = _low_padded(ws, run, box)
    seg, edges, dense, names = chunk_graph(padded, aff[box.slices()], box.start, run.start,
                                           AgglomerationParams())
    assert np.array_equal(names[dense], padded) and names[0] == 0
    want = brute_face_sums(ws, aff, start)
    got = {(int(a), int(b)): (int(s), int(n))
           for a, b, s, n in zip(edges.a, edges.b, edges.wsum, edges.count, strict=True)}
    assert got == want
    own = np.unique(ws[box.slices()])
    assert set(seg.ids[seg.size > 0].tolist()) == set(own[own > 0].tolist())


def test_faces_on_the_first_planes_merge() -> None:
    ws = np.array([1, 2], np.uint64).reshape(2, 1, 1)
    aff = np.zeros((2, 1, 1, 3), np.float32)
    aff[1, 0, 0, 0] = 0.9  # the only face: between planes 0 and 1 along x
    assert agglomerate_global(aff, ws, AgglomerationParams(0.5)).ravel().tolist() == [1, 1]


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("threshold", [0.3, 0.5, 0.7])
def test_agglomeration_equals_brute_force_greedy_mean(seed: int, threshold: float) -> None:
    ws, aff = random_case(seed)
    got = agglomerate_global(aff, ws, AgglomerationParams(threshold))
    assert same_partition(got, brute_agglomerate(ws, aff, threshold))
