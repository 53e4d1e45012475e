"""KLIP's ``official`` preset: the numbers of the official code (github.com/voilalab/KLIP, ``pipeline/``).

``KLIP.official(prior, operator)`` sets every choice in which priorshift's defaults differ from the official DDPM
backend (``pipeline/samplers/ddpm_torch.py``, scored by ``pipeline/scoring/aggregate.py``):

* sampler: DPS without the network Jacobian, step ``ζ/mean_s‖r_s‖`` with ‖r‖ averaged over the image's S samples,
  ζ = 0.3 (priorshift's default: ΠGDM without the Jacobian; DPS's own default divides by each sample's ‖r‖);
* schedule: the DDPM prior's own timesteps with diffusers' leading spacing (default: Karras over the σ range). A prior
  without timesteps (the shipped EDM priors) gets the grid their code would run with diffusers' default scheduler:
  linear β from 1e-4 to 0.02 over 1000 steps, ``σ_t = sqrt((1 − ᾱ_t)/ᾱ_t)``, the steps above the prior's ``sigma_max``
  (σ_t > 80 for t ≥ 930: 7 of 100 steps, 1 of 20) moved to the largest in-range timesteps, one apart, each keeping
  its own weight (:func:`priorshift.diffusion.schedules.linear_beta_sigmas`, ``schedule_for``). The window's
  steps are theirs exactly; only the first few noise levels differ;
* prior step: DDPM's ancestral step taken after the measurement step, from ``x̂0 + Δx_l`` clipped to [-1, 1]
  (diffusers' ``clip_sample``; default: from ``x̂0``, unclipped — the same step when nothing is clipped);
* x_T: N(0, I) in VP coordinates, ``sqrt(1 + σ_0²)·n`` in VE ones (default ``σ_0·n``);
* per-step weight: ``sqrt(β_t)`` on the VP update, which is ``sqrt(β_t/ᾱ_t)`` on the VE one (``normalization="ddpm"``;
  default ``g = sqrt(σ_k + σ_{k+1})``);
* block 1 px, S = 8, 100 steps: their CelebA config (defaults 8 px, 4, 100).

Shared by both: the window [65, 85) of 100 steps, the mean over samples of squared updates summed over each block
(``mean_of_squares``: their current scorer; only the legacy PaDIS/CelebA notebooks squared the mean), the max over
blocks as the image score, and sampling that stops at the window's end (theirs runs all steps; the window's maps
do not depend on it).

Given the same network, measurement and random draws, the preset reproduces the official per-step updates, maps and
max to float32 precision (``tests/test_klip_official.py``, against a fixture made by running their code, feeds it
their draws). Its own draws are priorshift's: one generator per image, fresh noise at every step. Theirs seed each
sample's ``x_T`` separately and reseed the step noise identically before every step (ddpm_torch.py l. 120), so one
noise draw recurs through the whole run; the preset does not copy that. Their ``dps_scale`` with
``sigma_y_dps`` ≠ 1 is ``zeta = dps_scale / sigma_y_dps²``.
"""

from __future__ import annotations

from typing import Any

__all__ = ["official_settings", "BACKENDS"]

BACKENDS = ("ddpm",)
_PRESET_KEYS = ("plan", "normalization", "reduction", "variant", "stage", "window_sigma", "score")


def official_settings(backend: str = "ddpm", *, steps: int = 100, samples: int = 8, block: int = 1, window=(0.65, 0.85),
                      zeta: float = 0.3, clip_sample: bool = True, **kwargs: Any) -> dict[str, Any]:
    """The :class:`~priorshift.detectors.KLIP` keyword arguments of the official ``backend``.

    ``steps``, ``samples``, ``block``, ``window`` and ``zeta`` (their ``dps_scale``) default to their CelebA config;
    ``clip_sample`` is their scheduler's flag (diffusers' default ``True``). Other ``kwargs`` (``keep_step_maps``,
    ``progress``) pass through; the ones the preset fixes (``plan``, ``normalization``, ...) are refused.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown official KLIP backend {backend!r}; available: {', '.join(BACKENDS)} "
                         f"(the PaDIS backend needs a patch prior, the song22 one a VE score model)")
    fixed = sorted(set(kwargs) & set(_PRESET_KEYS))
    if fixed:
        raise ValueError(f"the official preset sets {', '.join(fixed)}; build KLIP(...) directly to change them")
    params = {"jacobian": False, "zeta": zeta, "normalize": True, "zeta_scaling": "vp", "method": "ancestral",
              "residual_norm": "sample_mean", "clip_x0": bool(clip_sample), "init": "vp"}
    plan = {"sampler": "dps", "steps": steps, "schedule": "ddpm", "params": params}
    return {"plan": plan, "window": window, "block": block, "samples": samples, "normalization": "ddpm",
            "reduction": "mean_of_squares", **kwargs}
