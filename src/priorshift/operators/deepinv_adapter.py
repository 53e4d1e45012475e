"""Use a deepinv ``LinearPhysics`` as a priorshift operator (deepinv is optional and imported lazily)."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from priorshift._checks import check_tensor
from priorshift.operators.base import LinearOperator

__all__ = ["DeepinvOperator"]


class DeepinvOperator(LinearOperator):
    """Wrap a deepinv ``LinearPhysics``: ``A → physics.A``, ``Aᵀ → physics.A_adjoint``, ``A⁺ → physics.A_dagger``.

    Noise is priorshift's own (``noise_std``, per-image generators via ``__call__``); the physics' noise
    model is never called. Linear operators are range-agnostic — ``A`` acts on whatever values it is given —
    so [-1, 1] images pass through unchanged, with no rescaling to deepinv's usual [0, 1]. Any object with ``A``
    and ``A_adjoint`` methods works (``A_dagger`` is optional; without it ``A_pinv`` is :meth:`pinv_damped`).
    deepinv itself is imported only to reject a non-linear deepinv ``Physics``. Not registered: it needs a
    physics object. ``x``: ``(B, C, H, W)``; ``y``: whatever the physics produces.
    """

    name = "deepinv"

    def __init__(self, physics: Any, noise_std: float = 0.0):
        super().__init__(noise_std)
        if type(physics).__module__.split(".")[0] == "deepinv":
            import deepinv  # lazy: only when a deepinv object is actually given

            if not isinstance(physics, deepinv.physics.LinearPhysics):
                raise ValueError(f"DeepinvOperator needs a deepinv LinearPhysics, got the non-linear {type(physics).__name__}")
        for method in ("A", "A_adjoint"):
            if not callable(getattr(physics, method, None)):
                raise ValueError(f"physics must have a callable {method}(...) method (a deepinv LinearPhysics)")
        self.physics = physics

    def check_y(self, y: Tensor) -> Tensor:
        return check_tensor(y, "y")

    def A(self, x: Tensor) -> Tensor:
        self.check_x(x)
        return self.physics.A(x)

    def A_adjoint(self, y: Tensor) -> Tensor:
        self.check_y(y)
        return self.physics.A_adjoint(y)

    def A_pinv(self, y: Tensor) -> Tensor:
        self.check_y(y)
        if callable(getattr(self.physics, "A_dagger", None)):
            return self.physics.A_dagger(y)
        return self.pinv_damped(y)

    def __repr__(self) -> str:
        return f"DeepinvOperator({type(self.physics).__name__}, noise_std={self.noise_std:g})"
