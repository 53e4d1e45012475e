"""Patch-based diffusion priors (PaDIS: Hu et al., "Learning Image Priors through Patch-based Diffusion Models
for Solving Inverse Problems", NeurIPS 2024, arXiv 2406.02462).

A patch prior is a denoiser of ``P × P`` patches that also sees where each patch lies: two extra input channels
hold the patch pixels' coordinates ``(x, y)`` (column, row) over the image zero-padded by ``pad`` on every side,
each in (−1, 1). :class:`PatchDenoiser` turns it into a whole-image denoiser ``D(x, σ)`` (the library's
``Denoiser`` protocol, so every sampler and detector takes it unchanged):

1. pad each image with ``pad_value`` (the data range's floor: air in CT) onto a canvas of ``(n + 1) P`` pixels a
   side (``n = ⌈H / P⌉``), the image placed at an offset ``(a, b) ∈ [0, P)²``;
2. cut the canvas into non-overlapping ``P × P`` patches, denoise all patches of all images in one batched call;
3. stitch the patches back and crop the image out.

Shifting the tiling at every noise level hides its seams (PaDIS's random shifts). Here the offset is a
pseudo-random function of ``(seed, σ)``: drawn afresh at each step of a schedule, yet ``D`` stays one fixed
function of ``(x, σ)`` — the property that finite-difference Jacobians (EigenScore), the same-noise comparisons of
measurement-domain KL and batch-size-independent results need. It never depends on the batch.

The padding is *clean*: training adds noise only to image pixels and takes the loss only there
(:func:`patch_training_batch`), and at inference the padding is exactly ``pad_value``, so the network learns the
image boundary from the coordinates and the known padding.

Coordinates are in units of the training canvas: an image pixel at relative position ``t = (u + ½) / H`` (row
or column index ``u``) has coordinate ``2 (t · S + pad) / (S + 2 pad) − 1`` where ``S`` is the training image size.
At ``H = S`` that is the pixel centre over the padded canvas; at other sizes (the same network on 128-px phantoms)
the body keeps its coordinates and patches cover a smaller part of it.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor, nn

from priorshift._checks import check_image, check_sigma

__all__ = ["PatchDenoiser", "patch_offsets", "patch_coordinates", "tile_patches", "untile_patches",
           "patch_training_batch"]


def patch_offsets(sigma: Tensor, patch_size: int, seed: int = 0) -> Tensor:
    """``(B, 2)`` long offsets ``(a, b) ∈ [0, P)²`` of the image on the tiling canvas, one per row of ``sigma``.

    Each offset is drawn from a generator seeded by ``(seed, bits of float64 σ_b)``: a fixed pseudo-random
    function of the noise level (and ``seed``), independent of the other rows of the batch.
    """
    sig = sigma.detach().to("cpu", torch.float64).reshape(-1)
    values, inverse = torch.unique(sig, return_inverse=True)
    bits = values.numpy().view(np.uint64)
    drawn = torch.tensor(np.stack([np.random.default_rng([int(seed), int(b)]).integers(0, patch_size, 2) for b in bits]),
                         dtype=torch.long)
    return drawn[inverse].to(sigma.device)


def patch_coordinates(u: Tensor, size: int, train_size: int, pad: int) -> Tensor:
    """Coordinates in (−1, 1) (training-canvas units, module docstring) of image indices ``u`` (any shape, may
    be negative or ≥ ``size`` in the padding) of an image ``size`` pixels a side."""
    t = (u.to(torch.float32) + 0.5) / size
    return 2 * (t * train_size + pad) / (train_size + 2 * pad) - 1


def tile_patches(x: Tensor, offsets: Tensor, patch_size: int, pad_value: float) -> tuple[Tensor, Tensor, Tensor]:
    """Place each image of ``x`` (B, C, H, W) on a padded canvas at its ``offsets`` (B, 2) and cut it into patches.

    Returns ``patches`` (B·n_r·n_c, C, P, P) (image-major, row-major over the tiles), and the image row and
    column index of every canvas pixel, ``rows`` (B, R) and ``cols`` (B, K) (R = n_r P, K = n_c P; padding pixels
    have indices outside [0, H) / [0, W)).
    """
    b, c, h, w = x.shape
    p = patch_size
    n_r, n_c = math.ceil(h / p) + 1, math.ceil(w / p) + 1
    rows = torch.arange(n_r * p, device=x.device)[None, :] - offsets[:, :1]  # (B, R) image row of each canvas row
    cols = torch.arange(n_c * p, device=x.device)[None, :] - offsets[:, 1:]
    inside = ((rows >= 0) & (rows < h))[:, :, None] & ((cols >= 0) & (cols < w))[:, None, :]  # (B, R, K)
    batch = torch.arange(b, device=x.device)[:, None, None]
    canvas = x[batch, :, rows.clamp(0, h - 1)[:, :, None], cols.clamp(0, w - 1)[:, None, :]]  # (B, R, K, C)
    canvas = torch.where(inside[..., None], canvas, torch.full((), pad_value, dtype=x.dtype, device=x.device))
    patches = canvas.reshape(b, n_r, p, n_c, p, c).permute(0, 1, 3, 5, 2, 4).reshape(b * n_r * n_c, c, p, p)
    return patches, rows, cols


def untile_patches(patches: Tensor, offsets: Tensor, shape: tuple[int, int, int, int]) -> Tensor:
    """Inverse of :func:`tile_patches`: stitch ``patches`` back onto each canvas and crop the (B, C, H, W) images."""
    b, c, h, w = shape
    p = patches.shape[-1]
    n_r, n_c = math.ceil(h / p) + 1, math.ceil(w / p) + 1
    canvas = patches.reshape(b, n_r, n_c, c, p, p).permute(0, 3, 1, 4, 2, 5).reshape(b, c, n_r * p, n_c * p)
    rows = torch.arange(h, device=patches.device)[None, :] + offsets[:, :1]  # (B, H) canvas row of each image row
    cols = torch.arange(w, device=patches.device)[None, :] + offsets[:, 1:]
    batch = torch.arange(b, device=patches.device)[:, None, None]
    return canvas[batch, :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)  # (B, C, H, W)


def _coordinate_channels(rows: Tensor, cols: Tensor, patch_size: int, size: tuple[int, int], train_size: int,
                         pad: int) -> Tensor:
    """The (x, y) coordinate channels of every patch of a tiling: (B·n_r·n_c, 2, P, P), the patches' order."""
    b, r = rows.shape
    k = cols.shape[1]
    p = patch_size
    y = patch_coordinates(rows, size[0], train_size, pad)[:, :, None].expand(b, r, k)
    x = patch_coordinates(cols, size[1], train_size, pad)[:, None, :].expand(b, r, k)
    grid = torch.stack([x, y], dim=1)  # (B, 2, R, K)
    return grid.reshape(b, 2, r // p, p, k // p, p).permute(0, 2, 4, 1, 3, 5).reshape(-1, 2, p, p)


class PatchDenoiser(nn.Module):
    """Whole-image denoiser ``D(x, σ)`` stitched from a patch denoiser (module docstring for the tiling).

    ``patch_denoiser(x_patches, sigma, cond=coords)`` denoises ``(N, C, P, P)`` patches at noise levels ``(N,)``
    given their coordinate channels ``(N, 2, P, P)`` (an :class:`~priorshift.diffusion.EDMDenoiser` around a
    network with two extra input channels is one). ``x``: ``(B, C, H, W)`` in the data range; ``sigma``: ``(B,)``.
    One ``D`` call costs one batched patch-network call over ``B · (⌈H/P⌉ + 1)²`` patches of ``P²`` pixels:
    ``(1 + P/H)²`` times the pixels of a whole-image network (2.25× at H = 64, P = 32; 1.56× at P = 16).

    ``image_size`` is the size this denoiser takes (``at_size`` gives one for another size, same network);
    ``train_size`` and ``pad`` fix the coordinates and must be those of training.
    """

    def __init__(self, patch_denoiser, *, patch_size: int, image_size: int, train_size: int, pad: int,
                 channels: int = 1, pad_value: float = -1.0, seed: int = 0):
        super().__init__()
        if not (1 <= int(patch_size) <= int(pad)):
            raise ValueError(f"patch_size must be in [1, pad = {pad}] (the coordinates cover the image padded by pad), got {patch_size}")
        self.patch_denoiser = patch_denoiser
        self.patch_size, self.image_size, self.train_size = int(patch_size), int(image_size), int(train_size)
        self.pad, self.channels, self.pad_value, self.seed = int(pad), int(channels), float(pad_value), int(seed)
        for name in ("sigma_min", "sigma_max", "sigma_data", "data_range"):
            if hasattr(patch_denoiser, name):
                setattr(self, name, getattr(patch_denoiser, name))

    @property
    def net(self) -> nn.Module:
        """The raw patch network (inside the patch denoiser's preconditioning)."""
        return self.patch_denoiser.net

    def at_size(self, image_size: int, patch_size: int | None = None) -> "PatchDenoiser":
        """The same network as a denoiser of ``image_size`` px images (coordinates keep the training canvas)."""
        return PatchDenoiser(self.patch_denoiser, patch_size=patch_size or self.patch_size, image_size=image_size,
                             train_size=self.train_size, pad=self.pad, channels=self.channels, pad_value=self.pad_value,
                             seed=self.seed)

    def forward(self, x: Tensor, sigma: Tensor) -> Tensor:
        check_image(x, "x", channels=self.channels, size=(self.image_size, self.image_size))
        sigma = check_sigma(sigma, x.shape[0])
        offsets = patch_offsets(sigma, self.patch_size, self.seed)
        patches, rows, cols = tile_patches(x, offsets, self.patch_size, self.pad_value)
        coords = _coordinate_channels(rows, cols, self.patch_size, tuple(x.shape[-2:]), self.train_size, self.pad)
        per_image = patches.shape[0] // x.shape[0]
        out = self.patch_denoiser(patches, sigma.repeat_interleave(per_image), cond=coords.to(x.dtype))
        return untile_patches(out, offsets, tuple(x.shape))

    def extra_repr(self) -> str:
        return (f"patch_size={self.patch_size}, image_size={self.image_size}, train_size={self.train_size}, "
                f"pad={self.pad}, pad_value={self.pad_value}, seed={self.seed}")


def patch_training_batch(images: Tensor, generator: torch.Generator, *, sizes=(16, 32), probs=(0.5, 0.5),
                         p_whole: float = 0.05, pad: int = 32, pad_value: float = -1.0) -> tuple[Tensor, Tensor, Tensor]:
    """One PaDIS training batch from ``images`` (B, C, S, S): a crop size ``Q`` drawn from ``sizes`` with
    ``probs`` (or, with probability ``p_whole``, the whole image, ``Q = S``), and per image a uniform ``Q × Q``
    crop of the image padded by ``pad``.

    Returns ``crops`` (B, C, Q, Q), their coordinate channels ``coords`` (B, 2, Q, Q) and ``inside`` (B, 1, Q, Q),
    1 on image pixels and 0 on padding (noise and loss go on image pixels only).
    """
    b, c, s, _ = images.shape
    if torch.rand((), generator=generator) < p_whole:
        q, offsets = s, torch.full((b, 2), 0, dtype=torch.long)  # the crop is the image itself
    else:
        q = int(sizes[int(torch.multinomial(torch.tensor(probs, dtype=torch.float64), 1, generator=generator))])
        if q > s + 2 * pad:
            raise ValueError(f"crop size {q} exceeds the padded image ({s} + 2·{pad})")
        # crop top-left on the padded canvas, as the image's offset inside a crop-sized window
        offsets = pad - torch.randint(0, s + 2 * pad - q + 1, (b, 2), generator=generator)
    rows = torch.arange(q)[None, :] - offsets[:, :1]
    cols = torch.arange(q)[None, :] - offsets[:, 1:]
    inside = ((rows >= 0) & (rows < s))[:, :, None] & ((cols >= 0) & (cols < s))[:, None, :]
    batch = torch.arange(b)[:, None, None]
    crops = images[batch, :, rows.clamp(0, s - 1)[:, :, None], cols.clamp(0, s - 1)[:, None, :]].permute(0, 3, 1, 2)
    inside = inside[:, None].to(images.dtype)
    crops = torch.where(inside.bool(), crops, torch.full((), pad_value, dtype=images.dtype))
    coords = _coordinate_channels(rows, cols, q, (s, s), s, pad)
    return crops, coords.to(images.dtype), inside
