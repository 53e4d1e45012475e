"""The reconstruction and its warning from one sampler pass.

A user reconstructing ``y`` with a diffusion posterior sampler already runs the pass KLIP needs. Here the sampler
runs its full schedule once, for the reconstruction (posterior mean and per-pixel spread over the S samples), and
one or more KLIP detectors ride on it as hooks (:class:`~priorshift.detectors.KLIPAccumulator`): a KLIP's map only
reads the steps of its window, so the map from the full pass equals ``KLIP.score(y, seed=...)``'s, which stops
sampling at the window's end (same seeds → same trajectory up to there; tested). Extra cost over a plain
reconstruction: the accumulators' block sums, no network call.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor

from priorshift.detectors.base import concat_scores, resolve_seeds
from priorshift.detectors.klip import KLIP, KLIPAccumulator, image_score, spread_normalized
from priorshift.diffusion.denoisers import as_counting
from priorshift.types import Scores

__all__ = ["Reconstruction", "reconstruct", "reconstruct_batches"]


@dataclass(frozen=True)
class Reconstruction:
    """``mean`` (B, C, H, W): the posterior mean over the S samples; ``std`` (B, C, H, W): their per-pixel standard
    deviation (unbiased; None for S = 1); ``samples`` (B, S, C, H, W) when kept; ``scores``: one
    :class:`~priorshift.types.Scores` per KLIP (``score`` (B,), ``map`` (B, h, w), extras ``kl_nats``, ``energy_map``,
    ``window_steps``, ``block``); ``nfe``: the pass's network evaluations (shared by all of them); ``steps_run``."""

    mean: Tensor
    std: Tensor | None
    samples: Tensor | None
    scores: tuple[Scores, ...]
    nfe: int
    steps_run: int


def _check_klips(klips: Sequence[KLIP]) -> tuple[KLIP, ...]:
    klips = tuple(klips)
    if not klips or not all(isinstance(k, KLIP) for k in klips):
        raise ValueError("reconstruct needs one or more KLIP detectors to ride on the pass")
    first = klips[0]
    for k in klips[1:]:
        if k.prior is not first.prior or k.operator is not first.operator:
            raise ValueError("the KLIP detectors of one pass must share one prior and one operator")
        if k.plan != first.plan or k.samples != first.samples:
            raise ValueError(f"the KLIP detectors of one pass must share the sampling plan and samples; got {first.plan} × {first.samples} "
                             f"and {k.plan} × {k.samples}")
    return klips


def _accumulator(det: KLIP, image_shape) -> KLIPAccumulator:
    """The accumulator ``det.score`` builds (same block, window and normalization)."""
    h, w = image_shape[-2:]
    one_block = det.variant in ("whole_image", "temporal_only")
    block = max(h, w) if one_block else det.block
    if h % block or w % block:
        raise ValueError(f"block {block} must divide the image size {h}×{w}")
    k0, k1 = det.window_steps
    return KLIPAccumulator(block=block, k0=k0, k1=k1, normalization=det.normalization, sigma_power=det.sigma_power,
                           reduction=det.reduction, stage=det.stage, step_norms=det._step_norms)


def _scores(det: KLIP, acc: KLIPAccumulator, nfe: int, batch: int) -> Scores:
    energy = acc.block_sum / acc.n_window
    block_map = energy
    extras = {}
    if acc.spread_sum is not None:
        extras["spread_map"] = acc.spread_sum / acc.n_window
    if det.score_kind == "spread":
        block_map = spread_normalized(energy, extras["spread_map"], det.spread_floor)
    return Scores(score=image_score(block_map), map=block_map, nfe=nfe,
                  extras={"kl_nats": acc.kl, "energy_map": energy, "window_steps": (acc.k0, acc.k1), "block": acc.block,
                          "nfe_per_image": nfe / batch, **extras})


def reconstruct(klips: Sequence[KLIP], y: Tensor, *, seed=0, keep_samples: bool = False, full: bool = True, hooks=()) -> Reconstruction:
    """One sampler pass over ``y`` (B, ...) with every KLIP of ``klips`` (sharing prior, operator, plan and samples)
    as a hook. ``full``: run the whole schedule (the reconstruction); ``False``: stop at the latest window's end
    (enough for the maps: calibration); then ``mean`` / ``std`` are of the denoised estimate there."""
    klips = _check_klips(klips)
    first = klips[0]
    y = first.check_input(y)  # finite, the operator's shape, the prior's device and dtype (as KLIP.score)
    image_shape = tuple(first.operator.A_adjoint(y[:1]).shape[1:])
    accs = [_accumulator(k, image_shape) for k in klips]
    n_steps = first.sigmas.numel() - 1
    stop = None if full else max(a.k1 for a in accs)
    if stop is not None and stop >= n_steps:
        stop = None
    with torch.no_grad():  # as every detector's score: samplers that need the Jacobian enable it for their step
        result = first.plan.sample(as_counting(first.prior), first.operator, y, samples=first.samples, seed=seed, hooks=[*accs, *hooks],
                                   stop_after=stop)
    x0 = result.x0
    std = x0.std(1, correction=1) if x0.shape[1] >= 2 else None
    b = y.shape[0]
    return Reconstruction(mean=x0.mean(1), std=std, samples=x0 if keep_samples else None, scores=tuple(_scores(k, a, result.nfe, b) for k, a in zip(klips, accs)),
                          nfe=result.nfe, steps_run=result.steps_run)


def reconstruct_batches(klips: Sequence[KLIP], y: Tensor, *, batch_size: int = 16, seed=0, keep_samples: bool = False, full: bool = True,
                        progress=None) -> Reconstruction:
    """:func:`reconstruct` over ``y`` (N, ...) in batches, per-image seeds resolved once for all N (the result does
    not depend on ``batch_size``); tensors moved to the CPU. ``progress(done, total)`` after each batch."""
    if int(batch_size) != batch_size or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size}")
    n = int(y.shape[0])
    if n == 0:
        raise ValueError("no measurements to reconstruct")
    seeds = resolve_seeds(seed, n)
    parts = []
    for start in range(0, n, int(batch_size)):
        stop = min(start + int(batch_size), n)
        r = reconstruct(klips, y[start:stop], seed=seeds[start:stop], keep_samples=keep_samples, full=full)
        cpu = lambda t: None if t is None else t.detach().cpu()  # noqa: E731
        scores = tuple(Scores(score=cpu(s.score), map=cpu(s.map), nfe=s.nfe,
                              extras={k: cpu(v) if isinstance(v, Tensor) else v for k, v in s.extras.items()}) for s in r.scores)
        parts.append(Reconstruction(cpu(r.mean), cpu(r.std), cpu(r.samples), scores, r.nfe, r.steps_run))
        if progress is not None:
            progress(stop, n)
    cat = lambda ts: None if ts[0] is None else torch.cat(ts)  # noqa: E731
    scores = tuple(concat_scores([p.scores[i] for p in parts]) for i in range(len(parts[0].scores)))
    return Reconstruction(mean=cat([p.mean for p in parts]), std=cat([p.std for p in parts]), samples=cat([p.samples for p in parts]),
                          scores=scores, nfe=sum(p.nfe for p in parts), steps_run=parts[0].steps_run)
