"""EigenScore and its full-trace ablation against the analytic oracles.

On a Gaussian prior ``N(μ, Σ)`` the denoiser is linear, ``D(x) = μ + Σ(Σ + σ²I)⁻¹(x − μ)``, so central
differences are exact (up to rounding) and ``Cov[x0 | x_σ] = σ² J_D = (Σ⁻¹ + σ⁻²I)⁻¹`` is known in closed form
(``GaussianPrior.posterior_covariance``; eigenvalues ``λσ²/(λ + σ²)``). The detector's contract tests (shape,
sign on a mixture prior, seeds, batch independence, ...) are in ``tests/test_detectors.py``.
"""

import math

import pytest
import torch

from priorshift.detectors import EigenScore, EigenScoreTrace, NotFittedError
from priorshift.detectors.eigenscore import DEFAULT_SIGMAS, ddpm_sigma
from priorshift.diffusion import CountingDenoiser
from eigen_helpers import F64, images, posterior_cov, smooth_prior


@pytest.fixture(scope="module")
def prior():
    return smooth_prior()


def test_default_sigmas_are_the_papers_ddpm_levels():
    # dossier §4.4: t = 100, 150, ..., 300 of the linear-β schedule → σ ≈ 0.342, 0.522, 0.724, 0.958, 1.240
    assert [round(s, 3) for s in DEFAULT_SIGMAS] == [0.342, 0.522, 0.724, 0.958, 1.240]
    assert ddpm_sigma(700) == pytest.approx(12.02, abs=0.01)


def test_top_k_eigenvalues_match_the_analytic_posterior_covariance(prior):
    sigmas = (0.3, 1.0, 3.0)
    det = EigenScore(prior, sigmas=sigmas, k=3, iters=2000, tol=1e-4, repetitions=2, redraws=0)
    x = images(prior, 2, seed=0)
    spec = det.eigenvalues(x, seed=[11, 12])
    assert spec.eigenvalues.shape == (2, 3, 3) and spec.eigenvalues.dtype == F64
    assert spec.all_converged, spec.iterations
    ref = torch.stack(
        [prior.posterior_covariance_eigvals(x, torch.full((2,), s, dtype=F64))[:, :3] for s in sigmas], dim=1
    )  # (B, T, 3)
    torch.testing.assert_close(spec.eigenvalues, ref, rtol=1e-3, atol=0)
    torch.testing.assert_close(spec.per_repetition, ref[:, :, None].expand(-1, -1, 2, -1), rtol=1e-3, atol=0)
    # the paper's feature is the top-K sum; the reported raw spectrum is descending
    assert bool((spec.eigenvalues[..., :-1] >= spec.eigenvalues[..., 1:]).all())


def test_convergence_flag_and_one_batched_call_per_iteration(prior):
    x = images(prior, 2, seed=4)
    K, T, I = 3, 2, 2
    few = EigenScore(prior, sigmas=(1.0, 3.0), k=K, iters=2, tol=1e-6, repetitions=I, redraws=1)
    prior_counter = CountingDenoiser(prior)
    few.prior = prior_counter
    spec = few.eigenvalues(x, seed=[0, 1])
    assert spec.converged.shape == (2, T, I) and not bool(spec.converged.any())
    assert bool((spec.attempts == 2).all()), "non-converged repetitions are redrawn, then flagged"
    # every attempt ran all iterations: 2K rows per (image, σ, repetition) per iteration, one call per iteration
    B, attempts, iters = 2, 2, 2
    assert spec.nfe == prior_counter.nfe == B * T * I * attempts * iters * 2 * K
    assert prior_counter.calls == attempts * iters
    enough = EigenScore(prior, sigmas=(1.0, 3.0), k=K, iters=500, tol=1e-6, repetitions=I, redraws=1)
    spec = enough.eigenvalues(x, seed=[0, 1])
    assert spec.all_converged and bool((spec.attempts == 1).all())
    assert bool((spec.iterations < 500).all())
    assert spec.nfe == int(spec.iterations.sum()) * 2 * K


def test_redraws_do_not_depend_on_the_batch(prior):
    # Iterations too few for some random starts only: some rows are redrawn, others not; each image's
    # result must still depend on its own seed alone.
    det = EigenScore(prior, sigmas=(3.0,), k=1, iters=20, tol=1e-3, repetitions=4, redraws=2)
    x = images(prior, 3, seed=5)
    together = det.eigenvalues(x, seed=[20, 21, 22])
    assert bool((together.attempts > 1).any()) and bool((together.attempts == 1).any())
    for b in range(3):
        alone = det.eigenvalues(x[b : b + 1], seed=[20 + b])
        torch.testing.assert_close(alone.per_repetition[0], together.per_repetition[b], rtol=1e-12, atol=0)
        assert torch.equal(alone.attempts[0], together.attempts[b])


def test_median_aggregates_over_repetitions(prior):
    det = EigenScore(prior, sigmas=(1.0,), k=2, iters=3, tol=0.0, repetitions=4, redraws=0, aggregate="median")
    spec = det.eigenvalues(images(prior, 1, seed=6), seed=[0])
    torch.testing.assert_close(spec.eigenvalues, spec.per_repetition.quantile(0.5, dim=2))


