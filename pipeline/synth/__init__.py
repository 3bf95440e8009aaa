"""Synthetic serial-section EM volumes with exact ground truth (see :mod:`.kernels`)."""

from pipeline.synth.kernels import DefectSpec, SynthVolume, synthesize

__all__ = ["DefectSpec", "SynthVolume", "synthesize"]
