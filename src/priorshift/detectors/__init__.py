"""Detectors: score measurements (or images) for distribution shift. **Higher score = more shifted.**

Every detector follows one contract (:mod:`priorshift.detectors.base`): ``fit(data) -> self`` (a no-op for
calibration-free methods), ``score(data, seed=..., hooks=...) -> Scores``, a declared ``input_kind`` and an
``example()`` on an analytic prior; :func:`score_batches` is the batched loop. A new detector is one module,
one test file and one import line here; the CLI, the bench and the contract tests pick it up by its
registered name.
"""

from priorshift.detectors.base import Detector, NotFittedError, concat_scores, resolve_seeds, score_batches
from priorshift.detectors.baselines import DenoisingError, MeasurementNorm, Residual, ScoreNorm
from priorshift.detectors.reconstruct import FromMeasurements
from priorshift.detectors.eigenscore import EigenScore
from priorshift.detectors.eigenscore_trace import EigenScoreTrace
from priorshift.detectors.klip import KLIP, KLIPAccumulator, aggregate_step_maps
from priorshift.detectors.klip_multiscale import KLIPMultiscale
from priorshift.detectors.lmd import LMD
from priorshift.detectors.local_residual import LocalResidual
from priorshift.detectors.measurement_kl import KLEstimate, MeasurementKL, MeasurementKLScore

__all__ = [
    "Detector",
    "NotFittedError",
    "score_batches",
    "concat_scores",
    "resolve_seeds",
    "MeasurementNorm",
    "Residual",
    "DenoisingError",
    "ScoreNorm",
    "FromMeasurements",
    "EigenScore",
    "EigenScoreTrace",
    "KLIP",
    "KLIPAccumulator",
    "aggregate_step_maps",
    "KLIPMultiscale",
    "LMD",
    "LocalResidual",
    "MeasurementKL",
    "MeasurementKLScore",
    "KLEstimate",
]
