"""Predictor–corrector sampling with data projection (Song et al., ICLR 2022, "Solving inverse problems in
medical imaging with score-based generative models"); for inpainting, the RePaint / score_sde replacement
sampler (the known region is re-noised at the *current* level with fresh noise after every update).

Each step ``σ → σ_next`` runs

1. a Langevin **corrector** at ``σ``: ``x ← x + ε s + sqrt(2ε) z`` with ``ε = 2 (snr ‖z‖ / ‖s‖)²`` per image,
   ``s = (D(x, σ) - x)/σ²``; then a **projection** onto the measurement forward-diffused to ``σ``;
2. a reverse-diffusion **predictor** ``σ → σ_next`` (ancestral step); then a projection at ``σ_next``.

Projection at level ``σ``: ``y_σ = y + σ A n`` (fresh ``n``; ``y_σ`` is distributed as ``A x_σ + e``) and
``x ← x + λ A⁺ (y_σ - A x)``; with ``λ = 1`` and an exact pseudo-inverse, ``A x = y_σ`` afterwards (for a
mask: replace the known pixels).

Noisy measurements. Song 2022 assumes ``y`` noiseless; forcing ``A x = y_σ`` then pushes the noise ``e`` through
``A⁺`` at every step, where it accumulates for ill-conditioned ``A``. Here the projection is the Kalman update
of an iterate with uncertainty σ by a measurement with noise ``σ_y``:
``A⁺_σ = Aᵀ (A Aᵀ + ε_σ I)⁻¹`` with ``ε_σ = (σ_y / σ)² + damping · ‖A Aᵀ‖`` — the exact projection when
``σ_y = 0`` (and ``damping = 0``), progressively softer as σ falls below ``σ_y``. Operators whose ``A Aᵀ`` has a
single non-zero eigenvalue λ declare ``pinv_is_exact = True`` (masks, MRI, super-resolution); then
``A⁺_σ = λ / (λ + ε_σ) · A_pinv``. For the others (CT, blur) ``A⁺_σ`` is computed by conjugate gradients
(``damping`` keeps it well conditioned; a classical reconstruction such as FBP is not a contraction, and
iterating ``x + FBP(y - A x)`` diverges). The two projection displacements are reported as the labelled
likelihood updates ``"corrector"`` and ``"predictor"`` (KLIP's song22 backend records the corrector's).
"""

from __future__ import annotations

import torch
from torch import Tensor

from priorshift.registry import register
from priorshift.samplers._run import SamplerRun, prior_step
from priorshift.types import SampleResult

__all__ = ["sample_projection", "damped_pinv"]


def _largest_eigenvalue(operator, y: Tensor, iters: int = 20) -> float:
    """‖A Aᵀ‖ by power iteration on one measurement-shaped vector (deterministic start)."""
    v = torch.ones_like(y[:1])
    lam = 1.0
    for _ in range(iters):
        w = operator.A(operator.A_adjoint(v))
        lam = float(w.norm() / v.norm().clamp_min(1e-30))
        v = w / w.norm().clamp_min(1e-30)
    return lam


def damped_pinv(operator, r: Tensor, damping: float, iters: int = 20) -> Tensor:
    """``Aᵀ (A Aᵀ + damping I)⁻¹ r`` by conjugate gradients (per row), ``iters`` iterations."""
    z = torch.zeros_like(r)
    res = r.clone()
    p = res.clone()
    dims = tuple(range(1, r.ndim))
    rs = (res * res).sum(dims, keepdim=True)
    tiny = torch.finfo(r.dtype).tiny
    for _ in range(iters):
        q = operator.A(operator.A_adjoint(p)) + damping * p
        alpha = rs / (p * q).sum(dims, keepdim=True).clamp_min(tiny)
        z = z + alpha * p
        res = res - alpha * q
        rs_new = (res * res).sum(dims, keepdim=True)
        p = res + (rs_new / rs.clamp_min(tiny)) * p
        rs = rs_new
    return operator.A_adjoint(z)


@register("sampler", "projection")
@torch.no_grad()
def sample_projection(
    denoiser,
    operator,
    y,
    sigmas,
    *,
    samples: int = 1,
    generator=None,
    hooks=(),
    stop_after: int | None = None,
    weight: float = 1.0,
    snr: float = 0.16,
    corrector: bool = True,
    method: str = "ancestral",
    damping: float | None = None,
    cg_iters: int = 20,
) -> SampleResult:
    """Posterior samples (B, S, C, H, W) by projection PC sampling. ``weight`` is λ ∈ (0, 1] (Song 2022 used
    0.841 for CT); ``snr`` the corrector's signal-to-noise ratio; ``corrector=False`` skips it (1 NFE/step).
    The projection is the noise-aware ``A⁺_σ`` of the module docstring; ``damping`` (relative to ‖A Aᵀ‖;
    default 0 for exact-pinv operators, 1e-2 otherwise) and ``cg_iters`` (conjugate-gradient iterations)."""
    if not 0 < weight <= 1:
        raise ValueError(f"weight (λ) must be in (0, 1], got {weight}")
    run = SamplerRun(denoiser, operator, y, sigmas, samples=samples, generator=generator, hooks=hooks, stop_after=stop_after)
    D, A = run.denoiser, operator
    exact = bool(getattr(A, "pinv_is_exact", False))
    if damping is None:
        damping = 0.0 if exact else 1e-2
    lam = _largest_eigenvalue(A, run.y)
    noise_var = float(A.noise_std) ** 2

    def project(x, level):
        if level == 0 and noise_var > 0:
            return torch.zeros_like(x)  # infinitely soft: at σ = 0 the iterate is trusted over noisy data
        eps = (noise_var / level**2 if noise_var > 0 else 0.0) + damping * lam
        y_level = run.y_rep + level * A.A(run.noise()) if level > 0 else run.y_rep
        r = y_level - A.A(x)
        if exact:
            return weight * (lam / (lam + eps)) * A.A_pinv(r)
        return weight * damped_pinv(A, r, eps, cg_iters)

    x = run.initial()
    x0 = x
    for i, sigma, sigma_next in run.steps():
        updates = {}
        prior = torch.zeros_like(x)
        x_start = x
        if corrector:
            s = (D(x, run.sigma_vector(sigma)) - x) / sigma**2
            z = run.noise()
            eps = 2 * (snr * run.row_norm(z) / run.row_norm(s).clamp_min(1e-12)) ** 2
            prior = eps * s + (2 * eps).sqrt() * z
            updates["corrector"] = project(x + prior, sigma)
            x = x + prior + updates["corrector"]
        x0 = D(x, run.sigma_vector(sigma))
        stochastic = method != "euler" and sigma_next > 0
        step, _ = prior_step(x, x0, sigma, sigma_next, run.noise() if stochastic else None, method)
        prior = prior + step
        updates["predictor"] = project(x + step, sigma_next)
        x = run.emit(i, sigma, sigma_next, x_start, x0, prior, updates)
    return run.result(x if run.steps_run == run.n_steps else x0)
