"""The detector contract: what every detector in priorshift is, and the one batched scoring loop.

A detector is built from a prior (and, for measurement detectors, the operator that produced the data), may be
calibrated on in-distribution data, and scores a batch. **Higher score = more shifted.**

* ``__init__`` stores and validates parameters; it runs nothing.
* ``fit(data, seed=...) -> self``: a no-op for calibration-free detectors. Detectors that need it set
  ``needs_fit = True``; their fitted state lives in attributes whose names end with ``_`` (scikit-learn's rule),
  and ``score`` before ``fit`` raises :class:`NotFittedError`.
* ``score(data, seed=..., hooks=...) -> Scores``: validates ``data`` (finite, non-empty, the declared kind and
  shape, on the prior's device) before any network call, then scores under ``torch.no_grad()`` (samplers that need
  the network's Jacobian enable it for that step only), so no result carries an autograd graph. Data are detached
  and cast to the prior's dtype first (:func:`priorshift._checks.prior_dtype`: a network's parameter dtype,
  float64 for analytic priors), so the dtype an array was saved in changes no score beyond round-off. ``seed`` is the library's one name for per-image randomness
  (:func:`priorshift.rng.per_image_rng`); ``hooks`` are extra read-only step observers handed to every sampler
  run (for benchmarks and progress bars; detectors that sample nothing refuse them).
* ``input_kind``: ``"measurements"`` (y = A(x) + e, the operator's output) or ``"images"`` ((B, C, H, W) in [-1, 1]).
* ``example()``: a tiny instance on an analytic prior, used by the contract tests in ``tests/test_detectors.py``.

:func:`score_batches` is the only loop over batches in the library (the CLI, the bench and the demo use it).
Per-image values in ``Scores.extras`` are tensors whose first axis is the batch; anything else in ``extras``
describes the run and is taken from the first batch.
"""

from __future__ import annotations

from typing import Any, Callable, ClassVar, Sequence

import torch
from torch import Tensor

from priorshift._checks import check_image, check_int, check_tensor, prior_device, prior_dtype
from priorshift.operators.base import LinearOperator
from priorshift.rng import per_image_rng
from priorshift.types import Scores

__all__ = ["Detector", "NotFittedError", "INPUT_KINDS", "score_batches", "resolve_seeds", "concat_scores", "prior_image_size", "check_block"]

INPUT_KINDS = ("measurements", "images")


class NotFittedError(ValueError, AttributeError):
    """``score`` was called on a detector that needs calibration data before ``fit``."""


class Detector:
    """Base of every detector: validation, the fitted-state rule and the contract's entry points.

    Subclasses set ``input_kind`` (and ``needs_fit``), implement ``_score(data, seed, hooks) -> Scores``
    (and ``_fit(data, seed)`` when ``needs_fit``) and the classmethod ``example()``.
    """

    input_kind: ClassVar[str] = "measurements"
    needs_fit: ClassVar[bool] = False
    samples_posterior: ClassVar[bool] = False
    """True for detectors that run a sampler, and so accept ``hooks``."""
    stochastic: ClassVar[bool] = True
    """False for detectors whose score does not depend on ``seed`` (the contract tests check both ways)."""

    prior: Any
    operator: Any = None

    # -- the contract --------------------------------------------------------------------------------
    def fit(self, data: Tensor | None = None, *, seed=0) -> "Detector":
        """Calibrate on in-distribution ``data`` of the declared ``input_kind`` (a no-op when not needed)."""
        if not self.needs_fit:
            return self
        if data is None:
            raise ValueError(f"{type(self).__name__}.fit needs in-distribution {self.input_kind} to calibrate on")
        data = self.check_input(data, "fit data")
        if data.shape[0] < 2:
            raise ValueError(f"{type(self).__name__}.fit needs at least 2 in-distribution samples, got {data.shape[0]}")
        with torch.no_grad():
            self._fit(data, seed=seed)
        return self

    def score(self, data: Tensor, *, seed=0, hooks: Sequence[Callable] = ()) -> Scores:
        """Score a batch; ``Scores.score`` is (B,), higher = more shifted."""
        hooks = (hooks,) if callable(hooks) else tuple(hooks)
        if hooks and not self.samples_posterior:
            raise ValueError(f"{type(self).__name__} runs no sampler, so it takes no hooks")
        data = self.check_input(data)
        if self.needs_fit:
            self.check_fitted()
        with torch.no_grad():
            return self._score(data, seed=seed, hooks=hooks)

    @classmethod
    def example(cls) -> "Detector":  # pragma: no cover - abstract
        """A tiny instance on an analytic prior (and operator), for the contract tests."""
        raise NotImplementedError

    # -- what subclasses implement -------------------------------------------------------------------
    def _score(self, data: Tensor, *, seed, hooks: tuple) -> Scores:  # pragma: no cover - abstract
        raise NotImplementedError

    def _fit(self, data: Tensor, *, seed) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    # -- shared helpers ------------------------------------------------------------------------------
    def check_input(self, data, name: str | None = None) -> Tensor:
        """Raise a clear ``ValueError`` unless ``data`` is a finite, non-empty batch of the declared kind on the
        prior's device; return it detached and in the prior's dtype (complex data: its complex counterpart)."""
        name = name or ("y" if self.input_kind == "measurements" else "x")
        if isinstance(data, Tensor):
            device = prior_device(self.prior)
            if device is not None and data.device != device:
                raise ValueError(f"{name} is on {data.device} but the prior is on {device}: move one of them (data.to({str(device)!r}))")
            if data.ndim == 0 or data.shape[0] == 0:
                raise ValueError(f"{name} holds no samples (shape {tuple(data.shape)}); give a batch (B, ...) with B >= 1")
            if data.is_floating_point() or data.is_complex():
                dtype = prior_dtype(self.prior)
                dtype = dtype.to_complex() if data.is_complex() else dtype
                data = data.detach().to(dtype)
        if self.input_kind == "measurements":
            if self.operator is None:
                raise ValueError(f"{type(self).__name__} scores measurements but was built without an operator")
            check_tensor(data, name)
            self.operator.check_y(data)
            want = self._measurement_shape()
            if want is not None and tuple(data.shape[1:]) != want:
                (h, w), c = prior_image_size(self.prior)
                raise ValueError(f"{name} has shape {tuple(data.shape)}, but the operator measures the prior's {h}×{w} images "
                                 f"({c} channel(s)) as (B, {', '.join(map(str, want))})")
            return data
        LinearOperator.check_image_range(data, name)  # [0, 255] or integer images are refused where images enter
        size, channels = prior_image_size(self.prior)
        return check_image(data, name, channels=channels, size=size)

    def _measurement_shape(self) -> tuple[int, ...] | None:
        """The shape (without batch) the operator gives one of the prior's images; ``None`` when the prior does not
        say its image size or the operator cannot measure a batch of one (one mask per image)."""
        size, channels = prior_image_size(self.prior)
        if size is None or channels is None:
            return None
        try:
            return tuple(self.operator.A(torch.zeros(1, channels, *size, dtype=prior_dtype(self.prior))).shape[1:])
        except (ValueError, RuntimeError):
            return None

    def check_fitted(self) -> None:
        if not self.is_fitted():
            raise NotFittedError(
                f"this {type(self).__name__} is not fitted yet: call .fit(in_distribution_{self.input_kind}) before .score(...)"
            )

    def is_fitted(self) -> bool:
        """True once ``fit`` has set a fitted attribute (a public name ending with ``_``)."""
        return any(k.endswith("_") and not k.startswith("_") for k in vars(self))

    def config(self) -> dict[str, Any]:
        """The detector's parameters as plain values (for configs and reports); subclasses extend it."""
        return {"detector": getattr(self, "registered_name", type(self).__name__)}


