"""KLIP's maps after sampling: the image score, the spread normalization, the tissue rule and the window
aggregation of recorded per-step maps (shared by :class:`~priorshift.detectors.KLIP`, multiscale KLIP and the
trace-based benchmarks)."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional as F

__all__ = ["image_score", "spread_normalized", "tissue_blocks", "aggregate_step_maps"]


def image_score(block_map: Tensor) -> Tensor:
    """KLIP's image score from its block map (B, h, w): the max over blocks (a small shift is not diluted)."""
    return block_map.flatten(1).max(1).values


def spread_normalized(block_map: Tensor, spread_map: Tensor, floor: float) -> Tensor:
    """``map / (spread + floor · mean_blocks(spread))`` per image (B, h, w): each block's likelihood energy in
    units of the posterior's own uncertainty there, so that anatomy the prior is unsure of (edges, texture)
    does not outrank a small shift in a region it is sure of. ``floor`` (> 0) keeps blocks where the S samples
    agree (background) from dividing by ~0."""
    ref = spread_map.flatten(1).mean(1).reshape(-1, 1, 1)
    return block_map / (spread_map + floor * ref).clamp_min(torch.finfo(block_map.dtype).tiny)


def aggregate_step_maps(step_maps: Tensor, steps: tuple[int, int], pool: int = 1) -> Tensor:
    """KLIP's map from per-step block maps (``Scores.extras["step_maps"]``, (B, T, h, w)): the mean over steps
    ``k0 ≤ k < k1`` of the maps summed over ``pool × pool`` groups of blocks (block size × ``pool``); ``pool=0``
    sums everything into one block. Equal to running KLIP with that window and block (up to float32 storage)."""
    k0, k1 = steps
    if not 0 <= k0 < k1 <= step_maps.shape[1]:
        raise ValueError(f"window steps [{k0}, {k1}) are outside the {step_maps.shape[1]} recorded steps")
    m = step_maps[:, k0:k1].to(torch.float64).mean(1)  # (B, h, w)
    if pool == 0:
        return m.sum((-2, -1), keepdim=True)
    b, h, w = m.shape
    if h % pool or w % pool:
        raise ValueError(f"pool {pool} must divide the map size {h}×{w}")
    return m.reshape(b, h // pool, pool, w // pool, pool).sum((2, 4))


def tissue_blocks(images: Tensor, block: int, foreground: float) -> Tensor:
    """``(B, H/block, W/block)`` bool: the blocks with any pixel of ``images`` (B, C, H, W) above ``foreground`` in
    any channel — where there is tissue rather than air (CT in [-1, 1]: ``foreground = -0.9``). An image with no
    such block gets all blocks (its score then comes from everywhere rather than from nowhere)."""
    above = (images > foreground).any(1, keepdim=True).to(images.dtype)
    tissue = F.max_pool2d(above, block)[:, 0] > 0
    return tissue | ~tissue.flatten(1).any(1)[:, None, None]
