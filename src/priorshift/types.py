"""The protocols every part of priorshift plugs into, and the frozen result types.

Conventions (the "Conventions" section of ``docs/decisions.md``):

* images are ``(B, C, H, W)`` float tensors in **[-1, 1]**;
* noise is VE / EDM form, ``x_sigma = x0 + sigma * n``; ``sigma`` is a ``(B,)`` tensor;
* **higher score = more shifted / more out-of-distribution**, everywhere;
* every result carries the number of network evaluations (NFE) it cost.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Protocol, Sequence, runtime_checkable

from torch import Tensor

__all__ = [
    "Denoiser",
    "Operator",
    "StepState",
    "Hook",
    "SampleResult",
    "Scores",
    "DetectorProtocol",
]


@runtime_checkable
class Denoiser(Protocol):
    """An MMSE denoiser ``D(x, sigma) ≈ E[x0 | x0 + sigma * n = x]`` in VE form.

    ``x``: ``(N, C, H, W)``; ``sigma``: ``(N,)`` (one noise level per row); returns ``(N, C, H, W)``.
    The score of the noisy marginal follows from Tweedie: ``∇ log p_sigma(x) = (D(x, sigma) - x) / sigma²``
    (:func:`priorshift.diffusion.score`).
    """

    sigma_min: float
    sigma_max: float

    def __call__(self, x: Tensor, sigma: Tensor) -> Tensor: ...


@runtime_checkable
class Operator(Protocol):
    """A forward model ``y = A(x) + e``, ``e ~ N(0, noise_std² I)``.

    ``A`` maps ``(B, C, H, W)`` images to ``(B, *measurement_shape)``; ``A_adjoint`` is its exact adjoint
    (all operators in priorshift are linear). ``noise_std`` is a plain settable attribute.
    ``__call__(x, seed=None)`` draws a noisy measurement.
    """

    noise_std: float

    def A(self, x: Tensor) -> Tensor: ...

    def A_adjoint(self, y: Tensor) -> Tensor: ...

    def __call__(self, x: Tensor, seed: Any = None) -> Tensor: ...


@dataclass(frozen=True)
class StepState:
    """What a sampler exposes to hooks at step ``i`` (from ``sigma`` to ``sigma_next``). Read-only.

    Tensors are shaped ``(B, S, C, H, W)``: B measurements × S posterior samples each. They describe the step
    that has just been taken; changing them cannot change the trajectory.

    ``x``: the state before the step. ``x0_hat``: the denoiser's estimate ``D(x, sigma)``.
    ``prior_update``: the displacement caused by the prior (score) part of the step, noise included.
    ``likelihood_update``: the displacement caused by the measurement step(s) alone; for samplers with
    several measurement stages per step, ``likelihood_updates`` holds each stage under its label and
    ``likelihood_update`` is their sum. ``x_next = x + prior_update + likelihood_update``.

    ``g`` and ``dt`` are the diffusion coefficient and (positive, reverse-time) time step of the VE SDE
    this step discretizes, in the time variable ``t = sigma``: ``g² dt = sigma² - sigma_next²``. A step of
    the reverse SDE moves ``x`` by ``g² dt · ∇ log p``, so ``‖likelihood_update‖² / (g² dt)`` is
    ``g² ‖s_l‖² dt`` — the step's contribution to ``2 · KL(p(x|y) ‖ p(x))`` (KLIP, Eq. 12).
    """

    i: int
    n_steps: int
    sigma: float
    sigma_next: float
    x: Tensor
    x0_hat: Tensor
    prior_update: Tensor
    likelihood_update: Tensor
    g: float
    dt: float
    likelihood_updates: Mapping[str, Tensor] = field(default_factory=dict)

    @staticmethod
    def coefficients(sigma: float, sigma_next: float) -> tuple[float, float]:
        """``(g, dt)`` of the step from ``sigma`` to ``sigma_next`` (``sigma > sigma_next >= 0``), as above:
        ``dt = sigma - sigma_next``, ``g = sqrt((sigma² - sigma_next²) / dt)``."""
        dt = sigma - sigma_next
        return ((sigma**2 - sigma_next**2) / dt) ** 0.5, dt


Hook = Callable[[StepState], None]
"""A per-step observer: called once per step with a :class:`StepState`; must not modify it."""


@dataclass(frozen=True)
class SampleResult:
    """The output of a posterior sampler.

    ``x0``: ``(B, S, C, H, W)`` samples (when the sampler stopped early: the denoised estimate at the stop).
    ``nfe``: network evaluations spent, counted by :class:`priorshift.diffusion.CountingDenoiser`
    (one per image row per call; all B × S rows together). ``sigmas``: the float64 schedule that was
    given; ``steps_run``: how many of its steps were taken.
    """

    x0: Tensor
    nfe: int
    sigmas: Tensor
    steps_run: int

    @property
    def nfe_per_image(self) -> float:
        """Network evaluations per measurement (all S posterior samples of it included)."""
        return self.nfe / self.x0.shape[0]


@dataclass(frozen=True)
class Scores:
    """A detector's output. **Higher ``score`` = more shifted.**

    ``score``: ``(B,)``; ``map``: ``(B, h, w)`` block map or ``None``; ``nfe``: network evaluations spent
    on the whole batch; ``extras``: method-specific values (per-step curves, KL in nats, ...).
    """

    score: Tensor
    map: Tensor | None
    nfe: int
    extras: Mapping[str, Any] = field(default_factory=dict)

    def __getattr__(self, name: str) -> Any:
        # Let ``scores.kl_nats`` read ``scores.extras["kl_nats"]``.
        extras = object.__getattribute__(self, "extras")
        if name in extras:
            return extras[name]
        raise AttributeError(f"{type(self).__name__} has no attribute or extra {name!r}")


@runtime_checkable
class DetectorProtocol(Protocol):
    """A distribution-shift detector. **Higher score = more shifted.** (The base class that implements it,
    :class:`priorshift.detectors.Detector`, and the batched loop: :mod:`priorshift.detectors.base`.)

    ``input_kind``: ``"measurements"`` (``y = A(x) + e``) or ``"images"`` (``(B, C, H, W)`` in [-1, 1]).
    ``fit(data, seed=...)``: calibrate on in-distribution data of that kind (a no-op where none is needed) and
    return ``self``. ``score(data, seed=..., hooks=...)``: a :class:`Scores` with ``score`` of shape (B,).
    ``seed``: per-image randomness (an int, one int per image, ...; :func:`priorshift.rng.per_image_rng`).
    """

    input_kind: str

    def fit(self, data: Tensor | None = None, *, seed: Any = 0) -> "DetectorProtocol": ...

    def score(self, data: Tensor, *, seed: Any = 0, hooks: Sequence[Hook] = ()) -> Scores: ...
