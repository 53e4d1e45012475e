"""The Gaussian prior ``x0 ~ N(μ, Σ)``: exact denoiser, posterior, KL and posterior covariance.

With ``Σ = U diag(λ) Uᵀ`` (one eigendecomposition, float64):

* denoiser (Tweedie / Wiener): ``D(x, σ) = μ + Σ (Σ + σ² I)⁻¹ (x − μ) = μ + U diag(λ/(λ+σ²)) Uᵀ (x − μ)``;
* posterior covariance of the denoising problem: ``Cov[x0 | x_σ] = σ² ∂D/∂x = U diag(λσ²/(λ+σ²)) Uᵀ``;
* linear-Gaussian inverse problem ``y = M x0 + e``, ``e ~ N(0, σ_y² I)``: with ``K = Σ Mᵀ (M Σ Mᵀ + σ_y² I)⁻¹``,
  ``μ_y = μ + K (y − M μ)`` and ``Σ_y = Σ − K M Σ``; the posterior is again Gaussian, so the exact posterior
  denoiser ``D(x, σ | y)`` is this class with mean ``μ_y`` and covariance ``Σ_y``.

A prior may hold one mean per measurement (``mean`` of shape (B, d)); then rows of ``x`` are matched to
means image-major: with N = B·S rows, row ``n`` uses mean ``n // S`` (the samplers' layout).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor

from priorshift._checks import check_image, check_sigma, check_tensor

__all__ = ["GaussianPrior", "operator_matrix", "mean_index"]


def operator_matrix(operator, shape: Sequence[int]) -> Tensor:
    """The dense matrix ``M`` (m × d, float64) of a linear operator acting on images of ``shape`` = (C, H, W)."""
    d = math.prod(shape)
    eye = torch.eye(d, dtype=torch.float64).reshape(d, *shape)
    cols = [operator.A(chunk).reshape(chunk.shape[0], -1) for chunk in eye.split(512)]
    return torch.cat(cols).T.contiguous()


def mean_index(n_rows: int, n_means: int) -> Tensor | None:
    """Which of ``n_means`` per-measurement means each of ``n_rows`` image-major (B·S) rows uses; ``None`` for one mean."""
    if n_means == 1:
        return None
    if n_rows % n_means:
        raise ValueError(f"{n_rows} rows cannot be matched to {n_means} per-measurement means; give B·S rows, image-major")
    return torch.arange(n_rows) // (n_rows // n_means)


class GaussianPrior:
    """``N(μ, Σ)`` over images of ``shape`` = (C, H, W); callable as the exact denoiser ``D(x, σ)``.

    ``mean``: (d,), (C, H, W), a scalar, or (B, d) for one mean per measurement; ``cov``: (d, d) symmetric PSD.
    Inputs of any float dtype; computed in float64 and returned in the input's dtype and device.
    """

    def __init__(self, mean, cov, shape: Sequence[int], *, sigma_min: float = 0.002, sigma_max: float = 80.0):
        self.shape = tuple(int(s) for s in shape)
        if len(self.shape) != 3:
            raise ValueError(f"shape must be (C, H, W), got {shape}")
        d = math.prod(self.shape)
        cov = torch.as_tensor(cov, dtype=torch.float64)
        check_tensor(cov, "cov", shape=(d, d))
        if not torch.allclose(cov, cov.T, atol=1e-10 * float(cov.abs().max().clamp_min(1))):
            raise ValueError("cov must be symmetric")
        mean = torch.as_tensor(mean, dtype=torch.float64)
        if mean.ndim == 0:
            mean = mean.expand(d)
        mean = mean.reshape(-1, d) if mean.numel() % d == 0 else None
        if mean is None:
            raise ValueError(f"mean must have d = {d} entries (or B·d for per-measurement means)")
        check_tensor(mean, "mean")
        self.mean = mean  # (1 or B, d)
        self.cov = cov
        lam, U = torch.linalg.eigh(cov)
        if float(lam.min()) < -1e-8 * float(lam.max().clamp_min(1e-300)):
            raise ValueError(f"cov must be positive semi-definite (smallest eigenvalue {float(lam.min()):.3g})")
        self.eigvals = lam.clamp_min(0)
        self.eigvecs = U
        self.sigma_min = float(sigma_min)
        self.sigma_max = float(sigma_max)

    @property
    def dim(self) -> int:
        return self.cov.shape[0]

    @property
    def sigma_data(self) -> float:
        """The data's standard deviation per pixel, ``sqrt(tr Σ / d)`` (EDM's σ_data; read by ΠGDM)."""
        return math.sqrt(float(self.cov.diagonal().mean()))

    # -- denoising ------------------------------------------------------------------------------------
    def __call__(self, x: Tensor, sigma: Tensor) -> Tensor:
        check_image(x, "x", channels=self.shape[0], size=self.shape[1:])
        sigma = check_sigma(sigma, x.shape[0])
        n = x.shape[0]
        mu = self._means_for(n, x.device)
        xf = x.reshape(n, -1).to(torch.float64)
        sig2 = sigma.to(torch.float64).reshape(-1, 1) ** 2
        U, lam = self.eigvecs.to(x.device), self.eigvals.to(x.device)
        z = (xf - mu) @ U
        out = mu + (z * (lam / (lam + sig2))) @ U.T
        return out.reshape(x.shape).to(x.dtype)

    def _means_for(self, n: int, device) -> Tensor:
        idx = mean_index(n, self.mean.shape[0])
        mu = self.mean.to(device)
        return mu if idx is None else mu[idx.to(device)]

    def posterior_covariance(self, x: Tensor, sigma: Tensor) -> Tensor:
        """``Cov[x0 | x_σ = x] = σ² ∂D/∂x``, (N, d, d) float64 (independent of ``x`` for a Gaussian)."""
        sigma = check_sigma(sigma, x.shape[0]).to(torch.float64)
        w = self.eigvals * sigma.reshape(-1, 1) ** 2 / (self.eigvals + sigma.reshape(-1, 1) ** 2)
        return torch.einsum("ij,nj,kj->nik", self.eigvecs, w, self.eigvecs)

    def posterior_covariance_eigvals(self, x: Tensor, sigma: Tensor) -> Tensor:
        """Eigenvalues of ``Cov[x0 | x_σ]``, ``λσ²/(λ+σ²)``, sorted descending: (N, d) float64."""
        sigma = check_sigma(sigma, x.shape[0]).to(torch.float64)
        w = self.eigvals * sigma.reshape(-1, 1) ** 2 / (self.eigvals + sigma.reshape(-1, 1) ** 2)
        return w.sort(dim=1, descending=True).values

    # -- sampling -------------------------------------------------------------------------------------
    def sample(self, n: int, generator: torch.Generator | None = None, dtype: torch.dtype = torch.float64) -> Tensor:
        """``n`` exact draws (n, C, H, W) (the first mean when there are several)."""
        z = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        x = self.mean[:1] + (z * self.eigvals.sqrt()) @ self.eigvecs.T
        return x.reshape(n, *self.shape).to(dtype)

    # -- inverse problems -----------------------------------------------------------------------------
    def _gain(self, operator) -> tuple[Tensor, Tensor]:
        M = operator_matrix(operator, self.shape)
        noise_var = float(operator.noise_std) ** 2
        S = M @ self.cov @ M.T
        jitter = noise_var if noise_var > 0 else 1e-12 * float(S.diagonal().mean().clamp_min(1e-300))
        S = S + jitter * torch.eye(S.shape[0], dtype=torch.float64)
        K = torch.linalg.solve(S, M @ self.cov).T  # Σ Mᵀ S⁻¹ (S symmetric)
        return M, K

    def posterior(self, operator, y: Tensor) -> tuple[Tensor, Tensor]:
        """Exact posterior of ``y = A x0 + e``: ``(mean (B, C, H, W) in y's dtype, cov (d, d) float64)``."""
        operator.check_y(y)
        M, K = self._gain(operator)
        yf = y.reshape(y.shape[0], -1).to(torch.float64).cpu()
        mu = self.mean[:1]
        mean = mu + (yf - mu @ M.T) @ K.T
        cov = self.cov - K @ M @ self.cov
        cov = 0.5 * (cov + cov.T)
        return mean.reshape(y.shape[0], *self.shape).to(y.dtype), cov

    def posterior_denoiser(self, operator, y: Tensor) -> "GaussianPrior":
        """The exact posterior denoiser ``D(x, σ | y) = E[x0 | x_σ = x, y]`` for each measurement (B means)."""
        mean, cov = self.posterior(operator, y)
        return GaussianPrior(mean.reshape(y.shape[0], -1).to(torch.float64), cov, self.shape, sigma_min=self.sigma_min, sigma_max=self.sigma_max)

    def likelihood_score(self, x: Tensor, sigma: Tensor, operator, y: Tensor) -> Tensor:
        """Exact ``∇_x log p_σ(y | x) = (D(x, σ | y) − D(x, σ)) / σ²`` (rows image-major over y)."""
        post = self.posterior_denoiser(operator, y)
        return (post(x, sigma) - self(x, sigma)) / sigma.reshape(-1, 1, 1, 1) ** 2

    def kl(self, other: "GaussianPrior") -> Tensor:
        """``KL(self ‖ other)`` in nats for each mean of ``self`` (B,): ½[tr(Σ₂⁻¹Σ₁) − d + Δμᵀ Σ₂⁻¹ Δμ + ln|Σ₂|/|Σ₁|]."""
        if other.shape != self.shape:
            raise ValueError(f"shapes differ: {self.shape} vs {other.shape}")
        lam2, U2 = other.eigvals, other.eigvecs
        if float(lam2.min()) <= 0:
            raise ValueError("the reference covariance is singular: the KL is infinite — add a nugget to its covariance")
        lam1 = self.eigvals
        if float(lam1.min()) <= 0:
            raise ValueError("this covariance is singular: the KL is infinite (a noiseless measurement?) — use noise_std > 0")
        inv2 = (U2 / lam2) @ U2.T
        dmu = other.mean[:1] - self.mean  # (B, d)
        trace = float((inv2 * self.cov).sum())
        maha = ((dmu @ U2) ** 2 / lam2).sum(1)
        logdet = float(lam2.log().sum() - lam1.log().sum())
        return 0.5 * (trace - self.dim + maha + logdet)

    def kl_posterior_prior(self, operator, y: Tensor) -> Tensor:
        """``KL(p(x | y) ‖ p(x))`` in nats, one per measurement: (B,) float64."""
        if float(operator.noise_std) <= 0:
            raise ValueError("KL(p(x|y) ‖ p(x)) is infinite for noiseless measurements; set operator.noise_std > 0")
        return self.posterior_denoiser(operator, y).kl(self)

    def __repr__(self) -> str:
        return f"GaussianPrior(shape={self.shape}, means={self.mean.shape[0]})"
