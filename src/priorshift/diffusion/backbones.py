"""Prior backbones: the raw networks inside EDM preconditioning, registered by name under the kind ``"backbone"``.

:func:`~priorshift.diffusion.checkpoint.load_prior` builds the network its JSON names (``"architecture"``; priors
written before there was a choice are ``"unet"``), :func:`~priorshift.diffusion.training.train` the one
``TrainConfig.backbone`` names, and ``priorshift train --init`` the one of the prior it starts from. A new backbone
is its module, one line at the end of this file and its test::

    register("backbone", "my-unet")(Backbone(MyConfig, MyNet, check=check_my_config))

What a backbone provides (:class:`Backbone`):

- ``config``: a dataclass with at least ``image_size`` (H = W, pixels) and ``channels`` (image channels in and out;
  inputs a backbone adds itself, e.g. coordinate channels, are not counted). It is stored in the prior's JSON under
  the backbone's name (``"unet": {...}``) and read back with its ``from_dict`` classmethod when it has one, else from
  its fields (unknown keys refused, lists read as tuples).
- ``network(config) -> nn.Module``: the raw network ``F(x_in, c_noise) -> (B, C, H, W)`` for ``x_in`` of shape
  ``(B, C, H, W)`` and ``c_noise = ln(σ) / 4`` of shape ``(B,)``, keeping its config as ``net.config``.
- ``check(config)`` (optional): raise a ``ValueError`` naming the first setting the network cannot be built or
  trained with; run by ``TrainConfig.validate`` after the checks every backbone gets (:data:`MIN_IMAGE_SIZE`).
- ``denoiser(edm, config)`` (optional): the whole-image denoiser ``D(x, σ)`` from the EDM-preconditioned network
  ``edm`` (default: ``edm`` itself, checking the image size). A patch network is tiled here.
- ``training_batch(config, images, generator)`` (optional): what one training step fits, ``(x0, cond, inside)``:
  the targets, extra network inputs (``None``) and the pixels that get noise and loss (``None``: all). Default:
  the images themselves.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, is_dataclass
from typing import Any, Callable

import torch
from torch import Tensor, nn

from priorshift.diffusion import patch_unet
from priorshift.diffusion.denoisers import EDMDenoiser
from priorshift.diffusion.unet import UNet, UNetConfig, check_unet_config
from priorshift.registry import get, names, register

__all__ = ["Backbone", "get_backbone", "backbone_of", "MIN_IMAGE_SIZE"]

MIN_IMAGE_SIZE = 8  # the smallest image a prior is trained on
# Keys of a prior's JSON that a backbone's config (stored under the backbone's name) must not overwrite.
_RESERVED = {"name", "format", "architecture", "preconditioning", "data_range", "training", "dataset", "command", "init",
             "weights_dtype", "weights_sha256", "adaptation", "adapted_from", "backbone", "network"}


def _check_int(name: str, value, lo: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < lo:
        raise ValueError(f"{name} must be an integer >= {lo}, got {value!r}")


@dataclass(frozen=True)
class Backbone:
    """One registered backbone: its config dataclass, the network factory and its optional training check."""

    config: type
    network: Callable[[Any], nn.Module]
    check: Callable[[Any], Any] | None = None
    denoiser: Callable[[Any, Any], nn.Module] | None = None
    training_batch: Callable[[Any, Any, Any], tuple] | None = None

    def __post_init__(self):
        have = {f.name for f in fields(self.config)} if is_dataclass(self.config) else set()
        if not {"image_size", "channels"} <= have:
            raise TypeError(f"a backbone's config must be a dataclass with image_size and channels fields; got {self.config!r}")

    def from_dict(self, d: dict):
        """The config from its JSON form (``TypeError``/``ValueError`` on unknown or bad keys)."""
        if hasattr(self.config, "from_dict"):
            return self.config.from_dict(d)
        known = {f.name for f in fields(self.config)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown {self.config.__name__} keys {unknown}")
        return self.config(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})

    def to_dict(self, cfg) -> dict:
        """The config's JSON form."""
        return cfg.to_dict() if hasattr(cfg, "to_dict") else asdict(cfg)

    def validate(self, cfg):
        """``cfg`` if a network can be built from it and trained; else a ``ValueError`` naming the bad setting."""
        if not isinstance(cfg, self.config):
            raise ValueError(f"the network config must be a {self.config.__name__}, got {type(cfg).__name__}")
        _check_int("image_size", cfg.image_size, MIN_IMAGE_SIZE)
        _check_int("channels", cfg.channels, 1)
        if self.check is not None:
            self.check(cfg)
        return cfg

    def build(self, cfg) -> nn.Module:
        """The raw network for ``cfg`` (a fresh, randomly initialised module; seed around the call)."""
        net = self.network(cfg)
        if getattr(net, "config", None) != cfg:
            raise TypeError(f"{type(net).__name__} must keep its config as net.config (a backbone's network is rebuilt from it)")
        return net

    def whole_image_denoiser(self, net: nn.Module, cfg, **preconditioning) -> nn.Module:
        """``D(x, σ)`` of whole images from the raw network: EDM preconditioning (``preconditioning``: the
        :class:`EDMDenoiser` keywords), then the backbone's ``denoiser`` (e.g. patch tiling) when it has one."""
        if self.denoiser is None:
            return EDMDenoiser(net, image_size=cfg.image_size, channels=cfg.channels, **preconditioning)
        return self.denoiser(EDMDenoiser(net, channels=cfg.channels, **preconditioning), cfg)

    def batch(self, cfg, images: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """One training step's ``(x0, cond, inside)`` from a batch of training images (module docstring)."""
        if self.training_batch is None:
            return images, None, None
        return self.training_batch(cfg, images, generator)


def get_backbone(name: str) -> Backbone:
    """The backbone registered as ``name``; a ``ValueError`` listing the registered ones otherwise."""
    if name in _RESERVED:
        raise ValueError(f"{name!r} cannot name a backbone: it is a key of the prior's JSON")
    return get("backbone", name)


def backbone_of(net: nn.Module) -> str:
    """The registered name of the backbone ``net`` was built by (found by the type of ``net.config``)."""
    cfg = getattr(net, "config", None)
    found = [n for n in names("backbone") if type(cfg) is get("backbone", n).config]
    if len(found) != 1:
        what = "no registered backbone" if not found else f"several backbones ({', '.join(found)})"
        raise ValueError(f"{type(net).__name__} (config {type(cfg).__name__}) matches {what}; registered: {', '.join(names('backbone'))} — "
                         "say which with the prior config's 'architecture'")
    return found[0]


# -- the registered backbones, one line each --------------------------------------------------------------------
register("backbone", "unet")(Backbone(UNetConfig, UNet, check=check_unet_config))
register("backbone", "patch-unet")(Backbone(patch_unet.PatchUNetConfig, patch_unet.PatchUNet, check=patch_unet.check_patch_unet_config,
                                            denoiser=patch_unet.patch_denoiser, training_batch=patch_unet.training_batch))
