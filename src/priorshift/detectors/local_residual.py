"""``local-residual``: where does the image differ from what the prior would restore? A matched filter on the
prior's mean denoising residual.

For noise levels ``σ_k`` (k = 1..K) and ``R = repeats`` draws ``z_{k,r} ~ N(0, I)`` per image (from its seed):

    r(x)   = 1/(K R) Σ_{k,r} (x − D(x + σ_k z_{k,r}, σ_k))          the mean residual, signed, (B, C, H, W)
    m(x)   = | box_w( Σ_c r(x)_c ) |                                  the map: a w × w moving average, (B, H, W)
    score  = max_{p ∈ region(x)} m(x)_p                               region: pixels with x > ``foreground``

Why this reads the prior where global scores do not. The residual of a Tweedie denoiser is the score times σ²
(``x̃ − D(x̃, σ) = −σ² ∇ log p_σ(x̃)``): it points from the image towards what the prior expects. A focal change
the prior does not expect (a lesion in a liver it knows to be smooth) leaves a residual of **one sign** over the
change's whole footprint, which the w × w average keeps; the residual of anatomy the prior is merely unsure
about (an organ edge whose position it cannot pin down at level σ) alternates in sign across the edge and
averages out. The global sums of ``denoising-error`` (squared residuals over the whole image) are dominated
by those edges; the box filter is the matched filter for a blob of about w px. Averaging the signed residual over
the draws and over levels before squaring also removes most of the noise the draws add (its mean is 0).
Pixel-wise diffusion residual maps for anomaly localization go back to AnoDDPM (Wyatt et al., CVPR-W 2022)
and DDPM-OOD (Graham et al., CVPR-W 2023); this is the one-step (Tweedie) form, signed and filtered.

Closed form on a Gaussian prior ``N(μ, Σ)``: ``D(x̃, σ) = μ + Σ (Σ + σ² I)⁻¹ (x̃ − μ)``, so
``E_z r(x) = 1/K Σ_k σ_k² (Σ + σ_k² I)⁻¹ (x − μ)`` — a shrinkage of the image's deviation from the mean onto
the directions the prior finds unlikely (the tests' oracle).

Defaults (σ ∈ {0.05, 0.1, 0.2}, R = 4, w = 5) were chosen on the CT blob tuning split (``blob_set``, either
sign, 0.1–0.4 contrast, anywhere in the body) with ``phantom-ct-64-long``, never on lesions: see
``benchmarks/results/ct-ceiling.md``. Calibration-free (no fit): the score is in the units of the image.
Cost: ``nfe = B · K · R``, in one batched denoiser call.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor
from torch.nn import functional as F

from priorshift._checks import check_int
from priorshift.detectors.base import Detector
from priorshift.detectors.baselines.image import _check_sigmas, _noisy_denoise
from priorshift.detectors.klip_maps import tissue_blocks
from priorshift.registry import register
from priorshift.types import Scores

__all__ = ["LocalResidual", "box_filter"]


def box_filter(maps: Tensor, window: int) -> Tensor:
    """``(B, H, W)`` moving average over ``window × window`` pixels (odd), same size; at the border the mean
    is over the pixels inside the image only."""
    return F.avg_pool2d(maps[:, None], window, 1, window // 2, count_include_pad=False)[:, 0]


@register("detector", "local-residual")
class LocalResidual(Detector):
    """The prior's mean denoising residual, box-filtered, max over the tissue (see the module docstring).

    Args:
        prior: a denoiser ``D(x, σ)``.
        sigmas: the noise levels ``σ_k`` (inside the prior's σ range).
        repeats: draws ``R`` per level.
        window: the box filter's side ``w`` in pixels (odd, ≥ 1): about the size of the changes to find.
        foreground: only pixels with ``x > foreground`` count for the score (``None``: every pixel). For CT in
            [-1, 1], ``-0.9`` keeps what is not air, so the score comes from the anatomy.

    ``score(x)``: ``score`` (B,), ``map`` (B, H, W) = ``m(x)`` (0 outside the region), extras ``residual``
    (B, H, W) = the signed ``Σ_c r(x)_c`` before the filter.
    """

    input_kind = "images"
    needs_fit = False
    stochastic = True

    def __init__(self, prior, *, sigmas: Sequence[float] = (0.05, 0.1, 0.2), repeats: int = 4, window: int = 5,
                 foreground: float | None = None):
        self.prior = prior
        self.sigmas = _check_sigmas(sigmas, prior)
        self.repeats = check_int(repeats, "repeats")
        self.window = check_int(window, "window")
        if self.window % 2 == 0:
            raise ValueError(f"window must be odd (the filter is centred on each pixel), got {window}")
        if foreground is not None and not -1.0 <= float(foreground) < 1.0:
            raise ValueError(f"foreground must be a threshold in [-1, 1) (images are in [-1, 1]) or None, got {foreground!r}")
        self.foreground = None if foreground is None else float(foreground)

    def _score(self, data: Tensor, *, seed, hooks: tuple) -> Scores:
        if min(data.shape[-2:]) < self.window:
            raise ValueError(f"window {self.window} is larger than the images ({tuple(data.shape[-2:])})")
        _, d, _, nfe = _noisy_denoise(self.prior, data, self.sigmas, self.repeats, seed)
        residual = (data[:, None, None] - d).mean((1, 2)).sum(1)  # (B, H, W): mean over levels and draws, sum over C
        m = box_filter(residual, self.window).abs()
        if self.foreground is not None:  # an image with no tissue at all is scored over every pixel
            m = torch.where(tissue_blocks(data, 1, self.foreground), m, torch.zeros_like(m))
        return Scores(score=m.flatten(1).max(1).values, map=m, nfe=nfe, extras={"residual": residual})

    @classmethod
    def example(cls) -> "LocalResidual":
        from priorshift.analytic import stationary_gaussian

        return cls(stationary_gaussian(8), sigmas=(0.1, 0.3), repeats=2, window=3)

    def config(self) -> dict[str, Any]:
        return {**super().config(), "sigmas": list(self.sigmas), "repeats": self.repeats, "window": self.window,
                "foreground": self.foreground}

    def __repr__(self) -> str:
        return (f"LocalResidual(sigmas={self.sigmas}, repeats={self.repeats}, window={self.window}, "
                f"foreground={self.foreground})")
