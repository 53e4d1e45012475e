"""Denoiser wrappers: EDM preconditioning around a raw network, NFE counting, and the derived score."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from priorshift._checks import check_image, check_sigma

__all__ = ["score", "score_from_denoised", "EDMDenoiser", "CountingDenoiser", "as_counting"]


def score(denoiser, x: Tensor, sigma: Tensor) -> Tensor:
    """Tweedie's score of the noisy marginal: ``∇ log p_σ(x) = (D(x, σ) - x) / σ²``. ``sigma``: ``(B,)``."""
    return score_from_denoised(denoiser(x, sigma), x, sigma)


def score_from_denoised(x0_hat: Tensor, x: Tensor, sigma: Tensor | float) -> Tensor:
    """:func:`score` from a denoised estimate already at hand, ``x0_hat = D(x, σ)``: no network call.

    ``sigma``: ``(B,)`` per row, or one float for the whole batch.
    """
    if isinstance(sigma, Tensor):
        sigma = sigma.reshape(-1, *([1] * (x.ndim - 1)))
    return (x0_hat - x) / sigma**2


def to_model_range(x: Tensor, sigma: Tensor, data_range: Sequence[float]) -> tuple[Tensor, Tensor, float, float]:
    """Map library-range ([-1, 1]) inputs to a model trained on ``data_range = (lo, hi)``: ``x_m = a x + b``."""
    lo, hi = float(data_range[0]), float(data_range[1])
    a = (hi - lo) / 2.0
    b = (hi + lo) / 2.0
    return x * a + b, sigma * a, a, b


class EDMDenoiser(nn.Module):
    """EDM preconditioning (Karras et al. 2022, Table 1) of a raw network ``F(x_in, c_noise)``:

    ``D(x, σ) = c_skip x + c_out F(c_in x, c_noise)`` with ``c_skip = σ_d² / (σ² + σ_d²)``,
    ``c_out = σ σ_d / sqrt(σ² + σ_d²)``, ``c_in = 1 / sqrt(σ² + σ_d²)``, ``c_noise = ln(σ) / 4``.

    The network runs in its own dtype (float32); inputs of another dtype (e.g. float64 samplers) are cast
    in and the output cast back. ``data_range`` is the range the network was trained on; the library's
    [-1, 1] images are mapped to it and back here, nowhere else. ``image_size`` and ``channels`` (when known) are
    checked, and are where a prior's image shape is read from (``prior.image_size``: H = W in pixels, or ``None``).
    """

    def __init__(
        self,
        net: nn.Module,
        *,
        sigma_data: float = 0.5,
        sigma_min: float = 0.002,
        sigma_max: float = 80.0,
        data_range: Sequence[float] = (-1.0, 1.0),
        image_size: int | None = None,
        channels: int | None = None,
    ):
        super().__init__()
        self.net = net
        self.sigma_data = float(sigma_data)
        self.sigma_min = float(sigma_min)
        self.sigma_max = float(sigma_max)
        self.data_range = tuple(float(v) for v in data_range)
        self._image_size = image_size
        self._channels = channels

    @property
    def image_size(self) -> int | None:
        """The prior's image size (H = W, pixels), ``None`` when not known."""
        return self._image_size

    @property
    def channels(self) -> int | None:
        """The prior's image channels, ``None`` when not known."""
        return self._channels

    def forward(self, x: Tensor, sigma: Tensor, cond: Tensor | None = None) -> Tensor:
        """``D(x, σ)``; ``cond`` (optional): extra network inputs passed through unscaled (a patch network's
        coordinate channels, :mod:`priorshift.diffusion.patch`)."""
        size = None if self.image_size is None else (self.image_size, self.image_size)
        if size is not None and tuple(x.shape[-2:]) != size:
            raise ValueError(
                f"this prior was trained on {self.image_size}×{self.image_size} images; got {x.shape[-2]}×{x.shape[-1]} — resize the input or use a prior of that size"
            )
        check_image(x, "x", channels=self.channels)
        sigma = check_sigma(sigma, x.shape[0])
        dtype = next(self.net.parameters()).dtype
        xm, sm, a, b = to_model_range(x, sigma, self.data_range)
        xm, sm = xm.to(dtype), sm.to(dtype).clamp_min(1e-8)
        s = sm.reshape(-1, 1, 1, 1)
        sd2 = self.sigma_data**2
        c_skip = sd2 / (s**2 + sd2)
        c_out = s * self.sigma_data / (s**2 + sd2).sqrt()
        c_in = 1 / (s**2 + sd2).sqrt()
        c_noise = sm.log() / 4
        f = self.net(c_in * xm, c_noise) if cond is None else self.net(c_in * xm, c_noise, cond=cond.to(dtype))
        d = c_skip * xm + c_out * f
        return ((d - b) / a).to(x.dtype)


class CountingDenoiser:
    """Wraps a denoiser and counts network evaluations: ``nfe`` = image rows evaluated (one per row per
    call), ``nfe_grad`` = the subset evaluated with autograd enabled (they also cost a backward pass).
    Every other attribute is the wrapped denoiser's."""

    def __init__(self, denoiser):
        self.denoiser = denoiser
        self.nfe = 0
        self.nfe_grad = 0
        self.calls = 0

    def __call__(self, x: Tensor, sigma: Tensor) -> Tensor:
        self.calls += 1
        self.nfe += x.shape[0]
        if torch.is_grad_enabled() and x.requires_grad:
            self.nfe_grad += x.shape[0]
        return self.denoiser(x, sigma)

    def reset(self) -> None:
        self.nfe = self.nfe_grad = self.calls = 0

    def __getattr__(self, name):
        return getattr(self.__dict__["denoiser"], name)

    def __repr__(self) -> str:
        return f"CountingDenoiser({self.denoiser!r}, nfe={self.nfe})"


def as_counting(denoiser) -> CountingDenoiser:
    """``denoiser`` itself if it already counts, else a fresh :class:`CountingDenoiser` around it."""
    return denoiser if isinstance(denoiser, CountingDenoiser) else CountingDenoiser(denoiser)
