"""Exact (analytic) priors — the oracles every estimator in priorshift is tested against."""

from priorshift.analytic.fit import fit_gaussian, fit_gmm, stationary_covariance, stationary_gaussian
from priorshift.analytic.gaussian import GaussianPrior, operator_matrix
from priorshift.analytic.mixture import GaussianMixturePrior

__all__ = [
    "GaussianPrior",
    "GaussianMixturePrior",
    "operator_matrix",
    "fit_gaussian",
    "fit_gmm",
    "stationary_gaussian",
    "stationary_covariance",
]
