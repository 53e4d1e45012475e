"""The image baselines (``input_kind = "images"``, a denoiser ``D(x, σ)``, stochastic: noise ``z ~ N(0, I)`` per
image from its seed): ``denoising-error`` (after DDPM-OOD) and ``score-norm`` (after MSMA), with the closed forms
on a Gaussian prior in :mod:`priorshift.detectors.baselines`."""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch
from torch import Tensor

from priorshift._checks import check_int
from priorshift.detectors.base import Detector, resolve_seeds
from priorshift.detectors.baselines._common import fit_location_scale
from priorshift.diffusion.denoisers import as_counting
from priorshift.registry import register
from priorshift.rng import per_image_rng
from priorshift.types import Scores

__all__ = ["DenoisingError", "ScoreNorm", "ledoit_wolf", "DEFAULT_SIGMAS"]

DEFAULT_SIGMAS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
"""Noise levels of the image baselines: roughly geometric (1-2-5) over the range where a prior of [-1, 1]
images (data sd ≈ 0.5) goes from copying its input to relying on what it learnt."""


def _check_sigmas(sigmas, prior) -> tuple[float, ...]:
    try:
        levels = tuple(float(s) for s in sigmas)
    except TypeError:
        raise ValueError(f"sigmas must be a sequence of noise levels, got {sigmas!r}") from None
    if not levels or not all(math.isfinite(s) and s > 0 for s in levels):
        raise ValueError(f"sigmas must be one or more finite noise levels > 0, got {sigmas!r}")
    if len(set(levels)) != len(levels):
        raise ValueError(f"sigmas must be distinct, got {sigmas!r}")
    lo, hi = getattr(prior, "sigma_min", None), getattr(prior, "sigma_max", None)
    if lo is not None and hi is not None and not all(float(lo) <= s <= float(hi) for s in levels):
        raise ValueError(f"sigmas {levels} leave the prior's range [{float(lo):g}, {float(hi):g}]: a denoiser is trusted only where it was trained")
    return levels



def _noisy_denoise(prior, x: Tensor, sigmas: Sequence[float], repeats: int, seed) -> tuple[Tensor, Tensor, Tensor, int]:
    """All ``K · R`` noisy copies ``x̃ = x + σ_k z`` of every image in **one** denoiser call.

    Returns ``(x̃, D(x̃, σ), σ, nfe)`` with the first three shaped ``(B, K, R, C, H, W)`` (σ broadcastable)
    and ``nfe`` counted by the wrapper. Image b's noise comes from its own generator only.
    """
    b, shape = x.shape[0], tuple(x.shape[1:])
    k, r = len(sigmas), repeats
    rng = per_image_rng(resolve_seeds(seed, b), b, x.device)
    z = rng.randn((k, r, *shape), dtype=x.dtype)  # (B, K, R, C, H, W)
    sig = torch.tensor(sigmas, dtype=x.dtype, device=x.device).reshape(1, k, 1, *([1] * len(shape)))
    noisy = x[:, None, None] + sig * z
    denoiser = as_counting(prior)
    start = denoiser.nfe
    with torch.no_grad():
        d = denoiser(noisy.reshape(b * k * r, *shape), sig.expand(b, k, r, *([1] * len(shape))).reshape(-1))
    return noisy, d.reshape(noisy.shape), sig, denoiser.nfe - start


# -- image statistics -------------------------------------------------------------------------------------
class _MultiLevel(Detector):
    input_kind = "images"
    needs_fit = True
    stochastic = True

    def __init__(self, prior, *, sigmas: Sequence[float] = DEFAULT_SIGMAS, repeats: int = 1):
        self.prior = prior
        self.sigmas = _check_sigmas(sigmas, prior)
        self.repeats = check_int(repeats, "repeats")

    def config(self) -> dict[str, Any]:
        return {**super().config(), "sigmas": list(self.sigmas), "repeats": self.repeats}


