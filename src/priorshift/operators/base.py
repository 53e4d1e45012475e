"""The base of every forward operator: a linear map with Gaussian measurement noise.

A subclass implements ``A`` and ``A_adjoint`` (the exact adjoint, checked by the adjoint contract test)
and may override ``A_pinv`` (a pseudo-inverse / reconstruction used to initialize and to project) and
``check_x`` / ``check_y`` (shape checks). The base class provides noisy measurement draws with explicit,
per-image randomness, a generic (optionally damped) least-squares pseudo-inverse by conjugate gradients, and
``adjoint_error`` (the quantity the tests bound).

Images enter the library's measurement path through ``operator(x)`` (:meth:`LinearOperator.__call__`), and
that is where their value range is checked (:meth:`LinearOperator.check_image_range`): integer tensors and
values with ``max |x| > IMAGE_ABS_LIMIT`` (50) are refused with a message saying to rescale to [-1, 1]. ``A``
itself does not check the range: samplers apply it to noisy iterates ``x_σ`` whose values reach ``3σ_max``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from priorshift._checks import check_image, check_tensor
from priorshift.operators.solvers import conjugate_gradient
from priorshift.rng import per_image_rng

__all__ = ["LinearOperator", "adjoint_error", "IMAGE_ABS_LIMIT"]

IMAGE_ABS_LIMIT = 50.0
"""The largest ``|x|`` an image handed to ``operator(x)`` may hold. Images live in [-1, 1]; the analytic test
priors draw Gaussian images whose tails reach several standard deviations (a few units), so the bound is loose
on purpose: it catches data left in [0, 255], [0, 65535] or Hounsfield units, not slightly-out-of-range
images. Data in [0, 1] cannot be told from [-1, 1] data by its range and passes: convert it at the data
boundary (``priorshift.data.npy_stack`` and the CLI read float data within [0, 1] as [0, 1], and say so)."""


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
        try:
            ok = not isinstance(noise_std, (bool, str)) and 0 <= float(noise_std) < float("inf")
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise ValueError(f"noise_std must be a finite number >= 0, got {noise_std!r}")
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
        measurement (row), ``n_iter`` iterations at most (:func:`~priorshift.operators.solvers.conjugate_gradient`;
        a row whose residual is exactly 0 stops). Available on every operator, also where ``A_pinv`` is
        overridden by a cheaper or classical reconstruction.
        """
        self.check_y(y)

        def normal(p):
            q = self.A(self.A_adjoint(p))
            return q + damping * p if damping else q

        return self.A_adjoint(conjugate_gradient(normal, y, n_iter=n_iter))

    # -- measurements ---------------------------------------------------------------------------------
    def __call__(self, x: Tensor, seed: Any = None) -> Tensor:
        """A noisy measurement ``A x + noise_std · n``; ``seed`` as in :func:`priorshift.rng.per_image_rng`.

        ``x``: clean images ``(B, C, H, W)`` in [-1, 1] — checked by :meth:`check_image_range` (this is where
        images enter the measurement path) and by :meth:`check_x` (shape)."""
        self.check_image_range(x)
        self.check_x(x)
        y = self.A(x)
        if self.noise_std > 0:
            rng = per_image_rng(seed, x.shape[0], x.device)
            y = y + self.noise_std * rng.randn(y.shape[1:], dtype=y.dtype)
        return y

    # -- validation -----------------------------------------------------------------------------------
    @staticmethod
    def check_image_range(x, name: str = "x") -> Tensor:
        """Refuse images that are plainly not in the library's [-1, 1] convention: an integer (or bool) tensor,
        or finite values with ``max |x| > IMAGE_ABS_LIMIT`` — data in [0, 255] or [0, 65535], Hounsfield units.

        Deliberately loose (see :data:`IMAGE_ABS_LIMIT`): values a little outside [-1, 1] pass, and so does data
        in [0, 1], which cannot be told from [-1, 1] data by its range — rescale such data with ``2 x - 1``
        yourself (the data loaders do it for float files within [0, 1])."""
        if isinstance(x, Tensor) and not (x.is_floating_point() or x.is_complex()):
            hint = " (8-bit data: x.float() / 127.5 - 1)" if x.dtype == torch.uint8 else ""
            raise ValueError(f"{name} has dtype {x.dtype}: images must be float tensors in [-1, 1]; convert and rescale them first{hint}")
        if isinstance(x, Tensor) and x.numel():
            finite = x[torch.isfinite(x)] if not bool(torch.isfinite(x).all()) else x
            peak = float(finite.abs().max()) if finite.numel() else 0.0
            if peak > IMAGE_ABS_LIMIT:
                if x.is_complex():
                    span, hint = f"of magnitude up to {peak:.4g}", "x / max|x|"
                else:
                    lo, hi = float(finite.min()), float(finite.max())
                    span = f"in [{lo:.4g}, {hi:.4g}]"
                    hint = "x / 127.5 - 1" if lo >= 0 and hi <= 255 else "2 (x - lo) / (hi - lo) - 1, or a fixed window"
                raise ValueError(
                    f"{name} has values {span}: images must be in [-1, 1] (|x| <= {IMAGE_ABS_LIMIT:g} is accepted); "
                    f"rescale them first, e.g. {hint}"
                )
        return x

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
