"""The measurement baselines (``input_kind = "measurements"``, no network, ``nfe = 0``, deterministic):
``measurement-norm`` (``‖y‖² / m``) and ``residual`` (``‖y − A x̂(y)‖² / m``), standardised on ID measurements
in the log domain, both tails scored by a split normal (see :mod:`priorshift.detectors.baselines`)."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from priorshift._checks import check_int
from priorshift.detectors.base import Detector
from priorshift.detectors.baselines._common import fit_location_scale
from priorshift.operators.solvers import operator_norm2, tikhonov_reconstruction
from priorshift.registry import register
from priorshift.types import Scores

__all__ = ["MeasurementNorm", "Residual", "SIDES", "RECONSTRUCTIONS"]

SIDES = ("both", "upper")


# -- shared helpers ---------------------------------------------------------------------------------------
def _per_image_energy(t: Tensor) -> Tensor:
    """``‖t_b‖² / m`` per row (``|·|²`` for complex entries), float64: ``(B, ...) → (B,)``."""
    t = t.to(torch.complex128 if t.is_complex() else torch.float64)
    return t.abs().pow(2).flatten(1).mean(1)


def _check_side(side: str) -> str:
    if side not in SIDES:
        raise ValueError(f"unknown side {side!r}; choose one of {', '.join(SIDES)}")
    return side


# -- measurement statistics -------------------------------------------------------------------------------
class _StandardisedStatistic(Detector):
    """A per-measurement statistic ``t(y) > 0`` standardised on ID measurements (log domain by default)."""

    input_kind = "measurements"
    needs_fit = True
    stochastic = False
    statistic_name = "statistic"

    def __init__(self, prior, operator, *, side: str = "both", log: bool = True):
        if operator is None:
            raise ValueError(f"{type(self).__name__} scores measurements: it needs the operator that produced them")
        self.prior = prior
        self.operator = operator
        self.side = _check_side(side)
        self.log = bool(log)

    def statistic(self, y: Tensor) -> Tensor:  # pragma: no cover - abstract
        """The raw statistic, ``(B, ...) → (B,)`` float64."""
        raise NotImplementedError

    def _transform(self, t: Tensor) -> Tensor:
        return t.clamp_min(torch.finfo(torch.float64).tiny).log() if self.log else t

    def _fit(self, data: Tensor, *, seed) -> None:
        v = self._transform(self.statistic(data))
        self.mean_, self.std_ = fit_location_scale(v, f"the {self.statistic_name}")
        self.center_ = torch.quantile(v, 0.5)
        d = v - self.center_
        upper, lower = d[d > 0], d[d < 0]
        s_up = upper.pow(2).mean().sqrt() if upper.numel() else None
        s_lo = lower.pow(2).mean().sqrt() if lower.numel() else None
        self.scale_upper_ = s_up if s_up is not None else s_lo
        self.scale_lower_ = s_lo if s_lo is not None else s_up
        self.n_fit_ = int(data.shape[0])

    def standardise(self, t: Tensor) -> Tensor:
        """The signed split-normal z of a raw statistic ``t`` (B,): ``(v − center_) / scale_±``, ``v = ln t``."""
        d = self._transform(t) - self.center_
        return torch.where(d >= 0, d / self.scale_upper_, d / self.scale_lower_)

    def _score(self, data: Tensor, *, seed, hooks: tuple) -> Scores:
        t = self.statistic(data)
        z = self.standardise(t)
        score = z.abs() if self.side == "both" else z
        return Scores(score=score, map=None, nfe=0, extras={self.statistic_name: t, "z": z})

    def config(self) -> dict[str, Any]:
        return {**super().config(), "side": self.side, "log": self.log}


@register("detector", "measurement-norm")
class MeasurementNorm(_StandardisedStatistic):
    """``t(y) = ‖y‖² / m``: the mean of ``y²`` over a measurement's ``m`` entries, standardised on ID data.

    The cheapest possible baseline; it needs neither a prior nor a reconstruction. On ID data
    ``E t = (tr(A Σ Aᵀ) + ‖A μ‖²) / m + σ_y²`` for a prior with mean μ and covariance Σ.

    Args:
        prior: not used by the statistic (may be ``None``); held so that every measurement detector is built
            the same way, ``(prior, operator)``.
        operator: the forward model; only its ``check_y`` is used (input validation).
        side: ``"both"`` (default): score ``|z|``, a shift of scale either way is shifted; ``"upper"``: ``z``
            with the upper scale (the module docstring).
        log: standardise ``ln t`` (default) rather than ``t``.

    Fitted (float64 scalars, of ``ln t``, or of ``t`` with ``log=False``): ``center_`` (the median),
    ``scale_upper_``, ``scale_lower_`` (the split scales the score uses), ``mean_``, ``std_`` (the moments, for
    reports), ``n_fit_``.
    ``score(y)``: ``score`` (B,) ≥ 0 with ``side="both"``; extras ``statistic`` (B,) = ``t``, ``z`` (B,) the
    signed split z; ``nfe = 0``.
    """

    statistic_name = "statistic"

    def statistic(self, y: Tensor) -> Tensor:
        return _per_image_energy(y)

    @classmethod
    def example(cls) -> "MeasurementNorm":
        from priorshift.analytic import stationary_gaussian
        from priorshift.operators import Inpainting

        return cls(stationary_gaussian(8), Inpainting.example(image_size=8, noise_std=0.05))

    def __repr__(self) -> str:
        return f"MeasurementNorm(operator={self.operator!r}, side={self.side!r}, log={self.log})"


RECONSTRUCTIONS = ("auto", "pinv", "tikhonov")


@register("detector", "residual")
class Residual(_StandardisedStatistic):
    """``t(y) = ‖y − A x̂(y)‖² / m``: how far a classical reconstruction is from explaining its own data.

    ``reconstruction``:

    * ``"pinv"``: the operator's ``A_pinv`` (filtered back-projection for CT, a regularised inverse for blur).
      For operators whose pseudo-inverse is exact (``pinv_is_exact``: identity, inpainting, downsampling,
      MRI) ``A A⁺ y`` is the projection of ``y`` onto the range of ``A``, so the residual is the noise outside
      that range: identically 0 for square or full-row-rank ``A`` and information-free otherwise;
      :meth:`fit` refuses a residual that is identically zero.
    * ``"tikhonov"``: the smoothness-regularised least-squares reconstruction
      ``argmin ‖y − A x‖² + w ‖A‖₂² ‖∇x‖²`` (:func:`tikhonov_reconstruction`, ``w = tikhonov``; the weight is
      relative to ``‖A‖₂²``, estimated by power iteration in :meth:`fit`, so it means the same on every
      operator). Its residual is the part of ``y`` a smooth image cannot explain — the high-frequency energy
      of the observed data; it is the classical choice that stays informative for exact-pinv operators
      (a few CG iterations would not do: for masks CG converges in one iteration to the exact pinv).
    * ``"auto"`` (default): ``"tikhonov"`` where ``pinv_is_exact``, else ``"pinv"``.

    Other args as :class:`MeasurementNorm` (``side``, ``log``); ``n_iter``, ``tol``: the CG's limits.
    Fitted: as :class:`MeasurementNorm` and, for ``"tikhonov"``, ``op_norm2_`` (``‖A‖₂²``).
    ``score(y)``: extras ``residual`` (B,) = ``t``, ``z`` (B,), ``reconstruction_method``; ``nfe = 0``.
    """

    statistic_name = "residual"

    def __init__(
        self, prior, operator, *, reconstruction: str = "auto", tikhonov: float = 1.0, n_iter: int = 100, tol: float = 1e-8,
        side: str = "both", log: bool = True,
    ):
        super().__init__(prior, operator, side=side, log=log)
        if reconstruction not in RECONSTRUCTIONS:
            raise ValueError(f"unknown reconstruction {reconstruction!r}; choose one of {', '.join(RECONSTRUCTIONS)}")
        if not (math.isfinite(float(tikhonov)) and float(tikhonov) > 0):
            raise ValueError(f"tikhonov (the smoothness weight) must be > 0, got {tikhonov!r}")
        if not float(tol) >= 0:
            raise ValueError(f"tol must be >= 0, got {tol!r}")
        self.reconstruction = reconstruction
        self.tikhonov = float(tikhonov)
        self.n_iter = check_int(n_iter, "n_iter")
        self.tol = float(tol)

    @property
    def reconstruction_method(self) -> str:
        """The reconstruction used: ``reconstruction`` with ``"auto"`` resolved for this operator."""
        if self.reconstruction != "auto":
            return self.reconstruction
        return "tikhonov" if getattr(self.operator, "pinv_is_exact", False) else "pinv"

    def reconstruct(self, y: Tensor) -> Tensor:
        """The classical reconstruction ``x̂(y)``, ``(B, C, H, W)``."""
        if self.reconstruction_method == "pinv":
            return self.operator.A_pinv(y)
        norm2 = getattr(self, "op_norm2_", None)
        if norm2 is None:
            norm2 = self._op_norm2(y)
        return tikhonov_reconstruction(self.operator, y, self.tikhonov * norm2, n_iter=self.n_iter, tol=self.tol)

    def _op_norm2(self, y: Tensor) -> float:
        shape = tuple(self.operator.A_adjoint(y[:1]).shape[1:])
        return operator_norm2(self.operator, shape, dtype=y.dtype, device=y.device)

    def statistic(self, y: Tensor) -> Tensor:
        return _per_image_energy(y - self.operator.A(self.reconstruct(y)))

    def _fit(self, data: Tensor, *, seed) -> None:
        if self.reconstruction_method == "tikhonov":
            self.op_norm2_ = self._op_norm2(data)
        t = self.statistic(data)
        if not bool((t > 0).any()):
            raise ValueError(
                f"the residual is identically zero on the in-distribution data: A·A_pinv(y) = y for {self.operator!r} "
                "(its pseudo-inverse is exact); use reconstruction='tikhonov' (or 'auto')"
            )
        super()._fit(data, seed=seed)

    def _score(self, data: Tensor, *, seed, hooks: tuple) -> Scores:
        s = super()._score(data, seed=seed, hooks=hooks)
        return Scores(score=s.score, map=None, nfe=0, extras={**s.extras, "reconstruction_method": self.reconstruction_method})

    @classmethod
    def example(cls) -> "Residual":
        from priorshift.analytic import stationary_gaussian
        from priorshift.operators import Inpainting

        return cls(stationary_gaussian(8), Inpainting.example(image_size=8, noise_std=0.05))

    def config(self) -> dict[str, Any]:
        return {**super().config(), "reconstruction": self.reconstruction, "tikhonov": self.tikhonov, "n_iter": self.n_iter, "tol": self.tol}

    def __repr__(self) -> str:
        return f"Residual(operator={self.operator!r}, reconstruction={self.reconstruction_method!r}, side={self.side!r})"
