"""Observation masks for inpainting: float ``(1, H, W)`` tensors of 0/1, **1 = observed**, 0 = missing.

The leading singleton broadcasts over channels (and batch) in :class:`~priorshift.operators.Inpainting`.
``size`` is an ``int`` (square) or ``(H, W)``; ``generator`` is a ``torch.Generator`` or ``None`` (global RNG).
Masks are built on the generator's device (CPU when ``generator`` is ``None``).

Random masks drawn per image: a *mask family* (:class:`BlockMasks` here, ``CartesianMasks`` for MRI) says how
one mask is drawn from a generator and what ``E[mask]`` is; an operator holding one (``mask_family``) gets
:meth:`RedrawMasks.redraw`: a copy with one mask per image, each drawn from that image's own generator.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass

import torch
from torch import Tensor

from priorshift._checks import check_tensor
from priorshift.rng import per_image_rng

__all__ = ["random_pixel_mask", "random_block_mask", "box_mask", "checkerboard_mask", "as_size", "BlockMasks", "RedrawMasks"]


def as_size(size, name: str = "size") -> tuple[int, int]:
    """``int`` or ``(H, W)`` → ``(H, W)`` of positive ints; ``ValueError`` otherwise."""
    if isinstance(size, numbers.Integral):
        size = (int(size), int(size))
    try:
        h, w = (int(s) for s in size)
        ok = all(isinstance(s, numbers.Integral) for s in size)
    except (TypeError, ValueError):
        ok = False
    if not ok or h <= 0 or w <= 0:
        raise ValueError(f"{name} must be a positive int or a pair (H, W) of positive ints, got {size!r}")
    return h, w


def _check_fraction(observed_fraction) -> float:
    f = float(observed_fraction)
    if not 0.0 < f <= 1.0:
        raise ValueError(f"observed_fraction must be in (0, 1], got {observed_fraction!r}")
    return f


def _device(generator) -> torch.device:
    if generator is None:
        return torch.device("cpu")
    if not isinstance(generator, torch.Generator):
        raise ValueError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    return generator.device


def random_pixel_mask(size, observed_fraction: float, generator: torch.Generator | None = None) -> Tensor:
    """Each pixel observed independently with probability ``observed_fraction`` (Bernoulli). ``(1, H, W)``."""
    h, w = as_size(size)
    f = _check_fraction(observed_fraction)
    u = torch.rand((1, h, w), generator=generator, device=_device(generator))
    return (u < f).float()


def random_block_mask(size, block: int, observed_fraction: float, generator: torch.Generator | None = None) -> Tensor:
    """Non-overlapping ``block × block`` tiles, each observed with probability ``observed_fraction``. ``(1, H, W)``.

    ``block`` must divide both H and W.
    """
    h, w = as_size(size)
    f = _check_fraction(observed_fraction)
    if not isinstance(block, numbers.Integral) or block <= 0 or h % block or w % block:
        raise ValueError(f"block must be a positive int dividing the image size {(h, w)}, got {block!r}")
    u = torch.rand((1, h // block, w // block), generator=generator, device=_device(generator))
    tiles = (u < f).float()
    return tiles.repeat_interleave(block, dim=1).repeat_interleave(block, dim=2)


def box_mask(size, box) -> Tensor:
    """Everything observed except the rectangle ``box = (top, left, height, width)``, which is hidden. ``(1, H, W)``."""
    h, w = as_size(size)
    try:
        top, left, bh, bw = (int(b) for b in box)
    except (TypeError, ValueError):
        raise ValueError(f"box must be (top, left, height, width), got {box!r}") from None
    if top < 0 or left < 0 or bh <= 0 or bw <= 0 or top + bh > h or left + bw > w:
        raise ValueError(f"box (top, left, height, width) = {tuple(box)} must lie inside the {h}×{w} image")
    mask = torch.ones(1, h, w)
    mask[:, top : top + bh, left : left + bw] = 0.0
    return mask


def checkerboard_mask(size, n_blocks: int, attempt: int = 0) -> Tensor:
    """Alternating checkerboard of LMD (Liu et al., ICML 2023, "Unsupervised OOD detection with diffusion inpainting").

    The image is split into ``n_blocks × n_blocks`` equal blocks (``n_blocks`` must divide H and W). Even
    attempts hide the blocks with ``(row + col)`` odd; odd attempts hide the complement, so attempt
    ``2k + 1`` is exactly ``1 - attempt 2k`` and every pixel is hidden in one attempt of each pair. ``(1, H, W)``.
    """
    h, w = as_size(size)
    if not isinstance(n_blocks, numbers.Integral) or n_blocks <= 0 or h % n_blocks or w % n_blocks:
        raise ValueError(f"n_blocks must be a positive int dividing the image size {(h, w)}, got {n_blocks!r}")
    if not isinstance(attempt, numbers.Integral) or attempt < 0:
        raise ValueError(f"attempt must be a non-negative int, got {attempt!r}")
    rows = torch.arange(h) // (h // n_blocks)
    cols = torch.arange(w) // (w // n_blocks)
    hidden = (rows[:, None] + cols[None, :]) % 2 == 1
    if attempt % 2 == 1:
        hidden = ~hidden
    return (~hidden).float().unsqueeze(0)


@dataclass(frozen=True)
class BlockMasks:
    """The random inpainting masks of :func:`random_block_mask`: ``block × block`` tiles (``block = 1``: pixels,
    as :func:`random_pixel_mask`), each observed independently with probability ``p`` in (0, 1]."""

    p: float
    block: int = 1

    def __post_init__(self):
        try:
            ok = not isinstance(self.p, bool) and 0.0 < float(self.p) <= 1.0
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise ValueError(f"p (the observation probability) must be a number in (0, 1], got {self.p!r}")
        if isinstance(self.block, bool) or not isinstance(self.block, numbers.Integral) or self.block < 1:
            raise ValueError(f"block (the tile size in pixels) must be an integer >= 1, got {self.block!r}")
        object.__setattr__(self, "p", float(self.p))
        object.__setattr__(self, "block", int(self.block))

    def check(self, size) -> tuple[int, int]:
        """``(H, W)``, or a ``ValueError`` unless ``block`` divides both."""
        h, w = as_size(size)
        if h % self.block or w % self.block:
            raise ValueError(f"block = {self.block} must divide the image size {h}×{w}")
        return h, w

    def draw(self, size, generators) -> Tensor:
        """One mask per generator, ``(len(generators), 1, H, W)`` float32 on their device; mask ``b`` equals
        ``random_block_mask(size, block, p, generator=generators[b])``."""
        h, w = self.check(size)
        u = torch.stack([torch.rand((1, h // self.block, w // self.block), generator=g, device=g.device) for g in generators])
        return (u < self.p).float().repeat_interleave(self.block, dim=-2).repeat_interleave(self.block, dim=-1)

    def probability(self, size) -> Tensor:
        """``E[mask]``: ``p`` at every pixel, ``(1, H, W)`` float64."""
        h, w = self.check(size)
        return torch.full((1, h, w), self.p, dtype=torch.float64)


class RedrawMasks:
    """Mixin for an operator with a 0/1 ``mask`` (its last two dims the image size), ``noise_std`` and an optional
    ``mask_family`` of type ``family_type``; its constructor takes ``(mask, noise_std, mask_family=...)``."""

    mask_family = None
    family_type: type = object

    def _init_mask(self, mask: Tensor, mask_family) -> Tensor:
        """Keep ``mask_family`` (checked); return ``mask`` as a real float tensor of 0/1, or raise a ``ValueError``."""
        if mask_family is not None and not isinstance(mask_family, self.family_type):
            raise ValueError(f"mask_family must be a {self.family_type.__name__}, got {type(mask_family).__name__}")
        self.mask_family = mask_family
        if isinstance(mask, Tensor) and mask.dtype == torch.bool:
            mask = mask.float()
        check_tensor(mask, "mask")
        if mask.is_complex():
            raise ValueError("mask must be a real tensor of 0 and 1, got a complex one")
        if not bool(((mask == 0) | (mask == 1)).all()):
            raise ValueError("mask must contain only 0 (missing) and 1 (observed)")
        if mask.numel() and not bool(mask.any()):
            raise ValueError(f"mask observes nothing (all {mask.numel()} entries are 0): the measurements would carry no information; "
                             "1 = observed")
        return mask

    @classmethod
    def _from_family(cls, family, size, noise_std: float, seed: int):
        """An operator with ``family`` and its own mask, one draw from ``seed``."""
        return cls(family.draw(size, [torch.Generator().manual_seed(int(seed))])[0], noise_std, mask_family=family)

    def redraw(self, seed, batch_size: int, device=None):
        """A copy of this operator with one mask per image, ``(B, ...)``, drawn from ``mask_family``: image ``b``'s
        mask from its own generator (``seed`` as in :func:`priorshift.rng.per_image_rng`: an int ``s`` gives
        image ``b`` seed ``s + b``; a list, one seed per image; a ``PerImageGenerator`` is drawn from and left
        where it stands, so measurement noise drawn next from it continues the same per-image streams). The
        masks do not depend on the batch size; they are built on the generators' device (``device``, default
        CPU, unless ``seed`` is a ``PerImageGenerator``)."""
        if self.mask_family is None:
            raise ValueError(
                f"this {type(self).__name__} operator holds a fixed mask and no mask family to redraw from; build it with "
                f"{type(self).__name__}.random(...) or pass mask_family="
            )
        rng = per_image_rng(seed, batch_size, "cpu" if device is None else device)
        masks = self.mask_family.draw(tuple(self.mask.shape[-2:]), rng.generators)
        return type(self)(masks, self.noise_std, mask_family=self.mask_family)
