"""Input validation shared by the whole library: one clear ``ValueError`` that says what to fix."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor


def check_tensor(t, name: str, *, ndim: int | None = None, shape: Sequence[int | None] | None = None) -> Tensor:
    """Check ``t`` is a finite floating tensor with ``ndim`` dims / ``shape`` (``None`` entries are free)."""
    if not isinstance(t, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if not t.is_floating_point() and not t.is_complex():
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {t.dtype}")
    if ndim is not None and t.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {tuple(t.shape)}")
    if shape is not None:
        if t.ndim != len(shape) or any(s is not None and s != d for s, d in zip(shape, t.shape)):
            want = "(" + ", ".join("*" if s is None else str(s) for s in shape) + ")"
            raise ValueError(f"{name} must have shape {want}, got {tuple(t.shape)}")
    if not bool(torch.isfinite(t).all()):
        bad = int((~torch.isfinite(t)).sum())
        raise ValueError(f"{name} contains {bad} NaN/Inf value(s); clean the input before calling")
    return t


def check_image(x, name: str = "x", *, channels: int | None = None, size: Sequence[int] | None = None) -> Tensor:
    """Check ``x`` is a finite ``(B, C, H, W)`` image batch, optionally with ``channels`` and ``size`` = (H, W)."""
    h, w = (None, None) if size is None else tuple(size)
    return check_tensor(x, name, shape=(None, channels, h, w))


def check_sigma(sigma, batch: int, name: str = "sigma") -> Tensor:
    """Check ``sigma`` is a finite, positive ``(batch,)`` tensor."""
    check_tensor(sigma, name, shape=(batch,))
    if bool((sigma < 0).any()):
        raise ValueError(f"{name} must be non-negative")
    return sigma


def check_int(value, name: str, minimum: int = 1) -> int:
    """``value`` as an int, or a ``ValueError`` naming ``name`` unless it is a whole number ``>= minimum`` (not a bool)."""
    try:
        ok = not isinstance(value, bool) and int(value) == value and int(value) >= minimum
    except (TypeError, ValueError, OverflowError):
        ok = False
    if not ok:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)
