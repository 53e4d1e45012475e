"""Iterative solvers on linear operators: conjugate gradients, a smoothness-regularised (Tikhonov) reconstruction,
and ``‖A‖₂²`` by power iteration.

:func:`conjugate_gradient` is the library's one CG: :meth:`LinearOperator.pinv_damped
<priorshift.operators.LinearOperator.pinv_damped>` (CGNE on ``A Aᵀ + damping·I``) and
:func:`tikhonov_reconstruction` (the normal equations with a gradient penalty) both call it.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import Tensor

__all__ = ["conjugate_gradient", "grad_energy_adjoint", "operator_norm2", "tikhonov_reconstruction"]


def conjugate_gradient(apply: Callable[[Tensor], Tensor], b: Tensor, *, n_iter: int, tol: float = 0.0) -> Tensor:
    """Solve ``M x = b`` for a symmetric positive (semi-)definite ``M`` (``apply(v) = M v``) by conjugate
    gradients from ``x = 0``, one independent CG per row of the batch ``b`` (B, ...) → ``x`` (B, ...).

    A row stops on its own once ``‖r‖ ≤ tol · ‖b‖`` (with ``tol = 0``: once its residual is exactly 0), so a
    row's result does not depend on the rest of the batch; at most ``n_iter`` iterations, fewer when every
    row has stopped. ``apply`` must act row by row.
    """
    dims = tuple(range(1, b.ndim))
    x = torch.zeros_like(b)
    r = b.clone()
    p = r.clone()
    rs = (r * r).sum(dims, keepdim=True)
    stop = (tol**2) * rs
    tiny = torch.finfo(b.dtype).tiny
    for _ in range(int(n_iter)):
        active = rs > stop
        if not bool(active.any()):
            break
        q = apply(p)
        pq = (p * q).sum(dims, keepdim=True)
        alpha = torch.where(active, rs / pq.clamp_min(tiny), torch.zeros_like(rs))
        x = x + alpha * p
        r = r - alpha * q
        rs_new = (r * r).sum(dims, keepdim=True)
        beta = torch.where(active, rs_new / rs.clamp_min(tiny), torch.zeros_like(rs))
        p = torch.where(active, r + beta * p, p)
        rs = torch.where(active, rs_new, rs)
    return x


def grad_energy_adjoint(x: Tensor) -> Tensor:
    """``Lᵀ L x`` for the forward-difference image gradient ``L`` (Neumann boundary): the negative 5-point
    Laplacian. ``(B, C, H, W) → (B, C, H, W)``."""
    out = torch.zeros_like(x)
    dh = x[..., 1:, :] - x[..., :-1, :]
    dw = x[..., :, 1:] - x[..., :, :-1]
    out[..., 1:, :] += dh
    out[..., :-1, :] -= dh
    out[..., :, 1:] += dw
    out[..., :, :-1] -= dw
    return out


def operator_norm2(operator, image_shape: Sequence[int], *, n_iter: int = 30, dtype=torch.float64, device="cpu") -> float:
    """``‖A‖₂²``, the largest eigenvalue of ``AᵀA``, by ``n_iter`` power iterations from a fixed random start."""
    v = torch.randn((1, *image_shape), generator=torch.Generator().manual_seed(0), dtype=dtype).to(device)
    lam = 0.0
    for _ in range(n_iter):
        v = v / v.norm().clamp_min(torch.finfo(dtype).tiny)
        w = operator.A_adjoint(operator.A(v))
        lam = float((v * w).sum())
        v = w
    return lam


def tikhonov_reconstruction(operator, y: Tensor, weight: float, *, n_iter: int = 100, tol: float = 1e-8) -> Tensor:
    """``x̂ = argmin_x ‖y − A x‖² + weight · ‖∇x‖²`` (forward differences, Neumann boundary), ``(B, ...) → (B, C, H, W)``.

    Conjugate gradients (:func:`conjugate_gradient`) on the normal equations ``(AᵀA + weight · LᵀL) x = Aᵀ y``
    from ``x = 0``; each image runs its own CG and stops on its own once ``‖r‖ ≤ tol · ‖Aᵀ y‖`` (so the result
    does not depend on the batch), at most ``n_iter`` iterations. The system is positive definite when ``A``
    sees the image's mean (``L``'s null space is the constants).
    """

    def normal(v):
        return operator.A_adjoint(operator.A(v)) + weight * grad_energy_adjoint(v)

    return conjugate_gradient(normal, operator.A_adjoint(y), n_iter=n_iter, tol=tol)
