"""The iterative solvers on operators (``priorshift.operators.solvers``) against dense linear algebra."""

import pytest
import torch

from priorshift.analytic import operator_matrix, stationary_gaussian
from priorshift.operators import Inpainting, ParallelBeamCT, random_pixel_mask
from priorshift.operators.solvers import conjugate_gradient, grad_energy_adjoint, operator_norm2, tikhonov_reconstruction

F64 = torch.float64


@pytest.fixture
def prior():
    return stationary_gaussian(8, length_scale=1.5, variance=0.25, mean=0.2)


def test_conjugate_gradient_solves_each_row_on_its_own():
    # An SPD 20×20 system (condition number 10) per row: CG is exact in ≤ 20 iterations up to rounding; a row
    # that stops early (tol) or is zero does not change the others, and the zero row's solution is 0.
    g = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(20, 20, generator=g, dtype=F64))
    M = q @ torch.diag(torch.linspace(1, 10, 20, dtype=F64)) @ q.T
    b = torch.randn(3, 20, generator=g, dtype=F64)
    b[1] = 0
    x = conjugate_gradient(lambda v: v @ M, b, n_iter=60)
    torch.testing.assert_close(x, torch.linalg.solve(M, b.T).T, rtol=1e-10, atol=1e-12)
    assert bool((x[1] == 0).all())
    torch.testing.assert_close(conjugate_gradient(lambda v: v @ M, b[2:], n_iter=60), x[2:], rtol=0, atol=0)
    loose = conjugate_gradient(lambda v: v @ M, b, n_iter=60, tol=1e-2)
    rel = (loose @ M - b).norm(dim=1) / b.norm(dim=1).clamp_min(1e-300)
    assert bool((rel[[0, 2]] <= 1e-2).all()) and bool((rel[[0, 2]] > 1e-12).all()), "stopped at the tolerance, not later"


def test_tikhonov_reconstruction_solves_the_normal_equations(prior):
    op = Inpainting(random_pixel_mask(8, 0.4, generator=torch.Generator().manual_seed(1)).double(), noise_std=0.05)
    y = op(prior.sample(3, torch.Generator().manual_seed(0)), seed=[0, 1, 2])
    M = operator_matrix(op, prior.shape)
    d = M.shape[1]
    L = torch.stack([grad_energy_adjoint(e.reshape(1, *prior.shape)).flatten() for e in torch.eye(d, dtype=torch.float64)], 1)
    w = 0.7
    dense = torch.linalg.solve(M.T @ M + w * L, (y.flatten(1) @ M).T).T
    cg = tikhonov_reconstruction(op, y, w, n_iter=200, tol=1e-12)
    torch.testing.assert_close(cg.flatten(1), dense, rtol=1e-7, atol=1e-9)
    torch.testing.assert_close(cg[1:2], tikhonov_reconstruction(op, y[1:2], w, n_iter=200, tol=1e-12), rtol=1e-9, atol=1e-12)
    ct = ParallelBeamCT(8, n_views=5)
    A = operator_matrix(ct, prior.shape)
    assert abs(operator_norm2(ct, prior.shape, n_iter=200) / float(torch.linalg.eigvalsh(A.T @ A)[-1]) - 1) < 1e-6
