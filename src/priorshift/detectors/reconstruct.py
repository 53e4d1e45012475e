"""The measurement path of every image detector: reconstruct, then score the reconstruction.

An image detector (``input_kind = "images"``: :class:`~priorshift.detectors.baselines.DenoisingError`,
:class:`~priorshift.detectors.baselines.ScoreNorm`, EigenScore, ...) needs clean images; from measurements
``y = A(x) + e`` the natural pipeline is to estimate ``x`` first. :class:`FromMeasurements` does that with a
posterior sampler — the mean of ``S`` samples of ``p(x | y)``, an estimate of the MMSE reconstruction
``E[x | y]`` — and scores the estimate with the wrapped detector:

    score(y) = image_detector.score( (1/S) Σ_s x_s ),    x_s ~ p(x | y) by ``plan``

Calibration follows the same pipeline: :meth:`FromMeasurements.fit` reconstructs the ID *measurements* and
fits the image detector on those reconstructions, not on clean images (reconstructions are smoother than
prior samples, so a reference fitted on clean images would flag every reconstruction).

Cost: the NFE of both parts is counted by the denoiser wrapper (:func:`priorshift.diffusion.as_counting`)
and reported per image; the reconstruction usually dominates (``steps × S`` per image against ``K × R``
for the image baselines).
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import torch
from torch import Tensor

from priorshift.detectors.base import Detector, resolve_seeds
from priorshift.diffusion.denoisers import as_counting
from priorshift.samplers.plan import SamplingPlan
from priorshift.types import Scores

__all__ = ["FromMeasurements"]


def detector_seeds(seeds: list[int]) -> list[int]:
    """An independent stream for the image detector, derived from each image's seed (the sampler uses the
    seed itself), so the detector's noise is not the sampler's first draws again."""
    return [int(np.random.SeedSequence([int(s) % 2**63, 1]).generate_state(1, dtype=np.uint64)[0] >> 2) for s in seeds]


def _per_image(nfe: int, b: int) -> Tensor:
    """``nfe`` split over ``b`` images, ``(b,)`` int64 summing to ``nfe`` exactly (the remainder, if any, goes
    to the first images). Per-image, so :func:`~priorshift.detectors.base.concat_scores` adds it up across batches."""
    base, rest = divmod(int(nfe), int(b))
    out = torch.full((b,), base, dtype=torch.int64)
    out[:rest] += 1
    return out


class FromMeasurements(Detector):
    """``FromMeasurements(image_detector, operator, plan=..., samples=S)``: an image detector on measurements.

    Args:
        image_detector: any detector with ``input_kind == "images"`` (fitted or not). Its prior is the prior
            the posterior sampler uses (``self.prior`` is the image detector's ``prior``; setting it sets both).
        operator: the forward model that produced ``y``.
        plan: a :class:`~priorshift.samplers.SamplingPlan` or a mapping of its fields (default: DPS, 50 steps);
            the sampler must have a measurement step (``likelihood_stages``).
        samples: posterior samples ``S`` averaged into the reconstruction.

    ``fit(y_id, seed=...)`` reconstructs ``y_id`` and fits the image detector on the reconstructions (a no-op
    when the image detector needs no calibration). ``score(y, seed=..., hooks=...)``: the image detector's
    :class:`~priorshift.types.Scores` (its ``score``, ``map`` and extras) on the reconstructions, with
    ``nfe`` the total of both parts and extras ``reconstruction`` (B, C, H, W), ``nfe_reconstruction`` and
    ``nfe_detector`` ((B,) int64 per-image counts; ``nfe_reconstruction.sum() + nfe_detector.sum() == nfe``),
    ``steps_run``. ``hooks`` go to the sampler. Image b's sampler uses its seed, the image detector an
    independent stream derived from it; the result does not depend on the batch.
    """

    input_kind = "measurements"
    samples_posterior = True
    stochastic = True

    def __init__(self, image_detector, operator, *, plan: SamplingPlan | Mapping[str, Any] | None = None, samples: int = 1):
        if getattr(image_detector, "input_kind", None) != "images":
            raise ValueError(
                f"FromMeasurements wraps a detector of images (input_kind 'images'), got {type(image_detector).__name__} "
                f"with input_kind {getattr(image_detector, 'input_kind', None)!r}"
            )
        if operator is None:
            raise ValueError("FromMeasurements needs the operator that produced the measurements")
        if isinstance(samples, bool) or int(samples) != samples or samples < 1:
            raise ValueError(f"samples must be an integer >= 1, got {samples!r}")
        plan = SamplingPlan.coerce(plan)
        if not plan.likelihood_stages:
            raise ValueError(f"sampler {plan.sampler!r} has no measurement step: its samples would ignore y; choose a posterior sampler")
        self.image_detector = image_detector
        self.operator = operator
        self.plan = plan
        self.samples = int(samples)

    # -- the prior is the image detector's --------------------------------------------------------------
    @property
    def prior(self):
        return self.image_detector.prior

    @prior.setter
    def prior(self, value) -> None:
        self.image_detector.prior = value

    @property
    def needs_fit(self) -> bool:  # type: ignore[override]
        return bool(self.image_detector.needs_fit)

    def is_fitted(self) -> bool:
        return self.image_detector.is_fitted()

    # -- the pipeline -------------------------------------------------------------------------------------
    def reconstruct(self, y: Tensor, *, seed=0, hooks=()) -> tuple[Tensor, Any]:
        """The mean of ``samples`` posterior samples, ``(B, C, H, W)``, and the sampler's ``SampleResult``."""
        seeds = resolve_seeds(seed, y.shape[0])
        result = self.plan.sample(as_counting(self.prior), self.operator, y, samples=self.samples, seed=seeds, hooks=hooks)
        return result.x0.mean(1), result

    def _fit(self, data: Tensor, *, seed) -> None:
        seeds = resolve_seeds(seed, data.shape[0])
        recon, _ = self.reconstruct(data, seed=seeds)
        self.image_detector.fit(recon, seed=detector_seeds(seeds))

    def _score(self, data: Tensor, *, seed, hooks: tuple) -> Scores:
        b = data.shape[0]
        seeds = resolve_seeds(seed, b)
        recon, result = self.reconstruct(data, seed=seeds, hooks=hooks)
        inner = self.image_detector.score(recon, seed=detector_seeds(seeds))
        extras = {
            **inner.extras,
            "reconstruction": recon,
            "nfe_reconstruction": _per_image(result.nfe, b),
            "nfe_detector": _per_image(inner.nfe, b),
            "steps_run": result.steps_run,
        }
        return Scores(score=inner.score, map=inner.map, nfe=int(result.nfe) + int(inner.nfe), extras=extras)

    @classmethod
    def example(cls) -> "FromMeasurements":
        """Denoising error on an 8×8 Gaussian prior, from half-observed noisy pixels, exact posterior sampler."""
        from priorshift.detectors.baselines import DenoisingError
        from priorshift.operators import Inpainting

        return cls(DenoisingError.example(), Inpainting.example(image_size=8, noise_std=0.05), plan={"sampler": "exact", "steps": 10}, samples=2)

    def config(self) -> dict[str, Any]:
        inner = self.image_detector.config() if hasattr(self.image_detector, "config") else {"detector": type(self.image_detector).__name__}
        return {"detector": "from-measurements", "image_detector": inner, "plan": self.plan.describe(), "samples": self.samples}

    def __repr__(self) -> str:
        return f"FromMeasurements({self.image_detector!r}, operator={self.operator!r}, sampler={self.plan.sampler!r}, steps={self.plan.steps}, samples={self.samples})"
