"""The analytic oracles themselves, checked against brute-force linear algebra and textbook formulas."""

import pytest
import torch
from torch.distributions import MultivariateNormal, kl_divergence

from priorshift.analytic import GaussianMixturePrior, GaussianPrior, fit_gaussian, fit_gmm, operator_matrix, stationary_gaussian
from priorshift.operators import GaussianBlur, Inpainting, ParallelBeamCT, random_pixel_mask


def _ops(size):
    g = torch.Generator().manual_seed(3)
    return [
        Inpainting(mask=random_pixel_mask(size, 0.5, generator=g).double(), noise_std=0.1),
        ParallelBeamCT(image_size=size, n_views=6, noise_std=0.3),
        GaussianBlur(5, 1.0, noise_std=0.05),
    ]


def test_exact_denoiser_equals_brute_force_posterior_mean(gauss16):
    x = gauss16.sample(3, torch.Generator().manual_seed(0))
    sigma = torch.tensor([0.05, 0.5, 5.0], dtype=torch.float64)
    xn = x + sigma.reshape(-1, 1, 1, 1) * torch.randn(x.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    out = gauss16(xn, sigma).reshape(3, -1)
    S, mu = gauss16.cov, gauss16.mean[0]
    for n in range(3):  # E[x0 | x] = μ + Σ (Σ + σ² I)⁻¹ (x − μ), by a dense solve
        ref = mu + S @ torch.linalg.solve(S + sigma[n] ** 2 * torch.eye(256, dtype=torch.float64), xn[n].reshape(-1) - mu)
        assert (out[n] - ref).abs().max() < 1e-6
    assert gauss16(xn.float(), sigma.float()).dtype == torch.float32


@pytest.mark.parametrize("op_index", [0, 1, 2])
def test_posterior_equals_precision_form(gauss8, op_index):
    op = _ops(8)[op_index]
    x = gauss8.sample(2, torch.Generator().manual_seed(0))
    y = op(x, seed=[1, 2])
    mean, cov = gauss8.posterior(op, y)
    M = operator_matrix(op, (1, 8, 8))
    prec = torch.linalg.inv(gauss8.cov) + M.T @ M / op.noise_std**2
    cov_ref = torch.linalg.inv(prec)
    for b in range(2):
        mean_ref = cov_ref @ (torch.linalg.solve(gauss8.cov, gauss8.mean[0]) + M.T @ y[b].reshape(-1).double() / op.noise_std**2)
        assert (mean[b].reshape(-1) - mean_ref).abs().max() < 1e-6
    assert (cov - cov_ref).abs().max() < 1e-6


def test_kl_posterior_prior_equals_textbook(gauss8):
    op = _ops(8)[0]
    x = gauss8.sample(2, torch.Generator().manual_seed(0))
    y = op(x, seed=[1, 2])
    kl = gauss8.kl_posterior_prior(op, y)
    mean, cov = gauss8.posterior(op, y)
    prior = MultivariateNormal(gauss8.mean[0], gauss8.cov)
    for b in range(2):
        ref = kl_divergence(MultivariateNormal(mean[b].reshape(-1), cov), prior)
        assert abs(float(kl[b]) - float(ref)) < 1e-6 * float(ref)
    with pytest.raises(ValueError, match="noiseless"):
        op.noise_std = 0.0
        gauss8.kl_posterior_prior(op, y)


def test_kl_between_priors_and_posterior_covariance(gauss8):
    other = stationary_gaussian(8, length_scale=1.0, variance=0.5, mean=0.2)
    ref = kl_divergence(MultivariateNormal(gauss8.mean[0], gauss8.cov), MultivariateNormal(other.mean[0], other.cov))
    assert abs(float(gauss8.kl(other)[0]) - float(ref)) < 1e-8 * float(ref)
    # Cov[x0 | x_σ] = σ² ∂D/∂x (Tweedie's second-order identity), and its eigenvalues λσ²/(λ+σ²).
    x = torch.randn(1, 1, 8, 8, dtype=torch.float64)
    sigma = torch.tensor([0.7], dtype=torch.float64)
    J = torch.autograd.functional.jacobian(lambda v: gauss8(v.reshape(1, 1, 8, 8), sigma).reshape(-1), x.reshape(-1))
    cov = gauss8.posterior_covariance(x, sigma)[0]
    assert (cov - 0.49 * J).abs().max() < 1e-10
    ev = gauss8.posterior_covariance_eigvals(x, sigma)[0]
    assert torch.allclose(ev, torch.linalg.eigvalsh(cov).flip(0), atol=1e-10)


def test_one_component_mixture_equals_gaussian(gauss8):
    gmm = GaussianMixturePrior(torch.ones(1), gauss8.mean, gauss8.cov[None], gauss8.shape)
    x = torch.randn(4, 1, 8, 8, dtype=torch.float64)
    sigma = torch.tensor([0.01, 0.3, 3.0, 30.0], dtype=torch.float64)
    assert (gmm(x, sigma) - gauss8(x, sigma)).abs().max() < 1e-10
    op = _ops(8)[1]
    y = op(gauss8.sample(2, torch.Generator().manual_seed(0)), seed=[5, 6])
    xs = torch.randn(4, 1, 8, 8, dtype=torch.float64)  # 2 measurements × 2 samples, image-major
    s4 = torch.full((4,), 0.4, dtype=torch.float64)
    assert (gmm.posterior_denoiser(op, y)(xs, s4) - gauss8.posterior_denoiser(op, y)(xs, s4)).abs().max() < 1e-8


def test_mixture_denoiser_equals_bayes_rule_by_hand():
    d = 4
    means = torch.tensor([[1.0, 0, 0, 0], [-1.0, 0.5, 0, 0]], dtype=torch.float64)
    covs = torch.stack([0.2 * torch.eye(d, dtype=torch.float64), 0.5 * torch.eye(d, dtype=torch.float64)])
    w = torch.tensor([0.3, 0.7], dtype=torch.float64)
    gmm = GaussianMixturePrior(w, means, covs, (1, 2, 2))
    x = torch.tensor([[0.2, 0.1, -0.3, 0.4]], dtype=torch.float64)
    sigma = 0.6
    lik = torch.stack([w[k] * MultivariateNormal(means[k], covs[k] + sigma**2 * torch.eye(d, dtype=torch.float64)).log_prob(x[0]).exp() for k in range(2)])
    resp = lik / lik.sum()
    dk = [means[k] + covs[k] @ torch.linalg.solve(covs[k] + sigma**2 * torch.eye(d, dtype=torch.float64), x[0] - means[k]) for k in range(2)]
    ref = resp[0] * dk[0] + resp[1] * dk[1]
    out = gmm(x.reshape(1, 1, 2, 2), torch.tensor([sigma], dtype=torch.float64)).reshape(-1)
    assert (out - ref).abs().max() < 1e-12


def test_fitting(gauss8):
    data = gauss8.sample(20000, torch.Generator().manual_seed(0))
    fitted = fit_gaussian(data, shrinkage=0.0, nugget=0.0)
    # Sample covariance of n = 20000 draws: entries within a few sd ≈ sqrt(2/n)·max var.
    assert (fitted.cov - gauss8.cov).abs().max() < 6 * (2 / 20000) ** 0.5 * float(gauss8.cov.diagonal().max())
    a = torch.randn(200, 1, 2, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 0.1 + 2
    b = torch.randn(200, 1, 2, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64) * 0.1 - 2
    gmm = fit_gmm(torch.cat([a, b]), 2, iters=10)
    found = sorted(float(m.mean()) for m in gmm.means[0])
    assert abs(found[0] + 2) < 0.05 and abs(found[1] - 2) < 0.05


def test_bad_input(gauss8):
    with pytest.raises(ValueError, match="symmetric"):
        GaussianPrior(0.0, torch.randn(64, 64, dtype=torch.float64), (1, 8, 8))
    with pytest.raises(ValueError, match="shape"):
        gauss8(torch.zeros(1, 1, 16, 16, dtype=torch.float64), torch.ones(1, dtype=torch.float64))
    with pytest.raises(ValueError, match="NaN"):
        gauss8(torch.full((1, 1, 8, 8), float("inf"), dtype=torch.float64), torch.ones(1, dtype=torch.float64))
    with pytest.raises(ValueError, match="sum to 1"):
        GaussianMixturePrior(torch.tensor([0.5, 0.6]), torch.zeros(2, 64), torch.eye(64).expand(2, 64, 64), (1, 8, 8))
