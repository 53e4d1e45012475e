"""Dataset-level OOD detection metrics: AUROC, AUPR-in/out, FPR at a fixed TPR in both published conventions.

Every function takes the scores of the in-distribution samples and of the out-of-distribution samples as two
separate 1-D array-likes (numpy arrays, lists, or torch tensors of any float/int dtype, on any device).
**Higher score = more OOD**, as everywhere in priorshift; OOD is the positive class unless a name says otherwise.

Everything is computed from one sort of the pooled scores (no Python loop over samples), in float64, with
integer counts, and reproduces scikit-learn exactly (to rounding, ~1e-15):

======================  ================================================================================
``auroc``               ``roc_auc_score(y, s)`` with y = 1 for OOD; ties count one half.
``aupr_out``            ``average_precision_score(y, s)`` with y = 1 for OOD (OOD positive).
``aupr_in``             ``average_precision_score(1 - y, -s)`` (ID positive, scores negated).
``fpr_at_95_tpr_ood``   ``fpr[np.searchsorted(tpr, 0.95)]`` on ``roc_curve(y, s, drop_intermediate=False)``.
``fpr_at_95_tpr_id``    the same reading of ``roc_curve(1 - y, -s, drop_intermediate=False)``.
``roc_curve``           ``roc_curve(y, s)`` (``drop_intermediate=False`` by default).
======================  ================================================================================

Conventions, and how they differ from the two reference libraries:

* **AUPR is average precision** (the step-function sum ``Σ_n (R_n − R_{n−1}) P_n``), not the trapezoidal area
  ``auc(recall, precision)`` that OpenOOD and pytorch-ood report. The trapezoid interpolates precision linearly
  between operating points, which is optimistic (Davis & Goadrich, ICML 2006); the numbers differ, mostly when
  there are few samples or many ties.
* **FPR at 95% TPR** exists in two conventions that give different numbers on the same scores (see
  :func:`fpr_at_tpr`). ``fpr_at_95_tpr_ood`` is pytorch-ood's ``FPR95TPR`` and OpenOOD's FPR@95 since
  OpenOOD PR #174 (2023-08-14, ``auc_and_fpr_recall``). ``fpr_at_95_tpr_id`` is the ID-positive convention of
  ODIN ("TNR at 95% TPR" = 1 − it in Mahalanobis-style papers) and of OpenOOD v1.0 / early v1.5
  (``fpr_recall``; its v1.0 form also rounded the ID count down and counted OOD strictly above the threshold,
  so it can differ from this on small or tied samples). Always say which convention a number uses.
* Values are fractions in [0, 1] (OpenOOD prints percent).

References:
    Kirchheim, Filax, Ortmeier, "PyTorch-OOD: A library for out-of-distribution detection based on PyTorch",
    CVPR Workshops 2022 (``pytorch_ood.utils.metrics.fpr_at_tpr``, ``OODMetrics``).
    Yang et al., "OpenOOD: Benchmarking generalized out-of-distribution detection", NeurIPS 2022 Datasets and
    Benchmarks; Zhang et al., "OpenOOD v1.5: Enhanced benchmark for out-of-distribution detection", 2023
    (``openood/evaluators/metrics.py``: ``auc_and_fpr_recall``, OOD positive since PR #174 of 2023-08-14, which
    notes "Earlier the ID samples are treated as positive"; the older ``fpr_recall``).
    Liang, Li, Srikant, "Enhancing the reliability of out-of-distribution image detection in neural networks"
    (ODIN), ICLR 2018 — FPR at 95% TPR with in-distribution as the positive class.
"""

from __future__ import annotations

import math

from typing import Literal

import numpy as np

from ._counts import ap_from_counts, auc_from_counts, count_curve, flip, fpr_from_counts, labelled, ood_curve, to_numpy

__all__ = [
    "auroc",
    "aupr_in",
    "aupr_out",
    "fpr_at_tpr",
    "fpr_at_95_tpr_ood",
    "fpr_at_95_tpr_id",
    "ood_metrics",
    "roc_curve",
    "auroc_standard_error",
    "paired_rate",
]


