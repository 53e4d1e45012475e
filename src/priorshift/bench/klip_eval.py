"""KLIP experiments: score ID/OOD measurement sets once, tune (window, block) on a tuning split, evaluate.

One sampler run per image (full window, finest block, per-step maps kept) serves every window, block, score,
step normalization and ablation variant: :func:`priorshift.detectors.aggregate_step_maps` rebuilds KLIP's map for any of them, and
:func:`priorshift.detectors.klip.window_steps` / :func:`~priorshift.detectors.klip.image_score` turn a setting
into steps and a map into a score exactly as the detector does. Tuning never sees the evaluation sets:
:func:`tune` (one tuning shift) and :func:`tune_joint` (several at once) take the tuning traces only. Traces are
cached on disk by :func:`load_or_score`.
"""

from __future__ import annotations

import itertools
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from torch import Tensor

from priorshift.detectors.base import score_batches
from priorshift.detectors.klip import KLIP, aggregate_step_maps, image_score, spread_normalized, step_norm, window_steps
from priorshift.detectors.klip_multiscale import fit_windows, window_features, window_zscores
from priorshift.io import atomic_write, atomic_write_json
from priorshift.metrics import block_auroc, ood_metrics
from priorshift.types import StepState

__all__ = ["Trace", "score_set", "load_or_score", "Setting", "evaluate", "tune", "tune_joint", "ablation_settings", "VARIANT_NAMES",
           "STEP_WEIGHTINGS", "multiscale_scores"]

# The per-step weightings a search may try (``weightings=``): KLIP's "g" (‖Δx_k‖² / (σ_k + σ_k+1)), none, and the
# σ-power normalizations p = 1 (‖Δx_k‖² / σ_k²) and p = −0.5 (‖Δx_k‖² · σ_k).
STEP_WEIGHTINGS = ("g", "none", 1.0, -0.5)

VARIANT_NAMES = {
    "whole_image": "whole-image KL (no window, one block)",
    "spatial_only": "spatial only (blocks, full window)",
    "temporal_only": "temporal only (window, one block)",
    "klip": "KLIP (window + blocks)",
}


