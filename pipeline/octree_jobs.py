"""Where octree jobs keep their tables, and how a job finds its chunk's place in the octree.

A *store* maps names like ``ws/nodes/2_0_1_0`` to dicts of arrays. :class:`MemoryStore` keeps
them in a dict (tests, single-chunk reference runs); :class:`CloudStore` keeps them as ``.npz``
files under a cloud path (queue tasks). Jobs read and write only through a store, so the same
job code runs in memory and on a cluster.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from functools import cached_property
from typing import Protocol

import numpy as np

from pipeline.geometry import Bbox, ChunkGrid, Octree, OctreeNode, Vec


class Store(Protocol):
    def put(self, name: str, arrays: dict[str, np.ndarray]) -> None: ...
    def get(self, name: str) -> dict[str, np.ndarray]: ...


class MemoryStore:
    """A store in a dict."""

    def __init__(self) -> None:
        self.data: dict[str, dict[str, np.ndarray]] = {}

    def put(self, name: str, arrays: dict[str, np.ndarray]) -> None:
        self.data[name] = {k: np.asarray(v) for k, v in arrays.items()}

    def get(self, name: str) -> dict[str, np.ndarray]:
        return self.data[name]


class CloudStore:
    """A store of compressed .npz files under a cloud path (written whole, so never partial)."""

    def __init__(self, cloudpath: str) -> None:
        from cloudfiles import CloudFiles

        self.cf = CloudFiles(cloudpath)
        self.path = cloudpath

    def put(self, name: str, arrays: dict[str, np.ndarray]) -> None:
        buf = io.BytesIO()
        np.savez_compressed(buf, **arrays)
        self.cf.put(f"{name}.npz", buf.getvalue(), compress=None, raw=True)

    def get(self, name: str) -> dict[str, np.ndarray]:
        blob = self.cf.get(f"{name}.npz", raw=True)
        if blob is None:
            raise FileNotFoundError(f"{self.path}/{name}.npz: missing (did its wave finish?)")
        with np.load(io.BytesIO(blob)) as z:
            return {k: z[k] for k in z.files}


@dataclass(frozen=True)
class Layout:
    """The run bbox, its chunk grid and octree, as every job needs them."""

    bbox: Bbox
    chunk_size: Vec

    @cached_property
    def grid(self) -> ChunkGrid:
        return ChunkGrid(self.bbox, self.chunk_size)

    @cached_property
    def octree(self) -> Octree:
        return Octree(self.grid)

    def chunk_index(self, coord: Vec) -> int:
        """Linear index of an atomic chunk, x fastest."""
        gx, gy, _ = self.grid.shape
        return coord[0] + gx * (coord[1] + gy * coord[2])

    def id_offset(self, coord: Vec) -> int:
        """Ids of chunk ``coord`` are ``offset + 1 ..``: disjoint from every other chunk's."""
        return self.chunk_index(coord) * (int(np.prod(self.chunk_size)) + 1)

    def node_geometry(self, node: OctreeNode) -> tuple[np.ndarray, np.ndarray, tuple[bool, ...]]:
        """Inclusive corners of ``node`` and which of its faces are volume faces."""
        tree = self.octree
        lo, hi = tree.corners(node)
        return np.array(lo, np.int64), np.array(hi, np.int64), tree.volume_faces(node)

    def chain(self, coord: Vec) -> list[OctreeNode]:
        """The atomic chunk's node and its ancestors up to the root."""
        return self.octree.ancestors(OctreeNode(0, coord))
