"""Machinery shared by every sampler: validation, the B × S batch, per-image noise, hooks and NFE.

Internally the state is one ``(B·S, C, H, W)`` tensor, image-major (row ``b·S + s`` is sample ``s`` of
measurement ``b``); hooks and results see ``(B, S, C, H, W)`` views of it.
"""

from __future__ import annotations

from typing import Callable, Iterator, Mapping, Sequence

import torch
from torch import Tensor

from priorshift._checks import check_tensor
from priorshift.diffusion.denoisers import as_counting
from priorshift.rng import per_image_rng
from priorshift.types import Hook, SampleResult, StepState

__all__ = ["SamplerRun", "prior_step", "heun_step", "likelihood_stages", "uses_noise_std"]


def likelihood_stages(*labels: str):
    """Declare the labels a sampler reports in ``StepState.likelihood_updates`` (empty: no likelihood step).

    Detectors that read a labelled stage (KLIP's ``stage=``) check it against this declaration when they are
    built, and detectors that need a measurement step refuse samplers that declare none.
    """

    def decorator(fn):
        fn.likelihood_stages = tuple(labels)
        return fn

    return decorator


def uses_noise_std(flag: bool):
    """Declare whether a sampler reads ``operator.noise_std`` (the measurement noise level ``σ_y``).

    ``True``: the noise level changes the samples (the projection sampler's noise-aware ``A⁺_σ``, the exact
    posterior). ``False``: the sampler ignores it (normalised or fixed-step DPS and Langevin, whose step size is
    ``ζ``, not ``σ_y``; the unconditional sampler). Read it as ``getattr(fn, "uses_noise_std", None)`` (``None``:
    a sampler registered without the declaration — unknown). ``priorshift score --measurements`` refuses an
    explicit ``noise=`` in the operator spec for a sampler that declares ``False``: there the setting would be
    accepted and have no effect.
    """

    def decorator(fn):
        fn.uses_noise_std = bool(flag)
        return fn

    return decorator


def prior_step(x: Tensor, x0: Tensor, sigma: float, sigma_next: float, noise: Tensor | None, method: str) -> tuple[Tensor, float]:
    """One reverse step ``σ → σ_next`` of the VE diffusion driven by the denoised estimate ``x0``.

    Returns ``(update, c)`` where the update's deterministic part is ``c · (x0 - x)``, so a measurement-
    corrected estimate ``x0'`` moves ``x`` by an extra ``c · (x0' - x0)``.

    * ``"ancestral"``: sample ``q(x_next | x, x0)`` of the VE forward process (DDPM-style):
      mean ``x + (1 - σn²/σ²)(x0 - x)``, std ``σn sqrt(1 - σn²/σ²)``;
    * ``"euler_maruyama"``: reverse SDE ``x + (σ² - σn²) ∇log p + sqrt(σ² - σn²) z``;
    * ``"euler"``: probability-flow ODE ``x + (σn - σ)(x - x0)/σ`` (deterministic).
    Ancestral and Euler–Maruyama share the drift ``(σ² - σn²) ∇log p``, i.e. ``g² dt`` in :class:`StepState`.
    """
    ratio = (sigma_next / sigma) ** 2
    if method == "euler":
        c = 1.0 - sigma_next / sigma
        return c * (x0 - x), c
    c = 1.0 - ratio
    update = c * (x0 - x)
    if sigma_next > 0:
        if method == "ancestral":
            std = sigma_next * (1.0 - ratio) ** 0.5
        elif method == "euler_maruyama":
            std = (sigma**2 - sigma_next**2) ** 0.5
        else:
            raise ValueError(f"unknown step method {method!r}; choose ancestral, euler_maruyama or euler")
        update = update + std * noise
    elif method not in ("ancestral", "euler_maruyama"):
        raise ValueError(f"unknown step method {method!r}; choose ancestral, euler_maruyama or euler")
    return update, c


def heun_step(
    x: Tensor,
    slopes: Sequence[Tensor],
    sigma: float,
    sigma_next: float,
    slopes_next: Callable[[Tensor], Sequence[Tensor]],
) -> tuple[Tensor, ...]:
    """Heun's step ``σ → σ_next`` (Karras et al. 2022, Alg. 1) of the probability-flow ODE ``dx/dσ = slopes[0]``.

    ``slopes``: ODE slopes ``(x − D(x, σ))/σ`` at ``(x, σ)``; the first moves ``x``, the others (e.g. the part
    of it due to the measurement) are integrated along the same path. ``slopes_next(x_euler)`` gives them at the
    Euler point ``x + h·slopes[0]``, level ``σ_next`` (never called at ``σ_next = 0``: the last step is Euler's).
    Returns the update of each slope: ``½ h (d + d_next)``, or ``h·d`` at ``σ_next = 0``; ``h = σ_next − σ``.
    """
    h = sigma_next - sigma
    if sigma_next <= 0:
        return tuple(h * d for d in slopes)
    nexts = slopes_next(x + h * slopes[0])
    return tuple(0.5 * h * (d + d_next) for d, d_next in zip(slopes, nexts))


