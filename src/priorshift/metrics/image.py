"""Image-quality metrics in pure torch: PSNR, SSIM (and its map), and LPIPS when its weights are on disk.

Images are ``(B, C, H, W)`` float tensors in **[-1, 1]** (priorshift's convention), hence the default
``data_range = 2.0`` (max − min of the valid range). Every metric returns one value per image, ``(B,)``, on the
input's device and dtype (half precision is computed in float32 and cast back).

These are similarities/qualities (higher = closer to ``ref``), not OOD scores; a detector that uses them as a
distance must flip the sign (e.g. ``1 - ssim``) to follow "higher = more shifted".
"""

from __future__ import annotations

import functools
import importlib.util
import math
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from .._checks import check_image

__all__ = ["psnr", "ssim", "ssim_map", "lpips_available", "lpips_distance"]

K1, K2 = 0.01, 0.03  # Wang et al. 2004


def _pair(x, ref) -> tuple[Tensor, Tensor]:
    check_image(x, "x")
    check_image(ref, "ref")
    if x.shape != ref.shape:
        raise ValueError(f"x and ref must have the same shape, got {tuple(x.shape)} and {tuple(ref.shape)}")
    if x.is_complex() or ref.is_complex():
        raise ValueError("x and ref must be real-valued images")
    return x, ref


def _check_range(data_range) -> float:
    data_range = float(data_range)
    if not (data_range > 0 and math.isfinite(data_range)):
        raise ValueError(f"data_range must be a positive number (2.0 for [-1, 1] images), got {data_range}")
    return data_range


def psnr(x: Tensor, ref: Tensor, data_range: float = 2.0) -> Tensor:
    """Peak signal-to-noise ratio per image, in dB: ``10 log10(data_range² / MSE)``.

    ``MSE`` is the mean squared difference over ``C, H, W`` of each image. ``x``, ``ref``: ``(B, C, H, W)``;
    returns ``(B,)``; ``+inf`` for identical images.
    """
    x, ref = _pair(x, ref)
    data_range = _check_range(data_range)
    mse = (x - ref).pow(2).flatten(1).mean(dim=1)
    return 10.0 * torch.log10(data_range**2 / mse)


def _gaussian_1d(window: int, sigma: float, dtype, device) -> Tensor:
    r = torch.arange(window, dtype=torch.float64, device=device) - (window - 1) / 2
    k = torch.exp(-0.5 * (r / sigma) ** 2)
    return (k / k.sum()).to(dtype)


def _symmetric_pad(x: Tensor, p: int) -> Tensor:
    """Pad H and W by ``p`` with half-sample symmetry ``(c b a | a b c | c b a)`` — numpy ``'symmetric'``,
    scipy.ndimage ``'reflect'`` (what scikit-image's SSIM filters use). torch's ``'reflect'`` is different
    (``c b | a b c``), hence the index gather."""

    def idx(n: int) -> Tensor:
        i = torch.arange(-p, n + p, device=x.device)
        i = torch.where(i < 0, -i - 1, i)
        return torch.where(i >= n, 2 * n - 1 - i, i)

    H, W = x.shape[-2:]
    return x.index_select(-2, idx(H)).index_select(-1, idx(W))


def _filter(x: Tensor, k: Tensor) -> Tensor:
    """Separable 'valid' Gaussian filtering of each channel of ``x`` (N, C, H, W)."""
    C = x.shape[1]
    w = k.numel()
    x = F.conv2d(x, k.view(1, 1, w, 1).expand(C, 1, w, 1), groups=C)
    return F.conv2d(x, k.view(1, 1, 1, w).expand(C, 1, 1, w), groups=C)


