"""Any priorshift detector as a `pytorch-ood <https://github.com/kkirchheim/pytorch-ood>`_ ``Detector``.

pytorch-ood is optional (``pip install "priorshift[ood]"``; it needs torchvision) and imported only when the
adapter is first used, never by ``import priorshift``::

    from priorshift.detectors import EigenScore
    from priorshift.integrations.pytorch_ood import PriorshiftDetector

    detector = PriorshiftDetector(EigenScore(prior))   # a pytorch_ood.api.Detector
    detector.fit(id_loader)                            # batches (x, y), [x, ...] or x; labels are ignored
    scores = detector(x)                               # (B,), higher = more OOD — pytorch-ood's convention too

``x`` is what the priorshift detector scores (its ``input_kind``): images ``(B, C, H, W)`` in [-1, 1], or
measurements ``y = A(x) + e``. With ``measure=True`` a measurement detector (KLIP, ...) takes images and measures
them with its own operator first, so that loaders of images work with every detector.
"""

from __future__ import annotations

from typing import Any

__all__ = ["PriorshiftDetector", "as_pytorch_ood", "INSTALL_HINT"]  # noqa: F822 — PriorshiftDetector is built lazily by __getattr__

INSTALL_HINT = 'pip install "priorshift[ood]" (pytorch-ood; it also needs torchvision)'
FIT_SEED_OFFSET = 10**6
"""Fit data measured with ``measure=True`` uses seeds ``seed + 10**6 + b``, apart from the scored data (as ``priorshift score``)."""

_CLASS = None


def _api():
    try:
        from pytorch_ood import api
    except ImportError as e:
        raise ImportError(f"priorshift.integrations.pytorch_ood needs pytorch-ood, which cannot be imported here ({e}); install it: "
                          f"{INSTALL_HINT}") from e
    return api


def _batch_inputs(batch) -> Any:
    """The inputs of one loader batch: ``x`` of ``(x, y, ...)`` / ``[x, ...]``, ``batch["x"]`` or the batch itself."""
    if isinstance(batch, (tuple, list)):
        if not batch:
            raise ValueError("the loader yielded an empty batch")
        return batch[0]
    if isinstance(batch, dict):
        for key in ("x", "image", "images", "input", "inputs"):
            if key in batch:
                return batch[key]
        raise ValueError(f"cannot tell the inputs in a batch with keys {', '.join(map(str, batch))}; yield (x, y) or x")
    return batch


def _detector_class():
    """Define :class:`PriorshiftDetector` on pytorch-ood's ``api.Detector`` (once, on first use)."""
    global _CLASS
    if _CLASS is not None:
        return _CLASS
    import torch

    from priorshift.detectors.base import score_batches

    api = _api()

    class PriorshiftDetector(api.Detector):
        """A priorshift detector behind pytorch-ood's API. ``predict(x)`` → ``(B,)`` scores, **higher = more OOD**.

        Args:
            detector: any priorshift detector (:mod:`priorshift.detectors`); it is used as is, not copied.
            measure: ``x`` are images even though ``detector`` scores measurements: measure them first with
                ``detector.operator`` (its noise included, from the per-image seeds).
            seed: image ``b`` of every ``predict`` call uses seed ``seed + b`` — ``predict`` is a deterministic
                function of its batch (pass ``seed=`` to ``predict`` for others); ``fit`` uses ``seed`` too.
            batch_size: images per detector call (default: the whole batch at once).

        ``requires_fit`` is the detector's ``needs_fit``. After ``predict``, ``last_scores`` holds the full
        :class:`priorshift.types.Scores` (the block map, NFE, per-step curves). ``.to(device)`` moves the prior
        (an ``nn.Module``); call it before ``fit``, whose calibration lives on the device of its data.
        """

        if hasattr(api, "DetectorInfo"):  # pytorch-ood >= 0.4 describes each detector
            try:
                info = api.DetectorInfo(tasks=frozenset({api.Task.CLASSIFICATION}), ai_coded=True)
            except TypeError:
                info = api.DetectorInfo(tasks=frozenset({api.Task.CLASSIFICATION}))

        def __init__(self, detector, *, measure: bool = False, seed: int = 0, batch_size: int | None = None):
            if not callable(getattr(detector, "score", None)) or not hasattr(detector, "input_kind"):
                raise ValueError(f"detector must be a priorshift detector (with input_kind and score), got {type(detector).__name__}")
            if measure and detector.input_kind != "measurements":
                raise ValueError(f"measure=True measures images for a measurement detector; {type(detector).__name__} scores images already")
            if batch_size is not None and (int(batch_size) != batch_size or batch_size < 1):
                raise ValueError(f"batch_size must be an integer >= 1 or None, got {batch_size!r}")
            self.detector = detector
            self.prior = getattr(detector, "prior", None)  # so that pytorch-ood's .to(device) and .device see the network
            self.measure = bool(measure)
            self.seed = int(seed)
            self.batch_size = batch_size
            self.requires_fit = bool(getattr(detector, "needs_fit", False))
            self.last_scores = None

        def _inputs(self, x, seed: int):
            if not isinstance(x, torch.Tensor):
                raise ValueError(f"x must be a tensor, got {type(x).__name__}")
            device = self.device
            x = x.detach().to(device) if device is not None else x.detach()
            if self.measure:
                x = self.detector.operator(x, seed=list(range(seed, seed + x.shape[0])))
            return x

        def fit(self, data_loader, *args, **kwargs):
            """Calibrate on every batch of ``data_loader`` (in-distribution; labels are ignored); a no-op when
            the detector needs no calibration."""
            if not self.requires_fit:
                return self
            xs = [_batch_inputs(b) for b in data_loader]
            if not xs:
                raise ValueError("the fit loader yielded no batches")
            return self.fit_features(torch.cat([torch.as_tensor(x) for x in xs]))

        def fit_features(self, x, y=None, *args, **kwargs):
            """Calibrate on ``x`` (N, ...) directly (``y`` is ignored)."""
            if self.requires_fit:
                self.detector.fit(self._inputs(x, self.seed + FIT_SEED_OFFSET), seed=self.seed)
            return self

        def predict(self, x, *, seed: int | None = None):
            """Scores ``(B,)`` of a batch, higher = more OOD (on the batch's device)."""
            return self.predict_features(x, seed=seed)

        def predict_features(self, x, *, seed: int | None = None):
            """:meth:`predict` — for priorshift the detector's inputs are its features."""
            if self.requires_fit and not self.detector.is_fitted():
                raise api.RequiresFittingException(f"{type(self.detector).__name__} needs fit(in_distribution_loader) before predict()")
            seed = self.seed if seed is None else int(seed)
            data = self._inputs(x, seed)
            self.last_scores = score_batches(self.detector, data, batch_size=self.batch_size or max(1, int(data.shape[0])), seed=seed)
            return self.last_scores.score.detach()

        def __repr__(self) -> str:
            return f"PriorshiftDetector({self.detector!r}, measure={self.measure}, seed={self.seed})"

    PriorshiftDetector.__module__ = __name__
    _CLASS = PriorshiftDetector
    return _CLASS


def as_pytorch_ood(detector, **kwargs):
    """``PriorshiftDetector(detector, **kwargs)``: a priorshift detector as a pytorch-ood ``Detector``."""
    return _detector_class()(detector, **kwargs)


def __getattr__(name: str):
    if name == "PriorshiftDetector":  # defined on first access: pytorch-ood is imported only then
        return _detector_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