def prior_image_size(prior) -> tuple[tuple[int, int] | None, int | None]:
    """``((H, W), channels)`` of the images ``prior`` takes (a network prior's ``image_size`` / ``channels``, an
    analytic prior's ``shape``); ``None`` for what it does not say."""
    size = getattr(prior, "image_size", None)
    shape = getattr(prior, "shape", None)
    if size is None and shape is not None and len(shape) == 3:
        return (int(shape[-2]), int(shape[-1])), int(shape[0])
    return (None if size is None else (int(size), int(size))), getattr(prior, "channels", None)


def check_block(block, prior, name: str = "block", *, divides: bool = True) -> int:
    """``block`` as an int >= 1 (not a bool); with ``divides``, a ``ValueError`` when it does not divide the prior's
    image size (where the prior says it) — refused when the detector is built, not after sampling."""
    block = check_int(block, name)
    size = prior_image_size(prior)[0]
    if divides and size is not None and (size[0] % block or size[1] % block):
        raise ValueError(f"{name} {block} must divide the image size {size[0]}×{size[1]} of the prior")
    return block


def resolve_seeds(seed, n: int) -> list[int]:
    """One integer seed per image, from anything :func:`priorshift.rng.per_image_rng` accepts."""
    return per_image_rng(seed, n).seeds


def concat_scores(parts: Sequence[Scores]) -> Scores:
    """Join the :class:`Scores` of consecutive batches: per-image tensors (first axis = batch) are
    concatenated, NFE summed, run-level extras taken from the first batch."""
    if not parts:
        raise ValueError("no scores to concatenate")
    if len(parts) == 1:
        return parts[0]
    sizes = [p.score.shape[0] for p in parts]
    extras: dict[str, Any] = {}
    for key, first in parts[0].extras.items():
        if isinstance(first, Tensor) and first.ndim >= 1 and all(
            isinstance(p.extras.get(key), Tensor) and p.extras[key].shape[:1] == (b,) for p, b in zip(parts, sizes)
        ):
            extras[key] = torch.cat([p.extras[key] for p in parts])
        else:
            extras[key] = first
    nfe = sum(p.nfe for p in parts)
    if "nfe_per_image" in extras:
        extras["nfe_per_image"] = nfe / sum(sizes)
    maps = None if parts[0].map is None else torch.cat([p.map for p in parts])
    return Scores(score=torch.cat([p.score for p in parts]), map=maps, nfe=nfe, extras=extras)


def score_batches(
    detector, data: Tensor, *, batch_size: int = 16, seed=0, hooks: Sequence[Callable] = (), progress: Callable[[int, int], None] | None = None
) -> Scores:
    """Score ``data`` (N, ...) in batches of ``batch_size`` with per-image seeds resolved once for all N, so
    the result does not depend on ``batch_size`` (up to floating-point rounding: a batched network call may sum in
    another order). ``progress(done, total)`` is called after each batch.
    ``Scores.extras["seeds"]`` holds the seeds used; ``nfe_per_image`` is the total NFE over N."""
    if int(batch_size) != batch_size or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size}")
    n = int(data.shape[0])
    if n == 0:
        raise ValueError("no data to score: the input holds 0 samples")
    seeds = resolve_seeds(seed, n)
    parts = []
    for start in range(0, n, int(batch_size)):
        stop = min(start + int(batch_size), n)
        parts.append(detector.score(data[start:stop], seed=seeds[start:stop], hooks=hooks))
        if progress is not None:
            progress(stop, n)
    out = concat_scores(parts)
    extras = {**out.extras, "seeds": torch.tensor(seeds, dtype=torch.int64), "nfe_per_image": out.nfe / n}
    return Scores(score=out.score, map=out.map, nfe=out.nfe, extras=extras)
