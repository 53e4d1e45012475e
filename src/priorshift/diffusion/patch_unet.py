"""The PaDIS patch network (Hu et al., NeurIPS 2024): the small :class:`~priorshift.diffusion.unet.UNet` with two
extra input channels holding each pixel's (x, y) coordinates over the padded canvas, trained on random crops.

Registered as the backbone ``"patch-unet"``: its config carries the UNet's architecture plus the patch geometry
(crop sizes for training, the tile size for inference, the coordinate padding), so a trained prior is one file
that :func:`~priorshift.diffusion.checkpoint.load_prior` turns into a whole-image
:class:`~priorshift.diffusion.patch.PatchDenoiser`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from priorshift.diffusion.patch import PatchDenoiser, patch_training_batch
from priorshift.diffusion.unet import UNet, UNetConfig, check_unet_config

__all__ = ["PatchUNetConfig", "PatchUNet", "check_patch_unet_config"]

COORD_CHANNELS = 2


@dataclass(frozen=True)
class PatchUNetConfig(UNetConfig):
    """:class:`UNetConfig` plus the patch geometry. ``image_size`` is the training images' size (whole images are
    a crop size too); ``patch_size`` the tile of the whole-image denoiser; ``pad`` the zero-padding the coordinates
    are measured over (>= every crop and tile size); ``pad_value`` the padding's intensity in [-1, 1]."""

    widths: tuple[int, ...] = (32, 64, 128)
    patch_size: int = 32
    pad: int = 32
    crop_sizes: tuple[int, ...] = (16, 32)
    crop_probs: tuple[float, ...] = (0.5, 0.5)
    p_whole: float = 0.05
    pad_value: float = -1.0

    @classmethod
    def from_dict(cls, d: dict) -> "PatchUNetConfig":
        d = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown PatchUNet config keys {sorted(unknown)}")
        return cls(**d)


def check_patch_unet_config(cfg: PatchUNetConfig) -> PatchUNetConfig:
    """A ``ValueError`` naming the first setting a :class:`PatchUNet` cannot be trained or tiled with."""
    check_unet_config(cfg)  # the whole image is one crop size: the UNet's size rules hold for it
    factor = 2 ** (len(cfg.widths) - 1)
    sizes = tuple(cfg.crop_sizes)
    if not sizes or len(sizes) != len(cfg.crop_probs):
        raise ValueError(f"crop_sizes {sizes} and crop_probs {tuple(cfg.crop_probs)} must be non-empty and of one length")
    for q in (*sizes, cfg.patch_size):
        if isinstance(q, bool) or not isinstance(q, int) or q < 2 * factor or q % factor:
            raise ValueError(f"crop and patch sizes must be multiples of {factor} of at least {2 * factor} px for {len(cfg.widths)} levels; got {q}")
        if q > cfg.pad:
            raise ValueError(f"crop/patch size {q} exceeds pad {cfg.pad}: the coordinates cover the image padded by pad; raise pad")
    if any(p < 0 for p in cfg.crop_probs) or abs(sum(cfg.crop_probs) - 1) > 1e-6:
        raise ValueError(f"crop_probs must be non-negative and sum to 1, got {tuple(cfg.crop_probs)}")
    if not 0 <= cfg.p_whole <= 1:
        raise ValueError(f"p_whole must be in [0, 1], got {cfg.p_whole}")
    if not -1 <= cfg.pad_value <= 1:
        raise ValueError(f"pad_value must be in [-1, 1], got {cfg.pad_value}")
    return cfg


class PatchUNet(UNet):
    """``F(x_in, c_noise, cond) -> (B, C, h, w)`` on patches of any size the UNet's levels allow; ``cond``:
    the (B, 2, h, w) coordinate channels (``None``: zeros, the canvas centre)."""

    def __init__(self, config: PatchUNetConfig = PatchUNetConfig()):
        super().__init__(config)
        self.stem = nn.Conv2d(config.channels + COORD_CHANNELS, config.widths[0], 3, padding=1)

    def forward(self, x: Tensor, c_noise: Tensor, cond: Tensor | None = None) -> Tensor:
        if cond is None:
            cond = x.new_zeros(x.shape[0], COORD_CHANNELS, *x.shape[-2:])
        return super().forward(torch.cat([x, cond.to(x.dtype)], dim=1), c_noise)


def patch_denoiser(edm, cfg: PatchUNetConfig) -> PatchDenoiser:
    """The whole-image denoiser of a trained patch network (``edm``: its EDM-preconditioned patch denoiser)."""
    return PatchDenoiser(edm, patch_size=cfg.patch_size, image_size=cfg.image_size, train_size=cfg.image_size, pad=cfg.pad,
                         channels=cfg.channels, pad_value=cfg.pad_value)


def training_batch(cfg: PatchUNetConfig, images: Tensor, generator: torch.Generator):
    """PaDIS crops of ``images`` for one training step: ``(crops, coords, inside)``."""
    return patch_training_batch(images, generator, sizes=cfg.crop_sizes, probs=cfg.crop_probs, p_whole=cfg.p_whole,
                                pad=cfg.pad, pad_value=cfg.pad_value)
