"""Measurement-domain KL between the data behind a set of measurements and a candidate prior
(Shoushtari, Chandler, Wang, Asif & Kamilov, "Unsupervised detection of distribution shift in inverse problems
using diffusion models", arXiv 2505.11482), and its image-domain reference.

**Image domain (paper Eq. 4).** With VE smoothing ``x_σ = x + σ n`` (``n ~ N(0, I)``), ``p_σ``/``q_σ`` the
smoothed densities and ``D_p``/``D_q`` their MMSE denoisers, so that ``∇ log p_σ(x) = (D_p(x, σ) − x) / σ²``,

    KL(p ‖ q) = ∫_0^∞ σ · E_{x_σ ~ p_σ} ‖∇log p_σ(x_σ) − ∇log q_σ(x_σ)‖² dσ
              = ∫_0^∞ E_{x_σ ~ p_σ} ‖D_p(x_σ, σ) − D_q(x_σ, σ)‖² σ⁻³ dσ                                (nats)

(the VE form of the generic ``½ ∫ g² E‖s_p − s_q‖² dt``: ``g² = dσ²/dσ = 2σ`` gives the factor ``σ``; the
constant is checked against the Gaussian closed form in ``tests/test_measurement_kl.py`` to 0.05%). Both
denoisers see the **same** ``x_σ``: the official code draws separate noise for each network, which adds
``Var[D_p(x_σ) | x] + Var[D_q(x_σ) | x]`` to every term — ``≈ 2σ²d`` at small σ, where both denoisers are
nearly the identity, so the σ⁻³-weighted integral of that bias grows like ``2d · ln(σ_max/σ_min)`` whatever
the shift (and is nonzero for p = q).

**Measurement domain (paper Theorem 1, Eq. 9).** For ``y = H x + e`` with ``H = U S Vᵀ``, a random diagonal
projection ``P`` (an inpainting mask; a Cartesian k-space column mask for MRI, in the basis of ``Vᵀ``) and
``ȳ_σ = P x̄ + n̄`` the noisy projected measurement at level σ,

    KL(p ‖ q) "=" ∫_0^∞ E_{P, ȳ} ‖W (∇log p_σ(V ȳ_σ) − ∇log q_σ(V ȳ_σ))‖² σ dσ,     W = E[P]^{−3/2}.

Here ``V ȳ_σ = V ȳ + σ n``: the back-projected measurement (inpainting: ``P ⊙ y``, missing pixels 0 — the
official code's fill value 0.5 in [0, 1]; MRI: the real zero-filled image ``Re(Fᴴ M y)``) plus diffusion noise
on the whole image, one draw ``n`` shared by both denoisers. ``‖W v‖²`` is taken in the ``Vᵀ`` basis:
``p⁻³ ‖v‖²`` for inpainting (``E[P] = p``), ``Σ_k E[P]_k⁻³ |(F v)_k|²`` for MRI (``E[P]_k = 1`` on the
always-sampled centre columns, ``(n_lines − c) / (W − c)`` on the others).

.. warning:: **The weight ``W = E[P]^{−3/2}`` does not give the KL in nats.** For a pure mean shift
   (``p = N(μ_p, Σ)``, ``q = N(μ_q, Σ)``) ``D_p(z) − D_q(z) = σ² (Σ + σ² I)⁻¹ (μ_p − μ_q)`` does not depend on
   the input ``z``, so *every* input construction gives exactly ``p⁻³ · KL`` for inpainting (8× at p = 0.5,
   125× at p = 0.2; ``tests/test_measurement_kl.py`` checks this to 1e-9). ``weight="none"`` (``W = I``) is
   exact there and within a factor ≈ 0.7–2.7 of the KL on covariance shifts (measured ratios in the tests and
   ``benchmarks/results/measurement-kl-gaussian.md``). For inpainting ``W`` is a constant, so at a fixed ``p``
   it never changes a ranking of candidate priors; it does change MRI rankings (it reweights frequencies).
   ``weight="theorem"`` (the default) follows the paper.

**Random masks.** With clean images as ``data`` (the paper's experiments) a fresh mask ``P`` (and measurement
noise ``e``) is drawn for every term — every (image, σ, draw) — so the expectation over ``P`` is Monte Carlo
with one draw per term. With real measurements (``masks=`` given) each image's own mask is used at every σ:
the expectation over ``P`` is then taken across images, which is all measured data allow.

**Quadrature.** On ``u = ln σ`` the integrand is ``g(σ) = E‖W(D_p − D_q)‖² σ⁻²`` and the trapezoid rule is
used on a log-spaced grid. Default: 32 points from σ = 0.002 to 80, EDM's training range (a denoiser is not
trusted outside it). The ends cost little: below σ₀ ``‖D_p − D_q‖² ≈ σ⁴ ‖s_p − s_q‖²``, so the missing head is
``≈ g(σ₀)/2``; above σ_K both denoisers return (almost) their means, ``‖D_p − D_q‖²`` is flat and the missing
tail is ``≈ g(σ_K)/2`` (``≈ ‖μ_p − μ_q‖² / (2 σ_K²)``). Both estimates are reported
(:attr:`KLEstimate.truncation_nats`, not added to ``kl_nats``); on the test Gaussians they are 0.05% of the KL
and the trapezoid error on 32 points is below 1e-5 relative.

**Cost.** Two network evaluations (``D_p`` and ``D_q``) per (image, σ, draw): ``2 · K · draws`` NFE per image,
counted by :func:`priorshift.diffusion.as_counting`. No sampler, no backward pass.

Shapes and ranges: images ``(N, C, H, W)`` in [-1, 1]; inpainting measurements ``(N, C, H, W)`` (``y = m ⊙ x
+ e``, any value on missing pixels); MRI measurements ``(N, C, H, W, 2)`` (centred k-space, real/imaginary
last, as :class:`priorshift.operators.MRI` makes them); masks 0/1, 1 = observed.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import Tensor

from priorshift._checks import check_image, check_tensor
from priorshift.detectors.base import Detector, resolve_seeds
from priorshift.diffusion.denoisers import as_counting
from priorshift.operators.inpainting import Inpainting
from priorshift.operators.masks import random_block_mask
from priorshift.operators.mri import MRI, cartesian_mask
from priorshift.registry import register
from priorshift.rng import per_image_rng
from priorshift.types import Scores

__all__ = ["MeasurementKL", "MeasurementKLScore", "KLEstimate", "log_sigma_grid", "mri_observation_probability", "WEIGHTS", "DOMAINS"]

WEIGHTS = ("theorem", "none")
DOMAINS = ("image", "inpainting", "mri")
DEFAULT_SIGMA_RANGE = (0.002, 80.0)
DEFAULT_POINTS = 32


def log_sigma_grid(n: int = DEFAULT_POINTS, sigma_min: float = DEFAULT_SIGMA_RANGE[0], sigma_max: float = DEFAULT_SIGMA_RANGE[1]) -> Tensor:
    """``n`` log-spaced noise levels from ``sigma_min`` to ``sigma_max`` (both exact), float64 ``(n,)``."""
    if isinstance(n, bool) or int(n) != n or n < 2:
        raise ValueError(f"a σ grid needs an integer number of points >= 2, got {n!r}")
    if not 0 < float(sigma_min) < float(sigma_max) < math.inf:
        raise ValueError(f"need 0 < sigma_min < sigma_max < inf, got {sigma_min!r}, {sigma_max!r}")
    s = torch.linspace(math.log(sigma_min), math.log(sigma_max), int(n), dtype=torch.float64).exp()
    s[0], s[-1] = float(sigma_min), float(sigma_max)
    return s


def _check_grid(sigmas) -> Tensor:
    try:
        s = torch.as_tensor(sigmas, dtype=torch.float64).flatten().clone()
    except (TypeError, ValueError, RuntimeError):
        raise ValueError(f"sigmas must be a sequence of noise levels, got {sigmas!r}") from None
    if s.numel() < 2:
        raise ValueError(f"the σ grid needs at least 2 noise levels for the quadrature, got {s.numel()}")
    if not bool(torch.isfinite(s).all()):
        raise ValueError("the σ grid contains NaN/Inf")
    if float(s.min()) <= 0:
        raise ValueError(
            f"the σ grid must not touch 0 (smallest level {float(s.min()):g}): the σ⁻³ weight diverges there; start at a "
            "small positive σ (the default is 0.002) — the head below it costs ≈ g(σ₀)/2, reported in truncation_nats"
        )
    if not bool((s[1:] > s[:-1]).all()):
        raise ValueError("the σ grid must be strictly increasing (the quadrature integrates from σ_min up to σ_max)")
    return s


def _check_weight(weight: str) -> str:
    if weight not in WEIGHTS:
        raise ValueError(f"unknown weight {weight!r}; choose one of {', '.join(WEIGHTS)}")
    return weight


def _check_count(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or int(value) != value or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return int(value)


def _check_probability(p) -> float:
    try:
        f = float(p)
    except (TypeError, ValueError):
        raise ValueError(f"p (the observation probability) must be a number in (0, 1], got {p!r}") from None
    if not 0.0 < f <= 1.0:
        raise ValueError(f"p (the observation probability) must be in (0, 1], got {p!r}")
    return f


def prior_shape(prior) -> tuple[int, int, int] | None:
    """``(C, H, W)`` a prior denoises, when it says (``shape``, or ``channels`` and ``image_size``); else ``None``."""
    shape = getattr(prior, "shape", None)
    if shape is not None and len(tuple(shape)) == 3:
        return tuple(int(s) for s in shape)
    size, channels = getattr(prior, "image_size", None), getattr(prior, "channels", None)
    if size is not None and channels is not None:
        return (int(channels), int(size), int(size))
    return None


def mri_observation_probability(width: int, n_lines: int, center_lines: int) -> Tensor:
    """``E[P]`` per centred k-space column for :func:`priorshift.operators.cartesian_mask`: 1 on the
    ``center_lines`` around DC (always sampled), ``(n_lines − c) / (W − c)`` elsewhere. float64 ``(W,)``."""
    start = width // 2 - center_lines // 2
    prob = torch.full((width,), (n_lines - center_lines) / max(1, width - center_lines), dtype=torch.float64)
    prob[start : start + center_lines] = 1.0
    return prob


@dataclass(frozen=True)
class KLEstimate:
    """The result of :meth:`MeasurementKL.estimate`. Float64 tensors, on the CPU.

    ``kl_nats``: the estimate (quadrature over the σ grid; in nats with ``weight="none"`` or in the image
    domain; see the module's warning for ``weight="theorem"``). ``stderr``: its Monte-Carlo standard error
    (standard deviation of the per-image contributions / sqrt(N); ``nan`` for one image). ``curve`` (K,):
    the cumulative KL ``∫_{σ_0}^{σ_k}``, ``curve[0] = 0``, ``curve[-1] = kl_nats``; ``curve_stderr`` (K,).
    ``sigmas`` (K,). ``integrand`` (K,): ``E‖W(D_p − D_q)‖² σ⁻³`` per σ (mean over images and draws).
    ``per_image`` (N,): each image's contribution in nats (their mean is ``kl_nats``). ``truncation_nats``:
    ``(head, tail)`` estimates of the integral below σ_0 and above σ_K. ``nfe``: network evaluations, both
    denoisers. ``domain``: ``"image"``, ``"inpainting"`` or ``"mri"``; ``masks``: ``"redrawn per term"``,
    ``"given"`` or ``None``.
    """

    kl_nats: float
    stderr: float
    curve: Tensor
    curve_stderr: Tensor
    sigmas: Tensor
    integrand: Tensor
    per_image: Tensor
    truncation_nats: tuple[float, float]
    nfe: int
    n_images: int
    draws: int
    domain: str
    weight: str
    masks: str | None

    @property
    def nfe_per_image(self) -> float:
        return self.nfe / self.n_images

    def __repr__(self) -> str:
        return (
            f"KLEstimate({self.domain}: {self.kl_nats:.4g} ± {self.stderr:.2g} nats, {self.n_images} images × {self.draws} draws × "
            f"{self.sigmas.numel()} σ, {self.nfe} NFE, weight={self.weight})"
        )


def _sem(values: Tensor) -> Tensor:
    """Standard error of the mean over the first axis (``nan`` with one row)."""
    n = values.shape[0]
    if n < 2:
        return torch.full(values.shape[1:], float("nan"), dtype=torch.float64)
    return values.std(0, unbiased=True) / math.sqrt(n)


class MeasurementKL:
    """Dataset-level KL(p ‖ q) from clean images (image domain) or measurements (paper Theorem 1).

    Args:
        prior_p: the denoiser matched to the data (trained on it, or aligned to the measurements with
            ``priorshift adapt``); ``D(x, σ)`` on ``(N, C, H, W)`` in [-1, 1], ``σ`` (N,).
        prior_q: the candidate prior whose shift from the data is measured. Same image size as ``prior_p``.
        operator: ``None`` — image domain, ``data`` are clean images; ``"inpainting"`` — random-block
            inpainting (observation probability ``p``, ``block``-pixel tiles); ``"mri"`` — single-coil Cartesian
            MRI (``acceleration``, ``center_lines``); or an :class:`~priorshift.operators.Inpainting` /
            :class:`~priorshift.operators.MRI` instance: same family, its ``noise_std`` used, ``p`` (inpainting)
            or ``acceleration``/``center_lines`` (MRI) read off its mask unless given, and its own mask used for
            measured data (``estimate(y, masks="operator")``).
        sigmas: strictly increasing, positive σ grid (default :func:`log_sigma_grid`, 32 points on [0.002, 80]).
        draws: noise (and mask) draws per (image, σ); default 1 (the paper's).
        p: observation probability of random-block inpainting, in (0, 1].
        block: inpainting tile size in pixels (must divide H and W); default 4.
        acceleration, center_lines: the MRI mask family (:func:`~priorshift.operators.cartesian_mask`);
            defaults 4 and ``max(1, W // 8)``.
        noise_std: measurement noise σ_y added to simulated measurements (default: the operator's, else 0).
            The denoisers are still evaluated at level σ (the paper's recipe, which ignores σ_y).
        weight: ``"theorem"`` (``W = E[P]^{−3/2}``) or ``"none"`` (``W = I``); see the module docstring.
        max_batch: rows per network call.
    """

    def __init__(
        self,
        prior_p,
        prior_q,
        operator=None,
        *,
        sigmas=None,
        draws: int = 1,
        p: float | None = None,
        block: int = 4,
        acceleration: float | None = None,
        center_lines: int | None = None,
        noise_std: float | None = None,
        weight: str = "theorem",
        max_batch: int = 1024,
    ):
        if prior_p is None or prior_q is None:
            raise ValueError("MeasurementKL needs two denoisers: prior_p (matched to the data) and prior_q (the candidate prior)")
        sp, sq = prior_shape(prior_p), prior_shape(prior_q)
        if sp is not None and sq is not None and sp != sq:
            raise ValueError(
                f"prior_p denoises {sp[0]}×{sp[1]}×{sp[2]} images but prior_q {sq[0]}×{sq[1]}×{sq[2]}: both must work on images of the same size"
            )
        self.prior_p, self.prior_q = prior_p, prior_q
        self.shape = sp or sq
        self.sigmas = _check_grid(log_sigma_grid() if sigmas is None else sigmas)
        self.draws = _check_count(draws, "draws")
        self.max_batch = _check_count(max_batch, "max_batch")
        self.weight = _check_weight(weight)
        self.operator = operator
        self.block = None
        self.p = None
        self.acceleration = self.center_lines = None
        if operator is None:
            self.domain = "image"
            for name, value in (("p", p), ("noise_std", noise_std), ("acceleration", acceleration), ("center_lines", center_lines)):
                if value is not None:
                    raise ValueError(f"{name} describes a measurement; the image domain (operator=None) takes none")
            self.noise_std = 0.0
            return
        if isinstance(operator, Inpainting) or (isinstance(operator, str) and operator == "inpainting"):
            self.domain = "inpainting"
            if p is None and isinstance(operator, Inpainting):
                p = float(operator.mask.float().mean())
            if p is None:
                raise ValueError("random-block inpainting needs p, the observation probability in (0, 1]")
            self.p = _check_probability(p)
            self.block = _check_count(block, "block")
        elif isinstance(operator, MRI) or (isinstance(operator, str) and operator == "mri"):
            self.domain = "mri"
            if p is not None:
                raise ValueError("p is the inpainting observation probability; MRI masks are set by acceleration and center_lines")
            if isinstance(operator, MRI):
                acc, cen = self._mask_family(operator.mask)
                acceleration = acc if acceleration is None else acceleration
                center_lines = cen if center_lines is None else center_lines
            self.acceleration = 4.0 if acceleration is None else float(acceleration)
            if not self.acceleration >= 1:
                raise ValueError(f"acceleration must be >= 1, got {acceleration!r}")
            self.center_lines = None if center_lines is None else _check_count(center_lines, "center_lines")
        else:
            raise ValueError(
                f"operator must be None (image domain), 'inpainting', 'mri', or an Inpainting / MRI operator; got {operator!r}. "
                "Theorem 1 needs a random diagonal projection P with known E[P]: other operators are not supported"
            )
        self.noise_std = float(getattr(operator, "noise_std", 0.0) if noise_std is None else noise_std)
        if not (math.isfinite(self.noise_std) and self.noise_std >= 0):
            raise ValueError(f"noise_std must be a finite number >= 0, got {noise_std!r}")
        if self.shape is not None:
            self._check_geometry(self.shape)

    # -- validation ----------------------------------------------------------------------------------
    @staticmethod
    def _mask_family(mask: Tensor) -> tuple[float, int]:
        """``(acceleration, center_lines)`` of a Cartesian mask: W / sampled columns, and the run of sampled
        columns around DC (``W // 2``)."""
        cols = mask.reshape(-1, mask.shape[-1]).amax(0) > 0
        w = cols.numel()
        n = int(cols.sum())
        if n == 0:
            raise ValueError("the MRI mask samples no k-space column")
        lo = hi = w // 2
        if not bool(cols[lo]):
            return w / n, 1
        while lo - 1 >= 0 and bool(cols[lo - 1]):
            lo -= 1
        while hi + 1 < w and bool(cols[hi + 1]):
            hi += 1
        return w / n, hi - lo + 1

    def _check_geometry(self, shape) -> None:
        c, h, w = shape
        if self.domain == "inpainting" and (h % self.block or w % self.block):
            raise ValueError(f"block = {self.block} must divide the image size {h}×{w}")
        if self.domain == "mri":
            n_lines = max(1, round(w / self.acceleration))
            center = self.center_lines if self.center_lines is not None else max(1, w // 8)
            if not 1 <= center <= n_lines:
                raise ValueError(f"center_lines must be in [1, {n_lines}] (= W / acceleration) for {w} columns, got {center}")

    def _n_lines_center(self, w: int) -> tuple[int, int]:
        n_lines = max(1, round(w / self.acceleration))
        return n_lines, self.center_lines if self.center_lines is not None else max(1, w // 8)

    def observation_probability(self, shape=None) -> Tensor:
        """``E[P]`` in the ``Vᵀ`` basis, broadcastable to ``(N, C, H, W)``: ``(1, 1, 1)`` = p for inpainting,
        ``(1, 1, W)`` per k-space column for MRI, 1 for the image domain. float64."""
        if self.domain == "image":
            return torch.ones(1, 1, 1, dtype=torch.float64)
        if self.domain == "inpainting":
            return torch.full((1, 1, 1), self.p, dtype=torch.float64)
        shape = shape or self.shape
        if shape is None:
            raise ValueError("the image size is unknown (the priors do not declare it): pass shape=(C, H, W)")
        n_lines, center = self._n_lines_center(shape[-1])
        return mri_observation_probability(shape[-1], n_lines, center).reshape(1, 1, -1)

    def _weight2(self, shape, device) -> Tensor:
        if self.weight == "none":
            return torch.ones(1, 1, 1, dtype=torch.float64, device=device)
        return self.observation_probability(shape).to(device).pow(-3)

    def _check_data(self, data, masks) -> tuple[Tensor, Tensor | None, tuple[int, int, int]]:
        """Validate ``data`` (and ``masks``) before any network call; returns masks as (N, 1, H, W) / (N, H, W)."""
        if masks is None:
            c, h, w = self.shape if self.shape is not None else (None, None, None)
            data = check_image(data, "data (clean images)", channels=c, size=None if h is None else (h, w))
            shape = tuple(data.shape[1:])
            self._check_geometry(shape)
            return data, None, shape
        if self.domain == "image":
            raise ValueError("masks are given but the estimator is in the image domain (operator=None): data are clean images")
        if isinstance(masks, str):
            if masks != "operator" or not isinstance(self.operator, (Inpainting, MRI)):
                raise ValueError("masks='operator' needs an Inpainting or MRI operator instance; otherwise pass the masks as a tensor")
            masks = self.operator.mask
        if isinstance(masks, Tensor) and masks.dtype == torch.bool:
            masks = masks.float()
        check_tensor(masks, "masks")
        if not bool(((masks == 0) | (masks == 1)).all()):
            raise ValueError("masks must contain only 0 (missing) and 1 (observed)")
        if self.domain == "inpainting":
            c, h, w = self.shape if self.shape is not None else (None, None, None)
            data = check_image(data, "data (inpainting measurements y)", channels=c, size=None if h is None else (h, w))
            m = masks
            while m.ndim < 4:
                m = m.unsqueeze(0)
            if m.ndim != 4 or m.shape[-2:] != data.shape[-2:] or m.shape[0] not in (1, data.shape[0]) or m.shape[1] not in (1, data.shape[1]):
                raise ValueError(f"masks of shape {tuple(masks.shape)} do not fit measurements of shape {tuple(data.shape)}: give (H, W), (N, 1, H, W) or (N, C, H, W)")
            return data, m.expand(data.shape[0], m.shape[1], *data.shape[-2:]), tuple(data.shape[1:])
        # MRI: centred k-space (N, C, H, W, 2)
        if self.shape is not None:
            c, h, w = self.shape
            check_tensor(data, "data (MRI measurements y)", shape=(None, c, h, w, 2))
        else:
            check_tensor(data, "data (MRI measurements y)", shape=(None, None, None, None, 2))
        m = masks
        while m.ndim > 3 and m.shape[1] == 1:
            m = m[:, 0]
        if m.ndim == 2:
            m = m.unsqueeze(0)
        if m.ndim != 3 or m.shape[-2:] != data.shape[2:4] or m.shape[0] not in (1, data.shape[0]):
            raise ValueError(f"masks of shape {tuple(masks.shape)} do not fit MRI measurements of shape {tuple(data.shape)}: give (H, W) or (N, H, W)")
        shape = tuple(data.shape[1:4])
        self._check_geometry(shape)
        return data, m.expand(data.shape[0], *m.shape[-2:]), shape

    # -- the estimate --------------------------------------------------------------------------------
    def estimate(self, data: Tensor, *, seed=0, masks=None) -> KLEstimate:
        """Estimate KL(p ‖ q) from ``data`` (N ≥ 1 samples; N ≥ 2 for a standard error).

        ``masks=None``: ``data`` are clean images ``(N, C, H, W)``; in a measurement domain a fresh mask and
        measurement noise are drawn for every (image, σ, draw). ``masks`` given (a 0/1 tensor, or
        ``"operator"`` for the operator instance's mask): ``data`` are measurements made with them, each
        image's own mask used at every σ. ``seed``: per-image randomness (:func:`priorshift.rng.per_image_rng`);
        the result does not depend on how the data are batched.
        """
        g, nfe, mode = self.terms(data, seed=seed, masks=masks)
        return self._summarize(g, nfe, mode)

    def terms(self, data: Tensor, *, seed=0, masks=None) -> tuple[Tensor, int, str | None]:
        """The raw Monte-Carlo terms: ``g`` (N, K, draws) float64 of ``‖W(D_p − D_q)‖² σ⁻²`` (the integrand on
        ``ln σ``), the NFE spent, and the mask mode. Validates everything before the first network call."""
        data, masks, shape = self._check_data(data, masks)
        n = data.shape[0]
        if n == 0:
            raise ValueError("no data: the input holds 0 samples")
        seeds = resolve_seeds(seed, n)
        k, r = self.sigmas.numel(), self.draws
        cp, cq = as_counting(self.prior_p), as_counting(self.prior_q)
        start = (cp.nfe, cq.nfe)
        w2 = self._weight2(shape, data.device)
        rows_per_image = k * r
        chunk = max(1, self.max_batch // rows_per_image)
        out = []
        for lo in range(0, n, chunk):
            hi = min(n, lo + chunk)
            z, sig = self._inputs(data[lo:hi], None if masks is None else masks[lo:hi], seeds[lo:hi], shape)
            out.append(self._evaluate(cp, cq, z, sig, w2).reshape(hi - lo, k, r))
        nfe = (cp.nfe - start[0]) + (0 if cq is cp else cq.nfe - start[1])
        mode = None if self.domain == "image" else ("redrawn per term" if masks is None else "given")
        return torch.cat(out), int(nfe), mode

    def _inputs(self, data: Tensor, masks: Tensor | None, seeds: list[int], shape) -> tuple[Tensor, Tensor]:
        """The denoisers' common inputs ``V ȳ_σ = V ȳ + σ n`` for a chunk: ``(B·K·R, C, H, W)`` and ``σ`` per row.

        Per image, its generator draws, in this order: the diffusion noise ``n`` (K, R, C, H, W); then, for
        simulated measurements, the measurement noise ``e`` (K, R, *measurement shape) when ``noise_std > 0``
        and the masks (K·R of them). With ``p = 1`` and no measurement noise the inputs equal the image domain's.
        """
        b, (c, h, w) = data.shape[0], shape
        k, r = self.sigmas.numel(), self.draws
        dtype, device = (data.dtype, data.device)
        rng = per_image_rng(seeds, b, device)
        noise = rng.randn((k, r, c, h, w), dtype=dtype)  # (B, K, R, C, H, W)
        sig = self.sigmas.to(device=device, dtype=dtype).reshape(1, k, 1, 1, 1, 1)
        if self.domain == "image":
            base = data.reshape(b, 1, 1, c, h, w)
        elif masks is not None:  # real measurements: each image's own mask at every σ
            base = self._back_project(data, masks).reshape(b, 1, 1, c, h, w)
        else:  # simulated: fresh mask (and measurement noise) per (image, σ, draw)
            x = data.reshape(b, 1, 1, c, h, w).expand(b, k, r, c, h, w)
            meas_shape = (c, h, w) if self.domain == "inpainting" else (c, h, w, 2)
            e = rng.randn((k, r, *meas_shape), dtype=dtype) if self.noise_std > 0 else None
            m = self._draw_masks(rng, (k, r), shape, dtype)  # inpainting (B, K, R, 1, H, W); MRI (B, K, R, H, W)
            flat = x.reshape(-1, c, h, w)
            if self.domain == "inpainting":
                mm = m.reshape(-1, 1, h, w)
                y = flat * mm if e is None else (flat + self.noise_std * e.reshape(-1, c, h, w)) * mm
            else:
                mm = m.reshape(-1, h, w)
                y = torch.view_as_real(torch.fft.fftshift(torch.fft.fft2(flat, norm="ortho"), dim=(-2, -1)))
                if e is not None:
                    y = y + self.noise_std * e.reshape(-1, c, h, w, 2)
            base = self._back_project(y, mm).reshape(b, k, r, c, h, w)
        z = base + sig * noise
        return z.reshape(b * k * r, c, h, w), sig.expand(b, k, r, 1, 1, 1).reshape(-1)

    def _draw_masks(self, rng, lead: tuple[int, int], shape, dtype) -> Tensor:
        c, h, w = shape
        if self.domain == "inpainting":
            u = rng.rand((*lead, 1, h // self.block, w // self.block), dtype=torch.float64)
            tiles = (u < self.p).to(dtype)  # the rule of random_block_mask: a tile is observed iff U < p
            return tiles.repeat_interleave(self.block, dim=-2).repeat_interleave(self.block, dim=-1)
        n_lines, center = self._n_lines_center(w)
        masks = []
        for g in rng.generators:
            acc = w / n_lines  # cartesian_mask samples round(W / acceleration) columns
            masks.append(torch.stack([cartesian_mask((h, w), acc, center, generator=g) for _ in range(lead[0] * lead[1])]))
        return torch.stack(masks).reshape(len(masks), *lead, h, w).to(dtype)

    def _back_project(self, y: Tensor, masks: Tensor) -> Tensor:
        """``V ȳ``: inpainting ``m ⊙ y`` (masks (N, 1|C, H, W)); MRI ``Re(F⁻¹ shift⁻¹(M ⊙ y))`` (masks (N, H, W))."""
        if self.domain == "inpainting":
            return y * masks.to(y.dtype)
        k = torch.view_as_complex(y.contiguous()) * masks.to(y.dtype).unsqueeze(1)
        return torch.fft.ifft2(torch.fft.ifftshift(k, dim=(-2, -1)), norm="ortho").real

    def _evaluate(self, cp, cq, z: Tensor, sig: Tensor, w2: Tensor) -> Tensor:
        """``‖W(D_p(z) − D_q(z))‖² σ⁻²`` per row (float64), both denoisers on the **same** ``z``."""
        vals = []
        with torch.no_grad():
            for zc, sc in zip(z.split(self.max_batch), sig.split(self.max_batch)):
                diff = (cp(zc, sc).to(torch.float64) - cq(zc, sc).to(torch.float64))
                if self.domain == "mri" and self.weight != "none":
                    diff = torch.fft.fftshift(torch.fft.fft2(diff, norm="ortho"), dim=(-2, -1)).abs()
                sq = (w2 * diff.pow(2)).flatten(1).sum(1)
                vals.append(sq / sc.to(torch.float64).pow(2))
        return torch.cat(vals)

    def _summarize(self, g: Tensor, nfe: int, mode) -> KLEstimate:
        g = g.cpu()
        u = self.sigmas.log()
        du = (u[1:] - u[:-1]).reshape(1, -1)
        gi = g.mean(2)  # (N, K): per image, mean over draws
        cum = torch.cat([torch.zeros(gi.shape[0], 1, dtype=torch.float64), torch.cumsum(0.5 * du * (gi[:, 1:] + gi[:, :-1]), 1)], 1)
        per_image = cum[:, -1]
        curve = cum.mean(0)
        mean_g = gi.mean(0)
        return KLEstimate(
            kl_nats=float(curve[-1]),
            stderr=float(_sem(per_image.reshape(-1, 1))[0]),
            curve=curve,
            curve_stderr=_sem(cum),
            sigmas=self.sigmas.clone(),
            integrand=mean_g / self.sigmas,  # g = f·σ on ln σ  →  f = g / σ per unit σ
            per_image=per_image,
            truncation_nats=(float(mean_g[0]) / 2, float(mean_g[-1]) / 2),
            nfe=nfe,
            n_images=int(g.shape[0]),
            draws=self.draws,
            domain=self.domain,
            weight=self.weight if self.domain != "image" else "none",
            masks=mode,
        )

    def config(self) -> dict[str, Any]:
        return {
            "domain": self.domain,
            "sigmas": [float(self.sigmas[0]), float(self.sigmas[-1]), int(self.sigmas.numel())],
            "draws": self.draws,
            "weight": self.weight,
            "p": self.p,
            "block": self.block,
            "acceleration": self.acceleration,
            "center_lines": self.center_lines,
            "noise_std": self.noise_std,
        }

    def __repr__(self) -> str:
        extra = {"inpainting": f", p={self.p:g}, block={self.block}", "mri": f", acceleration={self.acceleration:g}"}.get(self.domain, "")
        return f"MeasurementKL({self.domain}{extra}, {self.sigmas.numel()} σ on [{float(self.sigmas[0]):g}, {float(self.sigmas[-1]):g}], draws={self.draws}, weight={self.weight})"


def _example_priors():
    from priorshift.analytic import stationary_gaussian

    deployed = stationary_gaussian(8, length_scale=2.0, variance=0.25, nugget=1e-2)
    matched = stationary_gaussian(8, length_scale=1.0, variance=0.25, mean=0.1, nugget=1e-2)
    return deployed, matched


@register("detector", "measurement-kl")
class MeasurementKLScore(Detector):
    """Image-level measurement-domain KL: each measurement's contribution to KL(matched ‖ prior), in nats.

    ``score(y)_b = Σ_k w_k · mean_r ‖W (D_m(V ȳ_b + σ_k n_{bkr}) − D_prior(V ȳ_b + σ_k n_{bkr}))‖² σ_k⁻²`` (trapezoid
    weights ``w_k`` on ``ln σ``; one shared noise draw per term for both denoisers; ``y_b``'s own mask, the
    operator's, at every σ); the mean over a data set is :meth:`MeasurementKL.estimate`'s ``kl_nats`` with
    ``masks="operator"``. **Higher = more shifted**: the measurement lies where the prior in use disagrees with a
    model of the data behind the measurements. The score is symmetric in the two denoisers — it says where
    they disagree, not which is right — and it needs ``matched``: a prior trained on (or aligned by
    ``priorshift adapt`` to) data like the measurements'.

    Args:
        prior: the prior in use (the candidate ``q``). ``operator``: the :class:`~priorshift.operators.Inpainting`
            or :class:`~priorshift.operators.MRI` operator that made the measurements (its mask is each
            measurement's ``P``). ``matched``: ``D_p``, a denoiser or a bundled-prior name / checkpoint path.
        sigmas, draws, weight, p, acceleration, center_lines, max_batch: as in :class:`MeasurementKL`
            (``p`` and the MRI family only set ``W``, default from the mask).

    Extras: ``integrand`` (B, K): ``‖W(D_m − D_prior)‖² σ⁻³`` per σ (mean over draws); ``sigmas`` (K,).
    NFE: ``2 · K · draws`` per measurement.
    """

    input_kind = "measurements"
    stochastic = True

    def __init__(self, prior, operator, *, matched, sigmas=None, draws: int = 1, weight: str = "theorem", p: float | None = None,
                 acceleration: float | None = None, center_lines: int | None = None, max_batch: int = 1024):
        if operator is None:
            raise ValueError("MeasurementKLScore scores measurements: it needs the Inpainting or MRI operator that produced them")
        if isinstance(matched, str) or hasattr(matched, "__fspath__"):
            from priorshift.diffusion.checkpoint import load_prior

            matched = load_prior(matched)
        self.prior = prior
        self.operator = operator
        self.matched = matched
        self.settings = {"sigmas": sigmas, "draws": draws, "weight": weight, "p": p, "acceleration": acceleration,
                         "center_lines": center_lines, "max_batch": max_batch}
        self._estimator()  # validate the settings now; nothing runs

    def _estimator(self) -> MeasurementKL:
        s = dict(self.settings)
        if isinstance(self.operator, MRI):
            s.pop("p")
        else:
            s.pop("acceleration"), s.pop("center_lines")
        return MeasurementKL(self.matched, self.prior, self.operator, noise_std=float(self.operator.noise_std), **s)

    @classmethod
    def example(cls) -> "MeasurementKLScore":
        """8×8 float64 Gaussians: the prior in use is smooth (length scale 2), the matched one rougher
        (length scale 1) with its mean shifted by 0.1; random-block inpainting (2×2 tiles, p = 0.5, σ_y = 0.05).
        Their denoisers differ most on high frequencies and far from the mean, where shifted inputs put energy."""
        deployed, matched = _example_priors()
        op = Inpainting(random_block_mask(8, 2, 0.5, generator=torch.Generator().manual_seed(0)), noise_std=0.05)
        return cls(deployed, op, matched=matched, sigmas=log_sigma_grid(12), draws=2)

    def _score(self, data: Tensor, *, seed, hooks: tuple) -> Scores:
        est = self._estimator()
        g, nfe, _ = est.terms(data, seed=seed, masks="operator")
        u = est.sigmas.log().to(g.device)
        gi = g.mean(2)
        score = (0.5 * (u[1:] - u[:-1]) * (gi[:, 1:] + gi[:, :-1])).sum(1)
        return Scores(score=score, map=None, nfe=nfe, extras={"integrand": gi / est.sigmas.to(g.device), "sigmas": est.sigmas.clone()})

    def config(self) -> dict[str, Any]:
        return {**super().config(), **self._estimator().config()}

    def __repr__(self) -> str:
        return f"MeasurementKLScore({self._estimator()!r})"
