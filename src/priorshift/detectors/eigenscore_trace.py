"""EigenScore's full-trace ablation (``eigenscore-trace``): the pipeline of :mod:`priorshift.detectors.eigenscore`
with the trace of the posterior covariance (or the per-image denoising error) in place of the top-K eigenvalues."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import Tensor

from priorshift._checks import check_int
from priorshift.detectors.eigenscore import DEFAULT_SIGMAS, PosteriorFeatureDetector, aggregate_repetitions, mixture_example_prior
from priorshift.diffusion.denoisers import as_counting
from priorshift.diffusion.jacobian import central_difference_jvp
from priorshift.registry import register
from priorshift.rng import per_image_rng

__all__ = ["EigenScoreTrace", "PosteriorTrace", "TRACE_ESTIMATORS"]

TRACE_ESTIMATORS = ("hutchinson", "mse")


@dataclass(frozen=True)
class PosteriorTrace:
    """Trace of the posterior covariance (or the denoising MSE) of a batch (:meth:`EigenScoreTrace.trace`).

    ``trace``: (B, T) float64, ``Agg_i`` over repetitions; ``per_repetition``: (B, T, I); ``sigmas``: the T
    noise levels; ``estimator``: ``"hutchinson"`` or ``"mse"``; ``nfe``: denoiser evaluations spent."""

    trace: Tensor
    per_repetition: Tensor
    sigmas: tuple[float, ...]
    estimator: str
    nfe: int


@register("detector", "eigenscore-trace")
class EigenScoreTrace(PosteriorFeatureDetector):
    """EigenScore's full-trace ablation (the paper's "MSE" row): the z-scored sum over noise levels of the
    trace of the posterior covariance, ``m_t = Agg_i tr Cov[x0 | x + σ_t z_i]``. **Higher = more shifted.**

    Estimators (``estimator``):

    * ``"hutchinson"`` (default): ``tr Cov[x0 | x_σ] = σ² tr J_D(x_σ)`` at the same noisy points as
      EigenScore, by Hutchinson's estimator with P Rademacher probes ``ε_p ∈ {±1}^d`` and the same central
      differences: ``t̂ = σ² (1/P) Σ_p ε_pᵀ [D(x_σ + h u_p) − D(x_σ − h u_p)] / (2h) · sqrt(d)`` with
      ``u_p = ε_p/sqrt(d)`` (unit norm, ``h = c·σ``), i.e. ``(σ²/P) Σ_p ε_pᵀ J ε_p`` up to ``O(h²)``.
      Unbiased; for ``C = σ² J`` symmetric its variance is ``2(‖C‖_F² − Σ_i C_ii²)/P``. 2P NFE per (σ, i).
      This isolates the paper's claim (top-K vs the whole spectrum of the *same* matrix).
    * ``"mse"``: the per-image denoising error ``‖D(x + σ z_i) − x‖²`` (1 NFE per (σ, i)). Its expectation over
      ``x ~ p`` is ``E tr Cov[x0 | x_σ]`` (Prop. 1's MSE), but per image it also contains the squared bias
      ``‖E[x0|x_σ] − x‖²``; it is what the paper's MSE baseline measures.

    extras: ``trace`` (B, T) (``Agg_i`` of the estimate), ``features`` (= ``trace``), ``z`` (B, T), ``sigmas``,
    ``nfe_per_image``. Parameters as :class:`EigenScore`, plus ``probes`` P ≥ 1 and ``estimator``.
    """

    registered_name = "eigenscore-trace"

    def __init__(
        self,
        prior,
        operator=None,
        *,
        sigmas: Sequence[float] = DEFAULT_SIGMAS,
        estimator: str = "hutchinson",
        probes: int = 4,
        c: float = 0.1,
        repetitions: int = 4,
        aggregate: str = "mean",
        max_batch: int | None = None,
    ):
        super().__init__(prior, operator, sigmas=sigmas, repetitions=repetitions, aggregate=aggregate, c=c, max_batch=max_batch)
        if estimator not in TRACE_ESTIMATORS:
            raise ValueError(f"unknown estimator {estimator!r}; choose one of {', '.join(TRACE_ESTIMATORS)}")
        self.estimator = estimator
        self.probes = check_int(probes, "probes")

    @classmethod
    def example(cls) -> "EigenScoreTrace":
        """A tiny instance on the same 8×8 float64 Gaussian-mixture prior as :meth:`EigenScore.example` (why a
        mixture: see there; the broad component's posterior trace ``64·σ²·2/(2+σ²)`` dwarfs the tight ones')."""
        return cls(mixture_example_prior(), sigmas=(0.3, 0.6), probes=2, repetitions=2)

    def trace(self, x: Tensor, *, seed=0) -> PosteriorTrace:
        """The raw per-σ trace estimates for a batch ``x`` (B, C, H, W); no fit needed. Per image, its generator
        draws the noise (T, I, C, H, W), then (Hutchinson) the probe signs (T, I, P, C, H, W)."""
        x = self.check_input(x)
        return self._trace(x, seed)

    def _trace(self, x: Tensor, seed) -> PosteriorTrace:
        B, T, I = x.shape[0], len(self.sigmas), self.repetitions
        shape = tuple(x.shape[1:])
        d = math.prod(shape)
        rng = per_image_rng(seed, B, x.device)
        counter = as_counting(self.prior)
        nfe0 = counter.nfe
        xs = self._noisy(x, rng.randn((T, I) + shape, dtype=x.dtype)).reshape(B * T * I, *shape)
        sig = torch.tensor(self.sigmas, dtype=torch.float64, device=x.device).reshape(1, T, 1).expand(B, T, I).reshape(-1)
        if self.estimator == "mse":
            chunks = [xs] if self.max_batch is None else list(xs.split(self.max_batch))
            schunks = [sig] if self.max_batch is None else list(sig.split(self.max_batch))
            den = torch.cat([counter(a, s.to(x.dtype)) for a, s in zip(chunks, schunks)]).reshape(B, T, I, d)
            est = (den.to(torch.float64) - x.reshape(B, 1, 1, d).to(torch.float64)).pow(2).sum(-1)
        else:
            P = self.probes
            eps = (rng.rand((T, I, P) + shape, dtype=x.dtype) < 0.5).to(x.dtype) * 2 - 1  # Rademacher
            eps = eps.reshape(B * T * I, P, *shape)
            jv = central_difference_jvp(counter, xs, sig, eps / math.sqrt(d), self.c * sig, max_batch=self.max_batch)
            quad = (eps.to(torch.float64) * jv.to(torch.float64)).flatten(2).sum(-1) * math.sqrt(d)  # ε_pᵀ J ε_p
            est = (sig.reshape(-1, 1) ** 2 * quad).mean(1).reshape(B, T, I)
        return PosteriorTrace(
            trace=aggregate_repetitions(est, self.aggregate, dim=2), per_repetition=est, sigmas=self.sigmas, estimator=self.estimator, nfe=counter.nfe - nfe0
        )

    def _features(self, x: Tensor, seed) -> tuple[Tensor, dict[str, Any], int]:
        tr = self._trace(x, seed)
        return tr.trace, {"trace": tr.trace}, tr.nfe

    def config(self) -> dict[str, Any]:
        return {**super().config(), "estimator": self.estimator, "probes": self.probes}

    def __repr__(self) -> str:
        return f"EigenScoreTrace(sigmas={tuple(round(s, 4) for s in self.sigmas)}, estimator={self.estimator!r}, probes={self.probes}, c={self.c}, repetitions={self.repetitions}, aggregate={self.aggregate!r})"
