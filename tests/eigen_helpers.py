"""The analytic prior and helpers shared by the EigenScore and subspace-iteration tests."""

import torch

from priorshift.analytic import stationary_gaussian

F64 = torch.float64


def smooth_prior():
    """8×8, smooth: top posterior eigenvalues distinct enough for subspace iteration (λ4/λ3 ≈ 0.98 at σ = 0.3,
    0.88 at σ = 1, 0.75 at σ = 3), with an exactly degenerate pair λ2 = λ3 (x- and y-gradient modes)."""
    return stationary_gaussian(8, length_scale=1.5, variance=0.25)


def images(prior, n, seed):
    return prior.sample(n, torch.Generator().manual_seed(seed))


def posterior_cov(prior, sigma):
    x = torch.zeros(1, *prior.shape, dtype=F64)
    return prior.posterior_covariance(x, torch.tensor([sigma], dtype=F64))[0]
