"""Observation masks for inpainting: float ``(1, H, W)`` tensors of 0/1, **1 = observed**, 0 = missing.

The leading singleton broadcasts over channels (and batch) in :class:`~priorshift.operators.Inpainting`.
``size`` is an ``int`` (square) or ``(H, W)``; ``generator`` is a ``torch.Generator`` or ``None`` (global RNG).
Masks are built on the generator's device (CPU when ``generator`` is ``None``).
"""

from __future__ import annotations

import numbers

import torch
from torch import Tensor

__all__ = ["random_pixel_mask", "random_block_mask", "box_mask", "checkerboard_mask", "as_size"]


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
