"""A small UNet for 28–64 px priors: residual blocks, GroupNorm, a sinusoidal noise embedding, optional
self-attention at the lowest resolution. The raw network ``F(x_in, c_noise)``; wrap it with
:class:`priorshift.diffusion.EDMDenoiser` to get a denoiser ``D(x, sigma)``.

Sized for CPUs: a few hundred thousand to a few million parameters, most channels at low resolution.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as F

__all__ = ["UNetConfig", "UNet", "check_unet_config"]


@dataclass(frozen=True)
class UNetConfig:
    """Architecture of :class:`UNet` (stored in every checkpoint's JSON)."""

    image_size: int = 64
    channels: int = 1  # image channels in and out
    widths: tuple[int, ...] = (32, 64, 96, 128)  # channels per resolution level, finest first
    blocks_per_level: int = 1  # residual blocks per level, on the way down and on the way up
    attention: bool = True  # self-attention at the lowest resolution
    embedding_dim: int = 128
    groups: int = 8  # GroupNorm groups
    dropout: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "UNetConfig":
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        unknown = set(d) - set(known)
        if unknown:
            raise ValueError(f"unknown UNet config keys {sorted(unknown)}")
        if "widths" in known:
            known["widths"] = tuple(known["widths"])
        return cls(**known)


def check_unet_config(cfg: UNetConfig) -> UNetConfig:
    """Raise a ``ValueError`` unless :class:`UNet` can be built from ``cfg`` and trained on its image size
    (the UNet's part of ``Backbone.validate``, which checks ``image_size >= 8`` and ``channels >= 1`` first):
    ``image_size`` divisible by ``2^(levels - 1)`` leaving >= 2 pixels at the lowest level, positive widths that
    GroupNorm can split."""
    widths = tuple(cfg.widths)
    if not widths or any(isinstance(w, bool) or not isinstance(w, int) or w < 1 for w in widths):
        raise ValueError(f"widths must be positive integers, finest level first (e.g. 16,32,64), got {widths}")
    factor = 2 ** (len(widths) - 1)
    if cfg.image_size % factor:
        raise ValueError(f"image_size {cfg.image_size} must be divisible by {factor} for a UNet with {len(widths)} levels "
                         f"(widths {','.join(map(str, widths))}); use a multiple of {factor} or fewer levels")
    if cfg.image_size // factor < 2:
        raise ValueError(f"image_size {cfg.image_size} leaves {cfg.image_size // factor}×{cfg.image_size // factor} pixels at the "
                         f"lowest of {len(widths)} levels; use fewer levels or larger images")
    bad = [w for w in widths if w % min(cfg.groups, w)]
    if bad:
        raise ValueError(f"widths {bad} are not divisible by the {cfg.groups} GroupNorm groups; use multiples of {cfg.groups}")
    return cfg

def _norm(channels: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(groups, channels), channels)


class NoiseEmbedding(nn.Module):
    """Sinusoidal features of the scalar noise input ``c_noise``, then a 2-layer MLP."""

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim
        self.mlp = nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, c_noise: Tensor) -> Tensor:
        half = self.dim // 2
        freqs = torch.exp(-math.log(10_000) * torch.arange(half, device=c_noise.device, dtype=torch.float32) / half)
        angles = 1000.0 * c_noise.float()[:, None] * freqs[None] / 4.0
        return self.mlp(torch.cat([angles.cos(), angles.sin()], dim=1))


class ResBlock(nn.Module):
    """GroupNorm → SiLU → conv, FiLM by the noise embedding, GroupNorm → SiLU → dropout → conv, plus skip."""

    def __init__(self, c_in: int, c_out: int, emb_dim: int, groups: int, dropout: float):
        super().__init__()
        self.norm1 = _norm(c_in, groups)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.film = nn.Linear(emb_dim, 2 * c_out)
        self.norm2 = _norm(c_out, groups)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.film(emb)[:, :, None, None].chunk(2, dim=1)
        h = F.silu(self.norm2(h) * (1 + scale) + shift)
        h = self.conv2(self.dropout(h))
        return self.skip(x) + h


