"""What prior alignment (:mod:`priorshift.adapt`) trains on: measurements, back-projected by the operator that
made them, with their loss masks — and measurements simulated from clean images for experiments.

Measurements are made by the operators (:func:`priorshift.operators.measure`: forward map, per-image masks,
noise) and back-projected by them (:func:`priorshift.operators.back_project`), so every registered operator
works here. Shapes: images ``(N, C, H, W)`` in [-1, 1]; measurements as the operator makes them; masks 0/1,
1 = observed.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported where it is used: `priorshift --help` stays light
    from torch import Tensor

__all__ = ["MeasuredSet", "measured_set", "simulate_measurements", "KINDS"]

KINDS = ("inpainting", "mri")
"""The operators named by a string here: the ones with random masks (each measurement its own)."""


@dataclass(frozen=True)
class MeasuredSet:
    """What alignment trains on. ``targets``: ``(N, C, H, W)`` float32 in [-1, 1], the back-projected
    measurements; ``masks``: ``(N, 1|C, H, W)`` 0/1 loss masks (inpainting, 1 = observed) or ``None`` (other
    operators: unmasked loss); ``kind``: the operator's name (``"inpainting"``, ``"mri"``, ``"ct"``, ...)."""

    targets: Tensor
    masks: Tensor | None
    kind: str

    def __len__(self) -> int:
        return int(self.targets.shape[0])

    def digest(self) -> str:
        h = hashlib.sha256(self.targets.contiguous().numpy().tobytes())
        if self.masks is not None:
            h.update(self.masks.contiguous().numpy().tobytes())
        return h.hexdigest()[:16]

    def subset(self, idx: Tensor) -> "MeasuredSet":
        return MeasuredSet(self.targets[idx], None if self.masks is None else self.masks[idx], self.kind)


def _check_01(masks: Tensor, name: str = "masks") -> Tensor:
    import torch

    from priorshift._checks import check_tensor

    if isinstance(masks, torch.Tensor) and masks.dtype == torch.bool:
        masks = masks.float()
    check_tensor(masks, name)
    if not bool(((masks == 0) | (masks == 1)).all()):
        raise ValueError(f"{name} must contain only 0 (missing) and 1 (observed)")
    return masks


def measured_set(operator, y: Tensor, masks: Tensor | None = None) -> MeasuredSet:
    """Build the training set from measurements ``y`` and the operator that made them.

    ``operator``: an operator instance — any registered one; ``y`` as it makes them; ``masks`` (optional, for an
    :class:`~priorshift.operators.Inpainting` / :class:`~priorshift.operators.MRI`) replace its own mask, e.g.
    the per-measurement masks :func:`simulate_measurements` returns — or a name in :data:`KINDS` with ``masks``
    (1 = observed pixel / sampled k-space entry):

    * ``"inpainting"``: ``y`` (N, C, H, W); ``masks`` (H, W), (1, H, W), (N, H, W) or (N, 1|C, H, W);
    * ``"mri"``: ``y`` (N, C, H, W, 2) centred k-space (real, imaginary); ``masks`` (H, W) or (N, H, W).

    Targets: :func:`priorshift.operators.back_project` of ``y`` clipped to [-1, 1]; loss masks: the inpainting
    masks, ``None`` for other operators.
    """
    from priorshift.operators import MRI, Inpainting, back_project

    if isinstance(operator, str):
        if operator not in KINDS:
            raise ValueError(f"unknown measurement kind {operator!r}; choose one of {', '.join(KINDS)}, or pass an operator "
                             "instance (priorshift.operators.make_operator) for any other")
        if masks is None:
            raise ValueError(f"{operator} measurements need their masks (1 = observed)")
        cls, noise_std = (Inpainting if operator == "inpainting" else MRI), 0.0
    else:
        cls, noise_std = type(operator), operator.noise_std
    op = operator
    if masks is not None:
        if not issubclass(cls, (Inpainting, MRI)):
            raise ValueError(f"masks are for inpainting and MRI measurements; the {cls.name} operator holds none")
        masks = _check_01(masks)
        if issubclass(cls, Inpainting) and masks.ndim == 3:
            masks = masks.unsqueeze(1)  # (N, H, W): one mask per measurement
        op = cls(masks, noise_std)
    try:
        op.check_y(y)
    except ValueError as e:
        what = f"masks of shape {tuple(masks.shape)}" if masks is not None else f"the {cls.name} operator"
        raise ValueError(f"{what} do not fit the measurements y of shape {tuple(getattr(y, 'shape', ()))}: {e}") from None
    targets = back_project(op, y).float().clamp(-1, 1)
    loss_masks = None
    if isinstance(op, Inpainting):
        m = op.mask.float()
        while m.ndim < 4:
            m = m.unsqueeze(0)
        loss_masks = m.expand(targets.shape[0], m.shape[1], *targets.shape[-2:]).contiguous()
    return MeasuredSet(targets, loss_masks, op.name)


def simulate_measurements(
    operator, images: Tensor, *, seed=0, p: float | None = None, block: int | None = None, acceleration: float | None = None,
    center_lines: int | None = None, noise_std: float | None = None,
) -> tuple[Tensor, Tensor | None]:
    """Measure clean ``images`` (N, C, H, W) for experiments, with :func:`priorshift.operators.measure`: each image its
    own random mask (where the operator draws masks) and noise, from its seed (:func:`priorshift.rng.per_image_rng`).

    ``operator``: any operator instance (its masks and ``noise_std``: e.g. ``Inpainting.random(...)``,
    ``make_operator("ct", image_size=64, noise_std=0.01)``), or a name in :data:`KINDS` with its random masks:
    ``"inpainting"`` — ``block``-pixel tiles (default 4) observed with probability ``p`` (default 0.8);
    ``"mri"`` — :class:`~priorshift.operators.CartesianMasks` (``acceleration`` 4, ``center_lines`` ``W // 8``);
    ``noise_std`` (default 0). Returns ``(y, masks)``: the measurements and the masks they were made with —
    inpainting (N, 1, H, W), MRI (N, H, W); an operator's own mask when it draws none; ``None`` without masks.
    Hand both to :func:`measured_set` with the same ``operator``.
    """
    from priorshift._checks import check_image
    from priorshift.operators import MRI, Inpainting, measure

    check_image(images, "images")
    given = {"p": p, "block": block, "acceleration": acceleration, "center_lines": center_lines, "noise_std": noise_std}
    if not isinstance(operator, str):
        for name, value in given.items():
            if value is not None:
                raise ValueError(f"{name} describes the measurements of a kind name ({', '.join(KINDS)}); an operator instance "
                                 "brings its own masks and noise (e.g. Inpainting.random(size, p, block, noise_std=...))")
    elif operator not in KINDS:
        raise ValueError(f"unknown measurement kind {operator!r}; choose one of {', '.join(KINDS)}, or pass an operator instance")
    else:
        size, noise = tuple(images.shape[-2:]), 0.0 if noise_std is None else noise_std
        wrong = ("acceleration", "center_lines") if operator == "inpainting" else ("p", "block")
        for name in wrong:
            if given[name] is not None:
                raise ValueError(f"{name} does not describe {operator} masks")
        if operator == "inpainting":
            operator = Inpainting.random(size, 0.8 if p is None else p, 4 if block is None else block, noise_std=noise)
        else:
            operator = MRI.random(size, 4.0 if acceleration is None else acceleration, center_lines, noise_std=noise)
    y, used = measure(operator, images, seed)
    return y, getattr(used, "mask", None)
