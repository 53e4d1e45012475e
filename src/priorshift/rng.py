"""Explicit, per-image randomness.

Every random draw in priorshift goes through a :class:`PerImageGenerator`: one ``torch.Generator`` per
measurement, so image ``b``'s draws depend only on its own seed — never on the batch size or its
position in the batch (the idea of EDM's ``StackedRandomGenerator``). Library code never seeds the
global RNG.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

__all__ = ["PerImageGenerator", "per_image_rng"]


class PerImageGenerator:
    """One ``torch.Generator`` per image. ``randn((C, H, W), ...)`` returns ``(B, C, H, W)``."""

    def __init__(self, seeds: Sequence[int], device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self.seeds = [int(s) for s in seeds]
        self.generators = [torch.Generator(self.device).manual_seed(s) for s in self.seeds]

    def __len__(self) -> int:
        return len(self.generators)

    def randn(self, shape: Sequence[int], dtype: torch.dtype = torch.float32) -> Tensor:
        """Standard normal draws of ``shape`` for each image, stacked: ``(B, *shape)``."""
        return torch.stack(
            [torch.randn(tuple(shape), generator=g, device=self.device, dtype=dtype) for g in self.generators]
        )

    def rand(self, shape: Sequence[int], dtype: torch.dtype = torch.float32) -> Tensor:
        """Uniform [0, 1) draws of ``shape`` for each image, stacked: ``(B, *shape)``."""
        return torch.stack(
            [torch.rand(tuple(shape), generator=g, device=self.device, dtype=dtype) for g in self.generators]
        )


def per_image_rng(seed, batch_size: int, device: torch.device | str = "cpu") -> PerImageGenerator:
    """Normalize a ``seed`` — the one name for per-image randomness across priorshift — into a :class:`PerImageGenerator`.

    * ``None``: fresh, non-reproducible seeds drawn from the global RNG;
    * an ``int`` ``s``: image ``b`` gets seed ``s + b`` (reproducible; depends on the position);
    * a sequence of ints: one seed per image (reproducible and batch-independent);
    * a ``PerImageGenerator``: used as is (its length must equal ``batch_size``);
    * a ``torch.Generator``: per-image seeds are drawn from it (reproducible for the whole batch).
    """
    if isinstance(seed, PerImageGenerator):
        if len(seed) != batch_size:
            raise ValueError(f"seed holds {len(seed)} per-image generators but the batch has {batch_size} images")
        return seed
    if seed is None:
        seeds = torch.randint(0, 2**62, (batch_size,)).tolist()
    elif isinstance(seed, torch.Generator):
        seeds = torch.randint(0, 2**62, (batch_size,), generator=seed).tolist()
    elif isinstance(seed, int):
        seeds = [seed + b for b in range(batch_size)]
    else:
        seeds = [int(s) for s in seed]
        if len(seeds) != batch_size:
            raise ValueError(f"got {len(seeds)} seeds for a batch of {batch_size} images; give one seed per image")
    return PerImageGenerator(seeds, device)
