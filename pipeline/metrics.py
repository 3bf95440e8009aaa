"""Segmentation metrics computed from sparse, chunk-reducible contingency tables.

Every metric here is a function of the joint voxel counts ``n[s, g]`` (how many voxels carry
segment id ``s`` in the test segmentation and id ``g`` in the ground truth).  Those counts are
held in a :class:`Contingency`, which is built per chunk by :func:`contingency` and reduced with
``a + b`` or :func:`reduce_contingency`, so a volume too big for memory is evaluated chunk by chunk
with results identical to a whole-volume evaluation.

Conventions (shared by every function below):

* Labels are non-negative integer arrays of any shape; ``seg`` and ``gt`` have equal shapes.
* Ground-truth id 0 means *unlabelled*: voxels with ``gt == 0`` are removed before every
  segmentation metric ("foreground-restricted").  Segment id 0 in ``seg`` is **not** special: it
  is one more segment (this is what :mod:`skimage.metrics` does).
* Entropies are in bits (log base 2), as in :func:`skimage.metrics.variation_of_information`.
* A score whose denominator is zero (e.g. no labelled voxel at all) is ``nan`` unless its
  docstring says otherwise.

Key names returned by :func:`evaluate` are listed in its docstring.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

__all__ = [
    "Contingency",
    "adapted_rand_error",
    "contingency",
    "evaluate",
    "evaluate_contingency",
    "info_scores",
    "pixel_scores",
    "rand_scores",
    "reduce_contingency",
    "variation_of_information",
]


def _as_labels(a: np.ndarray, name: str) -> np.ndarray:
    a = np.asarray(a)
    if a.dtype.kind not in "iub":
        raise TypeError(f"{name} must be an integer array, got dtype {a.dtype}")
    if a.dtype.kind == "i" and a.size and a.min() < 0:
        raise ValueError(f"{name} has negative labels")
    return a.reshape(-1).astype(np.uint64, copy=False)


def _merge_sorted(seg: np.ndarray, gt: np.ndarray, n: np.ndarray) -> Contingency:
    """Sum counts of duplicate (seg, gt) pairs and return them sorted by (seg, gt)."""
    if seg.size == 0:
        return Contingency.empty()
    order = np.lexsort((gt, seg))
    seg, gt, n = seg[order], gt[order], n[order]
    start = np.empty(seg.size, dtype=bool)
    start[0] = True
    start[1:] = (seg[1:] != seg[:-1]) | (gt[1:] != gt[:-1])
    idx = np.flatnonzero(start)
    return Contingency(seg[idx], gt[idx], np.add.reduceat(n, idx))


@dataclass(frozen=True)
class Contingency:
    """Sparse contingency table: ``counts[k]`` voxels have segment ``seg[k]`` and gt ``gt[k]``.

    Promises: the three arrays have equal length; ``seg`` and ``gt`` are ``uint64``, ``counts``
    is ``int64`` and strictly positive; pairs are unique and sorted by ``(seg, gt)``.  All voxels
    are kept, including ``gt == 0`` ones (metrics drop those themselves), so tables of disjoint
    chunks add up (``a + b``) to exactly the table of their union.
    """

    seg: np.ndarray
    gt: np.ndarray
    counts: np.ndarray

    @classmethod
    def empty(cls) -> Contingency:
        """A table of zero voxels (the identity of ``+``)."""
        return cls(np.zeros(0, np.uint64), np.zeros(0, np.uint64), np.zeros(0, np.int64))

    @property
    def n_voxels(self) -> int:
        """Total number of voxels counted (labelled or not)."""
        return int(self.counts.sum())

    def __add__(self, other: Contingency) -> Contingency:
        if not isinstance(other, Contingency):
            return NotImplemented
        return _merge_sorted(
            np.concatenate([self.seg, other.seg]),
            np.concatenate([self.gt, other.gt]),
            np.concatenate([self.counts, other.counts]),
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Contingency):
            return NotImplemented
        return (
            np.array_equal(self.seg, other.seg)
            and np.array_equal(self.gt, other.gt)
            and np.array_equal(self.counts, other.counts)
        )

    __hash__ = None  # type: ignore[assignment]

    def foreground(self) -> Contingency:
        """The table restricted to labelled voxels (``gt != 0``)."""
        keep = self.gt != 0
        return Contingency(self.seg[keep], self.gt[keep], self.counts[keep])


def contingency(seg: np.ndarray, gt: np.ndarray) -> Contingency:
    """Contingency table of one chunk (all voxels, ``gt == 0`` included).

    ``seg`` and ``gt`` must be non-negative integer arrays of the same shape.
    """
    seg = np.asarray(seg)
    gt = np.asarray(gt)
    if seg.shape != gt.shape:
        raise ValueError(f"shape mismatch: seg {seg.shape} vs gt {gt.shape}")
    s = _as_labels(seg, "seg")
    g = _as_labels(gt, "gt")
    if s.size == 0:
        return Contingency.empty()
    su, si = np.unique(s, return_inverse=True)
    gu, gi = np.unique(g, return_inverse=True)
    key = si.astype(np.int64) * np.int64(gu.size) + gi
    if su.size * gu.size <= max(4 * s.size, 1 << 16):
        n = np.bincount(key, minlength=su.size * gu.size)
        ukey = np.flatnonzero(n)
        n = n[ukey]
    else:
        ukey, n = np.unique(key, return_counts=True)
    # ukey is sorted, and (si, gi) preserve label order, so pairs come out sorted by (seg, gt).
    return Contingency(su[ukey // gu.size], gu[ukey % gu.size], n.astype(np.int64))


def reduce_contingency(tables: Iterable[Contingency]) -> Contingency:
    """Sum any number of tables (e.g. one per chunk) into one."""
    parts = list(tables)
    if not parts:
        return Contingency.empty()
    return _merge_sorted(
        np.concatenate([t.seg for t in parts]),
        np.concatenate([t.gt for t in parts]),
        np.concatenate([t.counts for t in parts]),
    )


def _table(seg_or_table: np.ndarray | Contingency, gt: np.ndarray | None) -> Contingency:
    if isinstance(seg_or_table, Contingency):
        if gt is not None:
            raise TypeError("pass either a Contingency or (seg, gt), not both")
        return seg_or_table
    if gt is None:
        raise TypeError("gt is required when seg is an array")
    return contingency(seg_or_table, gt)


def _marginals(c: Contingency) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Joint counts, seg sizes and gt sizes (float64) of the foreground part of ``c``."""
    fg = c.foreground()
    n = fg.counts.astype(np.float64)
    _, si = np.unique(fg.seg, return_inverse=True)
    _, gi = np.unique(fg.gt, return_inverse=True)
    return n, np.bincount(si, weights=n), np.bincount(gi, weights=n)


