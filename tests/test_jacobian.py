"""Subspace iteration on central differences of a denoiser (``priorshift.diffusion.jacobian``) against exact
linear algebra.

On a Gaussian prior ``N(μ, Σ)`` the denoiser is linear, ``D(x) = μ + Σ(Σ + σ²I)⁻¹(x − μ)``, so central
differences are exact (up to rounding) and ``σ² J_D = (Σ⁻¹ + σ⁻²I)⁻¹`` is known in closed form
(``GaussianPrior.posterior_covariance``). EigenScore's use of it is tested in ``tests/test_eigenscore.py``.
"""

import pytest
import torch

from priorshift.diffusion.jacobian import subspace_iteration
from eigen_helpers import F64, images, posterior_cov, smooth_prior


@pytest.fixture(scope="module")
def prior():
    return smooth_prior()


def test_k1_is_plain_power_iteration(prior):
    # Reference: v ← C v / ‖C v‖, λ = ‖C v‖ (C = σ² J exactly), stopped after a few iterations — before it has
    # converged, so the comparison checks the iteration itself, not only its fixed point.
    sigmas = torch.tensor([1.0, 0.5], dtype=F64)
    x = images(prior, 2, seed=1) + sigmas.reshape(-1, 1, 1, 1) * torch.randn(2, *prior.shape, generator=torch.Generator().manual_seed(2), dtype=F64)
    v0 = torch.randn(2, 1, *prior.shape, generator=torch.Generator().manual_seed(3), dtype=F64)
    n_iter = 5
    res = subspace_iteration(prior, x, sigmas, v0, iters=n_iter, c=0.1, tol=0.0)
    assert res.iterations.tolist() == [n_iter, n_iter] and not bool(res.converged.any())
    assert res.nfe == 2 * 2 * n_iter  # 2K = 2 perturbed inputs per row per iteration
    for b in range(2):
        C = posterior_cov(prior, float(sigmas[b]))
        v = v0[b, 0].flatten() / v0[b, 0].norm()
        for _ in range(n_iter):
            last_v, a = v, C @ v
            lam = a.norm()
            v = a / lam
        top = float(torch.linalg.eigvalsh(C)[-1])
        assert abs(float(lam) - top) / top > 1e-4, "the reference must not have converged yet"
        assert float(res.eigenvalues[b, 0]) == pytest.approx(float(lam), rel=1e-10)
        got = res.vectors[b, 0].flatten()
        assert abs(float(got @ last_v)) == pytest.approx(1.0, abs=1e-10)
        # deterministic sign: the largest-magnitude entry is positive
        assert float(got[got.abs().argmax()]) > 0


def test_convergence_test_tolerates_a_slightly_non_symmetric_jacobian(prior):
    # A learned denoiser's Jacobian is not exactly symmetric: J = S + N, N antisymmetric (‖N‖ ≈ 5 % of ‖S‖).
    # Subspace iteration still converges to J's dominant invariant subspace, and the convergence test (the
    # part of J V outside span(V)) must see that, although the full Ritz residual stays at the asymmetry level.
    sigma = 1.0
    S = posterior_cov(prior, sigma) / sigma**2
    R = torch.randn(64, 64, generator=torch.Generator().manual_seed(13), dtype=F64)
    N = R - R.T
    N *= 0.05 * float(torch.linalg.matrix_norm(S, 2)) / float(torch.linalg.matrix_norm(N, 2))
    J = S + N

    def linear(x, s):
        return (x.flatten(1) @ J.T).reshape(x.shape)

    x = torch.zeros(2, *prior.shape, dtype=F64)
    v0 = torch.randn(2, 3, *prior.shape, generator=torch.Generator().manual_seed(14), dtype=F64)
    res = subspace_iteration(linear, x, torch.full((2,), sigma, dtype=F64), v0, iters=1000, tol=1e-6)
    assert bool(res.converged.all()) and bool((res.iterations < 1000).all())
    V = res.vectors.flatten(2).transpose(1, 2)  # (2, d, K)
    JV = J @ V
    ritz = JV - V * (V.transpose(1, 2) @ JV).diagonal(dim1=1, dim2=2)[:, None, :]
    assert float((ritz.norm(dim=1) / JV.norm(dim=1)).max()) > 1e-3, "the full Ritz residual has an asymmetry floor"
    torch.testing.assert_close(res.eigenvalues, sigma**2 * JV.norm(dim=1))  # the paper's norm estimate
