"""Defect masks: detection of empty areas, folds, cracks and resin (:mod:`.detect`), and
misalignment maps with the inference input/output mask rules (:mod:`.rules`)."""
