"""Boundary detection models: the RSUNet, its checkpoints, augmentations and training."""
