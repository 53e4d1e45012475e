"""Annealed Langevin dynamics with a DPS measurement step per inner iteration (PaDIS-style; Hu et al.,
"Learning image priors through patch-based diffusion models for solving inverse problems").

At each noise level ``σ_i`` (the non-zero entries of ``sigmas``), ``inner`` iterations of

1. ``x̂0 = D(x, σ_i)``; measurement step ``x ← x - ζ ∇_x ‖y - A x̂0‖`` (through the network when ``jacobian``);
2. prior Langevin step ``x ← x + (α/2) s + sqrt(α) z`` with ``α = step · σ_i²``, ``s = (x̂0 - x)/σ_i²``
   (no noise at the last level).

The measurement displacements of the inner iterations are summed into the level's ``likelihood_update``
(label ``"dps"``), as KLIP's PaDIS backend does; ``inner`` NFE per level. The last level's ``x̂0`` is returned.
Works with any denoiser — patch-based priors included, as long as they follow the ``D(x, σ)`` protocol.
"""

from __future__ import annotations

import torch

from priorshift.diffusion.denoisers import score_from_denoised
from priorshift.registry import register
from priorshift.samplers._run import SamplerRun, likelihood_stages, uses_noise_std
from priorshift.samplers.dps import dps_gradient
from priorshift.types import SampleResult

__all__ = ["sample_langevin"]


@register("sampler", "langevin")
@likelihood_stages("dps")
@uses_noise_std(False)
def sample_langevin(
    denoiser,
    operator,
    y,
    sigmas,
    *,
    samples: int = 1,
    seed=None,
    hooks=(),
    stop_after: int | None = None,
    inner: int = 10,
    step: float = 0.5,
    zeta: float = 0.3,
    jacobian: bool = True,
    normalize: bool = True,
) -> SampleResult:
    """Posterior samples (B, S, C, H, W); ``inner`` Langevin iterations per noise level of step ``α = step·σ²``."""
    if int(inner) < 1:
        raise ValueError(f"inner must be >= 1, got {inner}")
    if not 0 < step < 2:
        raise ValueError(f"step must be in (0, 2), got {step}")
    run = SamplerRun(denoiser, operator, y, sigmas, samples=samples, seed=seed, hooks=hooks, stop_after=stop_after)
    x = run.initial()
    x0 = x
    last = run.n_steps - 1
    for i, sigma, sigma_next in run.steps():
        x_start = x
        prior = torch.zeros_like(x)
        likelihood = torch.zeros_like(x)
        alpha = step * sigma**2
        sigma_vec = run.sigma_vector(sigma)
        for _ in range(int(inner)):
            x0, direction = dps_gradient(run.denoiser, operator, x, sigma_vec, run.y_rep, jacobian=jacobian, normalize=normalize)
            with torch.no_grad():
                dl = -zeta * direction
                dp = (alpha / 2) * score_from_denoised(x0, x, sigma)
                if i < last:
                    dp = dp + alpha**0.5 * run.noise()
                likelihood += dl
                prior += dp
                x = x + dl + dp
        with torch.no_grad():
            x = run.emit(i, sigma, sigma_next, x_start, x0, prior, {"dps": likelihood})
    return run.result(x0)
