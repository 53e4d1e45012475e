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

Here ``V ȳ_σ = V ȳ + σ n``: the back-projected measurement (:func:`priorshift.operators.back_project`;
inpainting: ``P ⊙ y``, missing pixels 0 — the official code's fill value 0.5 in [0, 1]; MRI: the real
zero-filled image ``Re(Fᴴ M y)``) plus diffusion noise on the whole image, one draw ``n`` shared by both
denoisers. ``‖W v‖²`` is taken in the ``Vᵀ`` basis: ``p⁻³ ‖v‖²`` for inpainting (``E[P] = p``),
``Σ_k E[P]_k⁻³ |(F v)_k|²`` for MRI (``E[P]_k = 1`` on the always-sampled centre columns, ``(n_lines − c) /
(W − c)`` on the others).

**Any operator.** Measurements are made by the operator itself (:func:`priorshift.operators.measure`: its
forward map, its per-image masks, its noise) and back-projected by it: ``V ȳ = A⁺ y`` (``ȳ = S⁺ Uᵀ y``; MRI:
the zero-filled image above). An
operator without random masks (CT, blur, downsampling, denoising, a deepinv physics) has a deterministic
``P`` (the projection onto its row space), ``E[P]`` is 1 there, and the weight is ``W = I``: the estimate is the
KL between the two priors seen through ``A⁺ A`` (plus noise). For a pure mean shift it is the image-domain KL
exactly, whatever the operator (``tests/test_measurement_any_operator.py``).

.. warning:: **The weight ``W = E[P]^{−3/2}`` does not give the KL in nats.** For a pure mean shift
   (``p = N(μ_p, Σ)``, ``q = N(μ_q, Σ)``) ``D_p(z) − D_q(z) = σ² (Σ + σ² I)⁻¹ (μ_p − μ_q)`` does not depend on
   the input ``z``, so *every* input construction gives exactly ``p⁻³ · KL`` for inpainting (8× at p = 0.5,
   125× at p = 0.2; ``tests/test_measurement_kl.py`` checks this to 1e-9). ``weight="none"`` (``W = I``) is
   exact there and within a factor ≈ 0.7–2.7 of the KL on covariance shifts (measured ratios in the tests and
   ``benchmarks/results/measurement-kl-gaussian.md``). For inpainting ``W`` is a constant, so at a fixed ``p``
   it never changes a ranking of candidate priors; it does change MRI rankings (it reweights frequencies).
   ``weight="theorem"`` (the default) follows the paper.

**Random masks.** With clean images as ``data`` (the paper's experiments) a fresh mask ``P`` (and measurement
noise ``e``) is drawn for every term — every (image, σ, draw), each term from its own generator seeded from
its image's — so the expectation over ``P`` is Monte Carlo with one draw per term. With real measurements
(``masks=`` given) each image's own mask is used at every σ: the expectation over ``P`` is then taken across
images, which is all measured data allow.

**Quadrature** on a log-spaced σ grid: :mod:`priorshift.detectors.kl_quadrature`.

**Cost.** Two network evaluations (``D_p`` and ``D_q``) per (image, σ, draw): ``2 · K · draws`` NFE per image,
counted by :func:`priorshift.diffusion.as_counting`. No sampler, no backward pass.

Shapes and ranges: images ``(N, C, H, W)`` in [-1, 1]; measurements as the operator makes them — inpainting
``(N, C, H, W)`` (``y = m ⊙ x + e``, any value on missing pixels), MRI ``(N, C, H, W, 2)`` (centred k-space,
real/imaginary last), CT sinograms, ...; masks 0/1, 1 = observed.

The image-level detector built on this estimator is :class:`priorshift.detectors.measurement_kl.MeasurementKLScore`.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
from torch import Tensor

from priorshift._checks import check_image, check_int, check_tensor
from priorshift.detectors.base import resolve_seeds
from priorshift.detectors.kl_quadrature import KLEstimate, check_sigma_grid, cumulative_kl, log_sigma_grid, standard_error
from priorshift.diffusion.denoisers import as_counting
from priorshift.operators.inpainting import Inpainting
from priorshift.operators.masks import BlockMasks
from priorshift.operators.measure import back_project, measure
from priorshift.operators.mri import MRI, CartesianMasks
from priorshift.rng import per_image_rng

