"""Multiscale KLIP: KLIP's block energy in every time window of the schedule, each standardised on
in-distribution data, summed.

KLIP (:mod:`priorshift.detectors.klip`) scores one window ``[t0, t1]`` of the reverse process. Which window
carries a shift depends on the shift's scale — a fine-texture change shows late (small σ), a change of object
class in the middle, a gross one everywhere — and a window chosen on one tuning shift transfers poorly to another
(``benchmarks/results/klip-detects*``). As in multiscale score matching (Mahmood, Oliva & Styner, "Multiscale Score Matching for
Out-of-Distribution Detection", ICLR 2021: score norms at several noise levels, an auxiliary density fitted on ID
data), this detector keeps every scale and lets in-distribution data alone say what is typical at each.

With the schedule's steps cut into ``W`` consecutive windows ``w``, and ``map_w`` KLIP's block map over window
``w`` (mean over its steps of the per-block likelihood energy, :func:`~priorshift.detectors.klip.aggregate_step_maps`):

    f_w(y) = log max_i map_w[i]                                  (KLIP's image score in window w, in log)
    fit:     μ_w, s_w = mean and standard deviation of f_w over in-distribution measurements
    score:   Σ_w (f_w(y) − μ_w) / s_w

One-sided by construction: a higher likelihood energy than in-distribution data at any scale raises the score
(the likelihood step pulls harder towards y than the prior expects). The log makes the per-window energies,
heavy-tailed over images, close to Gaussian, so that the ID z-scores are on one scale. The map is the same
standardisation per block, ``Σ_w (log map_w[i] − μ_w) / s_w`` (B, H/block, W/block), for localization; the
image score is the image-level sum above, not the map's max.

One sampler run per image serves every window (sampling stops at the last window's end). NFE as KLIP's.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import torch
from torch import Tensor

from priorshift._checks import check_int
from priorshift.detectors.base import Detector, score_batches
from priorshift.detectors.klip import KLIP, aggregate_step_maps, window_steps
from priorshift.registry import register
from priorshift.samplers.plan import SamplingPlan
from priorshift.types import Scores

__all__ = ["KLIPMultiscale", "equal_windows", "window_features", "fit_windows", "window_zscores", "DEFAULT_WINDOWS", "DEFAULT_BLOCK"]

DEFAULT_WINDOWS = 5  # equal fifths of the schedule
DEFAULT_BLOCK = 8  # KLIP's default block


def equal_windows(n: int) -> tuple[tuple[float, float], ...]:
    """``n`` consecutive windows of equal width covering the whole schedule: ``((0, 1/n), ..., ((n-1)/n, 1))``."""
    if int(n) != n or n < 1:
        raise ValueError(f"windows must be an integer >= 1 (equal windows over the schedule) or a list of (a, b); got {n!r}")
    n = int(n)
    return tuple((k / n, (k + 1) / n) for k in range(n))


def window_features(step_maps: Tensor, windows, n_steps: int, pool: int = 1) -> tuple[Tensor, Tensor]:
    """Per-window KLIP maps and features from per-step block maps (B, T_run, h, w) of an ``n_steps`` schedule.

    Returns ``(log_maps, features)``: ``log_maps`` (B, W, h', w') = log of each window's map, blocks pooled
    ``pool × pool`` (:func:`aggregate_step_maps`), and ``features`` (B, W) = log of each window's max over blocks."""
    maps = []
    for w in windows:
        k0, k1 = window_steps(w, n_steps)
        maps.append(aggregate_step_maps(step_maps, (k0, k1), pool=pool))
    m = torch.stack(maps, 1)
    tiny = torch.finfo(m.dtype).tiny
    log_maps = m.clamp_min(tiny).log()
    features = m.flatten(2).max(2).values.clamp_min(tiny).log()  # KLIP's image score (max over blocks) per window
    return log_maps, features


def fit_windows(features: Tensor, min_std: float) -> tuple[Tensor, Tensor]:
    """The in-distribution statistics ``(μ_w, s_w)``, each (W,), of calibration features (N, W): the mean and the
    (unbiased) standard deviation over the N images, the latter floored at ``min_std``."""
    return features.mean(0), features.std(0, unbiased=True).clamp_min(min_std)


def window_zscores(log_maps: Tensor, features: Tensor, mean: Tensor, std: Tensor) -> tuple[Tensor, Tensor]:
    """The z-scores ``(f_w − μ_w) / s_w`` (B, W) of features (B, W) and the block map ``Σ_w (log map_w − μ_w) / s_w``
    (B, h, w) of log maps (B, W, h, w); the image score is ``z.sum(1)``."""
    z = (features - mean) / std
    block_map = ((log_maps - mean.reshape(1, -1, 1, 1)) / std.reshape(1, -1, 1, 1)).sum(1)
    return z, block_map


