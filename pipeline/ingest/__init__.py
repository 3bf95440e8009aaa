"""Ingest: an image stack (HDF5, TIFF, PNG folder, .npy) becomes a precomputed image layer."""
