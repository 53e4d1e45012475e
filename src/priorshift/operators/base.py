"""The base of every forward operator: a linear map with Gaussian measurement noise.

A subclass implements ``A`` and ``A_adjoint`` (the exact adjoint, checked by the adjoint contract test)
and may override ``A_pinv`` (a pseudo-inverse / reconstruction used to initialize and to project) and
``check_x`` / ``check_y`` (shape checks). The base class provides noisy measurement draws with explicit,
per-image randomness, a generic (optionally damped) least-squares pseudo-inverse by conjugate gradients, and
``adjoint_error`` (the quantity the tests bound).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from priorshift._checks import check_image, check_tensor
from priorshift.rng import per_image_rng

__all__ = ["LinearOperator", "adjoint_error"]


class LinearOperator:
    """``y = A x + e``, ``e ~ N(0, noise_std² I)``. Subclasses implement ``A`` and ``A_adjoint``.

    ``noise_std`` is a plain attribute (in the image range [-1, 1] units of ``A x``); set it freely.
    """

    name: str = "linear"
    pinv_is_exact: bool = False
    """True when ``A_pinv`` is the exact Moore–Penrose pseudo-inverse (then ``A A⁺`` is the orthogonal projection
    onto the range of ``A``, and projection samplers may use it as is); the contract tests check the Penrose
    conditions for every operator that declares it."""

    def __init__(self, noise_std: float = 0.0):
        self.noise_std = float(noise_std)

    # -- the operator ---------------------------------------------------------------------------------
    def A(self, x: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def A_adjoint(self, y: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def A_pinv(self, y: Tensor, n_iter: int = 50) -> Tensor:
        """A pseudo-inverse / reconstruction ``(B, *measurement_shape) → (B, C, H, W)``; here :meth:`pinv_damped`.

        Subclasses with a closed form (masks, FFT diagonals) or a classical reconstruction (FBP) override it.
        """
        return self.pinv_damped(y, n_iter=n_iter)

    def pinv_damped(self, y: Tensor, damping: float = 0.0, n_iter: int = 50) -> Tensor:
        """``Aᵀ (A Aᵀ + damping·I)⁻¹ y`` by conjugate gradients on ``(A Aᵀ + damping·I) z = y``, ``x = Aᵀ z``.

        With ``damping = 0``: the minimum-norm least-squares solution ``A⁺ y`` (CGNE / Craig's method); with
        ``damping > 0``: the Tikhonov-regularized one, ``argmin ‖A x − y‖² + damping ‖x‖²``. One CG per
        measurement (row), ``n_iter`` iterations. Available on every operator, also where ``A_pinv`` is
        overridden by a cheaper or classical reconstruction.
        """
        self.check_y(y)
        z = torch.zeros_like(y)
        r = y.clone()
        p = r.clone()
        dims = tuple(range(1, y.ndim))
        rs = (r * r).sum(dims, keepdim=True)
        tiny = torch.finfo(y.dtype).tiny
        for _ in range(n_iter):
            q = self.A(self.A_adjoint(p))
            if damping:
                q = q + damping * p
            alpha = rs / (p * q).sum(dims, keepdim=True).clamp_min(tiny)
            z = z + alpha * p
            r = r - alpha * q
            rs_new = (r * r).sum(dims, keepdim=True)
            p = r + (rs_new / rs.clamp_min(tiny)) * p
            rs = rs_new
        return self.A_adjoint(z)

    # -- measurements ---------------------------------------------------------------------------------
    def __call__(self, x: Tensor, seed: Any = None) -> Tensor:
        """A noisy measurement ``A x + noise_std · n``; ``seed`` as in :func:`priorshift.rng.per_image_rng`."""
        self.check_x(x)
        y = self.A(x)
        if self.noise_std > 0:
            rng = per_image_rng(seed, x.shape[0], x.device)
            y = y + self.noise_std * rng.randn(y.shape[1:], dtype=y.dtype)
        return y

    # -- validation -----------------------------------------------------------------------------------
    def check_x(self, x: Tensor) -> Tensor:
        """Raise a clear ``ValueError`` unless ``x`` is an image batch this operator accepts."""
        return check_image(x, "x")

    def check_y(self, y: Tensor) -> Tensor:
        """Raise a clear ``ValueError`` unless ``y`` is a measurement batch this operator produces."""
        return check_tensor(y, "y")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(noise_std={self.noise_std:g})"


def adjoint_error(op: LinearOperator, x: Tensor, y: Tensor) -> float:
    """``|⟨A x, y⟩ - ⟨x, Aᵀ y⟩| / (‖A x‖ ‖y‖)``: zero for an exact adjoint (use float64)."""
    Ax = op.A(x)
    Aty = op.A_adjoint(y)
    lhs = (Ax * y).sum()
    rhs = (x * Aty).sum()
    return float((lhs - rhs).abs() / (Ax.norm() * y.norm()))