@register("detector", "denoising-error")
class DenoisingError(_MultiLevel):
    """DDPM-OOD-style reconstruction error (Graham et al., CVPR-W 2023), one denoiser call per level.

    For each noise level ``σ_k`` and ``R = repeats`` draws ``z_{k,r} ~ N(0, I)``:

        e_k(x) = mean_r ‖D(x + σ_k z_{k,r}, σ_k) − x‖²         (sum over all C·H·W pixels)
        score(x) = Σ_k (e_k(x) − mean_k) / std_k                (mean_, std_ over ID images)

    One-sided (a larger error is more shifted), as DDPM-OOD. On a Gaussian prior ``E e_k`` is the trace of
    the posterior covariance of the denoising problem, ``tr((Σ⁻¹ + σ_k⁻² I)⁻¹)`` — the per-image MMSE.

    ``map`` (B, H, W): each pixel's share of the score, ``Σ_k (e_{k,p} − mean_k / P) / std_k`` summed over
    channels (``P = H·W`` pixels), so that ``map.sum((1, 2)) == score``; it localises where the prior fails.

    Args: ``prior`` (a denoiser ``D(x, σ)``), ``sigmas`` (the levels, inside the prior's σ range), ``repeats``.
    Fitted: ``mean_``, ``std_`` ((K,) float64), ``n_fit_``. Cost: ``nfe = B · K · R`` in one batched call.
    ``score(x)``: extras ``errors`` (B, K) = ``e_k``, ``z`` (B, K), ``sigmas`` (a tuple).
    """

    def _errors(self, x: Tensor, seed) -> tuple[Tensor, int]:
        noisy, d, _, nfe = _noisy_denoise(self.prior, x, self.sigmas, self.repeats, seed)
        err = (d - x[:, None, None]).to(torch.float64).pow(2).mean(2)  # (B, K, C, H, W), mean over repeats
        return err, nfe

    def _fit(self, data: Tensor, *, seed) -> None:
        err, _ = self._errors(data, seed)
        self.mean_, self.std_ = fit_location_scale(err.flatten(2).sum(-1), "the denoising error at some σ")
        self.n_fit_ = int(data.shape[0])

    def _score(self, data: Tensor, *, seed, hooks: tuple) -> Scores:
        err, nfe = self._errors(data, seed)
        e = err.flatten(2).sum(-1)  # (B, K)
        z = (e - self.mean_) / self.std_
        n_pix = err.shape[-2] * err.shape[-1]
        per_pixel = (err.sum(2) - (self.mean_ / n_pix)[None, :, None, None]) / self.std_[None, :, None, None]
        return Scores(score=z.sum(1), map=per_pixel.sum(1), nfe=nfe, extras={"errors": e, "z": z, "sigmas": self.sigmas})

    @classmethod
    def example(cls) -> "DenoisingError":
        from priorshift.analytic import stationary_gaussian

        return cls(stationary_gaussian(8), sigmas=(0.1, 0.3, 1.0))

    def __repr__(self) -> str:
        return f"DenoisingError(sigmas={self.sigmas}, repeats={self.repeats})"


def ledoit_wolf(x: Tensor) -> tuple[Tensor, float]:
    """Ledoit–Wolf shrunk covariance of ``x`` (N, p), float64: ``(1 − ρ) S + ρ (tr S / p) I``.

    ``S`` is the ML (1/N) covariance of the centred data and ρ the Ledoit–Wolf (2004) estimate of the
    optimal shrinkage, computed as scikit-learn's ``ledoit_wolf`` does. Returns ``(covariance, ρ)``.
    """
    x = x.to(torch.float64)
    n, p = x.shape
    xc = x - x.mean(0)
    s = xc.T @ xc / n
    mu = float(s.diagonal().sum()) / p
    x2 = xc**2
    beta = float((x2.T @ x2).sum() / n - (s**2).sum()) / (p * n)
    delta = float(((s - mu * torch.eye(p, dtype=torch.float64)) ** 2).sum()) / p
    beta = min(beta, delta)
    rho = 0.0 if beta == 0 else beta / delta
    return (1 - rho) * s + rho * mu * torch.eye(p, dtype=torch.float64), rho