def ssim_map(
    x: Tensor,
    ref: Tensor,
    data_range: float = 2.0,
    window: int = 11,
    sigma: float = 1.5,
    padding: Literal["valid", "same"] = "valid",
) -> Tensor:
    """Local SSIM (Wang et al. 2004) per channel and pixel.

    ``SSIM = (2 μx μy + C1)(2 σxy + C2) / ((μx² + μy² + C1)(σx² + σy² + C2))`` with ``C1 = (K1 L)²``,
    ``C2 = (K2 L)²``, ``K1 = 0.01``, ``K2 = 0.03``, ``L = data_range``; local means, variances and covariance are
    Gaussian-weighted (``window × window``, standard deviation ``sigma``, weights summing to 1; population
    (biased) moments, i.e. skimage's ``use_sample_covariance=False``).

    ``padding="valid"`` (default): only windows that lie inside the image — ``(B, C, H - window + 1,
    W - window + 1)``. ``padding="same"``: ``(B, C, H, W)``, the image extended by half-sample symmetric
    reflection at the borders, exactly like scikit-image's ``structural_similarity(..., full=True)`` map.
    Requires ``H, W >= window``; ``window`` odd. With ``sigma = 1.5``, ``window = 11`` is scikit-image's
    Gaussian window (truncate 3.5); ``window = 7`` truncates it at 2σ.
    """
    x, ref = _pair(x, ref)
    data_range = _check_range(data_range)
    if isinstance(window, bool) or not isinstance(window, int) or window < 1 or window % 2 == 0:
        raise ValueError(f"window must be an odd positive integer (7 or 11 are usual), got {window!r}")
    if not (float(sigma) > 0):
        raise ValueError(f"sigma must be positive, got {sigma}")
    H, W = x.shape[-2:]
    if H < window or W < window:
        raise ValueError(f"images of size {H}x{W} are smaller than the SSIM window {window}x{window}")
    if padding not in ("valid", "same"):
        raise ValueError(f"padding must be 'valid' or 'same', got {padding!r}")

    out_dtype = x.dtype
    work = torch.promote_types(out_dtype, torch.float32)
    x, ref = x.to(work), ref.to(work)
    if padding == "same":
        x, ref = _symmetric_pad(x, window // 2), _symmetric_pad(ref, window // 2)
    k = _gaussian_1d(window, float(sigma), work, x.device)
    B, C = x.shape[:2]
    stats = _filter(torch.cat([x, ref, x * x, ref * ref, x * ref], dim=1), k)  # (B, 5C, h, w)
    mu_x, mu_y, xx, yy, xy = stats.split(C, dim=1)
    var_x = xx - mu_x * mu_x
    var_y = yy - mu_y * mu_y
    cov = xy - mu_x * mu_y
    c1 = (K1 * data_range) ** 2
    c2 = (K2 * data_range) ** 2
    num = (2 * mu_x * mu_y + c1) * (2 * cov + c2)
    den = (mu_x * mu_x + mu_y * mu_y + c1) * (var_x + var_y + c2)
    return (num / den).to(out_dtype)


def ssim(x: Tensor, ref: Tensor, data_range: float = 2.0, window: int = 11, sigma: float = 1.5) -> Tensor:
    """Mean SSIM per image, ``(B,)``: the mean of :func:`ssim_map` (``padding="valid"``) over channels and pixels.

    This equals ``skimage.metrics.structural_similarity(x, ref, gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False, data_range=data_range)`` (per channel, averaged over channels — skimage's
    ``channel_axis`` behaviour) to float64 rounding: skimage filters the whole image with reflect padding but
    then averages the map only after cropping ``(win - 1) / 2`` pixels at every border, i.e. over exactly the
    windows that lie inside the image, which is what the valid map contains. Border handling therefore does not
    enter the mean.

    Reference: Wang, Bovik, Sheikh, Simoncelli, "Image quality assessment: from error visibility to structural
    similarity", IEEE Trans. Image Processing 13(4), 2004.
    """
    return ssim_map(x, ref, data_range, window, sigma, padding="valid").flatten(1).mean(dim=1)


# ----------------------------------------------------------------------------------------------------------------
# LPIPS (optional, offline only)
# ----------------------------------------------------------------------------------------------------------------

ALEXNET_CHECKPOINT = "alexnet-owt-7be5be79.pth"


def _alexnet_path() -> Path:
    # torch.hub.get_dir() = $TORCH_HOME/hub (default ~/.cache/torch/hub, honouring $XDG_CACHE_HOME); it only
    # reads the environment — it creates and downloads nothing.
    return Path(torch.hub.get_dir()) / "checkpoints" / ALEXNET_CHECKPOINT


def _lpips_missing() -> str | None:
    """Why LPIPS cannot run here, or None when it can."""
    if importlib.util.find_spec("lpips") is None:
        return "the 'lpips' package is not installed (pip install 'priorshift[lpips]', which needs torchvision)"
    if importlib.util.find_spec("torchvision") is None:
        return "the 'lpips' package needs torchvision, which is not installed"
    path = _alexnet_path()
    if not path.is_file():
        return (
            f"its AlexNet backbone weights are not on disk: expected {path}. Copy '{ALEXNET_CHECKPOINT}' "
            "(torchvision's ImageNet AlexNet, https://download.pytorch.org/models/alexnet-owt-7be5be79.pth, fetched "
            "on a machine with network access) into that folder, or point $TORCH_HOME at a directory whose "
            "hub/checkpoints/ holds it. priorshift never downloads it"
        )
    return None


def lpips_available() -> bool:
    """True when :func:`lpips_distance` can run offline: ``lpips`` and torchvision are importable and
    ``alexnet-owt-7be5be79.pth`` is in ``$TORCH_HOME/hub/checkpoints``. Checks files only; builds nothing."""
    return _lpips_missing() is None


@functools.lru_cache(maxsize=1)
def _lpips_model():
    import lpips  # noqa: PLC0415 — optional dependency

    model = lpips.LPIPS(net="alex", verbose=False)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def lpips_distance(x: Tensor, ref: Tensor) -> Tensor:
    """LPIPS distance (Zhang et al., CVPR 2018; AlexNet backbone, v0.1 linear heads) per image, ``(B,)``.

    ``x``, ``ref``: ``(B, C, H, W)`` in [-1, 1] (LPIPS's own input convention), ``C`` = 1 (repeated to RGB) or 3.
    Lower = more similar. The availability check happens before anything is constructed, so a missing backbone
    file raises ``RuntimeError`` (with instructions) instead of triggering a download.
    """
    why = _lpips_missing()
    if why is not None:
        raise RuntimeError(f"LPIPS is unavailable: {why}. Use ssim/psnr instead (see lpips_available()).")
    x, ref = _pair(x, ref)
    if x.shape[1] not in (1, 3):
        raise ValueError(f"LPIPS needs 1- or 3-channel images, got {x.shape[1]} channels")
    if x.shape[1] == 1:
        x, ref = x.expand(-1, 3, -1, -1), ref.expand(-1, 3, -1, -1)
    model = _lpips_model().to(x.device)
    with torch.no_grad():
        d = model(x.float(), ref.float())
    return d.flatten(1).mean(dim=1).to(x.dtype)
