"""Build realistic analytic priors: fit to images, or a stationary (squared-exponential) covariance."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from priorshift.analytic.gaussian import GaussianPrior
from priorshift.analytic.mixture import GaussianMixturePrior

__all__ = ["fit_gaussian", "stationary_gaussian", "fit_gmm"]


def fit_gaussian(images: Tensor, *, shrinkage: float = 0.05, nugget: float = 1e-4) -> GaussianPrior:
    """Sample mean and covariance of ``images`` (N, C, H, W), shrunk towards its diagonal:
    ``Σ = (1 − s) Σ̂ + s diag(Σ̂) + nugget · I`` (keeps Σ well conditioned when N is not ≫ d)."""
    if images.ndim != 4 or images.shape[0] < 2:
        raise ValueError("images must be (N, C, H, W) with N >= 2")
    x = images.reshape(images.shape[0], -1).to(torch.float64)
    mean = x.mean(0)
    xc = x - mean
    cov = xc.T @ xc / (x.shape[0] - 1)
    cov = (1 - shrinkage) * cov + shrinkage * torch.diag(cov.diagonal()) + nugget * torch.eye(cov.shape[0], dtype=torch.float64)
    return GaussianPrior(mean, cov, images.shape[1:])


def stationary_covariance(size: int, *, length_scale: float, variance: float, channels: int = 1, nugget: float = 1e-3) -> Tensor:
    """Squared-exponential covariance ``v · exp(−‖p_i − p_j‖² / (2 ℓ²)) + nugget · δ_ij`` over a size × size grid
    (channels independent)."""
    yy, xx = torch.meshgrid(torch.arange(size, dtype=torch.float64), torch.arange(size, dtype=torch.float64), indexing="ij")
    p = torch.stack([yy.flatten(), xx.flatten()], 1)
    d2 = torch.cdist(p, p) ** 2
    block = variance * torch.exp(-d2 / (2 * length_scale**2))
    cov = torch.block_diag(*([block] * channels))
    return cov + nugget * torch.eye(cov.shape[0], dtype=torch.float64)


def stationary_gaussian(
    size: int = 16, *, channels: int = 1, length_scale: float = 2.0, variance: float = 0.25, mean: float = 0.0, nugget: float = 1e-3
) -> GaussianPrior:
    """A quick, realistic-looking Gaussian prior for tests: smooth stationary images of ``size`` × ``size``."""
    cov = stationary_covariance(size, length_scale=length_scale, variance=variance, channels=channels, nugget=nugget)
    return GaussianPrior(torch.full((cov.shape[0],), float(mean), dtype=torch.float64), cov, (channels, size, size))


def fit_gmm(images: Tensor, n_components: int = 3, *, iters: int = 30, seed: int = 0, shrinkage: float = 0.1, nugget: float = 1e-3) -> GaussianMixturePrior:
    """Fit a K-component mixture to ``images`` by EM (k-means++ initialization, shrunk covariances)."""
    x = images.reshape(images.shape[0], -1).to(torch.float64)
    n, d = x.shape
    if n < n_components * 2:
        raise ValueError(f"need at least {2 * n_components} images to fit {n_components} components")
    g = torch.Generator().manual_seed(seed)
    centres = [x[torch.randint(n, (1,), generator=g)].squeeze(0)]
    for _ in range(1, n_components):
        d2 = torch.cdist(x, torch.stack(centres)).min(1).values ** 2
        centres.append(x[torch.multinomial(d2 / d2.sum(), 1, generator=g)].squeeze(0))
    resp = torch.nn.functional.one_hot(torch.cdist(x, torch.stack(centres)).argmin(1), n_components).double()
    eye = torch.eye(d, dtype=torch.float64)
    for it in range(iters + 1):
        nk = resp.sum(0).clamp_min(1e-8)
        weights = nk / n
        means = (resp.T @ x) / nk[:, None]
        covs = []
        for k in range(n_components):
            xc = x - means[k]
            c = (resp[:, k, None] * xc).T @ xc / nk[k]
            covs.append((1 - shrinkage) * c + shrinkage * torch.diag(c.diagonal()) + nugget * eye)
        covs = torch.stack(covs)
        if it == iters:
            break
        log_p = []
        for k in range(n_components):
            L = torch.linalg.cholesky(covs[k])
            z = torch.linalg.solve_triangular(L, (x - means[k]).T, upper=False)
            log_p.append(weights[k].log() - 0.5 * (z**2).sum(0) - L.diagonal().log().sum() - 0.5 * d * math.log(2 * math.pi))
        resp = torch.softmax(torch.stack(log_p, 1), dim=1)
    return GaussianMixturePrior(weights, means, covs, images.shape[1:])
