"""Super-resolution: ``y = P x + e`` with ``P`` = ``factor × factor`` average pooling."""

from __future__ import annotations

import numbers

from torch import Tensor

from priorshift._checks import check_image
from priorshift.operators.base import LinearOperator
from priorshift.registry import register

__all__ = ["Downsample"]


@register("operator", "downsample")
class Downsample(LinearOperator):
    """``A``: ``(B, C, H, W) → (B, C, H/f, W/f)``, the mean over each ``f × f`` block (``f = factor``).

    ``Aᵀ y`` = nearest-neighbour upsampling ``/ f²``; since ``A Aᵀ = I / f²``, the exact Moore–Penrose
    pseudo-inverse is ``A⁺ = f² Aᵀ`` = nearest-neighbour upsampling (``A A⁺ = I``). ``H`` and ``W`` must be
    divisible by ``factor``.
    """

    name = "downsample"
    pinv_is_exact = True

    def __init__(self, factor: int, noise_std: float = 0.0):
        super().__init__(noise_std)
        if not isinstance(factor, numbers.Integral) or factor < 1:
            raise ValueError(f"factor must be a positive int, got {factor!r}")
        self.factor = int(factor)

    @classmethod
    def example(cls, image_size: int = 16, channels: int = 1, noise_std: float = 0.05) -> "Downsample":
        """A small instance: factor 2 (``image_size`` must be even)."""
        return cls(factor=2, noise_std=noise_std)

    def check_x(self, x: Tensor) -> Tensor:
        check_image(x, "x")
        h, w = x.shape[-2:]
        if h % self.factor or w % self.factor:
            raise ValueError(f"x of size {h}×{w} is not divisible by the downsampling factor {self.factor}; crop or pad it")
        return x

    def check_y(self, y: Tensor) -> Tensor:
        return check_image(y, "y")

    def A(self, x: Tensor) -> Tensor:
        self.check_x(x)
        b, c, h, w = x.shape
        f = self.factor
        return x.reshape(b, c, h // f, f, w // f, f).mean(dim=(3, 5))

    def _upsample(self, y: Tensor) -> Tensor:
        b, c, h, w = y.shape
        f = self.factor
        return y[:, :, :, None, :, None].expand(b, c, h, f, w, f).reshape(b, c, h * f, w * f)

    def A_adjoint(self, y: Tensor) -> Tensor:
        self.check_y(y)
        return self._upsample(y) / self.factor**2

    def A_pinv(self, y: Tensor) -> Tensor:
        self.check_y(y)
        return self._upsample(y)

    def __repr__(self) -> str:
        return f"Downsample(factor={self.factor}, noise_std={self.noise_std:g})"