@register("detector", "klip-multiscale")
class KLIPMultiscale(Detector):
    """``KLIPMultiscale(prior, operator).fit(y_id).score(y)`` → :class:`priorshift.types.Scores`.

    Args:
        prior, operator, plan, block, samples, normalization, sigma_power, reduction, stage: as
            :class:`~priorshift.detectors.KLIP` (the same defaults: ΠGDM without the Jacobian, 100 steps, 8-px
            blocks, S = 4).
        windows: an integer ``W`` (default 5: equal fifths of the schedule, :func:`equal_windows`) or a sequence of
            ``(a, b)`` windows as KLIP's ``window`` (fractions of the steps from the noisy end).
        min_std: floor on each window's fitted standard deviation ``s_w``, in log energy (a window where the
            calibration images agree exactly would otherwise divide by ~0).
        fit_batch_size: calibration images per sampler call in ``fit`` (the result does not depend on it).
        progress: a progress bar over the sampling steps.

    ``fit`` needs in-distribution measurements from the same operator (at least 2; a few dozen for stable
    ``s_w``). Fitted state: ``mean_`` and ``std_`` (W,), ``n_fit_``.
    """

    input_kind = "measurements"
    samples_posterior = True
    needs_fit = True

    def __init__(
        self,
        prior,
        operator,
        *,
        windows: int | tuple = DEFAULT_WINDOWS,
        plan: SamplingPlan | Mapping[str, Any] | None = None,
        block: int = DEFAULT_BLOCK,
        samples: int = 4,
        normalization: str = "g",
        sigma_power: float = 0.5,
        reduction: str = "mean_of_squares",
        stage: str | None = None,
        min_std: float = 1e-3,
        fit_batch_size: int = 32,
        progress: bool = False,
    ):
        # One KLIP run over the whole span of the windows, every step's map kept: it validates the shared arguments.
        self._klip = KLIP(prior, operator, plan=plan, block=block, samples=samples, variant="spatial_only", normalization=normalization,
                          sigma_power=sigma_power, reduction=reduction, stage=stage, keep_step_maps=True, progress=progress)
        self.prior, self.operator = prior, operator
        self.n_steps = self._klip.sigmas.numel() - 1
        if isinstance(windows, (int, float)) and not isinstance(windows, bool):
            windows = equal_windows(windows)
        try:
            windows = tuple((float(a), float(b)) for a, b in windows)
        except (TypeError, ValueError):
            raise ValueError(f"windows must be an integer >= 1 or a sequence of (a, b) fractions of the steps; got {windows!r}") from None
        if not windows:
            raise ValueError("windows is empty: give at least one window")
        for w in windows:
            window_steps(w, self.n_steps)  # a clear error for a window that is malformed or selects no step
        self.windows = windows
        if not (math.isfinite(float(min_std)) and min_std > 0):
            raise ValueError(f"min_std must be a finite number > 0, got {min_std!r}")
        self.min_std = float(min_std)
        self.fit_batch_size = check_int(fit_batch_size, "fit_batch_size")
        if self.last_step < self.n_steps:  # sampling stops at the latest window's end
            self._klip = self._klip_until(self.last_step)
        self.block = self._klip.block
        self.samples = self._klip.samples
        self.plan = self._klip.plan

    @classmethod
    def example(cls) -> "KLIPMultiscale":
        """On KLIP's example (8×8 Gaussian prior, 50% inpainting, 30 steps, 4-px blocks, S = 2), three windows."""
        k = KLIP.example()
        return cls(k.prior, k.operator, windows=3, plan=k.plan, block=k.block, samples=k.samples)

    @property
    def last_step(self) -> int:
        """Sampling stops here: the end of the latest window."""
        return max(window_steps(w, self.n_steps)[1] for w in self.windows)

    def _features(self, y: Tensor, seed, hooks, batch_size: int | None = None) -> tuple[Tensor, Tensor, Scores]:
        s = self._klip.score(y, seed=seed, hooks=hooks) if batch_size is None else score_batches(self._klip, y, batch_size=batch_size, seed=seed, hooks=hooks)
        log_maps, features = window_features(s.extras["step_maps"], self.windows, self.n_steps)
        return log_maps, features, s

    def _klip_until(self, k1: int) -> KLIP:
        # The window [0, k1) of variant "klip": the same trajectory as the full run, stopped at step k1.
        k = self._klip
        return KLIP(self.prior, self.operator, plan=k.plan, block=k.block, samples=k.samples, window=(0.0, k1 / self.n_steps),
                    normalization=k.normalization, sigma_power=k.sigma_power, reduction=k.reduction, stage=k.stage, keep_step_maps=True,
                    progress=k.progress)

    def _fit(self, y: Tensor, *, seed) -> None:
        _, f, _ = self._features(y, seed, (), batch_size=self.fit_batch_size)
        self.mean_, self.std_ = fit_windows(f, self.min_std)
        self.n_fit_ = int(y.shape[0])

    def _score(self, y: Tensor, *, seed, hooks: tuple) -> Scores:
        """``score`` (B,) = Σ_w z_w; ``map`` (B, H/block, W/block) = the per-block sum; extras ``features`` (B, W) log
        window energies, ``z`` (B, W) their ID z-scores, ``windows``, and KLIP's ``kl_nats``, ``reconstruction``."""
        log_maps, f, s = self._features(y, seed, hooks)
        z, block_map = window_zscores(log_maps, f, self.mean_.to(f), self.std_.to(f))
        return Scores(score=z.sum(1), map=block_map, nfe=s.nfe,
                      extras={"features": f, "z": z, "windows": self.windows, "kl_nats": s.extras["kl_nats"],
                              "reconstruction": s.extras["reconstruction"], "block": self.block, "nfe_per_image": s.extras["nfe_per_image"]})

    def config(self) -> dict[str, Any]:
        k = self._klip.config()
        for key in ("detector", "window", "window_sigma", "variant", "score", "spread_floor"):
            k.pop(key, None)
        return {"detector": "klip-multiscale", "windows": [list(w) for w in self.windows], "min_std": self.min_std,
                "fit_batch_size": self.fit_batch_size, **k}

    def __repr__(self) -> str:
        return f"KLIPMultiscale(windows={len(self.windows)}, sampler={self.plan.sampler!r}, steps={self.plan.steps}, block={self.block}, samples={self.samples})"