class SamplerRun:
    """Validated inputs and per-run state of one sampler call."""

    def __init__(
        self,
        denoiser,
        operator,
        y: Tensor,
        sigmas,
        *,
        samples: int,
        seed,
        hooks: Sequence[Hook],
        stop_after: int | None,
    ):
        if int(samples) != samples or samples < 1:
            raise ValueError(f"samples must be an integer >= 1, got {samples}")
        if operator is None:
            raise ValueError("operator is required; use priorshift.operators.Identity() for unconditional problems")
        operator.check_y(y)
        check_tensor(y, "y")
        sigmas = torch.as_tensor(sigmas, dtype=torch.float64).cpu()
        if sigmas.ndim != 1 or sigmas.numel() < 2:
            raise ValueError("sigmas must be a 1-D schedule of at least 2 noise levels (e.g. karras_sigmas(n, ...))")
        if not bool(torch.isfinite(sigmas).all()) or bool((sigmas < 0).any()) or bool((sigmas[1:] >= sigmas[:-1]).any()):
            raise ValueError("sigmas must be finite, non-negative and strictly decreasing")
        n_steps = sigmas.numel() - 1
        if stop_after is not None and not (1 <= int(stop_after) <= n_steps):
            raise ValueError(f"stop_after must be in [1, {n_steps}] (the number of steps to run), got {stop_after}")
        if callable(hooks):
            hooks = (hooks,)
        self.hooks = tuple(hooks)
        self.operator = operator
        self.denoiser = as_counting(denoiser)
        self.nfe_start = self.denoiser.nfe
        self.sigmas = sigmas
        self.n_steps = n_steps
        self.steps_to_run = n_steps if stop_after is None else int(stop_after)
        self.B = y.shape[0]
        self.S = int(samples)
        self.y = y
        self.y_rep = y.repeat_interleave(self.S, dim=0)
        self.image_shape = tuple(operator.A_adjoint(y).shape[1:])  # the whole batch: operators may hold per-row state (masks)
        self.dtype = y.dtype if y.is_floating_point() else torch.float32
        self.device = y.device
        self.rng = per_image_rng(seed, self.B, self.device)
        self.steps_run = 0

    # -- randomness -----------------------------------------------------------------------------------
    def noise(self) -> Tensor:
        """Fresh N(0, I) of shape (B·S, C, H, W): image b's draws come from its own generator only."""
        return self.rng.randn((self.S, *self.image_shape), dtype=self.dtype).reshape(self.B * self.S, *self.image_shape)

    def initial(self) -> Tensor:
        """``x_T = σ_0 · n``."""
        return float(self.sigmas[0]) * self.noise()

    # -- helpers --------------------------------------------------------------------------------------
    def sigma_vector(self, sigma: float) -> Tensor:
        return torch.full((self.B * self.S,), sigma, dtype=self.dtype, device=self.device)

    def steps(self) -> Iterator[tuple[int, float, float]]:
        for i in range(self.steps_to_run):
            yield i, float(self.sigmas[i]), float(self.sigmas[i + 1])

    def view(self, t: Tensor) -> Tensor:
        return t.reshape(self.B, self.S, *t.shape[1:])

    def row_norm(self, t: Tensor) -> Tensor:
        """Per-row Euclidean norm, shaped (N, 1, ..., 1) for broadcasting."""
        return t.flatten(1).norm(dim=1).reshape(-1, *([1] * (t.ndim - 1)))

    # -- the step contract ----------------------------------------------------------------------------
    def emit(
        self,
        i: int,
        sigma: float,
        sigma_next: float,
        x: Tensor,
        x0_hat: Tensor,
        prior_update: Tensor,
        likelihood_updates: Mapping[str, Tensor],
    ) -> Tensor:
        """Finish step ``i``: ``x_next = x + prior_update + Σ likelihood_updates``; then call every hook once."""
        likelihood = None
        for u in likelihood_updates.values():
            likelihood = u if likelihood is None else likelihood + u
        if likelihood is None:
            likelihood = torch.zeros_like(x)
        x_next = x + prior_update + likelihood
        if self.hooks:
            g, dt = StepState.coefficients(sigma, sigma_next)  # g² dt = σ² − σn², in the time variable t = σ
            state = StepState(
                i=i,
                n_steps=self.n_steps,
                sigma=sigma,
                sigma_next=sigma_next,
                x=self.view(x),
                x0_hat=self.view(x0_hat),
                prior_update=self.view(prior_update),
                likelihood_update=self.view(likelihood),
                g=g,
                dt=dt,
                likelihood_updates={k: self.view(v) for k, v in likelihood_updates.items()},
            )
            for hook in self.hooks:
                hook(state)
        self.steps_run = i + 1
        return x_next

    def finish(self, x: Tensor, x0_hat: Tensor) -> SampleResult:
        """The result: the final iterate ``x`` after a full run, the last denoised estimate after ``stop_after``."""
        return self.result(x if self.steps_run == self.n_steps else x0_hat)

    def result(self, x_final: Tensor) -> SampleResult:
        return SampleResult(
            x0=self.view(x_final.detach()),
            nfe=self.denoiser.nfe - self.nfe_start,
            sigmas=self.sigmas,
            steps_run=self.steps_run,
        )