# ----------------------------------------------------------------------------------------------------------------
# input handling
# ----------------------------------------------------------------------------------------------------------------


def _as_scores(x, name: str) -> np.ndarray:
    """Validate one set of scores: numeric, 1-D, non-empty, finite. Returns float64."""
    arr = to_numpy(x, name)
    if arr.dtype.kind not in "biuf":
        raise ValueError(f"{name} must hold real numbers, got an array of dtype {arr.dtype}")
    if arr.ndim != 1:
        raise ValueError(
            f"{name} must be 1-D (one score per sample), got shape {tuple(arr.shape)}; "
            "flatten it first (e.g. scores.reshape(-1)) if that is what you mean"
        )
    if arr.size == 0:
        raise ValueError(f"{name} is empty; every metric needs at least one ID and one OOD score")
    arr = arr.astype(np.float64, copy=False)
    finite = np.isfinite(arr)
    if not finite.all():
        bad = int(arr.size - np.count_nonzero(finite))
        raise ValueError(f"{name} contains {bad} NaN/Inf value(s) out of {arr.size}; clean the scores first")
    return arr


def _pair(scores_id, scores_ood) -> tuple[np.ndarray, np.ndarray]:
    return _as_scores(scores_id, "scores_id"), _as_scores(scores_ood, "scores_ood")


def _check_tpr(tpr) -> float:
    tpr = float(tpr)
    if not (0.0 < tpr <= 1.0):
        raise ValueError(f"tpr must be in (0, 1] (a fraction, e.g. 0.95, not a percentage), got {tpr}")
    return tpr


# ----------------------------------------------------------------------------------------------------------------
# public metrics
# ----------------------------------------------------------------------------------------------------------------


def auroc(scores_id, scores_ood) -> float:
    """Area under the ROC curve, OOD as the positive class, higher score = more OOD.

    Equals the probability that a random OOD sample scores above a random ID sample, ties counting ½
    (the Mann–Whitney U statistic / (n_id · n_ood)); identical to ``sklearn.metrics.roc_auc_score(y, s)`` with
    y = 1 for OOD. 0.5 is chance, 1 is perfect separation, 0 is perfectly inverted.

    Args:
        scores_id: (n_id,) scores of in-distribution samples (numpy, list or torch; finite, non-empty).
        scores_ood: (n_ood,) scores of out-of-distribution samples.
    """
    return auc_from_counts(*ood_curve(*_pair(scores_id, scores_ood)))


def aupr_out(scores_id, scores_ood) -> float:
    """Area under the precision–recall curve with **OOD as the positive class**, as **average precision**.

    ``AP = Σ_n (R_n − R_{n−1}) P_n`` over the distinct score thresholds (highest first), identical to
    ``sklearn.metrics.average_precision_score(y, s)`` with y = 1 for OOD. Not the trapezoidal
    ``auc(recall, precision)`` of OpenOOD / pytorch-ood (see the module docstring). Chance level is
    n_ood / (n_id + n_ood).
    """
    return ap_from_counts(*ood_curve(*_pair(scores_id, scores_ood)))


def aupr_in(scores_id, scores_ood) -> float:
    """Area under the precision–recall curve with **ID as the positive class**, as **average precision**.

    The scores are negated (higher ``-score`` = more ID) and ID is labelled 1: identical to
    ``sklearn.metrics.average_precision_score(1 - y, -s)``. Chance level is n_id / (n_id + n_ood).
    """
    return ap_from_counts(*flip(*ood_curve(*_pair(scores_id, scores_ood))))


