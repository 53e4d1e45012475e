"""The baselines every results table must carry: trivial statistics and the classical diffusion-OOD scores.

A method that does not beat these is not detecting anything its prior knows. (The shipped Fashion-MNIST
prior with KLIP's defaults separates Fashion-MNIST from MNIST at AUROC ≈ 0.5 while the mean of ``y²`` alone
reaches 0.998.) All four follow the detector contract (:mod:`priorshift.detectors.base`); **higher score =
more shifted**; every fitted state lives in ``attr_`` attributes and is fitted on in-distribution data only.

Measurement statistics (``input_kind = "measurements"``, no network, ``nfe = 0``, deterministic):

* ``measurement-norm`` (:class:`MeasurementNorm`): ``t(y) = ‖y‖² / m``, the per-entry mean of ``y²``
  (``m`` entries per measurement).
* ``residual`` (:class:`Residual`): ``t(y) = ‖y − A x̂(y)‖² / m``, the data-consistency residual of a classical
  reconstruction ``x̂`` (filtered back-projection for CT; a smoothness-regularised least-squares
  reconstruction where the operator's pseudo-inverse is exact, see :class:`Residual`).

Both are standardised on ID measurements in the log domain and score **both tails** by default: ``t`` is an
energy, a change of the signal's scale by a factor ``c`` moves ``ln t`` by about ``2 ln c`` whichever way
it goes, so a blank or low-contrast input is as shifted as a saturated one. Real ID statistics are skewed
(Fashion-MNIST's ``ln mean y²`` has skewness −0.7: a long tail of bright garments), so each tail gets its
own scale — a split normal: with ``c = median(ln t)`` and ``s_± = sqrt(mean of (ln t − c)² on that side)``,

    z = (ln t − c) / s_+  if ln t ≥ c,   (ln t − c) / s_−  otherwise;      score = |z|

(Fashion-MNIST vs MNIST through 50% random-pixel inpainting, σ_y = 0.05, fitted on 500 training images, 300 +
300 test images: AUROC 0.994, against 0.93 for the symmetric ``|ln t − mean| / sd`` and 0.998 for the one-sided
score). ``side="upper"`` scores ``(ln t − c) / s_+`` (only too-large values are
shifted); ``log=False`` standardises ``t`` itself.

Image statistics (``input_kind = "images"``, a denoiser ``D(x, σ)``, stochastic: noise ``z ~ N(0, I)`` is
drawn per image from its seed):

* ``denoising-error`` (:class:`DenoisingError`, after DDPM-OOD, Graham et al., "Denoising diffusion models
  for out-of-distribution detection", CVPR Workshops 2023): ``e_k(x) = ‖D(x + σ_k z, σ_k) − x‖²`` at several
  ``σ_k``, z-scored per level on ID images and summed. DDPM-OOD reconstructs with a multi-step PLMS
  sampler from each starting level; here one denoiser call per level (the Tweedie reconstruction), which
  is what the closed form below describes.
* ``score-norm`` (:class:`ScoreNorm`, after MSMA, Mahmood, Oliva & Styner, "Multiscale score matching for
  out-of-distribution detection", ICLR 2021): the vector of score norms ``n_k = ‖s(x + σ_k z, σ_k)‖``,
  ``s = (D − x̃)/σ²``, with a Gaussian density (Ledoit–Wolf-shrunk covariance) fitted on ID vectors; the
  score is the squared Mahalanobis distance.

Closed forms on a Gaussian prior ``N(μ, Σ)``, ``Σ = U diag(λ) Uᵀ`` (the tests' oracles):
``E e_k = tr((Σ⁻¹ + σ_k⁻² I)⁻¹) = Σ_i λ_i σ_k² / (λ_i + σ_k²)`` and ``E n_k² = Σ_i 1 / (λ_i + σ_k²)``; for
``y = M x + σ_y n``, ``E t = (tr(M Σ Mᵀ) + ‖M μ‖²) / m + σ_y²``.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch
from torch import Tensor

from priorshift.detectors.base import Detector, resolve_seeds
from priorshift.diffusion.denoisers import as_counting
from priorshift.registry import register
from priorshift.rng import per_image_rng
from priorshift.types import Scores

__all__ = ["MeasurementNorm", "Residual", "DenoisingError", "ScoreNorm", "tikhonov_reconstruction", "ledoit_wolf"]

DEFAULT_SIGMAS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
"""Noise levels of the image baselines: roughly geometric (1-2-5) over the range where a prior of [-1, 1]
images (data sd ≈ 0.5) goes from copying its input to relying on what it learnt."""

SIDES = ("both", "upper")


# -- shared helpers ---------------------------------------------------------------------------------------
def _per_image_energy(t: Tensor) -> Tensor:
    """``‖t_b‖² / m`` per row (``|·|²`` for complex entries), float64: ``(B, ...) → (B,)``."""
    t = t.to(torch.complex128 if t.is_complex() else torch.float64)
    return t.abs().pow(2).flatten(1).mean(1)


def _check_side(side: str) -> str:
    if side not in SIDES:
        raise ValueError(f"unknown side {side!r}; choose one of {', '.join(SIDES)}")
    return side


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


def _check_count(value, name: str) -> int:
    if isinstance(value, bool) or int(value) != value or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return int(value)


def _fit_location_scale(values: Tensor, what: str) -> tuple[Tensor, Tensor]:
    """Mean and (unbiased) standard deviation over the first axis, float64; a clear error for a constant column."""
    mean = values.mean(0)
    std = values.std(0, unbiased=True)
    if not bool((std > 1e-12 * mean.abs().clamp_min(1e-300)).all()):
        raise ValueError(f"{what} is constant on the in-distribution data (std 0): it cannot be standardised")
    return mean, std


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


# -- measurement statistics -------------------------------------------------------------------------------
class _StandardisedStatistic(Detector):
    """A per-measurement statistic ``t(y) > 0`` standardised on ID measurements (log domain by default)."""

    input_kind = "measurements"
    needs_fit = True
    stochastic = False
    statistic_name = "statistic"

    def __init__(self, prior, operator, *, side: str = "both", log: bool = True):
        if operator is None:
            raise ValueError(f"{type(self).__name__} scores measurements: it needs the operator that produced them")
        self.prior = prior
        self.operator = operator
        self.side = _check_side(side)
        self.log = bool(log)

    def statistic(self, y: Tensor) -> Tensor:  # pragma: no cover - abstract
        """The raw statistic, ``(B, ...) → (B,)`` float64."""
        raise NotImplementedError

    def _transform(self, t: Tensor) -> Tensor:
        return t.clamp_min(torch.finfo(torch.float64).tiny).log() if self.log else t

    def _fit(self, data: Tensor, *, seed) -> None:
        v = self._transform(self.statistic(data))
        self.mean_, self.std_ = _fit_location_scale(v, f"the {self.statistic_name}")
        self.center_ = torch.quantile(v, 0.5)
        d = v - self.center_
        upper, lower = d[d > 0], d[d < 0]
        s_up = upper.pow(2).mean().sqrt() if upper.numel() else None
        s_lo = lower.pow(2).mean().sqrt() if lower.numel() else None
        self.scale_upper_ = s_up if s_up is not None else s_lo
        self.scale_lower_ = s_lo if s_lo is not None else s_up
        self.n_fit_ = int(data.shape[0])

    def standardise(self, t: Tensor) -> Tensor:
        """The signed split-normal z of a raw statistic ``t`` (B,): ``(v − center_) / scale_±``, ``v = ln t``."""
        d = self._transform(t) - self.center_
        return torch.where(d >= 0, d / self.scale_upper_, d / self.scale_lower_)

    def _score(self, data: Tensor, *, seed, hooks: tuple) -> Scores:
        t = self.statistic(data)
        z = self.standardise(t)
        score = z.abs() if self.side == "both" else z
        return Scores(score=score, map=None, nfe=0, extras={self.statistic_name: t, "z": z})

    def config(self) -> dict[str, Any]:
        return {**super().config(), "side": self.side, "log": self.log}


@register("detector", "measurement-norm")
class MeasurementNorm(_StandardisedStatistic):
    """``t(y) = ‖y‖² / m``: the mean of ``y²`` over a measurement's ``m`` entries, standardised on ID data.

    The cheapest possible baseline; it needs neither a prior nor a reconstruction. On ID data
    ``E t = (tr(A Σ Aᵀ) + ‖A μ‖²) / m + σ_y²`` for a prior with mean μ and covariance Σ.

    Args:
        prior: not used by the statistic (may be ``None``); held so that every measurement detector is built
            the same way, ``(prior, operator)``.
        operator: the forward model; only its ``check_y`` is used (input validation).
        side: ``"both"`` (default): score ``|z|``, a shift of scale either way is shifted; ``"upper"``: ``z``
            with the upper scale (the module docstring).
        log: standardise ``ln t`` (default) rather than ``t``.

    Fitted (float64 scalars, of ``ln t``, or of ``t`` with ``log=False``): ``center_`` (the median),
    ``scale_upper_``, ``scale_lower_`` (the split scales the score uses), ``mean_``, ``std_`` (the moments, for
    reports), ``n_fit_``.
    ``score(y)``: ``score`` (B,) ≥ 0 with ``side="both"``; extras ``statistic`` (B,) = ``t``, ``z`` (B,) the
    signed split z; ``nfe = 0``.
    """

    statistic_name = "statistic"

    def statistic(self, y: Tensor) -> Tensor:
        return _per_image_energy(y)

    @classmethod
    def example(cls) -> "MeasurementNorm":
        from priorshift.analytic import stationary_gaussian
        from priorshift.operators import Inpainting

        return cls(stationary_gaussian(8), Inpainting.example(image_size=8, noise_std=0.05))

    def __repr__(self) -> str:
        return f"MeasurementNorm(operator={self.operator!r}, side={self.side!r}, log={self.log})"


RECONSTRUCTIONS = ("auto", "pinv", "tikhonov")


def grad_energy_adjoint(x: Tensor) -> Tensor:
    """``Lᵀ L x`` for the forward-difference image gradient ``L`` (Neumann boundary): the negative 5-point
    Laplacian. ``(B, C, H, W) → (B, C, H, W)``."""
    out = torch.zeros_like(x)
    dh = x[..., 1:, :] - x[..., :-1, :]
    dw = x[..., :, 1:] - x[..., :, :-1]
    out[..., 1:, :] += dh
    out[..., :-1, :] -= dh
    out[..., :, 1:] += dw
    out[..., :, :-1] -= dw
    return out


def operator_norm2(operator, image_shape: Sequence[int], *, n_iter: int = 30, dtype=torch.float64, device="cpu") -> float:
    """``‖A‖₂²``, the largest eigenvalue of ``AᵀA``, by ``n_iter`` power iterations from a fixed random start."""
    v = torch.randn((1, *image_shape), generator=torch.Generator().manual_seed(0), dtype=dtype).to(device)
    lam = 0.0
    for _ in range(n_iter):
        v = v / v.norm().clamp_min(torch.finfo(dtype).tiny)
        w = operator.A_adjoint(operator.A(v))
        lam = float((v * w).sum())
        v = w
    return lam


def tikhonov_reconstruction(operator, y: Tensor, weight: float, *, n_iter: int = 100, tol: float = 1e-8) -> Tensor:
    """``x̂ = argmin_x ‖y − A x‖² + weight · ‖∇x‖²`` (forward differences, Neumann boundary), ``(B, ...) → (B, C, H, W)``.

    Conjugate gradients on the normal equations ``(AᵀA + weight · LᵀL) x = Aᵀ y`` from ``x = 0``; each image
    runs its own CG and stops on its own once ``‖r‖ ≤ tol · ‖Aᵀ y‖`` (so the result does not depend on the
    batch), at most ``n_iter`` iterations. The system is positive definite when ``A`` sees the image's mean
    (``L``'s null space is the constants).
    """
    b = operator.A_adjoint(y)
    dims = tuple(range(1, b.ndim))

    def normal(v):
        return operator.A_adjoint(operator.A(v)) + weight * grad_energy_adjoint(v)

    x = torch.zeros_like(b)
    r = b.clone()
    p = r.clone()
    rs = (r * r).sum(dims, keepdim=True)
    stop = (tol**2) * rs
    tiny = torch.finfo(b.dtype).tiny
    for _ in range(int(n_iter)):
        active = rs > stop
        if not bool(active.any()):
            break
        q = normal(p)
        pq = (p * q).sum(dims, keepdim=True)
        alpha = torch.where(active, rs / pq.clamp_min(tiny), torch.zeros_like(rs))
        x = x + alpha * p
        r = r - alpha * q
        rs_new = (r * r).sum(dims, keepdim=True)
        beta = torch.where(active, rs_new / rs.clamp_min(tiny), torch.zeros_like(rs))
        p = torch.where(active, r + beta * p, p)
        rs = torch.where(active, rs_new, rs)
    return x


@register("detector", "residual")
class Residual(_StandardisedStatistic):
    """``t(y) = ‖y − A x̂(y)‖² / m``: how far a classical reconstruction is from explaining its own data.

    ``reconstruction``:

    * ``"pinv"``: the operator's ``A_pinv`` (filtered back-projection for CT, a regularised inverse for blur).
      For operators whose pseudo-inverse is exact (``pinv_is_exact``: identity, inpainting, downsampling,
      MRI) ``A A⁺ y`` is the projection of ``y`` onto the range of ``A``, so the residual is the noise outside
      that range: identically 0 for square or full-row-rank ``A`` and information-free otherwise;
      :meth:`fit` refuses a residual that is identically zero.
    * ``"tikhonov"``: the smoothness-regularised least-squares reconstruction
      ``argmin ‖y − A x‖² + w ‖A‖₂² ‖∇x‖²`` (:func:`tikhonov_reconstruction`, ``w = tikhonov``; the weight is
      relative to ``‖A‖₂²``, estimated by power iteration in :meth:`fit`, so it means the same on every
      operator). Its residual is the part of ``y`` a smooth image cannot explain — the high-frequency energy
      of the observed data; it is the classical choice that stays informative for exact-pinv operators
      (a few CG iterations would not do: for masks CG converges in one iteration to the exact pinv).
    * ``"auto"`` (default): ``"tikhonov"`` where ``pinv_is_exact``, else ``"pinv"``.

    Other args as :class:`MeasurementNorm` (``side``, ``log``); ``n_iter``, ``tol``: the CG's limits.
    Fitted: as :class:`MeasurementNorm` and, for ``"tikhonov"``, ``op_norm2_`` (``‖A‖₂²``).
    ``score(y)``: extras ``residual`` (B,) = ``t``, ``z`` (B,), ``reconstruction_method``; ``nfe = 0``.
    """

    statistic_name = "residual"

    def __init__(
        self, prior, operator, *, reconstruction: str = "auto", tikhonov: float = 1.0, n_iter: int = 100, tol: float = 1e-8,
        side: str = "both", log: bool = True,
    ):
        super().__init__(prior, operator, side=side, log=log)
        if reconstruction not in RECONSTRUCTIONS:
            raise ValueError(f"unknown reconstruction {reconstruction!r}; choose one of {', '.join(RECONSTRUCTIONS)}")
        if not (math.isfinite(float(tikhonov)) and float(tikhonov) > 0):
            raise ValueError(f"tikhonov (the smoothness weight) must be > 0, got {tikhonov!r}")
        if not float(tol) >= 0:
            raise ValueError(f"tol must be >= 0, got {tol!r}")
        self.reconstruction = reconstruction
        self.tikhonov = float(tikhonov)
        self.n_iter = _check_count(n_iter, "n_iter")
        self.tol = float(tol)

    @property
    def reconstruction_method(self) -> str:
        """The reconstruction used: ``reconstruction`` with ``"auto"`` resolved for this operator."""
        if self.reconstruction != "auto":
            return self.reconstruction
        return "tikhonov" if getattr(self.operator, "pinv_is_exact", False) else "pinv"

    def reconstruct(self, y: Tensor) -> Tensor:
        """The classical reconstruction ``x̂(y)``, ``(B, C, H, W)``."""
        if self.reconstruction_method == "pinv":
            return self.operator.A_pinv(y)
        norm2 = getattr(self, "op_norm2_", None)
        if norm2 is None:
            norm2 = self._op_norm2(y)
        return tikhonov_reconstruction(self.operator, y, self.tikhonov * norm2, n_iter=self.n_iter, tol=self.tol)

    def _op_norm2(self, y: Tensor) -> float:
        shape = tuple(self.operator.A_adjoint(y[:1]).shape[1:])
        return operator_norm2(self.operator, shape, dtype=y.dtype, device=y.device)

    def statistic(self, y: Tensor) -> Tensor:
        return _per_image_energy(y - self.operator.A(self.reconstruct(y)))

    def _fit(self, data: Tensor, *, seed) -> None:
        if self.reconstruction_method == "tikhonov":
            self.op_norm2_ = self._op_norm2(data)
        t = self.statistic(data)
        if not bool((t > 0).any()):
            raise ValueError(
                f"the residual is identically zero on the in-distribution data: A·A_pinv(y) = y for {self.operator!r} "
                "(its pseudo-inverse is exact); use reconstruction='tikhonov' (or 'auto')"
            )
        super()._fit(data, seed=seed)

    def _score(self, data: Tensor, *, seed, hooks: tuple) -> Scores:
        s = super()._score(data, seed=seed, hooks=hooks)
        return Scores(score=s.score, map=None, nfe=0, extras={**s.extras, "reconstruction_method": self.reconstruction_method})

    @classmethod
    def example(cls) -> "Residual":
        from priorshift.analytic import stationary_gaussian
        from priorshift.operators import Inpainting

        return cls(stationary_gaussian(8), Inpainting.example(image_size=8, noise_std=0.05))

    def config(self) -> dict[str, Any]:
        return {**super().config(), "reconstruction": self.reconstruction, "tikhonov": self.tikhonov, "n_iter": self.n_iter, "tol": self.tol}

    def __repr__(self) -> str:
        return f"Residual(operator={self.operator!r}, reconstruction={self.reconstruction_method!r}, side={self.side!r})"


# -- image statistics -------------------------------------------------------------------------------------
class _MultiLevel(Detector):
    input_kind = "images"
    needs_fit = True
    stochastic = True

    def __init__(self, prior, *, sigmas: Sequence[float] = DEFAULT_SIGMAS, repeats: int = 1):
        self.prior = prior
        self.sigmas = _check_sigmas(sigmas, prior)
        self.repeats = _check_count(repeats, "repeats")

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
        self.mean_, self.std_ = _fit_location_scale(err.flatten(2).sum(-1), "the denoising error at some σ")
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
        mean, std = _fit_location_scale(v, "the score norm at some σ")
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
