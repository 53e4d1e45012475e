"""Adapters from variance-preserving (DDPM) models to the VE denoiser protocol ``D(x, σ)``.

A DDPM ε-model sees ``x_t = sqrt(ᾱ_t) x0 + sqrt(1 - ᾱ_t) ε``. Dividing by ``sqrt(ᾱ_t)`` gives the VE form
``x = x0 + σ_t ε`` with ``σ_t = sqrt((1 - ᾱ_t)/ᾱ_t)``. So for a VE input ``x`` at level ``σ``:
``x_t = x / sqrt(1 + σ²)`` (since ``ᾱ = 1 / (1 + σ²)``), and ``D(x, σ) = x - σ ε(x_t, t(σ))``.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import Tensor

from priorshift._checks import check_image, check_sigma
from priorshift.diffusion.denoisers import to_model_range
from priorshift.diffusion.schedules import sigmas_from_alphas_cumprod

__all__ = ["VPDenoiser", "from_diffusers"]


class VPDenoiser:
    """``D(x, σ)`` from a discrete-time VP model ``model(x_t, t)`` trained with ``alphas_cumprod`` (T,).

    ``prediction_type``: ``"epsilon"`` (ε), ``"v_prediction"`` (v = sqrt(ᾱ) ε - sqrt(1-ᾱ) x0) or ``"sample"`` (x0).
    ``timestep``: ``"interpolate"`` passes the fractional timestep whose σ (interpolated in log σ) equals the
    input σ — exact for any σ in range; ``"nearest"`` passes the integer timestep with the closest σ — exact
    on the model's own grid (use :func:`priorshift.diffusion.ddpm_sigmas` to sample on it).
    ``data_range``: the range the model was trained on (diffusers models: (-1, 1)). ``betas``: the scheduler's
    ``β_t`` (T,), optional and kept as ``self.betas`` (float64); only KLIP's official DDPM weight reads them.
    ``model`` receives ``x_t`` in the input's dtype and ``t`` as a float tensor of that dtype (interpolate)
    or a long tensor (nearest); it must return a tensor shaped like ``x_t``.
    """

    def __init__(
        self,
        model: Callable[[Tensor, Tensor], Tensor],
        alphas_cumprod,
        *,
        prediction_type: str = "epsilon",
        timestep: str = "interpolate",
        data_range: Sequence[float] = (-1.0, 1.0),
        betas=None,
    ):
        if prediction_type not in ("epsilon", "v_prediction", "sample"):
            raise ValueError(f"unknown prediction_type {prediction_type!r}; choose epsilon, v_prediction or sample")
        if timestep not in ("interpolate", "nearest"):
            raise ValueError(f"unknown timestep mode {timestep!r}; choose interpolate or nearest")
        self.model = model
        self.sigmas = sigmas_from_alphas_cumprod(alphas_cumprod)  # float64, ascending in t
        if not bool((self.sigmas[1:] > self.sigmas[:-1]).all()):
            raise ValueError("alphas_cumprod must be strictly decreasing")
        self.log_sigmas = self.sigmas.log()
        self.betas = None if betas is None else torch.as_tensor(betas, dtype=torch.float64).cpu()
        if self.betas is not None and self.betas.shape != self.sigmas.shape:
            raise ValueError(f"betas has shape {tuple(self.betas.shape)}, alphas_cumprod {tuple(self.sigmas.shape)}; give one of each per timestep")
        self.prediction_type = prediction_type
        self.timestep = timestep
        self.data_range = tuple(float(v) for v in data_range)
        self.sigma_min = float(self.sigmas[0]) / ((self.data_range[1] - self.data_range[0]) / 2)
        self.sigma_max = float(self.sigmas[-1]) / ((self.data_range[1] - self.data_range[0]) / 2)

    def sigma_to_t(self, sigma: Tensor) -> Tensor:
        """Timestep(s) for noise level(s) ``sigma`` (model-range units): fractional or nearest integer."""
        log_sigma = sigma.to(torch.float64).log().clamp(self.log_sigmas[0], self.log_sigmas[-1])
        ls = self.log_sigmas.to(log_sigma.device)
        if self.timestep == "nearest":
            return (log_sigma[:, None] - ls[None]).abs().argmin(dim=1)
        hi = torch.searchsorted(ls, log_sigma).clamp(1, ls.numel() - 1)
        lo = hi - 1
        w = (log_sigma - ls[lo]) / (ls[hi] - ls[lo])
        return lo.to(torch.float64) + w

    def __call__(self, x: Tensor, sigma: Tensor) -> Tensor:
        check_image(x, "x")
        sigma = check_sigma(sigma, x.shape[0])
        xm, sm, a, b = to_model_range(x, sigma, self.data_range)
        t = self.sigma_to_t(sm)
        s = sm.reshape(-1, 1, 1, 1)
        scale = 1 / torch.sqrt(1 + s**2)  # sqrt(ᾱ)
        x_t = xm * scale
        out = self.model(x_t, t.to(x_t.dtype) if self.timestep == "interpolate" else t).to(x.dtype)
        if self.prediction_type == "epsilon":
            d = xm - s * out
        elif self.prediction_type == "v_prediction":
            # x0 = sqrt(ᾱ) x_t - sqrt(1 - ᾱ) v
            d = scale * x_t - (s * scale) * out
        else:
            d = out
        return (d - b) / a


def from_diffusers(unet, scheduler, *, timestep: str = "interpolate", data_range: Sequence[float] = (-1.0, 1.0)) -> VPDenoiser:
    """Wrap a diffusers ``UNet2DModel`` and its ``DDPMScheduler`` (or any scheduler with ``alphas_cumprod``)."""
    prediction_type = getattr(getattr(scheduler, "config", None), "prediction_type", "epsilon")

    def model(x_t: Tensor, t: Tensor) -> Tensor:
        # The UNet runs in its own dtype; fractional timesteps go through its sinusoidal embedding as floats.
        t = t.to(unet.dtype) if t.is_floating_point() else t
        return unet(x_t.to(unet.dtype), t).sample

    return VPDenoiser(model, scheduler.alphas_cumprod, prediction_type=prediction_type, timestep=timestep, data_range=data_range,
                      betas=getattr(scheduler, "betas", None))
