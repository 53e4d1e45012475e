"""Prior sampling (no measurement): Euler, Heun (Karras et al. 2022, Alg. 1) or ancestral steps."""

from __future__ import annotations

import torch

from priorshift.registry import register
from priorshift.samplers._run import SamplerRun, heun_step, likelihood_stages, prior_step, uses_noise_std
from priorshift.types import SampleResult

__all__ = ["sample_unconditional"]


@register("sampler", "unconditional")
@likelihood_stages()
@uses_noise_std(False)
@torch.no_grad()
def sample_unconditional(
    denoiser,
    operator,
    y,
    sigmas,
    *,
    samples: int = 1,
    seed=None,
    hooks=(),
    stop_after: int | None = None,
    method: str = "heun",
) -> SampleResult:
    """Draw ``samples`` images from the prior for each of the B rows of ``y`` (``y`` and ``operator`` only
    fix the batch and the image shape; the measurement is ignored — ``likelihood_update`` is zero).

    ``method``: ``"heun"`` (2nd order ODE, 2 NFE per step except the last), ``"euler"`` (ODE) or
    ``"ancestral"`` / ``"euler_maruyama"`` (stochastic). Returns ``x0`` of shape (B, S, C, H, W).
    """
    run = SamplerRun(denoiser, operator, y, sigmas, samples=samples, seed=seed, hooks=hooks, stop_after=stop_after)
    D = run.denoiser
    x = run.initial()
    x0 = x
    for i, sigma, sigma_next in run.steps():
        x0 = D(x, run.sigma_vector(sigma))
        if method == "heun":
            def slopes_next(x_euler):
                return ((x_euler - D(x_euler, run.sigma_vector(sigma_next))) / sigma_next,)

            (update,) = heun_step(x, ((x - x0) / sigma,), sigma, sigma_next, slopes_next)
        else:
            noise = run.noise() if method in ("ancestral", "euler_maruyama") and sigma_next > 0 else None
            update, _ = prior_step(x, x0, sigma, sigma_next, noise, method)
        x = run.emit(i, sigma, sigma_next, x, x0, update, {})
    return run.finish(x, x0)
