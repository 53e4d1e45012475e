"""Noise-level schedules, in float64, as descending ``(n + 1,)`` tensors ending with ``0``.

A sampler takes ``n`` steps ``sigmas[i] → sigmas[i + 1]``; the last step lands on the clean image.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["schedule_for", "SCHEDULES", "karras_sigmas", "ve_sigmas", "vp_sigmas", "ddpm_sigmas", "sigmas_from_alphas_cumprod", "ve_g",
           "ddpm_grid", "ddpm_step_weights", "linear_beta_sigmas"]


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


def linear_beta_sigmas(beta_start: float = 1e-4, beta_end: float = 0.02, T: int = 1000) -> Tensor:
    """The VE noise levels ``σ_t = sqrt((1 - ᾱ_t) / ᾱ_t)``, ``ᾱ_t = Π_{s ≤ t} (1 - β_s)``, of DDPM's linear β
    schedule (Ho et al. 2020: β from ``beta_start`` to ``beta_end`` over ``T`` timesteps; the defaults are diffusers'
    ``DDPMScheduler()``), ascending ``(T,)`` float64: σ_0 = 0.0100, σ_929 = 79.5, σ_999 = 157.4 at the defaults."""
    if not (0 < beta_start <= beta_end < 1) or int(T) < 1:
        raise ValueError(f"need 0 < beta_start <= beta_end < 1 and T >= 1, got {beta_start}, {beta_end}, {T}")
    betas = torch.linspace(beta_start, beta_end, int(T), dtype=torch.float64)
    return sigmas_from_alphas_cumprod(torch.cumprod(1 - betas, 0))


def _has_timesteps(prior) -> bool:
    sig = getattr(prior, "sigmas", None)
    return isinstance(sig, Tensor) and sig.ndim == 1 and hasattr(prior, "sigma_to_t")


def ddpm_grid(prior) -> Tensor:
    """The VE noise level of each training timestep ``t = 0 … T-1`` of a DDPM prior (a
    :class:`~priorshift.diffusion.VPDenoiser`, e.g. from :func:`~priorshift.diffusion.from_diffusers`), ascending,
    float64, in the library's [-1, 1] units. A prior without a timestep grid but with a σ range (``sigma_min``,
    ``sigma_max``: an EDM prior, an analytic one) gets diffusers' default DDPM grid, :func:`linear_beta_sigmas`
    (:func:`schedule_for` keeps the steps inside its range). A ``ValueError`` for a prior with neither."""
    if _has_timesteps(prior):
        lo, hi = getattr(prior, "data_range", (-1.0, 1.0))
        return prior.sigmas.to(torch.float64) / ((hi - lo) / 2)
    if hasattr(prior, "sigma_min") and hasattr(prior, "sigma_max"):
        return linear_beta_sigmas()
    raise ValueError(f"the DDPM schedule and weight need a DDPM prior with a timestep grid (priorshift.diffusion.from_diffusers "
                     f"or VPDenoiser) or a prior with a noise range (sigma_min, sigma_max), got {type(getattr(prior, 'denoiser', prior)).__name__}")


def _ddpm_steps_within(grid: Tensor, n: int, lo: float, hi: float) -> Tensor:
    """The leading-spaced steps of ``grid`` kept inside ``[lo, hi]``: a step whose timestep's σ lies above ``hi``
    (below ``lo``) takes the largest (smallest) in-range timesteps instead, one apart, so the schedule keeps ``n``
    strictly decreasing steps, each a grid timestep with its own DDPM weight. E.g. an EDM prior (σ ≤ 80) on the
    linear grid: at 100 steps t = 990, …, 930 (σ 143.8 … 80.3) become 929, …, 923 (σ 79.5 … 75.2); at 50 steps
    980, 960, 940 become 929, 928, 927; at 20 steps 950 becomes 929."""
    inside = ((grid >= lo * (1 - 1e-9)) & (grid <= hi * (1 + 1e-9))).nonzero().flatten()
    if inside.numel() < n:
        raise ValueError(f"the prior's noise range [{lo:g}, {hi:g}] holds {inside.numel()} DDPM timesteps, fewer than steps={n}")
    t_lo, t_hi = int(inside[0]), int(inside[-1])
    t = _ddpm_steps(grid, n, "leading")[1]
    k = torch.arange(n)
    t = torch.maximum(torch.minimum(t, t_hi - k), t_lo + (n - 1 - k))
    return _append_zero(grid[t])


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
    as ``DDPMScheduler.set_timesteps``; :func:`ddpm_grid`; no ``sigma_min``/``sigma_max``; on a prior without
    timesteps, an EDM one, the same steps of diffusers' default linear-β grid kept inside the prior's own
    ``[sigma_min, sigma_max]`` by :func:`_ddpm_steps_within`).

    The one place where σ is clamped to the prior's own range: unless given, ``sigma_min`` is
    ``max(prior.sigma_min, 0.002)`` and ``sigma_max`` is ``min(prior.sigma_max, 80)`` (a denoiser is only
    trusted on the noise levels it was trained on; the bounds are EDM's defaults).
    """
    if schedule == "ddpm":
        if sigma_min is not None or sigma_max is not None:
            raise ValueError("schedule 'ddpm' takes its noise levels from the prior's timesteps; leave sigma_min and sigma_max unset")
        grid = ddpm_grid(prior)
        if _has_timesteps(prior):
            return _ddpm_steps(grid, int(steps), "leading")[0]
        return _ddpm_steps_within(grid, int(steps), float(prior.sigma_min), float(prior.sigma_max))
    lo_default, hi_default = DEFAULT_SIGMA_RANGE
    lo = max(float(getattr(prior, "sigma_min", lo_default)), lo_default) if sigma_min is None else float(sigma_min)
    hi = min(float(getattr(prior, "sigma_max", hi_default)), hi_default) if sigma_max is None else float(sigma_max)
    if schedule == "karras":
        return karras_sigmas(int(steps), lo, hi)
    if schedule == "ve":
        return ve_sigmas(int(steps), lo, hi)
    raise ValueError(f"unknown schedule {schedule!r}; choose one of {', '.join(SCHEDULES)}")
