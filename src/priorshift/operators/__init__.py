"""Forward operators ``y = A(x) + e``: all linear, batched, exact adjoints, float32/float64, any device.

Every registered operator has a classmethod ``example(image_size, channels, noise_std)`` giving a small
representative instance; the contract tests build each registered operator through it.
"""

from __future__ import annotations

from priorshift import registry
from priorshift.operators.base import LinearOperator, adjoint_error
from priorshift.operators.blur import GaussianBlur, gaussian_kernel
from priorshift.operators.ct import ParallelBeamCT, radon_matrix
from priorshift.operators.deepinv_adapter import DeepinvOperator
from priorshift.operators.downsample import Downsample
from priorshift.operators.identity import Identity
from priorshift.operators.inpainting import Inpainting
from priorshift.operators.masks import BlockMasks, box_mask, checkerboard_mask, random_block_mask, random_pixel_mask
from priorshift.operators.measure import back_project, measure
from priorshift.operators.mri import MRI, CartesianMasks, cartesian_mask

__all__ = [
    "LinearOperator",
    "adjoint_error",
    "make_operator",
    "Identity",
    "Inpainting",
    "GaussianBlur",
    "Downsample",
    "ParallelBeamCT",
    "MRI",
    "DeepinvOperator",
    "random_pixel_mask",
    "random_block_mask",
    "box_mask",
    "checkerboard_mask",
    "cartesian_mask",
    "BlockMasks",
    "CartesianMasks",
    "measure",
    "back_project",
    "gaussian_kernel",
    "radon_matrix",
]


def make_operator(name: str, **kwargs) -> LinearOperator:
    """The operator registered as ``name`` built with ``kwargs``, e.g. ``make_operator("ct", image_size=64, n_views=24)``.

    Unknown names raise a ``ValueError`` listing the registered ones.
    """
    return registry.get("operator", name)(**kwargs)
