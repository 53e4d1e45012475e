"""Measurements of clean images, and the images measurements back-project to — for any operator.

Both the measurement-domain KL and prior alignment go through these two functions, so that measurements are
formed in one place (the operator: its forward map, its mask, its noise) and every registered operator works
in both.
"""

from __future__ import annotations

from torch import Tensor

from priorshift.operators.base import LinearOperator
from priorshift.rng import per_image_rng

__all__ = ["measure", "back_project"]


def measure(operator: LinearOperator, x: Tensor, seed=None) -> tuple[Tensor, LinearOperator]:
    """Measure clean images ``x`` ``(B, C, H, W)`` in [-1, 1]: ``y_b = A_b x_b + e_b``. Returns ``(y, A)``.

    One generator per image (``seed`` as in :func:`priorshift.rng.per_image_rng`). An operator with a random
    mask family (``mask_family``, e.g. ``Inpainting.random`` / ``MRI.random``) first draws image ``b``'s own mask
    from its generator (:meth:`~priorshift.operators.masks.RedrawMasks.redraw`); then the operator's own noise
    (``noise_std``) is drawn from the same generator by ``A(x, seed=...)``. ``A`` is the operator that made
    ``y``: the per-image copy (``A.mask`` is ``(B, ...)``), or ``operator`` itself when it draws no masks. Image
    ``b``'s ``y`` and mask depend only on its own seed, not on the batch.
    """
    rng = per_image_rng(seed, x.shape[0], x.device)
    if getattr(operator, "mask_family", None) is not None:
        operator = operator.redraw(rng, x.shape[0])
    return operator(x, seed=rng), operator


def back_project(operator: LinearOperator, y: Tensor) -> Tensor:
    """The image a measurement ``y`` stands for, ``(B, C, H, W)``: ``operator.back_project(y)`` where the operator
    defines one (MRI: the zero-filled image), else its pseudo-inverse ``A_pinv(y)`` (inpainting: ``m ⊙ y``; CT:
    filtered back-projection; blur: conjugate gradients). In the SVD ``A = U S Vᵀ`` this is ``V ȳ``,
    ``ȳ = S⁺ Uᵀ y``."""
    project = getattr(operator, "back_project", None)
    return project(y) if callable(project) else operator.A_pinv(y)
