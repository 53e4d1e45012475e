"""Noise-level schedules, in float64, as descending ``(n + 1,)`` tensors ending with ``0``.

A sampler takes ``n`` steps ``sigmas[i] → sigmas[i + 1]``; the last step lands on the clean image.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["schedule_for", "SCHEDULES", "karras_sigmas", "ve_sigmas", "vp_sigmas", "ddpm_sigmas", "sigmas_from_alphas_cumprod", "ve_g",
           "ddpm_grid", "ddpm_step_weights"]


def _check(n: int, sigma_min: float, sigma_max: float) -> None:
    if int(n) < 1:
        raise ValueError(f"the number of steps must be >= 1, got {n}")
    if not (0 < sigma_min < sigma_max):
        raise ValueError(f"need 0 < sigma_min < sigma_max, got sigma_min={sigma_min}, sigma_max={sigma_max}")


def _append_zero(s: Tensor) -> Tensor:
    return torch.cat([s, s.new_zeros(1)])


def karras_sigmas(n: int, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0) -> Tensor:
    """EDM schedule (Karras et al. 2022, Eq. 5): ``σ_i = (σ_max^{1/ρ} + i/(n-1) (σ_min^{1/ρ} - σ_max^{1/ρ}))^ρ``."""
    _check(n, sigma_min, sigma_max)
    ramp = torch.linspace(0, 1, n, dtype=torch.float64) if n > 1 else torch.zeros(1, dtype=torch.float64)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return _append_zero((hi + ramp * (lo - hi)) ** rho)


def ve_sigmas(n: int, sigma_min: float = 0.01, sigma_max: float = 50.0) -> Tensor:
    """VE SDE schedule (Song et al. 2021): geometric, ``σ(t) = σ_min (σ_max/σ_min)^t``, t from 1 to 0 in n points."""
    _check(n, sigma_min, sigma_max)
    t = torch.linspace(1, 0, n, dtype=torch.float64) if n > 1 else torch.ones(1, dtype=torch.float64)
    return _append_zero(sigma_min * (sigma_max / sigma_min) ** t)


def vp_sigmas(n: int, beta_min: float = 0.1, beta_max: float = 20.0, eps: float = 1e-3) -> Tensor:
    """Continuous VP SDE with linear β (Song et al. 2021) mapped to VE: ``σ(t) = sqrt((1 - ᾱ(t)) / ᾱ(t))``,
    ``ᾱ(t) = exp(-½ (β_max - β_min) t² - β_min t)``, t from 1 to ``eps`` in n points."""
    if int(n) < 1:
        raise ValueError(f"the number of steps must be >= 1, got {n}")
    t = torch.linspace(1, eps, n, dtype=torch.float64)
    log_alpha_bar = -0.5 * (beta_max - beta_min) * t**2 - beta_min * t
    return _append_zero(torch.sqrt(torch.expm1(-log_alpha_bar)))


def sigmas_from_alphas_cumprod(alphas_cumprod) -> Tensor:
    """Per-timestep VE noise levels ``σ_t = sqrt((1 - ᾱ_t) / ᾱ_t)`` (ascending in t), float64."""
    a = torch.as_tensor(alphas_cumprod, dtype=torch.float64)
    if a.ndim != 1 or not bool(((a > 0) & (a <= 1)).all()):
        raise ValueError("alphas_cumprod must be a 1-D sequence of values in (0, 1]")
    return torch.sqrt((1 - a) / a)


def ddpm_sigmas(alphas_cumprod, n: int, spacing: str = "leading") -> tuple[Tensor, Tensor]:
    """The noise levels a DDPM sampler with ``n`` inference steps visits, mapped to VE.

    ``spacing="leading"`` is diffusers' default: timesteps ``(T // n) · [n-1, ..., 1, 0]`` (e.g. 990, 980, ..., 0
    for T = 1000, n = 100). Returns ``(sigmas, timesteps)`` with ``sigmas`` of shape ``(n + 1,)`` ending in 0.
    """
    return _ddpm_steps(sigmas_from_alphas_cumprod(alphas_cumprod), n, spacing)


def _ddpm_steps(sig: Tensor, n: int, spacing: str) -> tuple[Tensor, Tensor]:
    T = sig.numel()
    if not 1 <= n <= T:
        raise ValueError(f"n must be in [1, {T}], got {n}")
    if spacing == "leading":
        steps = torch.arange(n - 1, -1, -1) * (T // n)
    elif spacing == "trailing":
        steps = (torch.arange(T, 0, -T / n).round().long() - 1).clamp_min(0)
    elif spacing == "linspace":
        steps = torch.linspace(T - 1, 0, n).round().long()
    else:
        raise ValueError(f"unknown spacing {spacing!r}; choose leading, trailing or linspace")
    return _append_zero(sig[steps]), steps


def ddpm_grid(prior) -> Tensor:
    """The VE noise level of each training timestep ``t = 0 … T-1`` of a DDPM prior (a
    :class:`~priorshift.diffusion.VPDenoiser`, e.g. from :func:`~priorshift.diffusion.from_diffusers`), ascending,
    float64, in the library's [-1, 1] units. A ``ValueError`` for a prior without a timestep grid."""
    sig = getattr(prior, "sigmas", None)
    if not (isinstance(sig, Tensor) and sig.ndim == 1 and hasattr(prior, "sigma_to_t")):
        raise ValueError(f"the DDPM schedule and weight need a DDPM prior with a timestep grid (priorshift.diffusion.from_diffusers "
                         f"or VPDenoiser), got {type(getattr(prior, 'denoiser', prior)).__name__}")
    lo, hi = getattr(prior, "data_range", (-1.0, 1.0))
    return sig.to(torch.float64) / ((hi - lo) / 2)


