"""The one sort every rank metric is read from: cumulative positive / negative counts above each distinct
threshold, and the AUROC, average precision and FPR-at-TPR read from them in integer arithmetic.

Shared by :mod:`.ood` (dataset level) and :mod:`.localization` (block and pixel level); not public API
(the public metrics are in :mod:`priorshift.metrics`).
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = [
    "to_numpy",
    "count_curve",
    "labelled",
    "ood_curve",
    "flip",
    "auc_from_counts",
    "ap_from_counts",
    "fpr_from_counts",
]


def to_numpy(x, name: str) -> np.ndarray:
    """Any array-like (numpy, list, torch tensor on any device) -> numpy array, without copying when possible."""
    if isinstance(x, torch.Tensor):
        if x.is_complex():
            raise ValueError(f"{name} must be real-valued, got a complex tensor ({x.dtype})")
        x = x.detach()
        if x.dtype in (torch.float16, torch.bfloat16):
            x = x.to(torch.float32)  # numpy has no bfloat16; float16 -> float32 is exact
        return x.cpu().numpy()
    try:
        arr = np.asarray(x)
    except (ValueError, TypeError) as exc:  # ragged lists and the like
        raise ValueError(f"{name} could not be converted to an array: {exc}") from None
    return arr


def count_curve(scores: np.ndarray, pos_w: np.ndarray, neg_w: np.ndarray):
    """Cumulative positive / negative counts above each distinct threshold.

    ``scores`` (N,) float64; ``pos_w``, ``neg_w`` (N,) non-negative integer weights (1/0 labels, or pixel counts
    for pooled-pixel metrics). Returns ``thresholds`` (distinct scores, descending), ``tps`` and ``fps`` (int64):
    the total positive / negative weight of the samples scored ``>= thresholds[i]`` — exactly sklearn's
    ``_binary_clf_curve``.
    """
    order = np.argsort(scores, kind="stable")[::-1]
    s = scores[order]
    # last index of each run of equal scores (in descending order)
    ends = np.r_[np.flatnonzero(s[1:] != s[:-1]), s.size - 1]
    tps = np.cumsum(pos_w[order], dtype=np.int64)[ends]
    fps = np.cumsum(neg_w[order], dtype=np.int64)[ends]
    return s[ends], tps, fps


def auc_from_counts(tps: np.ndarray, fps: np.ndarray) -> float:
    """Area under the ROC step curve through (0, 0) and the (fps, tps) points; ties (diagonal steps) count ½.

    Trapezoids in integer arithmetic: ``Σ Δfp · (tp_prev + tp) / (2 P N)`` — exact before the final division.
    """
    n_pos, n_neg = int(tps[-1]), int(fps[-1])
    dfp = np.diff(fps, prepend=0)
    tp_sum = tps + np.r_[0, tps[:-1]]
    if 2 * n_pos * n_neg < 2**62:
        twice_area = int(np.dot(dfp, tp_sum))
    else:  # astronomically many pooled pixels: fall back to float
        twice_area = float(np.dot(dfp.astype(np.float64), tp_sum.astype(np.float64)))
    return twice_area / (2.0 * n_pos * n_neg)


def ap_from_counts(tps: np.ndarray, fps: np.ndarray) -> float:
    """Average precision ``Σ (R_i − R_{i−1}) P_i`` over distinct thresholds (sklearn's definition)."""
    n_pos = tps[-1]
    dtp = np.diff(tps, prepend=0).astype(np.float64)
    precision = tps / (tps + fps)  # tps + fps > 0 at every distinct threshold
    return float(max(0.0, np.sum(dtp / n_pos * precision)))


def labelled(pos: np.ndarray, neg: np.ndarray):
    """``(scores, pos_w, neg_w)`` for :func:`count_curve`: the pooled scores (negatives first) and 1/0 weights."""
    scores = np.concatenate([neg, pos])
    is_pos = np.zeros(scores.size, dtype=np.int64)
    is_pos[neg.size :] = 1
    return scores, is_pos, 1 - is_pos


def ood_curve(s_id: np.ndarray, s_ood: np.ndarray):
    """The one sort: cumulative (OOD, ID) counts scored ``>=`` each distinct threshold, highest first."""
    _, tps, fps = count_curve(*labelled(s_ood, s_id))
    return tps, fps


def flip(tps: np.ndarray, fps: np.ndarray):
    """The same curve with the roles swapped and the scores negated (no re-sort).

    At distinct threshold ``v`` the ID-positive curve of ``-scores`` counts the samples scored ``<= v``:
    ``n − (count scored > v)``, read from the previous point of the descending curve, in ascending order of ``v``.
    """
    n_pos, n_neg = tps[-1], fps[-1]
    neg_le = n_neg - np.r_[0, fps[:-1]]
    pos_le = n_pos - np.r_[0, tps[:-1]]
    return neg_le[::-1], pos_le[::-1]


def fpr_from_counts(tps: np.ndarray, fps: np.ndarray, tpr: float) -> float:
    """FPR at the first (highest) threshold whose TPR is >= ``tpr``.

    ``tps / tps[-1]`` is computed exactly as sklearn's ``tpr`` (integer counts divided by the total), so the
    comparison with ``tpr`` agrees bit for bit with ``np.searchsorted(roc_curve(...)[1], tpr)``.
    """
    i = int(np.searchsorted(tps / tps[-1], tpr, side="left"))
    return int(fps[i]) / int(fps[-1])
