"""Hooks: read-only observers of a sampler's steps (see :class:`priorshift.types.StepState`)."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor
from tqdm.auto import tqdm

from priorshift.types import StepState

__all__ = ["TraceRecorder", "ProgressBar", "block_energy"]


def block_energy(u: Tensor, block: int) -> Tensor:
    """``Σ`` of ``u²`` over each ``block × block`` spatial block and the channels: (..., C, H, W) → (..., H/b, W/b)."""
    *lead, c, h, w = u.shape
    if h % block or w % block:
        raise ValueError(f"block {block} must divide the image size {h}×{w}")
    sq = u.pow(2).sum(-3)
    return sq.reshape(*lead, h // block, block, w // block, block).sum((-3, -1))


class TraceRecorder:
    """Keep chosen :class:`StepState` fields of every step (on the CPU).

    ``fields``: names of tensor fields (``"likelihood_update"``, ``"x0_hat"``, ...) or scalars (``"sigma"``).
    ``block``: if given, tensor fields are reduced online to their block energy (B, S, H/b, W/b) —
    memory O(blocks) per step instead of O(pixels). ``every``: keep one step in ``every``.
    After sampling, ``recorder[name]`` stacks the kept values over steps: (T, B, S, ...) or (T,).
    """

    def __init__(self, fields: Sequence[str] = ("likelihood_update",), *, block: int | None = None, every: int = 1):
        self.fields = tuple(fields)
        self.block = block
        self.every = int(every)
        self.steps: list[int] = []
        self.values: dict[str, list] = {f: [] for f in self.fields}

    def __call__(self, state: StepState) -> None:
        if state.i % self.every:
            return
        self.steps.append(state.i)
        for f in self.fields:
            v = getattr(state, f)
            if isinstance(v, Tensor):
                v = block_energy(v, self.block) if self.block else v
                v = v.detach().to("cpu", copy=True)
            self.values[f].append(v)

    def __getitem__(self, name: str):
        vals = self.values[name]
        if vals and isinstance(vals[0], Tensor):
            return torch.stack(vals)
        return torch.tensor(vals, dtype=torch.float64)


class ProgressBar:
    """A tqdm bar advanced once per step, showing σ."""

    def __init__(self, total: int | None = None, desc: str = "sampling", disable: bool = False):
        self.bar = tqdm(total=total, desc=desc, disable=disable, unit="step", dynamic_ncols=True, leave=False)

    def __call__(self, state: StepState) -> None:
        if self.bar.total is None:
            self.bar.total = state.n_steps
        self.bar.update(1)
        self.bar.set_postfix(sigma=f"{state.sigma:.3g}")
        if state.i + 1 == state.n_steps:
            self.close()

    def close(self) -> None:
        self.bar.close()
