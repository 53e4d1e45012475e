"""What the measurement and the image baselines share: standardisation statistics fitted on ID data."""

from __future__ import annotations

from torch import Tensor

__all__ = ["fit_location_scale"]


def fit_location_scale(values: Tensor, what: str) -> tuple[Tensor, Tensor]:
    """Mean and (unbiased) standard deviation over the first axis, float64; a clear error for a constant column."""
    mean = values.mean(0)
    std = values.std(0, unbiased=True)
    if not bool((std > 1e-12 * mean.abs().clamp_min(1e-300)).all()):
        raise ValueError(f"{what} is constant on the in-distribution data (std 0): it cannot be standardised")
    return mean, std
