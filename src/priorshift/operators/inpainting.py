"""Inpainting: ``y = m ⊙ x + e`` with a 0/1 observation mask ``m`` (1 = observed)."""

from __future__ import annotations

import torch
from torch import Tensor

from priorshift._checks import check_image, check_tensor
from priorshift.operators.base import LinearOperator
from priorshift.operators.masks import random_pixel_mask
from priorshift.registry import register

__all__ = ["Inpainting"]


@register("operator", "inpainting")
class Inpainting(LinearOperator):
    """``A x = m ⊙ x``, ``Aᵀ y = m ⊙ y``, ``A⁺ y = m ⊙ y`` (exact: ``m`` is an orthogonal projection).

    ``mask``: 0/1 tensor, **1 = observed**, shaped ``(H, W)``, ``(C, H, W)`` or ``(B, C, H, W)`` and
    broadcastable to ``x`` without enlarging it (channel and batch dims 1 or equal to ``x``'s). Kept as
    ``self.mask`` (float, on the device it was given on) for replacement / RePaint-style samplers; it is
    moved to ``x``'s device and dtype on use. ``y`` has the shape of ``x``; its unobserved entries carry
    only noise (``noise_std · n``) and no information about ``x``.
    """

    name = "inpainting"
    pinv_is_exact = True

    def __init__(self, mask: Tensor, noise_std: float = 0.0):
        super().__init__(noise_std)
        if isinstance(mask, Tensor) and mask.dtype == torch.bool:
            mask = mask.float()
        check_tensor(mask, "mask")
        if mask.is_complex() or not 2 <= mask.ndim <= 4:
            raise ValueError(f"mask must be a real (H, W), (C, H, W) or (B, C, H, W) tensor, got shape {tuple(mask.shape)}")
        if not bool(((mask == 0) | (mask == 1)).all()):
            raise ValueError("mask must contain only 0 (missing) and 1 (observed)")
        self.mask = mask.detach()
        self._cache: dict = {}

    @classmethod
    def example(cls, image_size: int = 16, channels: int = 1, noise_std: float = 0.05) -> "Inpainting":
        """A small instance: a random-pixel mask, half the pixels observed, fixed seed 0."""
        g = torch.Generator().manual_seed(0)
        return cls(random_pixel_mask(image_size, 0.5, generator=g), noise_std=noise_std)

    def _mask(self, t: Tensor) -> Tensor:
        # Cached per (device, dtype); refreshed when ``self.mask`` is replaced or modified in place.
        key = (t.device, t.dtype)
        hit = self._cache.get(key)
        if hit is None or hit[0] is not self.mask or hit[1] != self.mask._version:
            hit = self._cache[key] = (self.mask, self.mask._version, self.mask.to(device=t.device, dtype=t.dtype))
        return hit[2]

    def _check_fit(self, t: Tensor, name: str) -> Tensor:
        check_image(t, name)
        ms = tuple(self.mask.shape)
        ok = all(m in (1, s) for m, s in zip(reversed(ms), reversed(t.shape)))
        if not ok or ms[-2:] != tuple(t.shape[-2:]):
            raise ValueError(
                f"mask of shape {ms} does not fit {name} of shape {tuple(t.shape)}: the mask needs the same (H, W) "
                "and channel/batch dims of 1 or equal to the image's"
            )
        return t

    def check_x(self, x: Tensor) -> Tensor:
        return self._check_fit(x, "x")

    def check_y(self, y: Tensor) -> Tensor:
        return self._check_fit(y, "y")

    def A(self, x: Tensor) -> Tensor:
        self.check_x(x)
        return self._mask(x) * x

    def A_adjoint(self, y: Tensor) -> Tensor:
        self.check_y(y)
        return self._mask(y) * y

    def A_pinv(self, y: Tensor) -> Tensor:
        self.check_y(y)
        return self._mask(y) * y

    def __repr__(self) -> str:
        frac = float(self.mask.float().mean())
        return f"Inpainting(mask={tuple(self.mask.shape)}, observed={frac:.2f}, noise_std={self.noise_std:g})"