__all__ = ["MeasurementKL", "KLEstimate", "log_sigma_grid", "prior_shape", "WEIGHTS"]

WEIGHTS = ("theorem", "none")


def _check_weight(weight: str) -> str:
    if weight not in WEIGHTS:
        raise ValueError(f"unknown weight {weight!r}; choose one of {', '.join(WEIGHTS)}")
    return weight


def prior_shape(prior) -> tuple[int, int, int] | None:
    """``(C, H, W)`` a prior denoises, when it says (``shape``, or ``channels`` and ``image_size``); else ``None``."""
    shape = getattr(prior, "shape", None)
    if shape is not None and len(tuple(shape)) == 3:
        return tuple(int(s) for s in shape)
    size, channels = getattr(prior, "image_size", None), getattr(prior, "channels", None)
    if size is not None and channels is not None:
        return (int(channels), int(size), int(size))
    return None


def _operator_and_masks(operator, p, block, acceleration, center_lines):
    """``(operator class, the given instance or None, mask family or None)`` from :class:`MeasurementKL`'s arguments."""
    if isinstance(operator, str):
        if operator not in ("inpainting", "mri"):
            raise ValueError(
                f"operator must be None (image domain), 'inpainting' or 'mri' (random masks drawn per term), or an operator "
                f"instance (any registered one, e.g. make_operator('ct', image_size=64)); got {operator!r}"
            )
        cls, own = (Inpainting if operator == "inpainting" else MRI), None
    elif callable(getattr(operator, "A", None)) and callable(getattr(operator, "A_pinv", None)) and callable(operator):
        cls, own = type(operator), operator
    else:
        raise ValueError(f"operator must be None, 'inpainting', 'mri' or an operator instance (A, A_pinv, __call__); got {operator!r}")
    family = getattr(own, "mask_family", None)
    if issubclass(cls, Inpainting):
        if acceleration is not None or center_lines is not None:
            raise ValueError("acceleration and center_lines describe MRI masks; inpainting masks are set by p and block")
        if p is None:
            p = family.p if family is not None else (float(own.mask.float().mean()) if own is not None else None)
        if p is None:
            raise ValueError("random-block inpainting needs p, the observation probability in (0, 1]")
        return cls, own, BlockMasks(p, block if block is not None else (family.block if family is not None else 4))
    if issubclass(cls, MRI):
        if p is not None or block is not None:
            raise ValueError("p is the inpainting observation probability; MRI masks are set by acceleration and center_lines")
        if family is None:
            family = CartesianMasks.from_mask(own.mask) if own is not None else CartesianMasks()
        return cls, own, CartesianMasks(family.acceleration if acceleration is None else acceleration,
                                        family.center_lines if center_lines is None else center_lines)
    for name, value in (("p", p), ("block", block), ("acceleration", acceleration), ("center_lines", center_lines)):
        if value is not None:
            raise ValueError(f"{name} describes random inpainting / MRI masks; the {getattr(cls, 'name', cls.__name__)} operator draws none")
    return cls, own, None


