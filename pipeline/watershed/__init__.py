"""Watershed stage: Zlateski & Seung (2015) affinity watershed, as in abiss.

The pure kernels live in :mod:`pipeline.watershed.kernels`; chunked task creation and I/O live
in sibling modules.
"""

from pipeline.watershed.kernels import (
    basins,
    region_graph,
    size_dependent_single_linkage,
    steepest_ascent,
    watershed,
)

__all__ = [
    "basins",
    "region_graph",
    "size_dependent_single_linkage",
    "steepest_ascent",
    "watershed",
]
