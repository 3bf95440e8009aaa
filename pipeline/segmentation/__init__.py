"""The `segmentation` stage: chunked watershed then octree agglomeration, with its I/O."""
