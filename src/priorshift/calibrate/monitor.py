"""Drift in a stream: conformal test martingales over a detector's scores, with an alarm whose false-alarm
probability over the *whole* stream is at most α.

Online conformal p-values (Vovk, Gammerman & Shafer, *Algorithmic Learning in a Random World*, 2nd ed. 2022,
ch. 8–9). The calibration scores ``c_1..c_n`` come first in the sequence, the stream's scores ``s_1, s_2, ...``
follow; item ``t``'s smoothed p-value ranks it among everything seen so far, itself included:

    p_t = (#{j : z_j > s_t} + θ_t · #{j : z_j = s_t}) / (n + t),     z over c_1..c_n, s_1..s_t,   θ_t ~ U(0, 1)

If the calibration items and the stream are exchangeable (no drift), ``p_1, p_2, ...`` are independent and
uniform on (0, 1). (p-values against the fixed calibration set alone are uniform too, but they are dependent
through it, so a product of bets on them is not a martingale; the growing bag keeps them independent.)

A conformal test martingale bets on them: ``M_t = Π_{u ≤ t} f_u(p_u)`` with betting functions ``f ≥ 0``,
``∫_0^1 f = 1`` chosen from the past. Under exchangeability ``M`` is a nonnegative martingale with ``M_0 = 1``,
so by Ville's inequality ``P(sup_t M_t ≥ 1/α) ≤ α``: an alarm when ``M_t`` first reaches ``1/α`` is false with
probability at most α, however long the stream runs.

Betting: the *Simple Jumper* (Vovk, Petej, Nouretdinov, Ahlberg, Carlsson & Gammerman, "Retrain or not retrain:
conformal test martingales for change-point detection", COPA 2021): three bets ``f_ε(p) = 1 + ε(p − ½)``,
ε ∈ {−1, 0, 1}, with capital moved between them at rate ``J`` every step, so it recovers from a long quiet
period — wealth left in the neutral bet is ready to grow when the change comes. After a shift to higher
scores, p-values pile up near 0 and the ε = −1 bet multiplies its capital by up to 1.5 per item: at least
``⌈ln(1/α) / ln 1.5⌉`` items (8 at α = 0.05) are needed to alarm.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass

import torch
from torch import Tensor

from priorshift.calibrate.conformal import _check_alpha, _scores_1d, conformal_pvalues

__all__ = ["online_pvalues", "simple_jumper", "alarm_index", "monitor", "MonitorResult"]


def online_pvalues(calibration_scores, stream_scores, *, seed: int = 0) -> Tensor:
    """Smoothed online conformal p-values (module docstring) of the stream's scores (T,) after the calibration
    scores (n,), n ≥ 0: (T,) float64 in (0, 1], independent and uniform when nothing drifts. Higher score = more
    shifted, so a shift to higher scores gives small p-values. ``seed`` draws the tie-breaking θ_t."""
    cal = _scores_1d(calibration_scores, "calibration scores").tolist()
    stream = _scores_1d(stream_scores, "stream scores").tolist()
    theta = torch.rand(len(stream), generator=torch.Generator().manual_seed(int(seed)), dtype=torch.float64).tolist()
    bag = sorted(cal)
    out = []
    for s, th in zip(stream, theta):
        bisect.insort(bag, s)
        lo, hi = bisect.bisect_left(bag, s), bisect.bisect_right(bag, s)
        out.append(((len(bag) - hi) + th * (hi - lo)) / len(bag))
    return torch.tensor(out, dtype=torch.float64)


def simple_jumper(pvalues, *, jump: float = 0.01) -> Tensor:
    """The Simple Jumper conformal test martingale over p-values (T,): its values ``M_1..M_T`` (T,) float64, ``M_0 = 1``.
    ``jump`` J ∈ (0, 1]: the share of capital spread evenly over the three bets before each step. Computed in log
    space (no overflow)."""
    if not 0.0 < float(jump) <= 1.0:
        raise ValueError(f"jump (the Simple Jumper's rate J) must be in (0, 1], got {jump!r}")
    p = _scores_1d(pvalues, "p-values")
    if bool(((p < 0) | (p > 1)).any()):
        raise ValueError("p-values must lie in [0, 1]")
    eps = (-1.0, 0.0, 1.0)
    log_c = [math.log(1.0 / 3.0)] * 3
    stay, move = math.log1p(-jump) if jump < 1 else -math.inf, math.log(jump / 3.0)
    out = []
    for pt in p.tolist():
        total = _logsumexp(log_c)
        log_c = [_logsumexp([stay + lc, move + total]) for lc in log_c]
        log_c = [lc + _log(1.0 + e * (pt - 0.5)) for lc, e in zip(log_c, eps)]
        out.append(_logsumexp(log_c))
    return torch.tensor(out, dtype=torch.float64).exp()


def _log(v: float) -> float:
    return math.log(v) if v > 0 else -math.inf


def _logsumexp(values) -> float:
    m = max(values)
    if m == -math.inf:
        return -math.inf
    return m + math.log(sum(math.exp(v - m) for v in values))


def alarm_index(martingale, alpha: float) -> int | None:
    """The first index t (0-based) with ``martingale[t] ≥ 1/alpha``, or None."""
    alpha = _check_alpha(alpha)
    m = torch.as_tensor(martingale)
    hit = torch.nonzero(m >= 1.0 / alpha)
    return int(hit[0, 0]) if hit.numel() else None


@dataclass(frozen=True)
class MonitorResult:
    """A monitored stream. ``scores`` (T,); ``pvalues`` (T,): each item's marginal conformal p-value against the
    calibration set (for per-item decisions, conservative); ``online_pvalues`` (T,): the smoothed online p-values
    the martingale bets on; ``martingale`` (T,); ``alarm``: the first index with ``martingale ≥ 1/alpha`` (None: no
    alarm); ``threshold`` = 1/alpha; ``n_calibration``."""

    scores: Tensor
    pvalues: Tensor
    online_pvalues: Tensor
    martingale: Tensor
    alarm: int | None
    alpha: float
    threshold: float
    n_calibration: int
    jump: float

    def summary(self) -> str:
        where = f"alarm at item {self.alarm}" if self.alarm is not None else "no alarm"
        return (f"{where} (martingale {float(self.martingale.max()):.3g} at most, threshold 1/alpha = {self.threshold:g}); "
                f"{self.scores.numel()} items, calibration n = {self.n_calibration}; P(false alarm over the stream) <= {self.alpha:g}")


def monitor(calibration_scores, stream_scores, *, alpha: float = 0.05, jump: float = 0.01, seed: int = 0) -> MonitorResult:
    """Monitor a stream of scores (T,) against in-distribution calibration scores (n,): online p-values, the Simple
    Jumper martingale and the first index where it reaches ``1/alpha`` (Ville: a false alarm has probability ≤ alpha
    when calibration and stream are exchangeable)."""
    alpha = _check_alpha(alpha)
    cal = _scores_1d(calibration_scores, "calibration scores")
    s = _scores_1d(stream_scores, "stream scores")
    if s.numel() == 0:
        raise ValueError("the stream is empty")
    if cal.numel() == 0:
        raise ValueError("no calibration scores")
    online = online_pvalues(cal, s, seed=seed)
    m = simple_jumper(online, jump=jump)
    return MonitorResult(scores=s, pvalues=conformal_pvalues(cal, s), online_pvalues=online, martingale=m, alarm=alarm_index(m, alpha),
                         alpha=alpha, threshold=1.0 / alpha, n_calibration=int(cal.numel()), jump=float(jump))
