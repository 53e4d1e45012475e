"""Posterior samplers with one signature and one read-only per-step hook contract.

``sample_<name>(denoiser, operator, y, sigmas, *, samples=1, seed=None, hooks=(), stop_after=None,
**params) -> SampleResult`` with ``x0`` of shape (B, S, C, H, W). ``seed``: an int, one seed per
image, a ``torch.Generator`` or a :class:`priorshift.rng.PerImageGenerator` — image b's draws never
depend on the other images in the batch. ``stop_after=k`` runs only the first k steps (saving NFE) and
returns the denoised estimate there.
"""

from priorshift.samplers.dps import sample_dps
from priorshift.samplers.exact import sample_exact
from priorshift.samplers.hooks import ProgressBar, TraceRecorder, block_energy
from priorshift.samplers.langevin import sample_langevin
from priorshift.samplers.pigdm import sample_pigdm
from priorshift.samplers.plan import SamplingPlan
from priorshift.samplers.projection import sample_projection
from priorshift.samplers.unconditional import sample_unconditional

__all__ = [
    "SamplingPlan",
    "sample_unconditional",
    "sample_exact",
    "sample_dps",
    "sample_projection",
    "sample_pigdm",
    "sample_langevin",
    "TraceRecorder",
    "ProgressBar",
    "block_energy",
]
