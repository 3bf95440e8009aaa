"""Voxel geometry: boxes, chunk grids and the octree built over them.

All coordinates are integer voxels in x, y, z order, at one mip level. A :class:`Bbox` is
half-open: ``start`` is included, ``stop`` is not.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property

Vec = tuple[int, int, int]
"""An integer x, y, z triple."""

FACES: tuple[tuple[int, int], ...] = tuple((a, s) for a in range(3) for s in (0, 1))
"""The six faces of a box as (axis, side): side 0 is the low face, side 1 the high face."""


def vec(values: Sequence[int]) -> Vec:
    """Return ``values`` as an integer x, y, z triple; raise ValueError if it is not three long."""
    if len(values) != 3:
        raise ValueError(f"expected 3 values (x, y, z), got {len(values)}: {list(values)}")
    return (int(values[0]), int(values[1]), int(values[2]))


@dataclass(frozen=True, order=True)
class Bbox:
    """A half-open, axis-aligned box of voxels ``[start, stop)``."""

    start: Vec
    stop: Vec

    def __post_init__(self) -> None:
        object.__setattr__(self, "start", vec(self.start))
        object.__setattr__(self, "stop", vec(self.stop))
        if any(b < a for a, b in zip(self.start, self.stop, strict=True)):
            raise ValueError(f"bbox stop {self.stop} is below start {self.start}")

    @classmethod
    def from_list(cls, values: Sequence[int]) -> Bbox:
        """Build from ``[x0, y0, z0, x1, y1, z1]``."""
        if len(values) != 6:
            raise ValueError(f"a bbox needs 6 numbers [x0, y0, z0, x1, y1, z1], got {len(values)}")
        return cls(tuple(values[:3]), tuple(values[3:]))

    @classmethod
    def from_shape(cls, shape: Sequence[int], offset: Sequence[int] = (0, 0, 0)) -> Bbox:
        """The box of ``shape`` voxels starting at ``offset``."""
        off = vec(offset)
        return cls(off, tuple(o + s for o, s in zip(off, vec(shape), strict=True)))

    def to_list(self) -> list[int]:
        """``[x0, y0, z0, x1, y1, z1]``; the inverse of :meth:`from_list`."""
        return [*self.start, *self.stop]

    @property
    def shape(self) -> Vec:
        return tuple(b - a for a, b in zip(self.start, self.stop, strict=True))  # type: ignore[return-value]

    @property
    def volume(self) -> int:
        return math.prod(self.shape)

    def empty(self) -> bool:
        """True when the box holds no voxel."""
        return self.volume == 0

    def contains(self, other: Bbox) -> bool:
        """True when every voxel of ``other`` lies in this box."""
        return all(a <= c and d <= b for a, b, c, d in
                   zip(self.start, self.stop, other.start, other.stop, strict=True))

    def intersection(self, other: Bbox) -> Bbox:
        """The overlap of both boxes; empty (start == stop) when they do not overlap."""
        start = tuple(max(a, c) for a, c in zip(self.start, other.start, strict=True))
        stop = tuple(max(s, min(b, d)) for s, b, d in zip(start, self.stop, other.stop,
                                                        strict=True))
        return Bbox(start, stop)

    def grow(self, margin: int | Sequence[int]) -> Bbox:
        """The box widened by ``margin`` voxels on every side (per axis if a triple)."""
        m = vec(margin) if isinstance(margin, Sequence) else (margin,) * 3
        return Bbox(tuple(a - d for a, d in zip(self.start, m, strict=True)),
                    tuple(b + d for b, d in zip(self.stop, m, strict=True)))

    def slices(self, relative_to: Sequence[int] = (0, 0, 0)) -> tuple[slice, slice, slice]:
        """Numpy slices selecting this box inside an array whose origin is ``relative_to``."""
        o = vec(relative_to)
        return tuple(slice(a - c, b - c)  # type: ignore[return-value]
                     for a, b, c in zip(self.start, self.stop, o, strict=True))

    def __str__(self) -> str:
        return f"{'_'.join(map(str, self.start))}-{'_'.join(map(str, self.stop))}"


@dataclass(frozen=True)
class ChunkGrid:
    """A regular grid of ``chunk_size`` boxes tiling ``bbox``, anchored at ``bbox.start``.

    Chunks on the high faces are clipped to ``bbox`` when its size is not a multiple of
    ``chunk_size``, so the chunks cover every voxel of ``bbox`` exactly once.
    """

    bbox: Bbox
    chunk_size: Vec

    def __post_init__(self) -> None:
        object.__setattr__(self, "chunk_size", vec(self.chunk_size))
        if any(c <= 0 for c in self.chunk_size):
            raise ValueError(f"chunk size must be positive, got {self.chunk_size}")

    @cached_property
    def shape(self) -> Vec:
        """Number of chunks along x, y, z."""
        return tuple(max(1, -(-s // c)) for s, c in zip(self.bbox.shape, self.chunk_size,
                                                        strict=True))  # type: ignore[return-value]

    def __len__(self) -> int:
        return math.prod(self.shape)

    def coords(self) -> Iterator[Vec]:
        """Every chunk coordinate, x fastest."""
        for z, y, x in itertools.product(*(range(n) for n in reversed(self.shape))):
            yield (x, y, z)

    @cached_property
    def _recent(self) -> dict[Vec, Bbox]:
        return {}

    def chunk(self, coord: Sequence[int]) -> Bbox:
        """The voxel box of the chunk at grid coordinate ``coord``, clipped to the grid's bbox."""
        c = vec(coord)
        box = self._recent.get(c)
        if box is not None:
            return box
        if any(not 0 <= v < n for v, n in zip(c, self.shape, strict=True)):
            raise IndexError(f"chunk {c} outside grid of shape {self.shape}")
        start = tuple(o + v * s for o, v, s in zip(self.bbox.start, c, self.chunk_size,
                                                   strict=True))
        box = Bbox(start, tuple(start[i] + self.chunk_size[i] for i in range(3))) \
            .intersection(self.bbox)
        if len(self._recent) >= 4096:  # a bounded memo: octree jobs ask for the same chunks
            self._recent.clear()
        self._recent[c] = box
        return box

    def __iter__(self) -> Iterator[Bbox]:
        return (self.chunk(c) for c in self.coords())


