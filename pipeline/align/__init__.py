"""Alignment (paper Methods "Image alignment"; corgie/SEAMLeSS style).

- :mod:`.warp`: fields (2-channel pull maps in pixels), exact chunk-invariant warping;
- :mod:`.ncc`: masked NCC block matching (batched FFT), peak-ratio test, fill, smoothing;
- :mod:`.fields`: the :class:`~.fields.FieldModel` plug-in point, the classical model
  (coarse-to-fine block matching + MSE/smoothness refinement) and the consensus vote;
- :mod:`.blocks`: block-parallel alignment along z, stitching and cross-fading;
- :mod:`.render`: chunk rendering and the partial-section composite;
- :mod:`.jobs` / :mod:`.volumes`: the stage's jobs over layers or in-memory arrays;
- :mod:`.tasks` / :mod:`.stage`: queue tasks and the steps the `alignment` DAG calls;
- :mod:`.synthetic`: known misalignments and residuals against truth (tests, benchmarks).
"""
