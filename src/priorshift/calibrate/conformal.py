"""Conformal p-values: from a detector's scores to decisions with a stated false-alarm rate.

A detector's score says *how* shifted an item looks; a user needs *whether* to act on it, with a known error
rate. With ``n`` in-distribution calibration scores ``c_1..c_n`` that are exchangeable with an in-distribution
test item's score ``s`` (same data distribution, independent randomness, a detector fitted on other data), the
marginal conformal p-value (Bates, Candès, Lei, Romano & Sesia, "Testing for outliers with conformal p-values",
Ann. Statist. 2023)

    p(s) = (1 + #{i : c_i ≥ s}) / (n + 1)

satisfies ``P(p ≤ α) ≤ α`` for every α, over the draw of the calibration set and the item; ties count against the
item (``≥``), so ties only make it conservative. The smallest value it can take is ``1 / (n + 1)``: with
``n < 1/α − 1`` calibration items nothing can be flagged at level α. Flagging ``p ≤ α`` keeps the false-alarm
rate ≤ α per item (``method="marginal"``). Over a batch, Benjamini–Hochberg on these p-values
(``method="bh"``, :func:`scipy.stats.false_discovery_control`) keeps the expected fraction of in-distribution
items among the flagged ones ≤ α: conformal p-values that share a calibration set are PRDS (Bates et al.,
Theorem 2.4), the condition BH needs.

Maps (:func:`block_pvalues`): family-wise over the blocks of an image, by the max-statistic (Westfall & Young's
single-step max-T). Each block of a test map is compared with the *maximum over blocks* of every calibration
map, ``p_ij = (1 + #{k : max(cal_k) ≥ m_ij}) / (n + 1)``. Guarantee: for an in-distribution image
(exchangeable with the calibration images), the probability that *any* of its blocks has ``p_ij ≤ α`` is ≤ α —
it is the event that the image's max-over-blocks p-value is ≤ α. This is family-wise error control over the
blocks under the global null (the image is in-distribution). For an image with a local shift, the blocks
outside the shift are flagged with probability ≤ α only if the map there is distributed as on in-distribution
images (subset pivotality); a sampler-based map (KLIP's) is not local in general, so that part is not
guaranteed. The map values are compared raw: a per-block standardisation must be fitted on data disjoint from
the calibration set (multiscale KLIP's map is standardised on its fit split).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from priorshift.detectors.base import resolve_seeds, score_batches
from priorshift.types import Scores

__all__ = ["Conformal", "Decision", "conformal_pvalues", "full_conformal_pvalues", "block_pvalues", "flag_pvalues", "METHODS"]

METHODS = ("marginal", "bh")


def _scores_1d(scores, name: str) -> Tensor:
    t = torch.as_tensor(scores).detach().to("cpu", torch.float64).reshape(-1)
    if bool(torch.isnan(t).any()):
        raise ValueError(f"{name} hold NaN; a p-value needs a score for every item")
    return t


def conformal_pvalues(calibration_scores, scores) -> Tensor:
    """``(1 + #{c_i ≥ s}) / (n + 1)`` for every score ``s``: (N,) float64 in ``[1/(n+1), 1]``.

    ``calibration_scores``: (n,) in-distribution scores (higher = more shifted), n ≥ 1; ``scores``: (N,) or any
    shape (flattened). ±inf are allowed; NaN is refused."""
    cal = _scores_1d(calibration_scores, "calibration scores")
    if cal.numel() == 0:
        raise ValueError("no calibration scores: conformal p-values need at least 1 (and 1/alpha - 1 to flag at level alpha)")
    s = _scores_1d(scores, "scores")
    cal = cal.sort().values
    at_least = cal.numel() - torch.searchsorted(cal, s, right=False)  # #{c_i ≥ s}: ties count against the item
    return (1.0 + at_least.to(torch.float64)) / (cal.numel() + 1.0)


def full_conformal_pvalues(calibration: Tensor, data: Tensor, fit_score) -> Tensor:
    """Full conformal p-values (Vovk, Gammerman & Shafer 2005): for each item ``x`` of ``data`` (N, ...),
    ``fit_score`` fits on the ``n + 1`` rows ``calibration ∪ {x}`` and scores all of them, and ``x``'s score is ranked
    among them as in :func:`conformal_pvalues`. (N,) float64.

    For small calibration sets and cheap fits: every calibration item both fits and calibrates, where the split of
    :class:`Conformal` would halve n. Valid (``P(p ≤ α) ≤ α``) when ``fit_score`` treats its rows symmetrically
    (a fit that is a function of the set of rows, e.g. standardisation statistics); ``fit_score(rows (m, ...)) → (m,)``.
    """
    n = int(calibration.shape[0])
    if n == 0:
        raise ValueError("no calibration items")
    out = []
    for i in range(int(data.shape[0])):
        s = _scores_1d(fit_score(torch.cat([calibration, data[i : i + 1].to(calibration)])), "fit_score's scores")
        if s.numel() != n + 1:
            raise ValueError(f"fit_score must return one score per row ({n + 1}), got {s.numel()}")
        out.append((1.0 + float((s[:n] >= s[n]).sum())) / (n + 1.0))
    return torch.tensor(out, dtype=torch.float64)


def block_pvalues(calibration_maps, maps) -> Tensor:
    """Family-wise block p-values by the max-statistic (module docstring): each block of ``maps`` (N, h, w)
    against the max over blocks of each calibration map (n, h', w'); (N, h, w) float64. For an
    in-distribution image, ``P(min over its blocks ≤ α) ≤ α``."""
    cal = torch.as_tensor(calibration_maps).detach().to("cpu", torch.float64)
    m = torch.as_tensor(maps).detach().to("cpu", torch.float64)
    if cal.ndim < 2 or m.ndim < 2:
        raise ValueError(f"block p-values need maps (n, h, w); got calibration {tuple(cal.shape)} and maps {tuple(m.shape)}")
    if tuple(cal.shape[1:]) != tuple(m.shape[1:]):
        raise ValueError(f"calibration maps are {tuple(cal.shape[1:])} blocks, the maps {tuple(m.shape[1:])}: score both with one detector")
    return conformal_pvalues(cal.flatten(1).amax(1), m).reshape(m.shape)


def flag_pvalues(pvalues, alpha: float, method: str = "marginal") -> Tensor:
    """Flags (bool, the shape of ``pvalues``): ``p ≤ alpha`` (``"marginal"``: false-alarm rate ≤ alpha per item) or
    Benjamini–Hochberg at level ``alpha`` over all of them (``"bh"``: false-discovery rate ≤ alpha, by
    :func:`scipy.stats.false_discovery_control`)."""
    alpha = _check_alpha(alpha)
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    p = torch.as_tensor(pvalues).detach().to("cpu", torch.float64)
    if p.numel() == 0:
        return torch.zeros(p.shape, dtype=torch.bool)
    if method == "marginal":
        return p <= alpha
    from scipy.stats import false_discovery_control

    adjusted = false_discovery_control(p.reshape(-1).numpy(), method="bh")
    return torch.from_numpy(np.asarray(adjusted) <= alpha).reshape(p.shape)


def _check_alpha(alpha) -> float:
    try:
        a = float(alpha)
    except (TypeError, ValueError):
        raise ValueError(f"alpha must be a number in (0, 1), got {alpha!r}") from None
    if not 0.0 < a < 1.0:
        raise ValueError(f"alpha must be in (0, 1) (the false-alarm rate to allow), got {alpha!r}")
    return a


@dataclass(frozen=True)
class Decision:
    """A batch's decisions. ``score``, ``pvalue`` (N,) float64, ``flagged`` (N,) bool at ``alpha`` by ``method``;
    ``block_pvalue`` / ``block_flagged`` (N, h, w) for detectors with a map (family-wise over each image's blocks
    at ``alpha``), else None; ``n_calibration`` and ``min_pvalue`` = 1/(n+1), the smallest p-value it allows;
    ``scores``: the detector's :class:`~priorshift.types.Scores` (None when given scores)."""

    score: Tensor
    pvalue: Tensor
    flagged: Tensor
    alpha: float
    method: str
    n_calibration: int
    min_pvalue: float
    block_pvalue: Tensor | None = None
    block_flagged: Tensor | None = None
    scores: Scores | None = None

    def summary(self) -> str:
        n = self.flagged.numel()
        return (f"{int(self.flagged.sum())} of {n} flagged at alpha = {self.alpha:g} ({self.method}); calibration n = {self.n_calibration}, "
                f"smallest attainable p-value {self.min_pvalue:.3g}")


class Conformal:
    """``Conformal(detector).fit(calibration).pvalues(data)``: conformal p-values and flags for any detector.

    Args:
        detector: a detector (:mod:`priorshift.detectors`); higher score = more shifted.
        fit_size: for a detector that ``needs_fit`` and is not fitted yet, how many of the calibration items
            fit it — the first ``fit_size`` (an int ≥ 2) or that fraction (a float in (0, 1); default 0.5); the
            rest calibrate. Fitting and calibrating on the same items would break exchangeability with new
            items. A detector that arrives fitted (on other data) is only calibrated, on all the items.
        batch_size: items per detector call (the scores do not depend on it).

    Randomness: item ``i`` of ``fit(calibration, seed=s)`` uses seed ``s + i`` (default ``s = 1_000_000``),
    item ``j`` of ``pvalues(data, seed=t)`` seed ``t + j`` (default 0). A stochastic detector scoring new items
    with a calibration item's seed would couple their noise, so that is refused.

    Fitted state: ``calibration_scores_`` (n,), ``calibration_maps_`` (n, h, w) or None, ``n_`` (= n),
    ``n_fit_`` (items used to fit the detector; 0 if it was not fitted here). ``min_pvalue`` = 1/(n+1).
    :meth:`from_scores` builds one from calibration scores computed elsewhere (cached, or from another pass).
    """

    def __init__(self, detector=None, *, fit_size: int | float = 0.5, batch_size: int = 16):
        if isinstance(fit_size, bool) or not isinstance(fit_size, (int, float)):
            raise ValueError(f"fit_size must be an int >= 2 or a fraction in (0, 1), got {fit_size!r}")
        if isinstance(fit_size, float) and not 0.0 < fit_size < 1.0:
            raise ValueError(f"fit_size as a fraction must be in (0, 1), got {fit_size}")
        if isinstance(fit_size, int) and fit_size < 2:
            raise ValueError(f"fit_size as a count must be >= 2 (a detector fits on at least 2 items), got {fit_size}")
        if int(batch_size) != batch_size or batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1, got {batch_size}")
        self.detector, self.fit_size, self.batch_size = detector, fit_size, int(batch_size)
        self._calibration_seeds: set[int] = set()

    @classmethod
    def from_scores(cls, calibration_scores, calibration_maps=None) -> "Conformal":
        """A calibrated instance from in-distribution scores (n,) (and maps (n, h, w)) computed elsewhere; its
        :meth:`pvalues_of` / :meth:`decide_scores` work, :meth:`pvalues` (which scores data) needs a detector."""
        self = cls()
        self._set_calibration(calibration_scores, calibration_maps, n_fit=0)
        return self

    def _set_calibration(self, scores, maps, *, n_fit: int) -> None:
        s = _scores_1d(scores, "calibration scores")
        if s.numel() == 0:
            raise ValueError("no calibration scores")
        if maps is not None:
            maps = torch.as_tensor(maps).detach().to("cpu", torch.float64)
            if maps.shape[0] != s.numel() or maps.ndim != 3:
                raise ValueError(f"calibration maps must be (n, h, w) with n = {s.numel()}, got {tuple(maps.shape)}")
        self.calibration_scores_, self.calibration_maps_, self.n_, self.n_fit_ = s, maps, int(s.numel()), int(n_fit)

    # -- calibration -------------------------------------------------------------------------------
    def fit(self, calibration: Tensor, *, seed: int = 1_000_000) -> "Conformal":
        """Score in-distribution ``calibration`` data (N, ...) of the detector's input kind; fit the detector first
        on its first ``fit_size`` items if it needs fitting and is not fitted."""
        det = self._need_detector("fit")
        n_total = int(calibration.shape[0])
        seeds = resolve_seeds(seed, n_total)
        k = 0
        if det.needs_fit and not det.is_fitted():
            k = self.fit_size if isinstance(self.fit_size, int) else int(round(self.fit_size * n_total))
            if k < 2 or n_total - k < 1:
                raise ValueError(f"{type(det).__name__} needs fitting: {n_total} calibration items cannot be split into >= 2 to fit it "
                                 f"(fit_size={self.fit_size!r} gives {k}) and >= 1 to calibrate; give more, or a fitted detector")
            det.fit(calibration[:k], seed=seeds[:k])
        s = score_batches(det, calibration[k:], batch_size=self.batch_size, seed=seeds[k:])
        self._set_calibration(s.score, s.map, n_fit=k)
        self._calibration_seeds = set(seeds)
        return self

    @property
    def min_pvalue(self) -> float:
        """1 / (n + 1): the smallest p-value the calibration set allows."""
        self._need_fitted()
        return 1.0 / (self.n_ + 1)

    # -- p-values and flags ------------------------------------------------------------------------
    def pvalues(self, data: Tensor, *, seed=0) -> Tensor:
        """The conformal p-value of every item of ``data``: (N,) float64 in [1/(n+1), 1]."""
        return self.decide(data, seed=seed).pvalue

    def flag(self, data: Tensor, *, alpha: float = 0.05, method: str = "marginal", seed=0) -> Tensor:
        """Flags (N,) bool: ``p ≤ alpha`` (``"marginal"``) or Benjamini–Hochberg at ``alpha`` over the batch (``"bh"``)."""
        return self.decide(data, alpha=alpha, method=method, seed=seed).flagged

    def decide(self, data: Tensor, *, alpha: float = 0.05, method: str = "marginal", seed=0) -> Decision:
        """Score ``data`` once and return every decision (:class:`Decision`)."""
        det = self._need_detector("score")
        self._need_fitted()
        seeds = resolve_seeds(seed, int(data.shape[0]))
        if getattr(det, "stochastic", True) and self._calibration_seeds.intersection(seeds):
            raise ValueError(f"seed {seed!r} reuses seeds of the calibration items (from {min(self._calibration_seeds)}): a stochastic "
                             "detector would score them with the same noise; use another seed")
        s = score_batches(det, data, batch_size=self.batch_size, seed=seeds)
        return self.decide_scores(s.score, s.map, alpha=alpha, method=method, scores=s)

    def pvalues_of(self, scores) -> Tensor:
        """p-values of scores (N,) computed elsewhere with the same detector and settings."""
        self._need_fitted()
        return conformal_pvalues(self.calibration_scores_, scores)

    def decide_scores(self, score, maps=None, *, alpha: float = 0.05, method: str = "marginal", scores: Scores | None = None) -> Decision:
        """:meth:`decide` for scores (N,) (and maps (N, h, w)) computed elsewhere."""
        self._need_fitted()
        p = self.pvalues_of(score)
        flags = flag_pvalues(p, alpha, method)
        bp = bf = None
        if maps is not None and self.calibration_maps_ is not None:
            bp = block_pvalues(self.calibration_maps_, maps)
            bf = flag_pvalues(bp, alpha, "marginal")  # family-wise over each image's blocks by the max-statistic
        return Decision(score=_scores_1d(score, "scores"), pvalue=p, flagged=flags, alpha=float(alpha), method=method, n_calibration=self.n_,
                        min_pvalue=1.0 / (self.n_ + 1), block_pvalue=bp, block_flagged=bf, scores=scores)

    # -- helpers -----------------------------------------------------------------------------------
    def _need_detector(self, what: str):
        if self.detector is None:
            raise ValueError(f"this Conformal was built from scores; it has no detector to {what} data with (use pvalues_of / decide_scores)")
        return self.detector

    def _need_fitted(self) -> None:
        if not hasattr(self, "calibration_scores_"):
            raise ValueError("this Conformal is not calibrated yet: call .fit(in_distribution_data) first")

    def config(self) -> dict[str, Any]:
        return {"n_calibration": getattr(self, "n_", None), "n_fit": getattr(self, "n_fit_", None), "fit_size": self.fit_size,
                "min_pvalue": None if not hasattr(self, "n_") else 1.0 / (self.n_ + 1),
                "detector": None if self.detector is None else getattr(self.detector, "config", lambda: repr(self.detector))()}

    def __repr__(self) -> str:
        n = getattr(self, "n_", None)
        return f"Conformal({self.detector!r}, n_calibration={n})"