@register("detector", "score-norm")
class ScoreNorm(_MultiLevel):
    """MSMA-style multiscale score norms (Mahmood, Oliva & Styner, ICLR 2021) with a Gaussian density on them.

    For each level ``σ_k``: ``n_k(x) = mean_r ‖s(x̃_{k,r}, σ_k)‖``, ``s(x̃, σ) = (D(x̃, σ) − x̃) / σ²``, at
    ``x̃ = x + σ_k z_{k,r}`` (``perturb=True``, default) or at the clean ``x`` (``perturb=False``: MSMA's own
    recipe as we read it, deterministic). The vector ``n(x) ∈ R^K`` gets an ID-fitted Gaussian ``N(mean_, cov_)``; the
    covariance is that of the per-level standardised norms shrunk by Ledoit–Wolf (``shrinkage="ledoit-wolf"``,
    or a fixed ρ ∈ [0, 1]) towards a multiple of the identity, scaled back: ``cov_ = D R D``,
    ``D = diag(std_)``. (MSMA fits a GMM, a flow or a KD-tree; one shrunk Gaussian is the robust choice
    for a few hundred ID images.)

        score(x) = (n(x) − mean_)ᵀ cov_⁻¹ (n(x) − mean_)       (squared Mahalanobis distance, ≈ χ²_K on ID)

    Two-sided by construction: too small and too large score norms are both shifted. On a Gaussian prior
    ``E n_k² = Σ_i 1/(λ_i + σ_k²)`` with ``perturb`` (``x̃ ~ N(μ, Σ + σ_k² I)``) and ``Σ_i λ_i/(λ_i + σ_k²)²``
    without.

    Fitted: ``mean_``, ``std_`` (K,), ``cov_`` (K, K), ``shrinkage_``, ``n_fit_``. Cost: ``nfe = B · K · R``.
    ``score(x)``: extras ``norms`` (B, K), ``nll`` (B,) = ``½ score + ½ ln det(2π cov_)`` in nats, ``sigmas``.
    """

    def __init__(self, prior, *, sigmas: Sequence[float] = DEFAULT_SIGMAS, repeats: int = 1, perturb: bool = True, shrinkage="ledoit-wolf"):
        super().__init__(prior, sigmas=sigmas, repeats=repeats)
        if shrinkage != "ledoit-wolf" and not (isinstance(shrinkage, (int, float)) and 0 <= float(shrinkage) <= 1):
            raise ValueError(f"shrinkage must be 'ledoit-wolf' or a number in [0, 1], got {shrinkage!r}")
        self.perturb = bool(perturb)
        if not self.perturb and self.repeats != 1:
            raise ValueError("repeats > 1 needs perturb=True: the score at the clean input is deterministic")
        self.stochastic = self.perturb
        self.shrinkage = shrinkage

    def _norms(self, x: Tensor, seed) -> tuple[Tensor, int]:
        if self.perturb:
            noisy, d, sig, nfe = _noisy_denoise(self.prior, x, self.sigmas, self.repeats, seed)
        else:
            b, k, shape = x.shape[0], len(self.sigmas), tuple(x.shape[1:])
            sig = torch.tensor(self.sigmas, dtype=x.dtype, device=x.device).reshape(1, k, 1, *([1] * len(shape)))
            noisy = x[:, None, None].expand(b, k, 1, *shape)
            denoiser = as_counting(self.prior)
            start = denoiser.nfe
            with torch.no_grad():
                d = denoiser(noisy.reshape(b * k, *shape), sig.expand(b, k, 1, *([1] * len(shape))).reshape(-1))
            d, nfe = d.reshape(noisy.shape), denoiser.nfe - start
        s = ((d - noisy) / sig**2).to(torch.float64)
        return s.flatten(3).norm(dim=-1).mean(2), nfe  # (B, K)

    def _fit(self, data: Tensor, *, seed) -> None:
        v, _ = self._norms(data, seed)
        mean, std = fit_location_scale(v, "the score norm at some σ")
        z = (v - mean) / std
        if self.shrinkage == "ledoit-wolf":
            corr, rho = ledoit_wolf(z)
        else:
            rho = float(self.shrinkage)
            zc = z - z.mean(0)
            s = zc.T @ zc / z.shape[0]
            corr = (1 - rho) * s + rho * float(s.diagonal().mean()) * torch.eye(z.shape[1], dtype=torch.float64)
        cov = std[:, None] * corr * std[None, :]
        chol, info = torch.linalg.cholesky_ex(cov)
        if int(info) != 0:
            raise ValueError(
                f"the fitted covariance of the {len(self.sigmas)} score norms is singular ({data.shape[0]} ID images): "
                "give more in-distribution images or shrinkage > 0"
            )
        self.mean_, self.std_, self.cov_, self.shrinkage_ = mean, std, cov, float(rho)
        self.n_fit_ = int(data.shape[0])

    def _score(self, data: Tensor, *, seed, hooks: tuple) -> Scores:
        v, nfe = self._norms(data, seed)
        chol = torch.linalg.cholesky(self.cov_)
        w = torch.linalg.solve_triangular(chol, (v - self.mean_).T, upper=False)  # (K, B)
        maha2 = w.pow(2).sum(0)
        logdet = 2 * chol.diagonal().log().sum()
        nll = 0.5 * maha2 + 0.5 * (logdet + len(self.sigmas) * math.log(2 * math.pi))
        return Scores(score=maha2, map=None, nfe=nfe, extras={"norms": v, "nll": nll, "sigmas": self.sigmas})

    @classmethod
    def example(cls) -> "ScoreNorm":
        from priorshift.analytic import stationary_gaussian

        return cls(stationary_gaussian(8), sigmas=(0.1, 0.3, 1.0))

    def config(self) -> dict[str, Any]:
        return {**super().config(), "perturb": self.perturb, "shrinkage": self.shrinkage}

    def __repr__(self) -> str:
        return f"ScoreNorm(sigmas={self.sigmas}, repeats={self.repeats}, perturb={self.perturb}, shrinkage={self.shrinkage!r})"