def fpr_at_tpr(
    scores_id, scores_ood, tpr: float = 0.95, *, positive: Literal["ood", "id"] = "ood"
) -> float:
    """False-positive rate at the operating point that keeps at least ``tpr`` of the positive class.

    ``positive="ood"`` (pytorch-ood's ``FPR95TPR``; OpenOOD's FPR@95 since Aug. 2023): an image is flagged OOD when
    ``score >= t``. ``t`` is the **highest** threshold that still flags at least ``tpr`` of the OOD samples,
    i.e. the k-th largest OOD score with ``k`` the smallest count such that ``k / n_ood >= tpr``. Returns the
    fraction of ID samples scored ``>= t`` (ID wrongly flagged).

    ``positive="id"`` (ODIN; OpenOOD before Aug. 2023, ``fpr_recall``): an image is kept as ID when
    ``score <= t``. ``t`` is the **lowest** threshold that still keeps at least ``tpr`` of the ID samples (the
    k-th smallest ID score, ``k / n_id >= tpr``). Returns the fraction of OOD samples scored ``<= t`` (OOD
    wrongly kept as ID).

    Equivalently, with sklearn (``y`` = 1 for the positive class, ``s`` the scores negated when ID is positive)::

        fpr, tpr_, _ = roc_curve(y, s, drop_intermediate=False)
        fpr[np.searchsorted(tpr_, tpr)]          # = fpr[np.argmax(tpr_ >= tpr)]

    Ties sit on the side of the positive class (all samples tied with ``t`` are on the flagged side). The two
    conventions are different numbers on the same scores (not 1 − each other): they read the ROC curve at
    TPR = 0.95 and at FPR = 0.05 of the swapped roles. Their population values coincide only for symmetric
    cases such as equal-variance Gaussians, and even then finite samples differ (500 N(0,1) ID vs 500 N(2,1) OOD,
    numpy seed 0: 0.324 OOD-positive vs 0.348 ID-positive); with ID ~ N(0,1) and OOD ~ N(2, 2²) the population
    values are 0.90 vs 0.43. sklearn's default ``drop_intermediate=True`` can skip the first point
    with TPR >= ``tpr`` when it lies on a straight run of tied scores, so OpenOOD's own code (which uses the
    default) can read a larger FPR than this on tied scores. pytorch-ood (torchmetrics' ``binary_roc``) agrees
    with this definition for scores in [0, 1]; torchmetrics passes scores outside [0, 1] through a sigmoid first,
    which in float32 merges scores above about 17 into ties.

    Args:
        scores_id, scores_ood: 1-D scores, higher = more OOD.
        tpr: the target true-positive rate, a fraction in (0, 1] (default 0.95).
        positive: which class is "positive" — ``"ood"`` or ``"id"``.
    """
    if positive not in ("ood", "id"):
        raise ValueError(f"positive must be 'ood' or 'id', got {positive!r}")
    tpr = _check_tpr(tpr)
    curve = ood_curve(*_pair(scores_id, scores_ood))
    return fpr_from_counts(*(curve if positive == "ood" else flip(*curve)), tpr)


def fpr_at_95_tpr_ood(scores_id, scores_ood) -> float:
    """FPR at 95% TPR with **OOD positive** (pytorch-ood ``FPR95TPR``): the fraction of ID samples scored at or
    above the highest threshold that still catches >= 95% of the OOD samples. See :func:`fpr_at_tpr`."""
    return fpr_at_tpr(scores_id, scores_ood, 0.95, positive="ood")


def fpr_at_95_tpr_id(scores_id, scores_ood) -> float:
    """FPR at 95% TPR with **ID positive** (ODIN; OpenOOD before Aug. 2023): the threshold keeps >= 95% of the ID
    samples (those scored at or below it); returns the fraction of OOD samples wrongly kept as ID. See
    :func:`fpr_at_tpr`."""
    return fpr_at_tpr(scores_id, scores_ood, 0.95, positive="id")


