"""Denoising: ``y = x + e``."""

from __future__ import annotations

from torch import Tensor

from priorshift._checks import check_image
from priorshift.operators.base import LinearOperator
from priorshift.registry import register

__all__ = ["Identity"]


@register("operator", "identity")
class Identity(LinearOperator):
    """The identity ``A = Aᵀ = A⁺ = I`` on ``(B, C, H, W)`` images (denoising). ``y`` has the shape of ``x``.

    ``A`` returns its input itself (no copy), like deepinv's ``Denoising``.
    """

    name = "identity"
    pinv_is_exact = True

    def __init__(self, noise_std: float = 0.0):
        super().__init__(noise_std)

    @classmethod
    def example(cls, image_size: int = 16, channels: int = 1, noise_std: float = 0.05) -> "Identity":
        """The identity with ``noise_std`` (sizes do not matter)."""
        return cls(noise_std=noise_std)

    def check_y(self, y: Tensor) -> Tensor:
        return check_image(y, "y")

    def A(self, x: Tensor) -> Tensor:
        self.check_x(x)
        return x

    def A_adjoint(self, y: Tensor) -> Tensor:
        self.check_y(y)
        return y

    def A_pinv(self, y: Tensor) -> Tensor:
        self.check_y(y)
        return y
