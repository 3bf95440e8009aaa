"""Octree mean-affinity agglomeration of supervoxels (abiss ``mean_aggl``)."""