class Attention(nn.Module):
    """Single-head self-attention over the pixels of a low-resolution feature map."""

    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.norm = _norm(channels, groups)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.out = nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, c, h * w).unbind(1)
        # Plain softmax attention (no fused SDPA kernel) so double-backward and forward-mode AD both work.
        weights = torch.softmax(q.transpose(1, 2) @ k / math.sqrt(c), dim=-1)  # (b, hw, hw)
        h_ = (v @ weights.transpose(1, 2)).reshape(b, c, h, w)
        return x + self.out(h_)


class UNet(nn.Module):
    """``F(x_in, c_noise) -> (B, C, H, W)``: the raw network inside EDM preconditioning."""

    def __init__(self, config: UNetConfig = UNetConfig()):
        super().__init__()
        self.config = config
        cfg = config
        if cfg.image_size % (2 ** (len(cfg.widths) - 1)):
            raise ValueError(f"image_size {cfg.image_size} must be divisible by 2^{len(cfg.widths) - 1} for {len(cfg.widths)} levels")
        emb = cfg.embedding_dim
        self.embed = NoiseEmbedding(emb)
        self.stem = nn.Conv2d(cfg.channels, cfg.widths[0], 3, padding=1)

        self.down = nn.ModuleList()
        self.downsample = nn.ModuleList()
        skip_widths = []
        c = cfg.widths[0]
        for level, width in enumerate(cfg.widths):
            blocks = nn.ModuleList()
            for _ in range(cfg.blocks_per_level):
                blocks.append(ResBlock(c, width, emb, cfg.groups, cfg.dropout))
                c = width
                skip_widths.append(c)
            self.down.append(blocks)
            last = level == len(cfg.widths) - 1
            self.downsample.append(nn.Identity() if last else nn.Conv2d(c, c, 3, stride=2, padding=1))

        self.mid1 = ResBlock(c, c, emb, cfg.groups, cfg.dropout)
        self.mid_attn = Attention(c, cfg.groups) if cfg.attention else nn.Identity()
        self.mid2 = ResBlock(c, c, emb, cfg.groups, cfg.dropout)

        self.up = nn.ModuleList()
        self.upsample = nn.ModuleList()
        for level, width in reversed(list(enumerate(cfg.widths))):
            blocks = nn.ModuleList()
            for _ in range(cfg.blocks_per_level):
                blocks.append(ResBlock(c + skip_widths.pop(), width, emb, cfg.groups, cfg.dropout))
                c = width
            self.up.append(blocks)
            self.upsample.append(nn.Conv2d(c, cfg.widths[level - 1], 3, padding=1) if level > 0 else nn.Identity())
            if level > 0:
                c = cfg.widths[level - 1]
        self.head = nn.Sequential(_norm(c, cfg.groups), nn.SiLU(), nn.Conv2d(c, cfg.channels, 3, padding=1))
        nn.init.zeros_(self.head[-1].weight)
        nn.init.zeros_(self.head[-1].bias)

    def forward(self, x: Tensor, c_noise: Tensor) -> Tensor:
        emb = self.embed(c_noise)
        h = self.stem(x)
        skips = []
        for blocks, down in zip(self.down, self.downsample):
            for block in blocks:
                h = block(h, emb)
                skips.append(h)
            h = down(h)
        h = self.mid2(self.mid_attn(self.mid1(h, emb)), emb)
        for blocks, up in zip(self.up, self.upsample):
            for block in blocks:
                h = block(torch.cat([h, skips.pop()], dim=1), emb)
            if not isinstance(up, nn.Identity):
                h = up(F.interpolate(h, scale_factor=2.0, mode="nearest"))
        return self.head(h)
