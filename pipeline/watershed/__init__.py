"""Watershed stage: Zlateski & Seung (2015) affinity watershed, as in abiss, chunked exactly.

:mod:`.chunked` holds the kernels (steepest ascent with the local plateau rule, basins, single
linkage through :mod:`pipeline.regiongraph`), :mod:`.kernels` the region graph, :mod:`.jobs`
the octree jobs and :mod:`.tasks` the queue tasks.
"""
