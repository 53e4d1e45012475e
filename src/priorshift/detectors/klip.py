"""KLIP: localized distribution-shift detection from measurements (KL between prior and posterior,
restricted to a time window and spatial blocks; arXiv 2605.31596, CVPR 2026).

The KL between the posterior and the prior is a time integral of the likelihood score
``s_l = ∇ log p_t(y | x)``, which a posterior sampler approximates at every step:

    KL(p(x|y) ‖ p(x)) = ½ ∫ g(t)² E_{x_t ~ p_t(x|y)} ‖s_l(x_t, y; t)‖² dt                      (KLIP Eq. 12)

KLIP restricts it to a window ``[t0, t1]`` and to each spatial block ``B_i``. With ``u_k`` the measurement
step's displacement at step k (``StepState.likelihood_update``) normalized by the sampler's coefficient,

    map[b, i] = mean_{k ∈ window} mean_{s ≤ S} Σ_{(c,p,q) ∈ B_i} u_{k,s}[c, p, q]²        (mean of squares)

and the image score is ``max_i map[b, i]`` (the max keeps a small lesion from being diluted).

The same accumulation, scaled as the integral, is reported as ``kl_nats``. A stochastic step moves ``x`` by
``Δx_k = g_k² Δt_k · s_l`` (VE: ``g² Δt = σ_k² − σ_{k+1}²``), so ``f_k = E_s ‖Δx_k‖² / (g_k² Δt_k)²`` estimates
``E ‖s_l‖²`` at ``σ_k``. Since ``½ ∫ E‖s_l‖² dσ² = ∫ σ² E‖s_l‖² d ln σ`` and the KL density per ``ln σ`` is
smooth while ``E‖s_l‖²`` is sharply peaked at small σ, the integral is taken as a trapezoid in ``ln σ``:
``kl_nats = Σ_{k ∈ window} σ_k² f_k w_k`` with ``w_k`` the width of step k's cell in ``ln σ`` (midpoints to
the neighbouring steps). On a Gaussian prior this quadrature is exact to 0.1% at 25 steps, where the plain
left Riemann sum ``½ Σ_k E_s ‖Δx_k‖² / (g_k² Δt_k)`` is 34% low. With exact guidance
(:func:`priorshift.samplers.sample_exact`), the full window and one block, ``kl_nats`` converges to the
closed-form ``KL(p(x|y) ‖ p(x))``; what is left is the sampler's own discretization error.

Normalization of ``u_k = Δx_k / n_k`` (``normalization``): ``"g"`` — the diffusion coefficient of the VE SDE
the step discretizes (the paper's song22 backend; proportional to the KL density when the steps are uniform in
time); ``"kl"`` — each step weighted by its share of the KL integral, ``u_k = Δx_k sqrt(σ_k² w_k) / (g_k² Δt_k)``
(preferable for non-uniform schedules such as Karras'; then ``map × n_window_steps`` is each block's KL in
nats and sums over blocks to ``kl_nats``); ``"sigma_power"`` — ``σ^p`` (the paper's PaDIS backend, p = 0.5);
``"ddpm"`` — the official DDPM backend's weight, ``sqrt(β_t)`` of the VP update = ``sqrt(β_t/ᾱ_t)`` of the VE one
(:func:`~priorshift.diffusion.schedules.ddpm_step_weights`; :meth:`KLIP.official` sets the whole recipe); ``"none"``.

``reduction="mean_of_squares"`` (default, the theory: ``E_s ‖u_s‖²``, and what the official scorer computes) or
``"square_of_mean"`` (``‖E_s u_s‖²``, only the legacy PaDIS/CelebA notebooks): averaging the S samples' updates
before squaring cancels their sampling noise, which suppresses the variance term of the KL; with S = 1 the
two coincide.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import torch
from torch import Tensor

from priorshift._checks import check_int
from priorshift.detectors.base import Detector, check_block
from priorshift.detectors.klip_maps import aggregate_step_maps, image_score, spread_normalized, tissue_blocks
from priorshift.diffusion.denoisers import as_counting
from priorshift.diffusion.schedules import ddpm_step_weights
from priorshift.registry import register
from priorshift.samplers.hooks import ProgressBar, block_energy
from priorshift.samplers.plan import SamplingPlan
from priorshift.types import Scores, StepState

__all__ = ["KLIP", "KLIPAccumulator", "aggregate_step_maps", "window_steps", "image_score", "spread_normalized", "tissue_blocks", "VARIANTS", "NORMALIZATIONS",
           "REDUCTIONS", "SCORES", "step_norm"]

# ΠGDM's likelihood step carries the size of the disagreement between y and the prior (normalised DPS does not).
DEFAULT_PLAN = {"sampler": "pigdm", "steps": 100}
VARIANTS = ("klip", "whole_image", "spatial_only", "temporal_only")
NORMALIZATIONS = ("g", "kl", "sigma_power", "ddpm", "none")
REDUCTIONS = ("mean_of_squares", "square_of_mean")
SCORES = ("energy", "spread")


def _check_choice(value: str, name: str, choices) -> str:
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}; choose one of {', '.join(choices)}")
    return value


def window_steps(window: tuple[float, float], n_steps: int) -> tuple[int, int]:
    """KLIP's window ``(a, b)`` (fractions of the steps from the noisy end) as the steps ``k0 ≤ k < k1`` of an
    ``n_steps`` schedule: ``k0 = round(a·T)``, ``k1 = round(b·T)``. The one place this conversion lives."""
    try:
        a, b = (float(v) for v in window)
    except (TypeError, ValueError):
        raise ValueError(f"window needs two numbers (a, b), fractions of the steps from the noisy end with 0 <= a < b <= 1 "
                         f"(e.g. 0.4,0.75); got {window!r}") from None
    if not (0.0 <= a < b <= 1.0):
        raise ValueError(f"window must be (a, b) with 0 <= a < b <= 1 (fractions of the steps from the noisy end), got {window}")
    k0, k1 = round(a * n_steps), round(b * n_steps)
    if k1 <= k0:
        raise ValueError(f"window {window} selects no step of a {n_steps}-step schedule; widen it or use more steps")
    return k0, k1


def step_norm(normalization: str, state, kl_weight: float | None, sigma_power: float, step_norms: Tensor | None = None) -> float:
    """``n_k`` of ``u_k = Δx_k / n_k`` (module docstring) at a step ``state`` (its ``i``, ``sigma``, ``g``)."""
    if normalization == "g":
        return state.g
    if normalization == "kl":
        return 1.0 / math.sqrt(kl_weight)
    if normalization == "sigma_power":
        return state.sigma**sigma_power
    return float(step_norms[state.i]) if normalization == "ddpm" else 1.0


class KLIPAccumulator:
    """The per-step hook: accumulates KLIP's block map, the KL in nats and a per-step curve online.

    Memory is O(B · blocks + B · T); nothing of size (T, H, W) is stored.
    """

    def __init__(
        self, *, block: int, k0: int, k1: int, normalization: str, sigma_power: float, reduction: str, stage: str | None, keep_steps: bool = False,
        step_norms: Tensor | None = None,
    ):
        self.block, self.k0, self.k1, self.keep_steps = block, k0, k1, keep_steps
        self.step_maps: list[Tensor] = []  # only with keep_steps: (B, h, w) per step run
        self.normalization = _check_choice(normalization, "normalization", NORMALIZATIONS)
        self.reduction = _check_choice(reduction, "reduction", REDUCTIONS)
        self.sigma_power, self.stage, self.step_norms = sigma_power, stage, step_norms  # step_norms: (T,) for "ddpm"
        self.block_sum: Tensor | None = None
        self.spread_sum: Tensor | None = None  # S ≥ 2: Σ_window per-block posterior spread of x̂0
        self.step_spread_maps: list[Tensor] = []
        self.kl, self.n_window = None, 0
        self.curve: list[Tensor] = []  # per step: (B,) normalized update energy, mean over samples
        self.kl_curve: list[Tensor] = []  # per step: (B,) contribution to the KL in nats
        self.sigmas: list[float] = []
        self._sigma_prev: float | None = None

    def _log_sigma_cell(self, state: StepState) -> float:
        """Width in ln σ of step k's trapezoid cell: from the midpoint with σ_{k-1} (or σ_0 itself) to the
        midpoint with σ_{k+1} (or, on the last step to σ = 0, a half-cell mirrored from the upper side)."""
        ls = math.log(state.sigma)
        upper = 0.0 if self._sigma_prev is None else 0.5 * (math.log(self._sigma_prev) - ls)
        if state.sigma_next > 0:
            lower = 0.5 * (ls - math.log(state.sigma_next))
        else:
            lower = upper if upper > 0 else 0.5 * math.log(2.0)
        return upper + lower

    def __call__(self, state: StepState) -> None:
        if self.stage is None:
            u = state.likelihood_update
        else:
            if self.stage not in state.likelihood_updates:
                raise ValueError(f"the sampler reports likelihood stages {sorted(state.likelihood_updates)}, not {self.stage!r}")
            u = state.likelihood_updates[self.stage]
        u = u.detach()
        per_sample = u.flatten(2).pow(2).sum(-1)  # (B, S) ‖Δx‖²
        g2dt = state.g**2 * state.dt
        # KL weight of this step: σ_k² w_k / (g² Δt)², so that weight · ‖Δx‖² = σ_k² ‖s_l‖² w_k.
        kl_weight = state.sigma**2 * self._log_sigma_cell(state) / g2dt**2
        self._sigma_prev = state.sigma
        kl_step = per_sample.mean(1) * kl_weight  # (B,) this step's KL contribution in nats
        n = step_norm(self.normalization, state, kl_weight, self.sigma_power, self.step_norms)
        self.curve.append((per_sample.mean(1) / n**2).to("cpu", torch.float64))
        self.kl_curve.append(kl_step.to("cpu", torch.float64))
        self.sigmas.append(state.sigma)
        in_window = self.k0 <= state.i < self.k1
        if not (in_window or self.keep_steps):
            return
        un = u / n
        if self.reduction == "mean_of_squares":
            energy = block_energy(un, self.block).mean(1)  # (B, h, w)
        else:
            energy = block_energy(un.mean(1), self.block)
        energy = energy.to(torch.float64)
        spread = None
        if state.x0_hat.shape[1] >= 2:
            x0 = state.x0_hat.detach()
            spread = block_energy(x0 - x0.mean(1, keepdim=True), self.block).sum(1).to(torch.float64) / (x0.shape[1] - 1)  # (B, h, w)
        if self.keep_steps:
            self.step_maps.append(energy.to("cpu", torch.float32))
            if spread is not None:
                self.step_spread_maps.append(spread.to("cpu", torch.float32))
        if not in_window:
            return
        self.block_sum = energy if self.block_sum is None else self.block_sum + energy
        if spread is not None:
            self.spread_sum = spread if self.spread_sum is None else self.spread_sum + spread
        kl_step = kl_step.to(torch.float64)
        self.kl = kl_step if self.kl is None else self.kl + kl_step
        self.n_window += 1


@register("detector", "klip")
class KLIP(Detector):
    """KLIP detector: ``KLIP(prior, operator).score(y)`` → :class:`priorshift.types.Scores`.

    Args:
        prior: a denoiser ``D(x, σ)`` (a trained prior or an analytic one).
        operator: the forward model that produced ``y``.
        plan: the posterior sampler and its schedule — a :class:`~priorshift.samplers.SamplingPlan` or a mapping
            of its fields (``{"sampler": "dps", "steps": 100, "jacobian": False, "zeta": 0.1}``); default ΠGDM
            without the Jacobian (:func:`~priorshift.samplers.sample_pigdm`, a likelihood step whose size grows
            with the disagreement between ``y`` and the prior), 100 steps on the Karras schedule over the prior's
            σ range; a mapping without ``"sampler"`` keeps the default sampler. The sampler must declare a
            likelihood stage.
        window: ``(a, b)`` fractions of the step list counted from the noisy end, ``0 ≤ a < b ≤ 1``; the steps
            ``round(a·T) ≤ k < round(b·T)`` are used (the paper's [65, 85) of 100 is ``(0.65, 0.85)``;
            :func:`window_steps`). Sampling stops at the window's end. ``window_sigma=(lo, hi)`` selects the steps
            with ``lo ≤ σ_k ≤ hi`` instead.
        block: block size in pixels (must divide H and W); the map is (B, H/block, W/block).
        samples: posterior samples S per measurement (batched with the images).
        variant: ``"klip"``; or the paper's ablations ``"whole_image"`` (one block, full window),
            ``"spatial_only"`` (blocks, full window), ``"temporal_only"`` (window, one block).
        normalization, sigma_power, reduction: see the module docstring. ``stage``: which labelled likelihood
            update to use (e.g. ``"corrector"`` for the projection sampler, as the paper's song22 backend); default
            all. Checked against the sampler's declared stages here.
        keep_step_maps: also return every step's block map, ``extras["step_maps"]`` (B, T_run, h, w) — O(T · blocks)
            memory — so that other windows and coarser blocks can be evaluated without sampling again
            (:func:`aggregate_step_maps`; used to tune on a tuning split).
        foreground: score only the blocks where the reconstruction at the window's end has a pixel above it
            (:func:`tissue_blocks`; ``None``: every block). The map is 0 elsewhere. For CT in [-1, 1], ``-0.9``: the
            image score then comes from the anatomy, not from air (where ``score="spread"`` divides by ~0).
        progress: show a progress bar over the sampling steps.
    """

    input_kind = "measurements"
    samples_posterior = True

    def __init__(
        self,
        prior,
        operator,
        *,
        plan: SamplingPlan | Mapping[str, Any] | None = None,
        window: tuple[float, float] = (0.65, 0.85),
        window_sigma: tuple[float, float] | None = None,
        block: int = 8,
        samples: int = 4,
        variant: str = "klip",
        normalization: str = "g",
        sigma_power: float = 0.5,
        reduction: str = "mean_of_squares",
        stage: str | None = None,
        score: str = "energy",
        spread_floor: float = 0.1,
        foreground: float | None = None,
        keep_step_maps: bool = False,
        progress: bool = False,
    ):
        self.variant = _check_choice(variant, "variant", VARIANTS)
        self.score_kind = _check_choice(score, "score", SCORES)
        samples, block = check_int(samples, "samples"), check_block(block, prior, divides=self.variant in ("klip", "spatial_only"))
        if score == "spread" and samples < 2:
            raise ValueError("score='spread' divides by the spread of the posterior samples: it needs samples >= 2")
        if not (math.isfinite(float(spread_floor)) and spread_floor > 0):
            raise ValueError(f"spread_floor must be a finite number > 0, got {spread_floor!r}")
        self.spread_floor = float(spread_floor)
        if foreground is not None and not -1.0 <= float(foreground) < 1.0:
            raise ValueError(f"foreground must be a threshold in [-1, 1) (images are in [-1, 1]) or None, got {foreground!r}")
        self.foreground = None if foreground is None else float(foreground)
        self.normalization = _check_choice(normalization, "normalization", NORMALIZATIONS)
        self.reduction = _check_choice(reduction, "reduction", REDUCTIONS)
        if window_sigma is not None:
            lo, hi = (float(v) for v in window_sigma)
            if not 0 <= lo < hi:
                raise ValueError(f"window_sigma must be (lo, hi) with 0 <= lo < hi, got {window_sigma}")
        if plan is None:
            plan = DEFAULT_PLAN
        elif isinstance(plan, Mapping) and "sampler" not in plan:
            plan = {"sampler": DEFAULT_PLAN["sampler"], **plan}  # {"steps": 50}: KLIP's default sampler, 50 steps
        self.plan = SamplingPlan.coerce(plan)
        stages = self.plan.likelihood_stages
        if not stages:
            raise ValueError(f"sampler {self.plan.sampler!r} has no likelihood step, so KLIP has nothing to measure; use pigdm, dps, projection, langevin or exact")
        if stage is not None and stage not in stages:
            raise ValueError(f"sampler {self.plan.sampler!r} reports the likelihood stages {', '.join(stages)}, not {stage!r}")
        self.prior, self.operator = prior, operator
        self.samples, self.block = int(samples), int(block)
        self.sigma_power = float(sigma_power)
        self.stage = stage
        self.window_sigma = None if window_sigma is None else tuple(window_sigma)
        self.keep_step_maps, self.progress = bool(keep_step_maps), bool(progress)
        self.sigmas = self.plan.sigmas(prior)
        self._step_norms = ddpm_step_weights(prior, self.sigmas) if normalization == "ddpm" else None
        window_steps(window, self.sigmas.numel() - 1)  # a clear error for a bad window, before anything else uses it
        self.window = tuple(window)
        self._window = self._resolve_window()

    @classmethod
    def example(cls) -> "KLIP":
        """KLIP with its default sampler (ΠGDM without the Jacobian), window and normalization on an 8×8 Gaussian
        prior under 50% pixel inpainting; 30 steps, 4-px blocks, 2 samples."""
        from priorshift.analytic import stationary_gaussian
        from priorshift.operators import Inpainting, random_pixel_mask

        prior = stationary_gaussian(8, length_scale=1.5, variance=0.25)
        mask = random_pixel_mask(8, 0.5, generator=torch.Generator().manual_seed(0)).double()
        return cls(prior, Inpainting(mask=mask, noise_std=0.1), plan={**DEFAULT_PLAN, "steps": 30}, block=4, samples=2)

    @classmethod
    def official(cls, prior, operator, backend: str = "ddpm", **kwargs) -> "KLIP":
        """KLIP giving the numbers of the official code (``backend="ddpm"``: a DDPM prior, e.g. ``from_diffusers``). ``kwargs``:
        ``steps``, ``samples``, ``block``, ``window``, ``zeta``, ``clip_sample``, KLIP's own (:mod:`~priorshift.detectors.klip_official`)."""
        from priorshift.detectors.klip_official import official_settings

        return cls(prior, operator, **official_settings(backend, **kwargs))

    def _resolve_window(self) -> tuple[int, int]:
        T = self.sigmas.numel() - 1
        if self.variant in ("whole_image", "spatial_only"):
            return 0, T
        if self.window_sigma is not None:
            lo, hi = self.window_sigma
            ks = [k for k in range(T) if lo <= float(self.sigmas[k]) <= hi]
            if not ks:
                raise ValueError(f"window_sigma {self.window_sigma} contains none of the schedule's noise levels")
            return ks[0], ks[-1] + 1
        return window_steps(self.window, T)

    @property
    def window_steps(self) -> tuple[int, int]:
        """``(k0, k1)``: the steps ``k0 ≤ k < k1`` the map averages over."""
        return self._window

    def _score(self, y: Tensor, *, seed, hooks: tuple) -> Scores:
        """Returns ``Scores`` with ``score`` (B,) = max over blocks, ``map`` (B, H/block, W/block), ``nfe``, and
        extras ``energy_map`` (the map before any ``score="spread"`` normalization), ``spread_map`` (S ≥ 2: the
        window-mean posterior spread per block), ``kl_nats`` (B,), ``curve`` (B, T_run) normalized update energy per step, ``kl_curve`` (B, T_run)
        each step's KL contribution in nats, ``reconstruction`` (B, C, H, W) — the mean over samples of the
        estimate where sampling stopped — and the run-level ``sigmas`` (T_run floats), ``window_steps``, ``block``,
        ``nfe_per_image``."""
        image_shape = tuple(self.operator.A_adjoint(y[:1]).shape[1:])
        h, w = image_shape[-2:]
        one_block = self.variant in ("whole_image", "temporal_only")
        block = max(h, w) if one_block else self.block
        if one_block and h != w:
            raise ValueError("the single-block variants need square images")
        if h % block or w % block:
            raise ValueError(f"block {block} must divide the image size {h}×{w}")
        k0, k1 = self.window_steps
        acc = KLIPAccumulator(
            block=block, k0=k0, k1=k1, normalization=self.normalization, sigma_power=self.sigma_power, reduction=self.reduction,
            stage=self.stage, keep_steps=self.keep_step_maps, step_norms=self._step_norms,
        )
        all_hooks = [acc, *hooks]
        if self.progress:
            all_hooks.append(ProgressBar(total=k1, desc="KLIP"))
        result = self.plan.sample(as_counting(self.prior), self.operator, y, samples=self.samples, seed=seed, hooks=all_hooks, stop_after=k1)
        block_map = acc.block_sum / acc.n_window
        extras = {"step_maps": torch.stack(acc.step_maps, dim=1)} if self.keep_step_maps else {}
        if acc.spread_sum is not None:
            extras["spread_map"] = acc.spread_sum / acc.n_window
            if self.keep_step_maps:
                extras["step_spread_maps"] = torch.stack(acc.step_spread_maps, dim=1)
        energy_map = block_map
        if self.score_kind == "spread":
            block_map = spread_normalized(block_map, extras["spread_map"], self.spread_floor)
        if self.foreground is not None:
            block_map = torch.where(tissue_blocks(result.x0.mean(1), block, self.foreground), block_map, torch.zeros_like(block_map))
        return Scores(
            score=image_score(block_map),
            map=block_map,
            nfe=result.nfe,
            extras={
                "kl_nats": acc.kl,
                "curve": torch.stack(acc.curve, dim=1),
                "kl_curve": torch.stack(acc.kl_curve, dim=1),
                "reconstruction": result.x0.mean(1),
                "energy_map": energy_map,
                "sigmas": tuple(acc.sigmas),
                "window_steps": (k0, k1),
                "block": block,
                "nfe_per_image": result.nfe_per_image,
                **extras,
            },
        )

    def config(self) -> dict[str, Any]:
        return {"detector": "klip", "plan": self.plan.describe(), "window": list(self.window), "window_sigma": self.window_sigma,
                "block": self.block, "samples": self.samples, "variant": self.variant, "normalization": self.normalization,
                "sigma_power": self.sigma_power, "reduction": self.reduction, "stage": self.stage, "score": self.score_kind,
                "spread_floor": self.spread_floor, "foreground": self.foreground}

    def __repr__(self) -> str:
        k0, k1 = self.window_steps
        return (
            f"KLIP(sampler={self.plan.sampler!r}, steps={self.plan.steps}, window_steps=[{k0}, {k1}), block={self.block}, "
            f"samples={self.samples}, variant={self.variant!r})"
        )
