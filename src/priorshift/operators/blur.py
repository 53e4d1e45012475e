"""Deblurring: circular (periodic) Gaussian blur, ``y = k ⊛ x + e``, computed in the Fourier domain."""

from __future__ import annotations

import math
import numbers

import torch
from torch import Tensor

from priorshift._checks import check_image
from priorshift.operators.base import LinearOperator
from priorshift.registry import register

__all__ = ["GaussianBlur", "gaussian_kernel"]


def gaussian_kernel(kernel_size: int, sigma: float, dtype: torch.dtype = torch.float64) -> Tensor:
    """The ``(k, k)`` kernel ``exp(-(i² + j²) / (2 sigma²))`` on offsets ``-k//2 … k//2``, normalized to sum 1."""
    r = torch.arange(kernel_size, dtype=dtype) - (kernel_size - 1) / 2
    g = torch.exp(-(r**2) / (2 * sigma**2))
    g = g / g.sum()
    return g[:, None] * g[None, :]


@register("operator", "blur")
class GaussianBlur(LinearOperator):
    """``A x = k ⊛ x``: depthwise (per channel) circular convolution with a centred Gaussian kernel.

    ``x`` and ``y`` are ``(B, C, H, W)`` with ``H, W ≥ kernel_size``. With ``K = DFT(k)`` (the kernel
    zero-padded to ``H × W`` and centred on pixel (0, 0)):

    * ``A x = F⁻¹(K · F x)``; ``Aᵀ y = F⁻¹(conj(K) · F y)`` (correlation, the exact adjoint);
    * ``A⁺ y = F⁻¹(conj(K) F y / (|K|² + eps))``: Tikhonov-regularized inverse, ``eps = pinv_eps`` (default
      ``1e-3``; a Gaussian's ``K`` decays to ~0 at high frequency, so the exact inverse is unstable).

    ``kernel_size`` is a positive odd int, ``sigma > 0`` in pixels.
    """

    name = "blur"

    def __init__(self, kernel_size: int, sigma: float, noise_std: float = 0.0, pinv_eps: float = 1e-3):
        super().__init__(noise_std)
        if not isinstance(kernel_size, numbers.Integral) or kernel_size <= 0 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be a positive odd int, got {kernel_size!r}")
        kernel_size = int(kernel_size)
        if not (isinstance(sigma, numbers.Real) and math.isfinite(sigma) and sigma > 0):
            raise ValueError(f"sigma must be a positive number of pixels, got {sigma!r}")
        if not pinv_eps > 0:
            raise ValueError(f"pinv_eps must be positive, got {pinv_eps!r}")
        self.kernel_size = kernel_size
        self.sigma = float(sigma)
        self.pinv_eps = float(pinv_eps)
        self.kernel = gaussian_kernel(kernel_size, self.sigma)
        self._cache: dict = {}

    @classmethod
    def example(cls, image_size: int = 16, channels: int = 1, noise_std: float = 0.05) -> "GaussianBlur":
        """A small instance: 5 × 5 kernel, sigma 1 px."""
        return cls(kernel_size=5, sigma=1.0, noise_std=noise_std)

    def _transfer(self, t: Tensor) -> Tensor:
        """``K = rfft2`` of the zero-padded, centred kernel, ``(H, W // 2 + 1)`` complex, cached per size/device/dtype."""
        h, w = t.shape[-2:]
        key = (h, w, t.device, t.dtype)
        K = self._cache.get(key)
        if K is None:
            k = self.kernel_size
            pad = torch.zeros(h, w, dtype=torch.float64)
            pad[:k, :k] = self.kernel
            pad = torch.roll(pad, shifts=(-(k // 2), -(k // 2)), dims=(0, 1))
            cdtype = torch.complex128 if t.dtype == torch.float64 else torch.complex64
            K = self._cache[key] = torch.fft.rfft2(pad).to(device=t.device, dtype=cdtype)
        return K

    def _check(self, t: Tensor, name: str) -> Tensor:
        check_image(t, name)
        if min(t.shape[-2:]) < self.kernel_size:
            raise ValueError(f"{name} of shape {tuple(t.shape)} is smaller than the {self.kernel_size}×{self.kernel_size} blur kernel")
        return t

    def check_x(self, x: Tensor) -> Tensor:
        return self._check(x, "x")

    def check_y(self, y: Tensor) -> Tensor:
        return self._check(y, "y")

    def _filter(self, t: Tensor, F: Tensor) -> Tensor:
        return torch.fft.irfft2(torch.fft.rfft2(t) * F, s=t.shape[-2:])

    def A(self, x: Tensor) -> Tensor:
        self.check_x(x)
        return self._filter(x, self._transfer(x))

    def A_adjoint(self, y: Tensor) -> Tensor:
        self.check_y(y)
        return self._filter(y, self._transfer(y).conj())

    def A_pinv(self, y: Tensor) -> Tensor:
        self.check_y(y)
        K = self._transfer(y)
        return self._filter(y, K.conj() / (K.abs() ** 2 + self.pinv_eps))

    def __repr__(self) -> str:
        return f"GaussianBlur(kernel_size={self.kernel_size}, sigma={self.sigma:g}, noise_std={self.noise_std:g})"
