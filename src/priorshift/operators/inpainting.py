"""Inpainting: ``y = m ⊙ x + e`` with a 0/1 observation mask ``m`` (1 = observed)."""

from __future__ import annotations

from torch import Tensor

from priorshift._checks import check_image
from priorshift.operators.base import LinearOperator
from priorshift.operators.masks import BlockMasks, RedrawMasks
from priorshift.registry import register

__all__ = ["Inpainting"]


@register("operator", "inpainting")
class Inpainting(RedrawMasks, LinearOperator):
    """``A x = m ⊙ x``, ``Aᵀ y = m ⊙ y``, ``A⁺ y = m ⊙ y`` (exact: ``m`` is an orthogonal projection).

    ``mask``: 0/1 tensor, **1 = observed**, shaped ``(H, W)``, ``(C, H, W)`` or ``(B, C, H, W)`` and
    broadcastable to ``x`` without enlarging it (channel and batch dims 1 or equal to ``x``'s; ``(B, 1, H, W)``
    is one mask per image). Kept as ``self.mask`` (float, on the device it was given on) for replacement /
    RePaint-style samplers; it is moved to ``x``'s device and dtype on use. ``y`` has the shape of ``x``; its
    unobserved entries carry only noise (``noise_std · n``) and no information about ``x``.

    ``mask_family`` (a :class:`~priorshift.operators.masks.BlockMasks`, optional): the random masks ``mask``
    is one draw of; :meth:`redraw` then gives a copy with one mask per image, each from its image's seed.
    :meth:`random` builds such an operator.
    """

    name = "inpainting"
    pinv_is_exact = True
    family_type = BlockMasks

    def __init__(self, mask: Tensor, noise_std: float = 0.0, *, mask_family: BlockMasks | None = None):
        super().__init__(noise_std)
        mask = self._init_mask(mask, mask_family)
        if not 2 <= mask.ndim <= 4:
            raise ValueError(f"mask must be a real (H, W), (C, H, W) or (B, C, H, W) tensor, got shape {tuple(mask.shape)}")
        self.mask = mask.detach()
        self._cache: dict = {}

    @classmethod
    def random(cls, size, p: float, block: int = 1, *, noise_std: float = 0.0, seed: int = 0) -> "Inpainting":
        """Random-block inpainting (:class:`~priorshift.operators.masks.BlockMasks`: ``block``-pixel tiles observed
        with probability ``p``); its own mask ``(1, H, W)`` drawn from ``seed``, per-image ones by :meth:`redraw`."""
        return cls._from_family(BlockMasks(p, block), size, noise_std, seed)

    @classmethod
    def example(cls, image_size: int = 16, channels: int = 1, noise_std: float = 0.05) -> "Inpainting":
        """A small instance: random pixels, half of them observed (the mask drawn from seed 0; redrawable)."""
        return cls.random(image_size, 0.5, noise_std=noise_std)

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