class MeasurementKL:
    """Dataset-level KL(p ‖ q) from clean images (image domain) or measurements (paper Theorem 1).

    Args:
        prior_p: the denoiser matched to the data (trained on it, or aligned to the measurements with
            ``priorshift adapt``); ``D(x, σ)`` on ``(N, C, H, W)`` in [-1, 1], ``σ`` (N,).
        prior_q: the candidate prior whose shift from the data is measured. Same image size as ``prior_p``.
        operator: ``None`` — image domain, ``data`` are clean images; ``"inpainting"`` — random-block
            inpainting (observation probability ``p``, ``block``-pixel tiles); ``"mri"`` — single-coil Cartesian
            MRI (``acceleration``, ``center_lines``); or any operator instance (``make_operator(...)``), which
            makes the simulated measurements and back-projects measured ones. An :class:`~priorshift.operators.Inpainting`
            / :class:`~priorshift.operators.MRI` instance redraws its masks per term from its mask family
            (``Inpainting.random`` / ``MRI.random``); without one, ``p`` (and ``block``, default 4) or the
            acceleration and centre lines are read off its mask unless given. Its own mask is used for measured
            data (``estimate(y, masks="operator")``). Other operators draw no masks (``W = I``).
        sigmas: strictly increasing, positive σ grid (default :func:`log_sigma_grid`, 32 points on [0.002, 80]).
        draws: noise (and mask) draws per (image, σ); default 1 (the paper's).
        p, block: random-block inpainting: observation probability in (0, 1] and tile size (must divide H, W).
        acceleration, center_lines: the MRI mask family (:class:`~priorshift.operators.CartesianMasks`);
            defaults 4 and ``max(1, W // 8)``.
        noise_std: measurement noise σ_y of simulated measurements (default: the operator's, else 0). The
            denoisers are still evaluated at level σ (the paper's recipe, which ignores σ_y).
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
        block: int | None = None,
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
        self.sigmas = check_sigma_grid(log_sigma_grid() if sigmas is None else sigmas)
        self.draws = check_int(draws, "draws")
        self.max_batch = check_int(max_batch, "max_batch")
        self.weight = _check_weight(weight)
        self.operator = operator
        self.mask_family = self._op = self._cls = None
        self._ops: dict = {}
        if operator is None:
            self.domain = "image"
            for name, value in (("p", p), ("block", block), ("noise_std", noise_std), ("acceleration", acceleration), ("center_lines", center_lines)):
                if value is not None:
                    raise ValueError(f"{name} describes a measurement; the image domain (operator=None) takes none")
            self.noise_std = 0.0
        else:
            self._cls, own, self.mask_family = _operator_and_masks(operator, p, block, acceleration, center_lines)
            self.domain = getattr(self._cls, "name", self._cls.__name__)
            self.noise_std = float(getattr(operator, "noise_std", 0.0) if noise_std is None else noise_std)
            if not (math.isfinite(self.noise_std) and self.noise_std >= 0):
                raise ValueError(f"noise_std must be a finite number >= 0, got {noise_std!r}")
            if own is not None:  # a copy: this estimator's noise level and mask family, the caller's operator untouched
                self._op = copy.copy(own)
                self._op.noise_std = self.noise_std
                if self.mask_family is not None:
                    self._op.mask_family = self.mask_family
            if self.mask_family is not None and self.shape is not None:
                self.mask_family.check(self.shape[-2:])
        family = self.mask_family
        self.p, self.block = (family.p, family.block) if isinstance(family, BlockMasks) else (None, None)
        self.acceleration, self.center_lines = (family.acceleration, family.center_lines) if isinstance(family, CartesianMasks) else (None, None)

    def _operator(self, size) -> Any:
        """The operator simulated measurements are made with: the given instance, or one of the named kind for ``size``."""
        if self._op is not None:
            return self._op
        size = tuple(size)
        if size not in self._ops:
            self._ops[size] = self._cls(torch.ones(size), self.noise_std, mask_family=self.mask_family)
        return self._ops[size]

    def observation_probability(self, shape=None) -> Tensor:
        """``E[P]`` in the ``Vᵀ`` basis, float64, broadcastable to ``(N, C, H, W)``: ``p`` per pixel for inpainting,
        per centred k-space entry for MRI; 1 for the image domain and operators without random masks."""
        if self.mask_family is None:
            return torch.ones(1, 1, 1, dtype=torch.float64)
        shape = shape or self.shape
        if shape is None:
            raise ValueError("the image size is unknown (the priors do not declare it): pass shape=(C, H, W)")
        return self.mask_family.probability(tuple(shape)[-2:])

    def _weight2(self, shape, device) -> Tensor:
        if self.weight == "none":
            return torch.ones(1, 1, 1, dtype=torch.float64, device=device)
        return self.observation_probability(shape).to(device).pow(-3)

    # -- validation ----------------------------------------------------------------------------------
    def _prepare(self, data, masks) -> tuple[Tensor, bool, tuple[int, int, int]]:
        """Validate ``data`` (and ``masks``) before any network call. Returns ``(x, measured, (C, H, W))``: clean
        images, or — for measurements — their back-projections ``V ȳ``."""
        c, h, w = self.shape if self.shape is not None else (None, None, None)
        size = None if h is None else (h, w)
        if masks is None:
            data = check_image(data, "data (clean images)", channels=c, size=size)
            if self.mask_family is not None:
                self.mask_family.check(data.shape[-2:])
            return data, False, tuple(data.shape[1:])
        if self.domain == "image":
            raise ValueError("masks are given but the estimator is in the image domain (operator=None): data are clean images")
        check_tensor(data, "data (measurements y)")
        if isinstance(masks, str):
            if masks != "operator" or self._op is None:
                raise ValueError("masks='operator' needs an operator instance (the one that made the measurements); otherwise pass the masks as a tensor")
            op, what = self._op, f"the {self.domain} operator"
        else:
            if self.mask_family is None:
                raise ValueError(f"masks are for inpainting and MRI measurements; measurements of the {self.domain} operator take masks='operator'")
            if isinstance(masks, Tensor) and masks.dtype == torch.bool:
                masks = masks.float()
            check_tensor(masks, "masks")
            if not bool(((masks == 0) | (masks == 1)).all()):
                raise ValueError("masks must contain only 0 (missing) and 1 (observed)")
            op, what = self._cls(masks, self.noise_std), f"masks of shape {tuple(masks.shape)}"
        try:
            op.check_y(data)
        except ValueError as e:
            raise ValueError(f"{what} do not fit measurements of shape {tuple(data.shape)}: {e}") from None
        x = check_image(back_project(op, data), "the back-projected measurements", channels=c, size=size)
        return x, True, tuple(x.shape[1:])

    # -- the estimate --------------------------------------------------------------------------------
    def estimate(self, data: Tensor, *, seed=0, masks=None) -> KLEstimate:
        """Estimate KL(p ‖ q) from ``data`` (N ≥ 1 samples; N ≥ 2 for a standard error).

        ``masks=None``: ``data`` are clean images ``(N, C, H, W)``; in a measurement domain the operator measures
        them afresh (a new mask where it draws masks, new measurement noise) for every (image, σ, draw).
        ``masks`` given (a 0/1 tensor, or ``"operator"`` for the operator instance's own mask or the operator
        itself): ``data`` are measurements made with them, each image's own mask used at every σ. ``seed``:
        per-image randomness (:func:`priorshift.rng.per_image_rng`); the result does not depend on how the data
        are batched.
        """
        g, nfe, mode = self.terms(data, seed=seed, masks=masks)
        return self._summarize(g, nfe, mode)

    def terms(self, data: Tensor, *, seed=0, masks=None) -> tuple[Tensor, int, str | None]:
        """The raw Monte-Carlo terms: ``g`` (N, K, draws) float64 of ``‖W(D_p − D_q)‖² σ⁻²`` (the integrand on
        ``ln σ``), the NFE spent, and the mask mode. Validates everything before the first network call."""
        x, measured, shape = self._prepare(data, masks)
        n = x.shape[0]
        if n == 0:
            raise ValueError("no data: the input holds 0 samples")
        seeds = resolve_seeds(seed, n)
        k, r = self.sigmas.numel(), self.draws
        cp, cq = as_counting(self.prior_p), as_counting(self.prior_q)
        start = (cp.nfe, cq.nfe)
        w2 = self._weight2(shape, x.device)
        kspace = MRI(torch.ones(shape[-2:])) if self.weight != "none" and isinstance(self.mask_family, CartesianMasks) else None
        chunk = max(1, self.max_batch // (k * r))
        out = []
        for lo in range(0, n, chunk):
            hi = min(n, lo + chunk)
            z, sig = self._inputs(x[lo:hi], measured, seeds[lo:hi], shape)
            out.append(self._evaluate(cp, cq, z, sig, w2, kspace).reshape(hi - lo, k, r))
        nfe = (cp.nfe - start[0]) + (0 if cq is cp else cq.nfe - start[1])
        if self.domain == "image":
            mode = None
        else:
            mode = "given" if measured else ("redrawn per term" if self.mask_family is not None else "fixed")
        return torch.cat(out), int(nfe), mode

    def _inputs(self, x: Tensor, measured: bool, seeds: list[int], shape) -> tuple[Tensor, Tensor]:
        """The denoisers' common inputs ``V ȳ_σ = V ȳ + σ n`` for a chunk: ``(B·K·R, C, H, W)`` and ``σ`` per row.

        ``x``: clean images, or back-projected measurements (``measured``). Per image, its generator draws the
        diffusion noise ``n`` (K, R, C, H, W), then — for simulated measurements — one seed per (σ, draw) term,
        from which that term's measurement (mask, noise) is made by :func:`priorshift.operators.measure`. With
        ``p = 1`` and no measurement noise the inputs equal the image domain's.
        """
        b, (c, h, w) = x.shape[0], shape
        k, r = self.sigmas.numel(), self.draws
        rng = per_image_rng(seeds, b, x.device)
        noise = rng.randn((k, r, c, h, w), dtype=x.dtype)  # (B, K, R, C, H, W)
        sig = self.sigmas.to(device=x.device, dtype=x.dtype).reshape(1, k, 1, 1, 1, 1)
        if self.domain == "image" or measured:
            base = x.reshape(b, 1, 1, c, h, w)
        else:
            terms = torch.stack([torch.randint(0, 2**62, (k * r,), generator=g, device=g.device) for g in rng.generators])
            y, op = measure(self._operator((h, w)), x.repeat_interleave(k * r, 0), seed=terms.flatten().tolist())
            base = back_project(op, y).reshape(b, k, r, c, h, w)
        z = base + sig * noise
        return z.reshape(b * k * r, c, h, w), sig.expand(b, k, r, 1, 1, 1).reshape(-1)

    def _evaluate(self, cp, cq, z: Tensor, sig: Tensor, w2: Tensor, kspace) -> Tensor:
        """``‖W(D_p(z) − D_q(z))‖² σ⁻²`` per row (float64), both denoisers on the **same** ``z``; ``W`` acts in the
        basis where ``P`` is diagonal: pixels, or centred k-space (``kspace``, a fully sampled MRI operator)."""
        vals = []
        with torch.no_grad():
            for zc, sc in zip(z.split(self.max_batch), sig.split(self.max_batch)):
                diff = cp(zc, sc).to(torch.float64) - cq(zc, sc).to(torch.float64)
                energy = diff.pow(2) if kspace is None else kspace.A(diff).pow(2).sum(-1)
                vals.append((w2 * energy).flatten(1).sum(1) / sc.to(torch.float64).pow(2))
        return torch.cat(vals)

    def _summarize(self, g: Tensor, nfe: int, mode) -> KLEstimate:
        gi = g.cpu().mean(2)  # (N, K): per image, mean over draws
        cum = cumulative_kl(gi, self.sigmas)
        per_image, curve, mean_g = cum[:, -1], cum.mean(0), gi.mean(0)
        return KLEstimate(
            kl_nats=float(curve[-1]),
            stderr=float(standard_error(per_image.reshape(-1, 1))[0]),
            curve=curve,
            curve_stderr=standard_error(cum),
            sigmas=self.sigmas.clone(),
            integrand=mean_g / self.sigmas,  # g = f·σ on ln σ  →  f = g / σ per unit σ
            per_image=per_image,
            truncation_nats=(float(mean_g[0]) / 2, float(mean_g[-1]) / 2),
            nfe=nfe,
            n_images=int(g.shape[0]),
            draws=self.draws,
            domain=self.domain,
            weight=self.weight if self.mask_family is not None else "none",
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
        extra = {"inpainting": f", p={self.p}, block={self.block}", "mri": f", acceleration={self.acceleration}"}.get(self.domain, "")
        return f"MeasurementKL({self.domain}{extra}, {self.sigmas.numel()} σ on [{float(self.sigmas[0]):g}, {float(self.sigmas[-1]):g}], draws={self.draws}, weight={self.weight})"