def ddpm_step_weights(prior, sigmas) -> Tensor:
    """The official KLIP DDPM backend's per-step weight in VE coordinates, ``(n,)`` for the steps of ``sigmas``
    (``(n + 1,)``): for step k, ``sqrt(β_t / ᾱ_t)`` with ``t`` the prior's timestep nearest to ``σ_k`` (in log σ).
    The official code divides the VP update by ``sqrt(β_t)`` of the 1000-step grid; a VE update is the VP one over
    ``sqrt(ᾱ_t)``, hence the weight. ``β_t`` is the prior's ``betas`` (kept by ``from_diffusers``); a prior without
    them gets ``β_t / ᾱ_t = σ_t² − σ_{t−1}²`` (``σ_{−1} = 0``), which on diffusers' float32 ``ᾱ`` differs from its
    ``betas`` by up to 1e-5 relative for t ≥ 150 on the linear schedule (2e-4 at t = 0)."""
    grid = ddpm_grid(prior)
    s = torch.as_tensor(sigmas, dtype=torch.float64)[:-1]
    if not bool((s > 0).all()):
        raise ValueError("the DDPM weight needs every step's sigma > 0 (the last entry of sigmas is the end point)")
    t = (s.log()[:, None] - grid.log()[None]).abs().argmin(1)
    betas = getattr(prior, "betas", None)
    if betas is not None:
        half = float(prior.sigmas[0]) / float(grid[0])  # model units per library unit
        return (betas[t] * (1 + (half * grid[t]) ** 2)).sqrt() / half  # 1/ᾱ = 1 + σ², σ in model units
    prev = torch.cat([grid.new_zeros(1), grid])[t]  # σ_{t-1}, 0 before the first timestep
    return (grid[t] ** 2 - prev**2).sqrt()


def ve_g(sigma: float, sigma_min: float, sigma_max: float) -> float:
    """Diffusion coefficient of the geometric VE SDE: ``g(t) = σ(t) sqrt(2 ln(σ_max / σ_min))``."""
    return sigma * math.sqrt(2 * math.log(sigma_max / sigma_min))


SCHEDULES = ("karras", "ve", "ddpm")
DEFAULT_SIGMA_RANGE = (0.002, 80.0)


def schedule_for(prior, steps: int, schedule: str = "karras", sigma_min: float | None = None, sigma_max: float | None = None) -> Tensor:
    """The ``(steps + 1,)`` schedule for sampling ``prior``: ``"karras"`` (ρ = 7), ``"ve"`` (geometric) or
    ``"ddpm"`` (the DDPM prior's own timesteps with diffusers' leading spacing, ``(T // steps)·[steps-1, …, 0]``,
    as ``DDPMScheduler.set_timesteps``; :func:`ddpm_grid`; no ``sigma_min``/``sigma_max``).

    The one place where σ is clamped to the prior's own range: unless given, ``sigma_min`` is
    ``max(prior.sigma_min, 0.002)`` and ``sigma_max`` is ``min(prior.sigma_max, 80)`` (a denoiser is only
    trusted on the noise levels it was trained on; the bounds are EDM's defaults).
    """
    if schedule == "ddpm":
        if sigma_min is not None or sigma_max is not None:
            raise ValueError("schedule 'ddpm' takes its noise levels from the prior's timesteps; leave sigma_min and sigma_max unset")
        return _ddpm_steps(ddpm_grid(prior), int(steps), "leading")[0]
    lo_default, hi_default = DEFAULT_SIGMA_RANGE
    lo = max(float(getattr(prior, "sigma_min", lo_default)), lo_default) if sigma_min is None else float(sigma_min)
    hi = min(float(getattr(prior, "sigma_max", hi_default)), hi_default) if sigma_max is None else float(sigma_max)
    if schedule == "karras":
        return karras_sigmas(int(steps), lo, hi)
    if schedule == "ve":
        return ve_sigmas(int(steps), lo, hi)
    raise ValueError(f"unknown schedule {schedule!r}; choose one of {', '.join(SCHEDULES)}")
