"""KLIP experiments: score ID/OOD measurement sets once, tune (window, block) on a tuning split, evaluate.

One sampler run per image (full window, finest block, per-step maps kept) serves every window, block and
ablation variant: :func:`priorshift.detectors.aggregate_step_maps` rebuilds KLIP's map for any of them.
Tuning never sees the evaluation sets: :func:`tune` takes the tuning traces only.
"""

from __future__ import annotations

import itertools
import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from priorshift.detectors.klip import KLIP, aggregate_step_maps
from priorshift.metrics import block_auroc, ood_metrics

__all__ = ["Trace", "score_set", "Setting", "evaluate", "tune", "ablation_settings", "VARIANT_NAMES"]

VARIANT_NAMES = {
    "whole_image": "whole-image KL (no window, one block)",
    "spatial_only": "spatial only (blocks, full window)",
    "temporal_only": "temporal only (window, one block)",
    "klip": "KLIP (window + blocks)",
}


@dataclass
class Trace:
    """Per-step block maps of one scored set: ``step_maps`` (T, N, h, w) at block ``base_block``."""

    step_maps: Tensor
    base_block: int
    n_steps: int
    nfe_per_image_full: float
    seconds: float
    kl_nats: Tensor
    reconstruction: Tensor
    sigmas: Tensor

    @property
    def n(self) -> int:
        return self.step_maps.shape[1]


def score_set(prior, operator, y: Tensor, *, seeds, base_block: int, batch_size: int = 16, progress=None, **klip_kwargs) -> Trace:
    """Run KLIP over the full schedule on measurements ``y`` (N, ...) in batches, keeping per-step maps."""
    det = KLIP(prior, operator, block=base_block, variant="spatial_only", keep_step_maps=True, **klip_kwargs)
    maps, kls, recs = [], [], []
    nfe = 0
    t0 = time.perf_counter()
    seeds = list(seeds)
    for start in range(0, y.shape[0], batch_size):
        sl = slice(start, start + batch_size)
        s = det.score(y[sl], seed=seeds[sl])
        maps.append(s.step_maps)
        kls.append(s.kl_nats)
        recs.append(s.reconstruction.float())
        nfe += s.nfe
        if progress is not None:
            progress(min(start + batch_size, y.shape[0]), y.shape[0])
    return Trace(
        step_maps=torch.cat(maps, dim=1),
        base_block=base_block,
        n_steps=det.sigmas.numel() - 1,
        nfe_per_image_full=nfe / y.shape[0],
        seconds=time.perf_counter() - t0,
        kl_nats=torch.cat(kls),
        reconstruction=torch.cat(recs),
        sigmas=det.sigmas,
    )


@dataclass(frozen=True)
class Setting:
    """A KLIP configuration evaluable from a trace: window as fractions of the steps, block in pixels
    (``block=None``: one block covering the image)."""

    window: tuple[float, float]
    block: int | None
    variant: str = "klip"

    def steps(self, n_steps: int) -> tuple[int, int]:
        a, b = self.window
        return round(a * n_steps), round(b * n_steps)

    def maps(self, trace: Trace) -> Tensor:
        k0, k1 = self.steps(trace.n_steps)
        if self.block is None:
            return aggregate_step_maps(trace.step_maps, (k0, k1), pool=0)
        return aggregate_step_maps(trace.step_maps, (k0, k1), pool=self.block // trace.base_block)

    def nfe_per_image(self, trace: Trace) -> float:
        # Sampling stops at the window's end.
        return trace.nfe_per_image_full * self.steps(trace.n_steps)[1] / trace.n_steps

    def label(self) -> str:
        block = "image" if self.block is None else f"{self.block}px"
        return f"window [{self.window[0]:.2f}, {self.window[1]:.2f}), block {block}"


def evaluate(setting: Setting, trace_id: Trace, trace_ood: Trace, masks: Tensor | None = None, body_masks: Tensor | None = None) -> dict:
    """Dataset-level metrics (score = max over blocks) and image-level block AUROC on the OOD images."""
    map_id, map_ood = setting.maps(trace_id), setting.maps(trace_ood)
    s_id = map_id.flatten(1).max(1).values.numpy()
    s_ood = map_ood.flatten(1).max(1).values.numpy()
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


def tune(trace_id: Trace, trace_ood: Trace, masks: Tensor, body_masks: Tensor | None, *, blocks, objective: str = "dataset", grid: float = 0.05, variant: str = "klip") -> tuple[Setting, dict]:
    """Grid-search (window, block) on a **tuning** split. ``objective``: ``"dataset"`` (AUROC, max over blocks)
    or ``"image"`` (mean block AUROC). Ties are broken towards earlier-ending windows (fewer NFE)."""
    windows = _windows(grid) if variant in ("klip", "temporal_only") else [(0.0, 1.0)]
    # Without a spatial restriction the dataset-level score uses one block; a map needs blocks, so for the
    # image-level objective "no spatial restriction" means the finest block (no aggregation).
    unrestricted = None if objective == "dataset" else min(blocks)
    block_choices = list(blocks) if variant in ("klip", "spatial_only") else [unrestricted]
    best, best_key, best_res = None, None, None
    seen = set()
    for window, block in itertools.product(windows, block_choices):
        setting = Setting(window, block, variant)
        k0, k1 = setting.steps(trace_id.n_steps)
        if k1 <= k0 or (k0, k1, block) in seen:
            continue  # empty at this step count, or the same steps as a window already tried
        seen.add((k0, k1, block))
        res = evaluate(setting, trace_id, trace_ood, masks if objective == "image" else None, body_masks)
        value = res["auroc"] if objective == "dataset" else res["block_auroc_mean"]
        key = (round(value, 6), -window[1], -(window[1] - window[0]))
        if best_key is None or key > best_key:
            best, best_key, best_res = setting, key, res
    return best, best_res


def ablation_settings(trace_id: Trace, trace_ood: Trace, masks, body_masks, *, blocks, objective: str = "dataset", grid: float = 0.05) -> dict[str, Setting]:
    """The paper's ablation, each variant tuned on the tuning split over the parameters it has (for the
    image-level objective the variants without spatial restriction use the finest block)."""
    out = {"whole_image": Setting((0.0, 1.0), None if objective == "dataset" else min(blocks), "whole_image")}
    for variant in ("spatial_only", "temporal_only", "klip"):
        out[variant], _ = tune(trace_id, trace_ood, masks, body_masks, blocks=blocks, objective=objective, grid=grid, variant=variant)
    return out
