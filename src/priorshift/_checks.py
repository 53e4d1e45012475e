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


def check_device(name, flag: str = "device") -> torch.device:
    """``name`` (a string or ``torch.device``) as a ``torch.device``; a ``ValueError`` naming ``flag`` when it is not
    a device or not available here (no CUDA build, no such GPU, no MPS)."""
    cpu = f"{flag} cpu" if flag.startswith("--") else f"{flag}='cpu'"
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError, TypeError):
        raise ValueError(f"{flag} {name!r} is not a torch device; give cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            why = "this torch build has no CUDA support" if torch.version.cuda is None else "no CUDA GPU is visible"
            raise ValueError(f"{flag} {name}: CUDA is not available ({why}; torch {torch.__version__}); use {cpu}")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"{flag} {name}: there are {torch.cuda.device_count()} CUDA device(s), numbered from 0")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"{flag} {name}: MPS is not available here; use {cpu}")
    elif dev.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"{flag} {name}: only cpu, cuda and mps devices are supported")
    return dev


def _floating_parameter(prior):
    params = getattr(prior, "parameters", None)
    if not callable(params):
        return None
    try:
        return next((p for p in params() if p.is_floating_point()), None)
    except TypeError:
        return None


def prior_dtype(prior) -> torch.dtype:
    """The one dtype rule (``docs/decisions.md``): detectors compute in the prior's dtype — a prior with parameters
    (a network) in its parameters' floating dtype (float32 for the bundled priors); a prior without parameters (the
    analytic Gaussian and mixture priors, exact computations) in float64. Inputs of another dtype are cast to it,
    so the dtype an array was saved in does not change its score beyond round-off."""
    p = _floating_parameter(prior)
    return p.dtype if p is not None else torch.float64


def prior_device(prior) -> torch.device | None:
    """The device a network prior's parameters live on; ``None`` for priors that follow their input's device."""
    p = _floating_parameter(prior)
    return None if p is None else p.device


def check_memory(nbytes: float, what: str) -> None:
    """Refuse, before allocating, a request of ``nbytes`` bytes larger than this machine's physical memory."""
    import os

    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not available on this platform
        return
    if nbytes > total:
        raise ValueError(f"{what} would need {nbytes / 2**30:,.1f} GiB, more than this machine's {total / 2**30:,.1f} GiB of memory")
