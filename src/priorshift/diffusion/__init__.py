"""The diffusion core: denoiser wrappers and adapters, schedules, the small UNet, training and checkpoints.

Everything adapts to one protocol, ``D(x, sigma) -> x0_hat`` in VE form (:class:`priorshift.types.Denoiser`).
"""

from priorshift.diffusion.denoisers import CountingDenoiser, EDMDenoiser, as_counting, score, score_from_denoised
from priorshift.diffusion.schedules import ddpm_sigmas, schedule_for, karras_sigmas, sigmas_from_alphas_cumprod, ve_g, ve_sigmas, vp_sigmas
from priorshift.diffusion.unet import UNet, UNetConfig
from priorshift.diffusion.vp import VPDenoiser, from_diffusers

__all__ = [
    "score",
    "score_from_denoised",
    "EDMDenoiser",
    "CountingDenoiser",
    "as_counting",
    "VPDenoiser",
    "from_diffusers",
    "schedule_for",
    "karras_sigmas",
    "ve_sigmas",
    "vp_sigmas",
    "ddpm_sigmas",
    "sigmas_from_alphas_cumprod",
    "ve_g",
    "UNet",
    "UNetConfig",
    "load_prior",
]


def __getattr__(name):
    # Checkpoint loading is imported lazily (it reads the bundled manifest).
    if name == "load_prior":
        from priorshift.diffusion.checkpoint import load_prior

        return load_prior
    raise AttributeError(name)