def _div(a: float, b: float, zero_over_zero: float = np.nan) -> float:
    if b == 0:
        return zero_over_zero if a == 0 else np.nan
    return float(a / b)


def adapted_rand_error(
    seg: np.ndarray | Contingency, gt: np.ndarray | None = None
) -> tuple[float, float, float]:
    """SNEMI3D adapted Rand error, ``(are, precision, recall)``, over voxels with ``gt != 0``.

    With ``n_sg`` the joint counts, ``a_s`` segment sizes and ``b_g`` gt sizes (foreground only,
    ``N`` voxels), ``P = sum n_sg**2 - N`` is the number of ordered voxel pairs together in both.

    * ``precision = P / (sum a_s**2 - N)``: of the pairs together in ``seg``, the fraction also
      together in ``gt`` (1 for any over-segmentation; low means false merges).
    * ``recall = P / (sum b_g**2 - N)``: of the pairs together in ``gt``, the fraction also
      together in ``seg`` (1 for any under-segmentation; low means false splits).
    * ``are = 1 - 2 P / (sum a_s**2 + sum b_g**2 - 2 N)`` (alpha = 0.5).

    ``are`` equals ``skimage.metrics.adapted_rand_error(gt, seg)[0]``.  Note that skimage returns
    precision and recall the other way round from their documented meaning (scikit-image issue
    #6485): our ``precision`` is skimage's ``[2]`` and our ``recall`` skimage's ``[1]``.
    ``nan`` where a denominator is zero (e.g. every segment is a single voxel), as in skimage.
    """
    n, a, b = _marginals(_table(seg, gt))
    total = n.sum()
    p = float(n @ n - total)
    sa = float(a @ a - total)
    sb = float(b @ b - total)
    f = _div(2.0 * p, sa + sb)
    return 1.0 - f, _div(p, sa), _div(p, sb)


