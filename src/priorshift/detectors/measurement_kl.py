"""The image-level measurement-domain KL detector (``measurement-kl``), on the dataset-level estimator of
:mod:`priorshift.detectors.measurement_kl_estimator` (Shoushtari, Chandler, Wang, Asif & Kamilov, arXiv 2505.11482;
the method, its weight and its pitfalls are documented there). The estimator's names are re-exported here.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from priorshift.detectors.base import Detector
from priorshift.detectors.kl_quadrature import KLEstimate, cumulative_kl, log_sigma_grid
from priorshift.detectors.measurement_kl_estimator import WEIGHTS, MeasurementKL, prior_shape
from priorshift.operators.inpainting import Inpainting
from priorshift.operators.masks import random_block_mask
from priorshift.operators.mri import mri_observation_probability
from priorshift.registry import register
from priorshift.types import Scores

__all__ = ["MeasurementKL", "MeasurementKLScore", "KLEstimate", "log_sigma_grid", "mri_observation_probability", "prior_shape", "WEIGHTS"]


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
        prior: the prior in use (the candidate ``q``). ``operator``: the operator that made the measurements, any
            registered one (:class:`~priorshift.operators.Inpainting` / :class:`~priorshift.operators.MRI`: its
            mask, one per measurement or shared, is each measurement's ``P``; others back-project with ``A⁺``,
            ``W = I``). ``matched``: ``D_p``, a denoiser or a bundled-prior name / checkpoint path.
        sigmas, draws, weight, p, acceleration, center_lines, max_batch: as in :class:`MeasurementKL`
            (``p`` and the MRI family only set ``W``; default: the operator's mask family, else read off its mask).

    Extras: ``integrand`` (B, K): ``‖W(D_m − D_prior)‖² σ⁻³`` per σ (mean over draws); ``sigmas`` (K,).
    NFE: ``2 · K · draws`` per measurement.
    """

    input_kind = "measurements"
    stochastic = True

    def __init__(self, prior, operator, *, matched, sigmas=None, draws: int = 1, weight: str = "theorem", p: float | None = None,
                 acceleration: float | None = None, center_lines: int | None = None, max_batch: int = 1024):
        if operator is None:
            raise ValueError("MeasurementKLScore scores measurements: it needs the operator that produced them")
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
        return MeasurementKL(self.matched, self.prior, self.operator, noise_std=float(self.operator.noise_std), **self.settings)

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
        gi = g.mean(2)
        score = cumulative_kl(gi, est.sigmas)[:, -1]
        return Scores(score=score, map=None, nfe=nfe, extras={"integrand": gi / est.sigmas.to(g.device), "sigmas": est.sigmas.clone()})

    def config(self) -> dict[str, Any]:
        est = self._estimator()
        # the σ grid itself (not the estimator's [min, max, n] summary): the detector is rebuilt from its config
        return {**super().config(), **est.config(), "sigmas": [float(s) for s in est.sigmas]}

    def __repr__(self) -> str:
        return f"MeasurementKLScore({self._estimator()!r})"
