"""The inference stage: chunked, seam-free RSUNet affinities (kernels, tasks, stage)."""