@dataclass
class Trace:
    """Per-step block maps of one scored set: ``step_maps`` (N, T, h, w) at block ``base_block``."""

    step_maps: Tensor
    base_block: int
    n_steps: int
    nfe_per_image_full: float
    seconds: float
    kl_nats: Tensor
    reconstruction: Tensor
    sigmas: Tensor
    spread_maps: Tensor | None = None  # (N, T, h, w) per-step posterior spread per block (S ≥ 2; newer traces only)
    # step maps reweighted to another normalization, memoized by Setting (tuning evaluates thousands of settings)
    _reweighted: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    @property
    def n(self) -> int:
        return self.step_maps.shape[0]

    def save(self, path: str | Path, key: str) -> None:
        """Write the trace as safetensors + a json sidecar (``key`` identifies what was run), atomically."""
        from safetensors.torch import save_file

        path = Path(path)
        tensors = {"step_maps": self.step_maps.contiguous(), "kl_nats": self.kl_nats.contiguous(),
                   "reconstruction": self.reconstruction.contiguous(), "sigmas": self.sigmas.contiguous()}
        if self.spread_maps is not None:
            tensors["spread_maps"] = self.spread_maps.contiguous()
        atomic_write(path, lambda tmp: save_file(tensors, tmp))
        atomic_write_json(path.with_suffix(".json"), {"key": key, "layout": "images-first", "base_block": self.base_block, "n_steps": self.n_steps,
                                                      "nfe_per_image_full": self.nfe_per_image_full, "seconds": self.seconds})

    def take(self, index) -> "Trace":
        """The trace of a subset of its images (``index``: a slice, indices or a boolean mask over the N images)."""
        pick = lambda t: None if t is None else t[index]  # noqa: E731
        return Trace(self.step_maps[index], self.base_block, self.n_steps, self.nfe_per_image_full, self.seconds, self.kl_nats[index],
                     self.reconstruction[index], self.sigmas, pick(self.spread_maps))

    def pooled(self, block: int) -> "Trace":
        """The same trace with its per-step maps (and spread maps) summed to ``block``-px blocks (a multiple of the
        base block), e.g. to combine traces recorded at different base blocks."""
        if block % self.base_block:
            raise ValueError(f"block {block} is not a multiple of the trace's base block {self.base_block}")
        p = block // self.base_block

        def pool(m):
            if m is None:
                return None
            b, t, h, w = m.shape
            if h % p or w % p:
                raise ValueError(f"block {block} must divide the image: the maps are {h}×{w} blocks of {self.base_block} px")
            return m.reshape(b, t, h // p, p, w // p, p).sum((3, 5))

        return Trace(pool(self.step_maps), block, self.n_steps, self.nfe_per_image_full, self.seconds, self.kl_nats, self.reconstruction,
                     self.sigmas, pool(self.spread_maps))

    @classmethod
    def load(cls, path: str | Path, key: str | None = None, base_block: int | None = None) -> "Trace | None":
        """The trace at ``path``, or ``None`` when it is missing or was made by a different run (``key``).
        Traces written before the images-first layout (no ``layout`` in the sidecar) store (T, N, h, w)."""
        from safetensors.torch import load_file

        path = Path(path)
        meta_path = path.with_suffix(".json")
        if not (path.exists() and meta_path.exists()):
            return None
        meta = json.loads(meta_path.read_text())
        if key is not None and meta.get("key") != key:
            return None
        t = load_file(str(path))
        maps = t["step_maps"] if meta.get("layout") == "images-first" else t["step_maps"].transpose(0, 1).contiguous()
        block = meta.get("base_block", base_block)
        if block is None:
            raise ValueError(f"{meta_path} does not record its base block; pass base_block=")
        return cls(maps, int(block), meta["n_steps"], meta["nfe_per_image_full"], meta["seconds"], t["kl_nats"], t["reconstruction"], t["sigmas"],
                   t.get("spread_maps"))


def score_set(prior, operator, y: Tensor, *, seed, base_block: int, batch_size: int = 16, progress=None, **klip_kwargs) -> Trace:
    """Run KLIP over the full schedule on measurements ``y`` (N, ...) in batches, keeping per-step maps."""
    det = KLIP(prior, operator, block=base_block, variant="spatial_only", keep_step_maps=True, **klip_kwargs)
    t0 = time.perf_counter()
    s = score_batches(det, y, batch_size=batch_size, seed=seed, progress=progress)
    return Trace(
        step_maps=s.step_maps,
        base_block=base_block,
        n_steps=det.sigmas.numel() - 1,
        nfe_per_image_full=s.nfe / y.shape[0],
        seconds=time.perf_counter() - t0,
        kl_nats=s.kl_nats,
        reconstruction=s.reconstruction.float(),
        sigmas=det.sigmas,
        spread_maps=s.extras.get("step_spread_maps"),
    )


def load_or_score(path: str | Path, prior, operator, y: Tensor, *, seed, base_block: int, key: str, progress=None, **klip_kwargs) -> Trace:
    """The cached trace at ``path`` if it was made with the same ``key``; else :func:`score_set` and cache it."""
    trace = Trace.load(path, key, base_block)
    if trace is None:
        trace = score_set(prior, operator, y, seed=seed, base_block=base_block, progress=progress, **klip_kwargs)
        trace.save(path, key)
    return trace


@dataclass(frozen=True)
class Setting:
    """A KLIP configuration evaluable from a trace: window as fractions of the steps, block in pixels
    (``block=None``: one block covering the image), the map's ``score`` and the per-step ``normalization``.

    Traces are recorded with KLIP's default ``normalization="g"`` (step map ``‖Δx_k‖² / g_k²``, ``g_k² = σ_k +
    σ_{k+1}``); ``"sigma_power"`` (``‖Δx_k‖² / σ_k^{2p}``, p = ``sigma_power``) and ``"none"`` are rebuilt exactly
    by reweighting each step's map by ``g_k² / n_k²`` (:func:`~priorshift.detectors.klip.step_norm`, as the detector).
    (``"kl"`` needs the ln σ cells and ``"ddpm"`` the prior's timestep grid: neither is offered here.)"""

    window: tuple[float, float]
    block: int | None
    variant: str = "klip"
    score: str = "energy"  # or "spread": KLIP(score="spread"), from the trace's spread maps
    spread_floor: float = 0.1
    normalization: str = "g"  # or "sigma_power", "none": KLIP(normalization=...)
    sigma_power: float = 0.5

    def steps(self, n_steps: int) -> tuple[int, int]:
        return window_steps(self.window, n_steps)

    def _step_maps(self, trace: Trace) -> Tensor:
        if self.normalization == "g":
            return trace.step_maps
        if self.normalization not in ("sigma_power", "none"):
            raise ValueError(f"normalization {self.normalization!r} cannot be rebuilt from a trace; use g, sigma_power or none")
        key = (self.normalization, self.sigma_power if self.normalization == "sigma_power" else None)
        if key not in trace._reweighted:
            # each step's map × (n_g / n_new)², both normalisers as KLIP's hook computes them from the step's (σ, g)
            sig, T = trace.sigmas.tolist(), trace.step_maps.shape[1]
            steps = [SimpleNamespace(i=k, sigma=sig[k], g=StepState.coefficients(sig[k], sig[k + 1])[0]) for k in range(T)]
            ratio = [(step_norm("g", s, None, self.sigma_power) / step_norm(self.normalization, s, None, self.sigma_power)) ** 2 for s in steps]
            trace._reweighted[key] = trace.step_maps.to(torch.float64) * torch.tensor(ratio, dtype=torch.float64).reshape(1, T, 1, 1)
        return trace._reweighted[key]

    def maps(self, trace: Trace) -> Tensor:
        k0, k1 = self.steps(trace.n_steps)
        pool = 0 if self.block is None else self.block // trace.base_block
        energy = aggregate_step_maps(self._step_maps(trace), (k0, k1), pool=pool)
        if self.score == "energy":
            return energy
        if trace.spread_maps is None:
            raise ValueError("score='spread' needs a trace with spread maps (scored with samples >= 2 by this version)")
        return spread_normalized(energy, aggregate_step_maps(trace.spread_maps, (k0, k1), pool=pool), self.spread_floor)

    def nfe_per_image(self, trace: Trace) -> float:
        # Sampling stops at the window's end.
        return trace.nfe_per_image_full * self.steps(trace.n_steps)[1] / trace.n_steps

    def klip_kwargs(self) -> dict:
        """The :class:`~priorshift.detectors.KLIP` arguments of this setting (``window``, ``block``, ``score``, ...)."""
        kw = {"window": tuple(self.window), "score": self.score, "normalization": self.normalization}
        if self.variant != "klip":
            kw["variant"] = self.variant
        if self.block is not None:
            kw["block"] = self.block
        if self.score == "spread":
            kw["spread_floor"] = self.spread_floor
        if self.normalization == "sigma_power":
            kw["sigma_power"] = self.sigma_power
        return kw

    def label(self) -> str:
        block = "image" if self.block is None else f"{self.block}px"
        extra = f", spread-normalized (floor {self.spread_floor:g})" if self.score == "spread" else ""
        if self.normalization == "sigma_power":
            extra += f", steps weighted σ^{-2 * self.sigma_power:g}"
        elif self.normalization == "none":
            extra += ", unnormalized steps"
        return f"window [{self.window[0]:.2f}, {self.window[1]:.2f}), block {block}{extra}"


def evaluate(setting: Setting, trace_id: Trace, trace_ood: Trace, masks: Tensor | None = None, body_masks: Tensor | None = None) -> dict:
    """Dataset-level metrics (score = max over blocks) and image-level block AUROC on the OOD images."""
    map_id, map_ood = setting.maps(trace_id), setting.maps(trace_ood)
    s_id, s_ood = image_score(map_id).numpy(), image_score(map_ood).numpy()
    out = ood_metrics(s_id, s_ood)
    out["nfe_per_image"] = setting.nfe_per_image(trace_ood)
    if masks is not None and setting.block is not None:
        loc = block_auroc(map_ood, masks, setting.block, body_mask=body_masks)
        out.update(block_auroc_mean=loc.mean, block_auroc_std=loc.std, block_auroc_n=loc.n_scored, block_auroc_excluded=loc.n_excluded)
    else:
        out.update(block_auroc_mean=math.nan, block_auroc_std=math.nan, block_auroc_n=0, block_auroc_excluded=0)
    return out


def _windows(grid: float = 0.05, min_width: float = 0.05) -> list[tuple[float, float]]:
    edges = np.round(np.arange(0.0, 1.0 + 1e-9, grid), 4)
    return [(float(a), float(b)) for a, b in itertools.combinations(edges, 2) if b - a >= min_width - 1e-9]


def _candidates(n_steps: int, *, blocks, objective: str, grid: float, variant: str, scores, floors, weightings=("g",)):
    """Every distinct setting of the search: (window, block, score, floor, step weighting), windows that select
    the same steps at ``n_steps`` tried once. ``weightings``: ``"g"``, ``"none"`` or a number p (``"sigma_power"``)."""
    windows = _windows(grid) if variant in ("klip", "temporal_only") else [(0.0, 1.0)]
    # Without a spatial restriction the dataset-level score uses one block; a map needs blocks, so for the
    # image-level objective "no spatial restriction" means the finest block (no aggregation).
    unrestricted = None if objective == "dataset" else min(blocks)
    block_choices = list(blocks) if variant in ("klip", "spatial_only") else [unrestricted]
    variants = [(score, floor) for score in scores for floor in (floors if score == "spread" else floors[:1])]
    norms = [(w, 0.5) if isinstance(w, str) else ("sigma_power", float(w)) for w in weightings]
    seen = set()
    for window, block, (score, floor), (norm, power) in itertools.product(windows, block_choices, variants, norms):
        setting = Setting(window, block, variant, score, floor, norm, power)
        try:
            k0, k1 = setting.steps(n_steps)
        except ValueError:
            continue  # empty at this step count
        if (k0, k1, block, score, floor, norm, power) not in seen:
            seen.add((k0, k1, block, score, floor, norm, power))
            yield setting


def _objective_value(res: dict, objective: str) -> float:
    return res["auroc"] if objective == "dataset" else res["block_auroc_mean"]


def tune(trace_id: Trace, trace_ood: Trace, masks: Tensor, body_masks: Tensor | None, *, blocks, objective: str = "dataset", grid: float = 0.05, variant: str = "klip",
         scores: tuple[str, ...] = ("energy",), floors: tuple[float, ...] = (0.1,), weightings=("g",)) -> tuple[Setting, dict]:
    """Grid-search (window, block) — and the map's ``score`` among ``scores`` ("energy", "spread"), with
    ``spread_floor`` among ``floors`` for "spread", and the per-step ``weightings`` (see :func:`_candidates`) — on a **tuning** split. ``objective``: ``"dataset"`` (AUROC,
    max over blocks) or ``"image"`` (mean block AUROC). Ties are broken towards earlier-ending windows (fewer NFE)."""
    best, best_key, best_res = None, None, None
    for setting in _candidates(trace_id.n_steps, blocks=blocks, objective=objective, grid=grid, variant=variant, scores=scores, floors=floors,
                               weightings=weightings):
        res = evaluate(setting, trace_id, trace_ood, masks if objective == "image" else None, body_masks)
        key = (round(_objective_value(res, objective), 6), -setting.window[1], -(setting.window[1] - setting.window[0]))
        if best_key is None or key > best_key:
            best, best_key, best_res = setting, key, res
    return best, best_res


def tune_joint(pairs, *, blocks, grid: float = 0.05, scores: tuple[str, ...] = ("energy",), floors: tuple[float, ...] = (0.1,),
               weightings=("g",)) -> tuple[Setting, dict]:
    """One dataset-level setting for several tuning shifts at once: the (window, block, score) that maximizes
    the **mean** AUROC over ``pairs`` = [(trace_id, trace_ood), ...] (each a tuning split; their ID traces may
    come from different priors). Returns the setting and ``{"auroc": mean, "aurocs": [per pair]}``; ties as
    :func:`tune`. All traces must share the step count."""
    pairs = list(pairs)
    if not pairs:
        raise ValueError("tune_joint needs at least one (trace_id, trace_ood) pair")
    n_steps = {t.n_steps for pair in pairs for t in pair}
    if len(n_steps) != 1:
        raise ValueError(f"the traces were sampled with different step counts {sorted(n_steps)}; a window would select different steps")
    best, best_key, best_res = None, None, None
    for setting in _candidates(n_steps.pop(), blocks=blocks, objective="dataset", grid=grid, variant="klip", scores=scores, floors=floors,
                               weightings=weightings):
        aurocs = [evaluate(setting, a, b)["auroc"] for a, b in pairs]
        mean = float(np.mean(aurocs))
        key = (round(mean, 6), -setting.window[1], -(setting.window[1] - setting.window[0]))
        if best_key is None or key > best_key:
            best, best_key, best_res = setting, key, {"auroc": mean, "aurocs": aurocs}
    return best, best_res


def ablation_settings(trace_id: Trace, trace_ood: Trace, masks, body_masks, *, blocks, objective: str = "dataset", grid: float = 0.05) -> dict[str, Setting]:
    """The paper's ablation, each variant tuned on the tuning split over the parameters it has (for the
    image-level objective the variants without spatial restriction use the finest block)."""
    out = {"whole_image": Setting((0.0, 1.0), None if objective == "dataset" else min(blocks), "whole_image")}
    for variant in ("spatial_only", "temporal_only", "klip"):
        out[variant], _ = tune(trace_id, trace_ood, masks, body_masks, blocks=blocks, objective=objective, grid=grid, variant=variant)
    return out


def _multiscale_features(t: Trace, ref: Trace, windows, block: int) -> tuple[Tensor, Tensor]:
    if block % ref.base_block:
        raise ValueError(f"block {block} is not a multiple of the traces' base block {ref.base_block}")
    if t.base_block != ref.base_block or t.n_steps != ref.n_steps:
        raise ValueError("every trace must share the calibration trace's base block and step count")
    return window_features(t.step_maps, windows, t.n_steps, pool=block // ref.base_block)


def multiscale_scores(trace_fit: Trace, traces: dict[str, Trace], *, windows, block: int, min_std: float = 1e-3,
                      maps: bool = False) -> dict[str, Tensor] | dict[str, tuple[Tensor, Tensor]]:
    """:class:`~priorshift.detectors.KLIPMultiscale`'s image scores from traces: the per-window log energies
    (:func:`~priorshift.detectors.klip_multiscale.window_features`, ``block`` a multiple of the traces' base block)
    standardised by their mean and standard deviation over ``trace_fit`` (in-distribution calibration), summed over
    windows. With ``maps=True`` each value is ``(score (N,), map (N, H/block, W/block))``, the detector's map."""
    mean, std = fit_windows(_multiscale_features(trace_fit, trace_fit, windows, block)[1], min_std)
    out = {}
    for name, t in traces.items():
        z, block_map = window_zscores(*_multiscale_features(t, trace_fit, windows, block), mean, std)
        out[name] = (z.sum(1), block_map) if maps else z.sum(1)
    return out