def ood_metrics(scores_id, scores_ood) -> dict:
    """All dataset-level metrics at once (inputs validated once), as plain Python numbers.

    Returns a dict with keys ``auroc``, ``aupr_in``, ``aupr_out`` (average precision), ``fpr95_ood_positive``
    (:func:`fpr_at_95_tpr_ood`), ``fpr95_id_positive`` (:func:`fpr_at_95_tpr_id`) — fractions in [0, 1] — and
    the sample counts ``n_id``, ``n_ood``. Higher score = more OOD.
    """
    s_id, s_ood = _pair(scores_id, scores_ood)
    out_curve = ood_curve(s_id, s_ood)  # one sort serves every metric
    in_curve = flip(*out_curve)
    return {
        "auroc": auc_from_counts(*out_curve),
        "aupr_in": ap_from_counts(*in_curve),
        "aupr_out": ap_from_counts(*out_curve),
        "fpr95_ood_positive": fpr_from_counts(*out_curve, 0.95),
        "fpr95_id_positive": fpr_from_counts(*in_curve, 0.95),
        "n_id": int(s_id.size),
        "n_ood": int(s_ood.size),
    }


def auroc_standard_error(auc: float, n_id: int, n_ood: int) -> float:
    """Standard error of an AUROC ``auc`` estimated from ``n_id`` and ``n_ood`` scores (Hanley & McNeil, Radiology
    1982): ``SE² = [A(1−A) + (n_ood−1)(Q1−A²) + (n_id−1)(Q2−A²)] / (n_id n_ood)``, ``Q1 = A/(2−A)``,
    ``Q2 = 2A²/(1+A)``. At ``A = 0.5`` it equals the exact null variance ``(n_id + n_ood + 1) / (12 n_id n_ood)``
    of the Mann–Whitney statistic. Use it to read small-sample AUROCs: 24 + 24 images give ±0.08 around 0.5."""
    if not 0 <= auc <= 1:
        raise ValueError(f"auc must be in [0, 1], got {auc}")
    if n_id < 1 or n_ood < 1:
        raise ValueError(f"need at least one score per class, got n_id={n_id}, n_ood={n_ood}")
    q1, q2 = auc / (2 - auc), 2 * auc**2 / (1 + auc)
    var = (auc * (1 - auc) + (n_ood - 1) * (q1 - auc**2) + (n_id - 1) * (q2 - auc**2)) / (n_id * n_ood)
    return math.sqrt(max(var, 0.0))


def paired_rate(scores_without, scores_with) -> tuple[float, float]:
    """The paired statistic: the fraction of pairs ``i`` (the same image without and with the shift: same anatomy,
    noise draw and seeds) where the shift raises the score, ``scores_with[i] > scores_without[i]``, and its binomial
    standard error ``sqrt(p(1−p)/n)``. Far less noisy than the AUROC at small n, since the anatomy is held fixed."""
    a, b = _as_scores(scores_without, "scores_without"), _as_scores(scores_with, "scores_with")
    if a.shape != b.shape:
        raise ValueError(f"paired scores need one score per pair in each, got {a.size} and {b.size}")
    rate = float(np.mean(b > a))
    return rate, math.sqrt(max(rate * (1 - rate), 1e-12) / a.size)


def roc_curve(scores_id, scores_ood, *, drop_intermediate: bool = False):
    """The ROC curve, OOD positive, for plotting: ``(fpr, tpr, thresholds)``, float64 numpy arrays.

    ``thresholds`` are the distinct scores in decreasing order preceded by ``+inf``; ``fpr[i]`` / ``tpr[i]`` are
    the fractions of ID / OOD samples scored ``>= thresholds[i]`` (so the curve starts at (0, 0) and ends at
    (1, 1)). Identical to ``sklearn.metrics.roc_curve(y, s, drop_intermediate=drop_intermediate)`` with y = 1 for
    OOD, including sklearn's rule for dropping collinear points when ``drop_intermediate=True``.
    """
    s_id, s_ood = _pair(scores_id, scores_ood)
    thr, tps, fps = count_curve(*labelled(s_ood, s_id))
    if drop_intermediate and tps.size > 2:
        keep = np.r_[True, np.logical_or(np.diff(fps, 2), np.diff(tps, 2)), True]
        thr, tps, fps = thr[keep], tps[keep], fps[keep]
    fpr = np.r_[0, fps] / s_id.size
    tpr = np.r_[0, tps] / s_ood.size
    return fpr.astype(np.float64), tpr.astype(np.float64), np.r_[np.inf, thr]