@dataclass(frozen=True, order=True)
class OctreeNode:
    """An octree node: ``level`` 0 is an atomic chunk; ``coord`` is its index at that level."""

    level: int
    coord: Vec

    @property
    def tag(self) -> str:
        """``"{level}_{x}_{y}_{z}"``: a stable name for files and task ids."""
        return f"{self.level}_{self.coord[0]}_{self.coord[1]}_{self.coord[2]}"

    @classmethod
    def from_tag(cls, tag: str) -> OctreeNode:
        level, x, y, z = (int(p) for p in tag.split("_"))
        return cls(level, (x, y, z))


class Octree:
    """The octree over a chunk grid: each node at level L+1 has up to 8 children at level L.

    Level 0 holds one node per atomic chunk; the top level holds a single root covering the
    whole grid. Along an axis with fewer chunks the tree simply stops branching.
    """

    def __init__(self, grid: ChunkGrid) -> None:
        self.grid = grid
        self.n_levels = 1 + max(math.ceil(math.log2(n)) if n > 1 else 0 for n in grid.shape)

    @property
    def top(self) -> int:
        """Index of the root level."""
        return self.n_levels - 1

    @property
    def root(self) -> OctreeNode:
        return OctreeNode(self.top, (0, 0, 0))

    def level_shape(self, level: int) -> Vec:
        """Number of nodes along x, y, z at ``level``."""
        self._check_level(level)
        return tuple(-(-n // (1 << level)) for n in self.grid.shape)  # type: ignore[return-value]

    def nodes(self, level: int) -> list[OctreeNode]:
        """Every node of ``level``, x fastest."""
        shape = self.level_shape(level)
        return [OctreeNode(level, (x, y, z)) for z in range(shape[2])
                for y in range(shape[1]) for x in range(shape[0])]

    def children(self, node: OctreeNode) -> list[OctreeNode]:
        """The existing nodes one level down covered by ``node`` (empty at level 0)."""
        if node.level == 0:
            return []
        shape = self.level_shape(node.level - 1)
        out = []
        for dz, dy, dx in itertools.product((0, 1), repeat=3):
            c = (2 * node.coord[0] + dx, 2 * node.coord[1] + dy, 2 * node.coord[2] + dz)
            if all(v < n for v, n in zip(c, shape, strict=True)):
                out.append(OctreeNode(node.level - 1, c))
        return out

    def parent(self, node: OctreeNode) -> OctreeNode | None:
        """The node one level up that covers ``node``; None for the root."""
        if node.level >= self.top:
            return None
        return OctreeNode(node.level + 1, tuple(c // 2 for c in node.coord))  # type: ignore[arg-type]

    def chunk_range(self, node: OctreeNode) -> tuple[Vec, Vec]:
        """Half-open range of atomic chunk coordinates covered by ``node``."""
        k = 1 << node.level
        lo = tuple(c * k for c in node.coord)
        hi = tuple(min((c + 1) * k, n) for c, n in zip(node.coord, self.grid.shape, strict=True))
        return lo, hi  # type: ignore[return-value]

    def bbox(self, node: OctreeNode) -> Bbox:
        """The voxel box covered by ``node``."""
        lo, hi = self.chunk_range(node)
        first = self.grid.chunk(lo)
        last = self.grid.chunk(tuple(h - 1 for h in hi))
        return Bbox(first.start, last.stop)

    def volume_faces(self, node: OctreeNode) -> tuple[bool, ...]:
        """For each of :data:`FACES`, whether that face of ``node`` lies on the run's bbox face.

        Segments touching a face that is *not* a volume face may continue into a neighbour, so
        their decisions are deferred to the parent.
        """
        box = self.bbox(node)
        return tuple(
            (box.start[a] == self.grid.bbox.start[a]) if side == 0
            else (box.stop[a] == self.grid.bbox.stop[a])
            for a, side in FACES
        )

    def ancestors(self, node: OctreeNode) -> list[OctreeNode]:
        """``node`` and every node above it, up to and including the root."""
        chain = [node]
        while (up := self.parent(chain[-1])) is not None:
            chain.append(up)
        return chain

    def internal_faces(self, node: OctreeNode) -> list[tuple[Vec, int]]:
        """The atomic-chunk faces between ``node``'s children, as (upper chunk coord, axis):
        the face lies between chunk ``coord - e_axis`` and chunk ``coord``."""
        if node.level == 0:
            return []
        lo, hi = self.chunk_range(node)
        half = 1 << (node.level - 1)
        out = []
        for axis in range(3):
            mid = lo[axis] + half
            if mid >= hi[axis]:
                continue
            ranges = [range(lo[a], hi[a]) if a != axis else range(mid, mid + 1) for a in range(3)]
            out += [((x, y, z), axis) for z in ranges[2] for y in ranges[1] for x in ranges[0]]
        return out

    def corners(self, node: OctreeNode) -> tuple[Vec, Vec]:
        """Inclusive voxel corners (first voxel, last voxel) of ``node``."""
        box = self.bbox(node)
        return box.start, tuple(s - 1 for s in box.stop)  # type: ignore[return-value]

    def _check_level(self, level: int) -> None:
        if not 0 <= level < self.n_levels:
            raise IndexError(f"level {level} outside octree levels 0..{self.top}")
