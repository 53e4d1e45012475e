"""The Gaussian-mixture prior ``x0 ~ Σ_k π_k N(μ_k, Σ_k)``: exact denoiser, sampling and posterior.

The noisy marginal is ``p_σ(x) = Σ_k π_k N(x; μ_k, Σ_k + σ² I)``, so
``D(x, σ) = Σ_k w_k(x, σ) D_k(x, σ)`` with responsibilities ``w_k ∝ π_k N(x; μ_k, Σ_k + σ² I)`` and each
component's Wiener denoiser ``D_k``. Under ``y = M x0 + e`` the posterior is again a mixture: component k
becomes ``N(μ_k|y, Σ_k|y)`` with weight ``∝ π_k N(y; M μ_k, M Σ_k Mᵀ + σ_y² I)`` — so the exact posterior
denoiser is this class again, with per-measurement weights and means (image-major rows, as in
:class:`~priorshift.analytic.GaussianPrior`).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor

from priorshift._checks import check_image, check_sigma
from priorshift.analytic.gaussian import GaussianPrior, mean_index, operator_matrix

__all__ = ["GaussianMixturePrior"]


class GaussianMixturePrior:
    """``Σ_k π_k N(μ_k, Σ_k)`` over images of ``shape``; callable as the exact denoiser ``D(x, σ)``.

    ``weights``: (K,) or (B, K); ``means``: (K, d) or (B, K, d); ``covs``: (K, d, d) (shared over B).
    """

    def __init__(self, weights, means, covs, shape: Sequence[int], *, sigma_min: float = 0.002, sigma_max: float = 80.0):
        self.shape = tuple(int(s) for s in shape)
        d = math.prod(self.shape)
        covs = torch.as_tensor(covs, dtype=torch.float64)
        if covs.ndim != 3 or covs.shape[1:] != (d, d):
            raise ValueError(f"covs must be (K, {d}, {d}), got {tuple(covs.shape)}")
        K = covs.shape[0]
        weights = torch.as_tensor(weights, dtype=torch.float64).reshape(-1, K)
        means = torch.as_tensor(means, dtype=torch.float64).reshape(-1, K, d)
        if weights.shape[0] != means.shape[0]:
            raise ValueError("weights and means must describe the same number of measurements")
        if bool((weights < 0).any()) or not torch.allclose(weights.sum(1), torch.ones(weights.shape[0], dtype=torch.float64)):
            raise ValueError("weights must be non-negative and sum to 1")
        self.weights, self.means, self.covs = weights, means, covs
        self.components = [GaussianPrior(means[0, k], covs[k], self.shape) for k in range(K)]
        self.eigvals = torch.stack([c.eigvals for c in self.components])  # (K, d)
        self.eigvecs = torch.stack([c.eigvecs for c in self.components])  # (K, d, d)
        self.sigma_min, self.sigma_max = float(sigma_min), float(sigma_max)

    @property
    def n_components(self) -> int:
        return self.covs.shape[0]

    @property
    def sigma_data(self) -> float:
        """The data's standard deviation per pixel around the mixture mean (EDM's σ_data; read by ΠGDM):
        ``sqrt((Σ_k π_k (tr Σ_k + ‖μ_k − μ̄‖²)) / d)`` with the first row's weights and means."""
        w, mu = self.weights[0], self.means[0]
        spread = (mu - (w[:, None] * mu).sum(0)).pow(2).sum(1)
        return math.sqrt(float((w * (self.covs.diagonal(dim1=1, dim2=2).sum(1) + spread)).sum()) / mu.shape[1])

    def __call__(self, x: Tensor, sigma: Tensor) -> Tensor:
        check_image(x, "x", channels=self.shape[0], size=self.shape[1:])
        sigma = check_sigma(sigma, x.shape[0])
        n = x.shape[0]
        idx = mean_index(n, self.means.shape[0])
        means = self.means if idx is None else self.means[idx]  # (1 or N, K, d)
        log_w = self.weights.log() if idx is None else self.weights[idx].log()
        xf = x.reshape(n, 1, -1).to(torch.float64)
        sig2 = sigma.to(torch.float64).reshape(-1, 1, 1) ** 2  # (N, 1, 1)
        z = torch.einsum("nkd,kde->nke", xf - means, self.eigvecs)  # coordinates in each eigenbasis
        var = self.eigvals[None] + sig2  # (N, K, d)
        log_lik = -0.5 * ((z**2 / var).sum(-1) + var.log().sum(-1))  # + const
        resp = torch.softmax(log_w + log_lik, dim=-1)  # (N, K)
        d_k = means + torch.einsum("nke,kde->nkd", z * (self.eigvals[None] / var), self.eigvecs)
        out = (resp[..., None] * d_k).sum(1)
        return out.reshape(x.shape).to(x.dtype)

    def sample(self, n: int, generator: torch.Generator | None = None, dtype: torch.dtype = torch.float64) -> Tensor:
        """``n`` exact draws (n, C, H, W) (from the first set of weights/means)."""
        k = torch.multinomial(self.weights[0], n, replacement=True, generator=generator)
        z = torch.randn(n, self.eigvals.shape[1], generator=generator, dtype=torch.float64)
        x = self.means[0, k] + torch.einsum("nd,ned->ne", z * self.eigvals[k].sqrt(), self.eigvecs[k])
        return x.reshape(n, *self.shape).to(dtype)

    def posterior_denoiser(self, operator, y: Tensor) -> "GaussianMixturePrior":
        """The exact posterior ``p(x0 | y)`` as a mixture with per-measurement weights and means."""
        operator.check_y(y)
        M = operator_matrix(operator, self.shape)
        noise_var = max(float(operator.noise_std) ** 2, 1e-12)
        yf = y.reshape(y.shape[0], -1).to(torch.float64).cpu()
        eye = torch.eye(M.shape[0], dtype=torch.float64)
        means, covs, log_w = [], [], []
        for k in range(self.n_components):
            mu, cov = self.means[0, k], self.covs[k]
            S = M @ cov @ M.T + noise_var * eye
            L = torch.linalg.cholesky(S)
            gain = torch.cholesky_solve(M @ cov, L).T  # Σ Mᵀ S⁻¹
            resid = yf - mu @ M.T  # (B, m)
            means.append(mu + resid @ gain.T)
            covs.append(cov - gain @ M @ cov)
            sol = torch.cholesky_solve(resid.T, L)  # S⁻¹ r
            log_w.append(self.weights[0, k].log() - 0.5 * (resid.T * sol).sum(0) - L.diagonal().log().sum())
        weights = torch.softmax(torch.stack(log_w, dim=1), dim=1)
        covs = torch.stack([0.5 * (c + c.T) for c in covs])
        return GaussianMixturePrior(weights, torch.stack(means, dim=1), covs, self.shape, sigma_min=self.sigma_min, sigma_max=self.sigma_max)

    def __repr__(self) -> str:
        return f"GaussianMixturePrior(shape={self.shape}, components={self.n_components})"
