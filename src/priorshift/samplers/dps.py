"""Diffusion posterior sampling (DPS; Chung et al., ICLR 2023), in VE form.

Each step evaluates ``x̂0 = D(x, σ)``, takes a prior step from ``x`` (ancestral by default), and adds a
measurement step along the gradient of the residual ``r = y - A x̂0``:

* ``jacobian=True``: ``∇_x ½‖r‖² = -(∂x̂0/∂x)ᵀ Aᵀ r`` by autograd through the network (DPS proper);
* ``jacobian=False``: the network Jacobian is replaced by the identity, ``-Aᵀ r`` (no backward pass; the
  step KLIP's DDPM backend takes).

The measurement step is ``Δx_l = -ζ_σ · ∇ / ‖r‖`` when ``normalize`` (the papers' ``ζ / ‖y - A x̂0‖``; with
``residual_norm="per_sample"``, the default, each sample's own ‖r‖; with ``"sample_mean"`` the mean of ‖r‖ over
an image's S samples, as the official KLIP DDPM code, whose batch is one image's samples), else ``-ζ_σ · ∇``.
``zeta_scaling="vp"`` uses ``ζ_σ = ζ (1 + σ²)``, which is exactly a constant step ``ζ`` of VP-DPS mapped to VE
coordinates (``x_ve = x_vp / sqrt(ᾱ)``, ``ᾱ = 1/(1 + σ²)``); ``"constant"`` uses ``ζ``.

The official code's other details, as options: ``clip_x0`` takes the measurement step first and then the prior
step from the moved ``x`` with the same network output, its estimate ``x̂0 + Δx_l`` clipped to [-1, 1] (diffusers'
``DDPMScheduler.step`` with ``clip_sample``; without clipping the two orders give the same step);
``init="vp"`` starts from ``x_T = sqrt(1 + σ_0²)·n``, the VE image of ``N(0, I)`` in VP coordinates (default
``"ve"``: ``σ_0·n``).
"""

from __future__ import annotations

import math

import torch

from priorshift.registry import register
from priorshift.samplers._run import SamplerRun, likelihood_stages, prior_step, uses_noise_std
from priorshift.types import SampleResult

__all__ = ["sample_dps", "dps_gradient", "RESIDUAL_NORMS"]


RESIDUAL_NORMS = ("per_sample", "sample_mean")


def dps_gradient(D, operator, x, sigma_vec, y_rep, *, jacobian: bool, normalize: bool, samples: int = 1, residual_norm: str = "per_sample"):
    """``(x̂0, direction)`` with ``direction = ∇_x ½‖y - A D(x)‖²``, divided by ‖r‖ if ``normalize``: per row, or
    (``residual_norm="sample_mean"``) by the mean ‖r‖ of each group of ``samples`` consecutive rows (one image)."""
    if jacobian:
        with torch.enable_grad():
            x_in = x.detach().requires_grad_(True)
            x0 = D(x_in, sigma_vec)
            r = y_rep - operator.A(x0)
            grad = torch.autograd.grad(0.5 * r.pow(2).sum(), x_in)[0]
        x0 = x0.detach()
        r = r.detach()
    else:
        with torch.no_grad():
            x0 = D(x, sigma_vec)
            r = y_rep - operator.A(x0)
            grad = -operator.A_adjoint(r)
    if normalize:
        norm = r.flatten(1).norm(dim=1)
        if residual_norm == "sample_mean":
            norm = norm.reshape(-1, samples).mean(1).repeat_interleave(samples)
        norm = norm.clamp_min(torch.finfo(r.dtype).tiny)
        grad = grad / norm.reshape(-1, *([1] * (grad.ndim - 1)))
    return x0, grad


@register("sampler", "dps")
@likelihood_stages("dps")
@uses_noise_std(False)
def sample_dps(
    denoiser,
    operator,
    y,
    sigmas,
    *,
    samples: int = 1,
    seed=None,
    hooks=(),
    stop_after: int | None = None,
    zeta: float = 0.3,
    jacobian: bool = True,
    normalize: bool = True,
    zeta_scaling: str = "vp",
    method: str = "ancestral",
    residual_norm: str = "per_sample",
    clip_x0: bool = False,
    init: str = "ve",
) -> SampleResult:
    """Posterior samples ``x0`` (B, S, C, H, W) of ``p(x | y)`` by DPS. One NFE per step per sample
    (with a backward pass when ``jacobian``). ``likelihood_updates`` carries the step under ``"dps"``."""
    if zeta_scaling not in ("vp", "constant"):
        raise ValueError(f"zeta_scaling must be 'vp' or 'constant', got {zeta_scaling!r}")
    if not zeta > 0:
        raise ValueError(f"zeta must be > 0, got {zeta}")
    if residual_norm not in RESIDUAL_NORMS:
        raise ValueError(f"residual_norm must be one of {', '.join(RESIDUAL_NORMS)}, got {residual_norm!r}")
    if init not in ("ve", "vp"):
        raise ValueError(f"init must be 've' (x_T = sigma_0 n) or 'vp' (x_T = sqrt(1 + sigma_0^2) n), got {init!r}")
    run = SamplerRun(denoiser, operator, y, sigmas, samples=samples, seed=seed, hooks=hooks, stop_after=stop_after)
    x = run.initial() if init == "ve" else math.sqrt(1 + float(sigmas[0]) ** 2) * run.noise()
    x0 = x
    for i, sigma, sigma_next in run.steps():
        x0, direction = dps_gradient(run.denoiser, operator, x, run.sigma_vector(sigma), run.y_rep, jacobian=jacobian,
                                     normalize=normalize, samples=run.S, residual_norm=residual_norm)
        with torch.no_grad():
            step = zeta * (1 + sigma**2) if zeta_scaling == "vp" else zeta
            likelihood = -step * direction
            stochastic = method != "euler" and sigma_next > 0
            noise = run.noise() if stochastic else None
            if clip_x0:
                update, _ = prior_step(x + likelihood, (x0 + likelihood).clamp(-1, 1), sigma, sigma_next, noise, method)
            else:
                update, _ = prior_step(x, x0, sigma, sigma_next, noise, method)
            x = run.emit(i, sigma, sigma_next, x, x0, update, {"dps": likelihood})
    return run.finish(x, x0)