def variation_of_information(
    seg: np.ndarray | Contingency, gt: np.ndarray | None = None
) -> tuple[float, float]:
    """``(split, merge)`` conditional entropies in bits, over voxels with ``gt != 0``.

    ``split = H(seg | gt)`` (over-segmentation, false splits) and ``merge = H(gt | seg)``
    (under-segmentation, false merges); VI is their sum.  Equal to
    ``skimage.metrics.variation_of_information(gt, seg, ignore_labels=[0])`` which returns
    ``[H(seg|gt), H(gt|seg)]`` with voxels where ``gt == 0`` removed before normalising.
    Both are 0.0 when there is no labelled voxel.
    """
    n, a, b = _marginals(_table(seg, gt))
    total = n.sum()
    if total == 0:
        return 0.0, 0.0
    h_joint = _entropy(n, total)
    h_seg = _entropy(a, total)
    h_gt = _entropy(b, total)
    return max(h_joint - h_gt, 0.0), max(h_joint - h_seg, 0.0)


def _entropy(counts: np.ndarray, total: float) -> float:
    p = counts[counts > 0] / total
    return float(-(p * np.log2(p)).sum())


def rand_scores(
    seg: np.ndarray | Contingency, gt: np.ndarray | None = None
) -> tuple[float, float, float]:
    """ISBI 2012 foreground-restricted Rand scores ``(f_score, split, merge)`` (alpha = 0.5).

    With joint probabilities ``p_sg`` over voxels with ``gt != 0`` (self-pairs included, as in
    Arganda-Carreras et al. 2015), ``s`` the segment marginal and ``t`` the gt marginal:
    ``split = sum p**2 / sum t**2``, ``merge = sum p**2 / sum s**2`` and
    ``f_score = sum p**2 / (0.5 sum s**2 + 0.5 sum t**2)``, the harmonic mean of the two.
    All are in (0, 1], 1 for a perfect segmentation; ``nan`` when no voxel is labelled.
    """
    n, a, b = _marginals(_table(seg, gt))
    p, sa, sb = float(n @ n), float(a @ a), float(b @ b)
    return _div(2.0 * p, sa + sb), _div(p, sb), _div(p, sa)


def info_scores(
    seg: np.ndarray | Contingency, gt: np.ndarray | None = None
) -> tuple[float, float, float]:
    """ISBI 2012 foreground-restricted information-theoretic scores ``(f_score, split, merge)``.

    With ``I`` the mutual information of seg and gt over voxels with ``gt != 0``:
    ``split = I / H(seg)``, ``merge = I / H(gt)`` and ``f_score = 2 I / (H(seg) + H(gt))``
    (alpha = 0.5).  All lie in [0, 1] and are 1 for a perfect segmentation.  A ``0/0`` (a single
    segment, so nothing can be split or merged on that side) counts as 1.0; ``nan`` when no voxel
    is labelled.
    """
    n, a, b = _marginals(_table(seg, gt))
    total = n.sum()
    if total == 0:
        return np.nan, np.nan, np.nan
    h_seg, h_gt = _entropy(a, total), _entropy(b, total)
    mi = max(h_seg + h_gt - _entropy(n, total), 0.0)
    mi = min(mi, h_seg, h_gt)
    return (
        _div(2.0 * mi, h_seg + h_gt, 1.0),
        _div(mi, h_seg, 1.0),
        _div(mi, h_gt, 1.0),
    )