def test_standardisation_is_fitted_on_id_data_only():
    det = EigenScore.example()
    g = torch.Generator().manual_seed(7)
    x_id, x_other = det.prior.sample(8, g), det.prior.sample(4, g)
    with pytest.raises(NotFittedError, match="fit"):
        det.score(x_id)
    assert det.eigenvalues(x_id[:2], seed=0).eigenvalues.shape == (2, 2, 2), "the raw spectrum needs no fit"
    det.fit(x_id, seed=3)
    feats = det.eigenvalues(x_id, seed=3).per_repetition.sum(-1).mean(2)  # m_t = mean_i Σ_k λ_k, (N, T)
    torch.testing.assert_close(det.mean_, feats.mean(0))
    torch.testing.assert_close(det.std_, feats.std(0, unbiased=False))
    # the fit data, re-scored with the same seeds, are exactly standardised
    z = det.score(x_id, seed=3).z
    torch.testing.assert_close(z.mean(0), torch.zeros(2, dtype=F64), atol=1e-9, rtol=0)
    torch.testing.assert_close(z.std(0, unbiased=False), torch.ones(2, dtype=F64))
    # scoring other (or shifted) data never touches the fitted statistics
    mean, std = det.mean_.clone(), det.std_.clone()
    s = det.score(3.0 * x_other, seed=9)
    assert torch.equal(det.mean_, mean) and torch.equal(det.std_, std)
    f = det.eigenvalues(3.0 * x_other, seed=9).per_repetition.sum(-1).mean(2)
    torch.testing.assert_close(s.score, ((f - mean) / std).sum(1))
    assert s.extras["eigenvalues"].shape == (4, 2, 2) and s.extras["converged"].shape == (4, 2, 2)
    assert s.nfe_per_image == s.nfe / 4
    trace = EigenScoreTrace.example()
    with pytest.raises(NotFittedError, match="fit"):
        trace.score(x_id)


@pytest.mark.parametrize("sigma", [0.5, 2.0])
def test_trace_hutchinson_matches_the_analytic_trace(prior, sigma):
    # D is linear here, so each Rademacher probe ε gives εᵀCε exactly (C = Cov[x0|x_σ], the same for every
    # x_σ): mean tr C, variance 2(‖C‖_F² − Σ_i C_ii²). The n = B·I·P probes are independent, so the pooled
    # mean has standard error sqrt(var/n); |error| < 4 SE fails by chance with probability ≈ 6e-5.
    B, I, P = 4, 5, 40
    det = EigenScoreTrace(prior, sigmas=(sigma,), probes=P, repetitions=I)
    tr = det.trace(images(prior, B, seed=8), seed=list(range(B)))
    assert tr.trace.shape == (B, 1) and tr.nfe == B * I * 2 * P
    C = posterior_cov(prior, sigma)
    exact = float(C.trace())
    se = math.sqrt(2 * (float((C**2).sum()) - float((C.diagonal() ** 2).sum())) / (B * I * P))
    assert se < 0.02 * exact, "the tolerance must be tight enough to catch a wrong estimator"
    assert abs(float(tr.trace.mean()) - exact) < 4 * se, (float(tr.trace.mean()), exact, se)


def test_trace_mse_matches_the_analytic_trace(prior):
    # x0 ~ prior exactly: the error D(x0 + σz) − x0 ~ N(0, C), so ‖e‖² has mean tr C and variance 2 tr C²;
    # B·I independent draws → SE = sqrt(2‖C‖_F² / (B·I)); 4 SE as above.
    sigma, B, I = 1.0, 50, 4
    det = EigenScoreTrace(prior, sigmas=(sigma,), estimator="mse", repetitions=I)
    tr = det.trace(images(prior, B, seed=9), seed=100)
    assert tr.nfe == B * I
    C = posterior_cov(prior, sigma)
    exact = float(C.trace())
    se = math.sqrt(2 * float((C**2).sum()) / (B * I))
    assert se < 0.05 * exact
    assert abs(float(tr.trace.mean()) - exact) < 4 * se, (float(tr.trace.mean()), exact, se)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"k": 0},
        {"k": 1.5},
        {"c": 0.0},
        {"c": -0.1},
        {"sigmas": ()},
        {"sigmas": (0.5, 0.0)},
        {"sigmas": (-1.0,)},
        {"sigmas": (float("nan"),)},
        {"iters": 0},
        {"repetitions": 0},
        {"aggregate": "max"},
        {"tol": -1.0},
        {"redraws": -1},
    ],
)
def test_bad_parameters_raise(prior, kwargs):
    with pytest.raises(ValueError):
        EigenScore(prior, **kwargs)


def test_bad_parameters_raise_trace_and_operator(prior):
    for kwargs in ({"estimator": "exact"}, {"probes": 0}, {"c": 0}, {"aggregate": "all"}):
        with pytest.raises(ValueError):
            EigenScoreTrace(prior, **kwargs)
    with pytest.raises(ValueError, match="operator"):
        EigenScore(prior, object())
    with pytest.raises(ValueError, match="pixels"):
        EigenScore(prior, k=65, sigmas=(1.0,)).eigenvalues(images(prior, 1, seed=0))


def test_sigmas_are_clamped_to_the_prior_range(prior):
    with pytest.warns(UserWarning, match="clamped"):
        det = EigenScore(prior, sigmas=(1e-4, 1.0, 1e3))
    assert det.sigmas == (prior.sigma_min, 1.0, prior.sigma_max)
