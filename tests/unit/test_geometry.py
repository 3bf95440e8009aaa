"""Chunk grids tile their bbox exactly; the octree's levels, parents and faces are consistent."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.geometry import FACES, Bbox, ChunkGrid, Octree, OctreeNode

sizes = st.tuples(*(st.integers(1, 40),) * 3)
offsets = st.tuples(*(st.integers(-20, 20),) * 3)


@given(shape=sizes, offset=offsets, chunk=st.tuples(*(st.integers(1, 17),) * 3))
@settings(max_examples=60, deadline=None)
def test_grid_covers_bbox_exactly_once(shape, offset, chunk):
    box = Bbox.from_shape(shape, offset)
    grid = ChunkGrid(box, chunk)
    count = np.zeros(shape, dtype=np.int32)
    for c in grid:
        assert box.contains(c) and not c.empty()
        count[c.slices(box.start)] += 1
    assert (count == 1).all()
    assert len(grid) == len(list(grid.coords()))


@given(shape=sizes, chunk=st.tuples(*(st.integers(1, 9),) * 3))
@settings(max_examples=60, deadline=None)
def test_octree_levels_partition_the_grid(shape, chunk):
    tree = Octree(ChunkGrid(Bbox.from_shape(shape, (3, -2, 5)), chunk))
    assert tree.level_shape(tree.top) == (1, 1, 1)
    assert tree.top == 0 or tree.level_shape(tree.top - 1) != (1, 1, 1)
    assert tree.bbox(tree.root) == tree.grid.bbox
    assert tree.volume_faces(tree.root) == (True,) * 6
    for level in range(1, tree.n_levels):
        seen = []
        for node in tree.nodes(level):
            kids = tree.children(node)
            assert 1 <= len(kids) <= 8
            assert all(tree.parent(k) == node for k in kids)
            box = tree.bbox(node)
            assert sum(tree.bbox(k).volume for k in kids) == box.volume
            assert all(box.contains(tree.bbox(k)) for k in kids)
            seen += kids
        assert sorted(seen) == sorted(tree.nodes(level - 1))


def test_volume_faces_of_atomic_chunks():
    tree = Octree(ChunkGrid(Bbox.from_shape((10, 10, 10)), (4, 10, 10)))
    assert tree.grid.shape == (3, 1, 1)
    faces = [tree.volume_faces(OctreeNode(0, (x, 0, 0))) for x in range(3)]
    # x-low face is a volume face only for the first chunk, x-high only for the last
    assert [f[FACES.index((0, 0))] for f in faces] == [True, False, False]
    assert [f[FACES.index((0, 1))] for f in faces] == [False, False, True]
    assert all(f[2:] == (True,) * 4 for f in faces)
    assert tree.bbox(OctreeNode(0, (2, 0, 0))) == Bbox((8, 0, 0), (10, 10, 10))


def test_tags_round_trip_and_levels():
    tree = Octree(ChunkGrid(Bbox.from_shape((100, 50, 10)), (10, 10, 10)))
    assert tree.grid.shape == (10, 5, 1)
    assert tree.n_levels == 5  # 10 → 5 → 3 → 2 → 1
    assert [tree.level_shape(lvl)[0] for lvl in range(5)] == [10, 5, 3, 2, 1]
    node = OctreeNode(2, (1, 0, 0))
    assert node.tag == "2_1_0_0" and OctreeNode.from_tag(node.tag) == node
    assert tree.parent(tree.root) is None
    with pytest.raises(IndexError):
        tree.nodes(5)


def test_bbox_operations():
    a = Bbox((0, 0, 0), (10, 10, 10))
    b = Bbox((5, -5, 8), (15, 5, 20))
    assert a.intersection(b) == Bbox((5, 0, 8), (10, 5, 10))
    assert a.intersection(Bbox((20, 20, 20), (30, 30, 30))).empty()
    assert a.grow(2) == Bbox((-2, -2, -2), (12, 12, 12))
    assert a.grow((1, 0, 0)).shape == (12, 10, 10)
    assert Bbox.from_list(a.to_list()) == a
    assert a.slices((5, 0, 0)) == (slice(-5, 5), slice(0, 10), slice(0, 10))
    with pytest.raises(ValueError, match="below start"):
        Bbox((5, 0, 0), (4, 1, 1))
    with pytest.raises(ValueError, match="6 numbers"):
        Bbox.from_list([1, 2, 3])
    with pytest.raises(ValueError, match="positive"):
        ChunkGrid(a, (0, 1, 1))


def test_grid_clips_non_multiple_sizes():
    grid = ChunkGrid(Bbox((1, 2, 3), (12, 9, 4)), (5, 5, 5))
    assert grid.shape == (3, 2, 1)
    shapes = [grid.chunk(c).shape for c in itertools.product(range(3), range(2), range(1))]
    assert (1, 2, 1) in shapes and (5, 5, 1) in shapes