def pixel_scores(
    pred: np.ndarray | Contingency, truth: np.ndarray | None = None
) -> dict[str, float]:
    """Voxel-wise scores of binary masks: nonzero is positive, 0 is negative, no voxel ignored.

    Accepts two arrays (any integer or bool dtype) or a :class:`Contingency` (``seg`` = prediction,
    ``gt`` = truth, all voxels).  Returns ``precision``, ``recall``, ``f1``, ``dice`` (same value as
    ``f1``) and ``jaccard``.  When both masks are empty every score is 1.0; otherwise a zero
    denominator gives 0.0.
    """
    if isinstance(pred, Contingency):
        c = _table(pred, truth)
    else:
        if truth is None:
            raise TypeError("truth is required when pred is an array")
        c = contingency(np.asarray(pred) != 0, np.asarray(truth) != 0)
    ps, ts = c.seg != 0, c.gt != 0
    tp = float(c.counts[ps & ts].sum())
    fp = float(c.counts[ps & ~ts].sum())
    fn = float(c.counts[~ps & ts].sum())
    if tp + fp + fn == 0:
        return {"precision": 1.0, "recall": 1.0, "f1": 1.0, "dice": 1.0, "jaccard": 1.0}
    f1 = _div(2 * tp, 2 * tp + fp + fn, 0.0)
    return {
        "precision": _div(tp, tp + fp, 0.0),
        "recall": _div(tp, tp + fn, 0.0),
        "f1": f1,
        "dice": f1,
        "jaccard": _div(tp, tp + fp + fn, 0.0),
    }


def evaluate_contingency(c: Contingency) -> dict[str, float]:
    """Every metric of this module from one (possibly chunk-reduced) table.

    Keys (all ``float``):

    * ``n_voxels``, ``n_labelled``: all voxels, and those with ``gt != 0`` (the ones scored).
    * ``adapted_rand_error``, ``adapted_rand_precision``, ``adapted_rand_recall``:
      :func:`adapted_rand_error` (standard meaning of precision/recall, see there).
    * ``vi_split`` = H(seg|gt), ``vi_merge`` = H(gt|seg), ``vi`` = their sum (bits).
    * ``rand_f_score``, ``rand_split``, ``rand_merge``: :func:`rand_scores`.
    * ``info_f_score``, ``info_split``, ``info_merge``: :func:`info_scores`.
    * ``pixel_precision``, ``pixel_recall``, ``pixel_f1``, ``pixel_dice``, ``pixel_jaccard``:
      :func:`pixel_scores` of the masks ``seg != 0`` vs ``gt != 0`` over *all* voxels.
    """
    are, prec, rec = adapted_rand_error(c)
    split, merge = variation_of_information(c)
    rf, rs, rm = rand_scores(c)
    inf, ins, inm = info_scores(c)
    out = {
        "n_voxels": float(c.n_voxels),
        "n_labelled": float(c.counts[c.gt != 0].sum()),
        "adapted_rand_error": are,
        "adapted_rand_precision": prec,
        "adapted_rand_recall": rec,
        "vi_split": split,
        "vi_merge": merge,
        "vi": split + merge,
        "rand_f_score": rf,
        "rand_split": rs,
        "rand_merge": rm,
        "info_f_score": inf,
        "info_split": ins,
        "info_merge": inm,
    }
    out.update({f"pixel_{k}": v for k, v in pixel_scores(c).items()})
    return out


def evaluate(seg: np.ndarray, gt: np.ndarray) -> dict[str, float]:
    """All metrics of ``seg`` against ``gt``; keys as in :func:`evaluate_contingency`."""
    return evaluate_contingency(contingency(seg, gt))
