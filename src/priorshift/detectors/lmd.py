"""LMD — Lift, Map, Detect: OOD detection by diffusion inpainting (Liu, Zhou, Wang, Weinberger, ICML 2023,
"Unsupervised Out-of-Distribution Detection with Diffusion Inpainting", arXiv 2302.10326).

An image the prior knows can be *inpainted* from part of itself; an image it does not know cannot. For an image
``x`` ((C, H, W) in [-1, 1]) and attempts ``r = 0 .. R-1``:

1. **Lift**: hide part of ``x`` with a 0/1 mask ``M_r`` (1 = kept, 0 = hidden). The default,
   ``"checkerboard_alt"``, splits the image into ``n_blocks × n_blocks`` blocks; even attempts hide the blocks
   with ``(row + col)`` odd, odd attempts hide the complement — ``M_{2k+1} = 1 − M_{2k}`` — so each pair of
   attempts hides every pixel exactly once (:func:`lmd_masks`). The masks are deterministic and the same for
   every image; the randomness is the sampler's noise only.
2. **Map**: ``x̃_r ~ Inpaint(x ⊙ M_r)``, a draw of the replacement (RePaint / score_sde) inpainter driven by the
   prior: the projection sampler (:func:`priorshift.samplers.sample_projection`) with the known region re-noised
   at the *current* level with fresh noise after every update, ``x ← (1 − M) ⊙ x + M ⊙ (x_data + σ n)``, and set
   to ``x_data`` exactly at the last step (σ = 0).
3. **Detect**: ``d_r = dist(x̃_r, x)`` per attempt, and the score ``s(x) = median_r d_r`` (``aggregate="mean"``:
   the mean). **Higher = more shifted.**

Distances (``distance=``), each ``(B·R,)`` from ``(B·R, C, H, W)`` pairs in [-1, 1] (the reconstruction is not
clamped, as in the official code):

* ``"lpips"`` — LPIPS (AlexNet backbone, v0.1 heads) on [-1, 1] inputs at native resolution, the paper's
  choice; ≥ 0, ~0 for identical images. Used only when the ``lpips`` package is installed *and* the AlexNet
  backbone weights are on disk (``$TORCH_HOME/hub/checkpoints/alexnet-owt-7be5be79.pth``, or a file given as
  ``lpips_weights=``); priorshift never downloads them.
* ``"ssim"`` — ``1 − SSIM`` (SSIM is a similarity, so its sign is flipped to follow "higher = more shifted");
  in [0, 2], 0 for identical images. Gaussian window (σ = 1.5) of ``ssim_window`` pixels: 11 (scikit-image's)
  when the image allows, else the largest odd size that fits.
* ``"mse"`` — mean squared error over C, H, W; in [0, ∞).

The default is ``"lpips"`` when it can run offline, else ``"ssim"``; ``Scores.extras["distance"]`` always says
which one was used.

Outputs (:class:`~priorshift.types.Scores`): ``score`` (B,); ``map`` (B, H, W): the per-pixel squared
reconstruction error (mean over channels) averaged over the attempts in which that pixel was *hidden* — the
kept pixels are reproduced exactly, so averaging over all attempts would only halve it. It is MSE-based whatever
``distance`` is (LPIPS and SSIM do not decompose per pixel the same way) and localizes what the prior cannot
predict from its surroundings. ``nfe``: counted by the sampler's wrapper on the prior, ``B · R · (NFE of one
inpainting run)``. ``extras``: ``"distances"`` (B, R) per attempt, ``"reconstruction"`` (B, C, H, W) the first
attempt pair merged (each pixel taken from the attempt that hid it), ``"distance"``, ``"aggregate"``,
``"attempts"``, ``"nfe_per_image"`` (and ``"ssim_window"`` for SSIM).

Batching: the R attempts of the B images are *one* sampler call on a ``(B·R, C, H, W)`` batch, image-major
(row ``b·R + r`` is attempt ``r`` of image ``b``), under one inpainting operator with a per-row mask. Attempt
``r`` of image ``b`` draws its noise from a generator seeded from ``(seed_b, r)`` only, so an image's score does
not depend on the batch it is scored in. Extra ``hooks`` see ``StepState`` tensors shaped ``(B·R, 1, C, H, W)``.

Defaults and deviations from the official code (``zhenzhel/lift_map_detect``): the paper inpaints with 1000
Euler–Maruyama steps of a subVP SDE (10k NFE per image at R = 10). Here the default plan is 100 steps of the
projection sampler on the prior's Karras schedule, without corrector, with *ancestral* steps — the exact
Gaussian transition of the same reverse process, which stays accurate with 10× fewer steps where Euler–Maruyama
over-injects noise on large steps. The median of an even number of attempts is the mean of the two middle
values (numpy's convention; ``torch.median`` would return the lower one). The official code starts from
``x_data ⊙ M + noise ⊙ (1 − M)``; the sampler starts from pure noise at ``σ_max`` and the known region is
inserted after the first update — at ``σ_max ≫ 1`` the two are indistinguishable.
"""

from __future__ import annotations

import functools
import importlib.util
import numbers
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import Tensor

from priorshift.detectors.base import Detector, resolve_seeds
from priorshift.metrics.image import lpips_available, lpips_distance, ssim
from priorshift.operators.inpainting import Inpainting
from priorshift.operators.masks import as_size, box_mask, checkerboard_mask
from priorshift.registry import register
from priorshift.samplers.plan import SamplingPlan
from priorshift.types import Scores

__all__ = ["LMD", "lmd_masks", "attempt_seeds", "MASKS", "DISTANCES", "AGGREGATES", "DEFAULT_PLAN"]

MASKS = ("checkerboard_alt", "checkerboard", "center")
DISTANCES = ("lpips", "ssim", "mse")
AGGREGATES = ("median", "mean")

DEFAULT_PLAN = SamplingPlan("projection", steps=100, params={"corrector": False, "method": "ancestral"})
"""100 ancestral replacement steps, no corrector: 100 NFE per attempt, 1,000 per image at R = 10."""


def _check_masks(kind: str, attempts, minimum: int) -> None:
    """One ``ValueError`` for an unknown mask kind, a non-integer or too small ``attempts``, or an odd number of
    alternating-checkerboard attempts (they come in complementary pairs)."""
    if kind not in MASKS:
        raise ValueError(f"unknown mask kind {kind!r}; choose one of {', '.join(MASKS)}")
    if not isinstance(attempts, numbers.Integral) or isinstance(attempts, bool) or attempts < minimum:
        need = "a positive int" if minimum == 1 else f"an int >= {minimum} (the median needs several)"
        raise ValueError(f"attempts must be {need}, got {attempts!r}")
    if kind == "checkerboard_alt" and attempts % 2:
        raise ValueError(f"'checkerboard_alt' masks come in complementary pairs, so attempts must be even; got {attempts}")


def lmd_masks(size, kind: str = "checkerboard_alt", n_blocks: int = 8, attempts: int = 10) -> Tensor:
    """The ``(attempts, 1, H, W)`` float 0/1 masks of LMD's attempts, **1 = kept**, 0 = hidden (inpainted).

    * ``"checkerboard_alt"`` (the paper's default): attempt ``r`` is :func:`~priorshift.operators.masks.checkerboard_mask`
      ``(size, n_blocks, r)`` — even attempts hide the blocks with ``(row + col)`` odd, attempt ``2k + 1`` is
      ``1 − attempt 2k``. ``attempts`` must be even, so every pixel is hidden in exactly half of them.
    * ``"checkerboard"``: the even-attempt checkerboard for every attempt (non-alternating).
    * ``"center"``: the central ``H/2 × W/2`` square hidden in every attempt (``n_blocks`` unused).
    """
    h, w = as_size(size)
    _check_masks(kind, attempts, 1)
    if kind == "center":
        if h < 2 or w < 2:
            raise ValueError(f"a 'center' mask needs an image of at least 2×2, got {h}×{w}")
        one = box_mask((h, w), (h // 4, w // 4, h // 2, w // 2))
        return one.unsqueeze(0).expand(attempts, 1, h, w).clone()
    alternate = kind == "checkerboard_alt"
    return torch.stack([checkerboard_mask((h, w), n_blocks, r if alternate else 0) for r in range(attempts)])


def attempt_seeds(image_seeds, attempts: int) -> list[int]:
    """One seed per (image, attempt), image-major (``b·attempts + r``), each derived from image ``b``'s seed
    and ``r`` alone — a generator seeded with ``seed_b`` draws the image's ``attempts`` seeds — so an image's
    attempts never depend on the rest of the batch, and different images get unrelated streams."""
    out = []
    for s in image_seeds:
        g = torch.Generator().manual_seed(int(s))
        out.extend(torch.randint(0, 2**62, (int(attempts),), generator=g).tolist())
    return out


# ---------------------------------------------------------------------------------------------------------
# Distances
# ---------------------------------------------------------------------------------------------------------


def _lpips_missing(weights: Path | None) -> str | None:
    """Why LPIPS cannot run offline (with ``weights`` as the backbone file, or the torch hub cache), or None."""
    if weights is None:
        if lpips_available():
            return None
        return (
            "the 'lpips' package and torchvision must be installed and torchvision's AlexNet weights "
            "'alexnet-owt-7be5be79.pth' must be in $TORCH_HOME/hub/checkpoints (or pass lpips_weights=PATH)"
        )
    for pkg in ("lpips", "torchvision"):
        if importlib.util.find_spec(pkg) is None:
            return f"the {pkg!r} package is not installed"
    if not weights.is_file():
        return f"lpips_weights={str(weights)!r} is not a file"
    return None


@functools.lru_cache(maxsize=2)
def _lpips_model_from(path: str):
    """LPIPS (AlexNet, v0.1 heads shipped inside the ``lpips`` package) with the backbone read from ``path``:
    torchvision's ``alexnet`` state dict (``features.<i>.weight|bias``; ``.pth`` read with
    ``torch.load(weights_only=True)``, or ``.safetensors``). Built with ``pnet_rand=True``, so nothing is fetched."""
    import lpips  # noqa: PLC0415 — optional dependency

    if path.endswith(".safetensors"):
        from safetensors.torch import load_file  # noqa: PLC0415

        state = load_file(path)
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    if "features.0.weight" not in state:
        raise ValueError(f"{path} does not hold torchvision AlexNet weights (no 'features.0.weight')")
    model = lpips.LPIPS(net="alex", pnet_rand=True, verbose=False)
    # lpips splits alexnet.features into slice1..slice5, keeping each layer's index: slice<k>.<i>.<param>.
    backbone = {name: state[f"features.{name.split('.', 1)[1]}"] for name, _ in model.net.named_parameters()}
    model.net.load_state_dict(backbone)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def _lpips_with(path: str, x: Tensor, ref: Tensor) -> Tensor:
    if x.shape[1] == 1:
        x, ref = x.expand(-1, 3, -1, -1), ref.expand(-1, 3, -1, -1)
    model = _lpips_model_from(path).to(x.device)
    with torch.no_grad():
        d = model(x.float(), ref.float())
    return d.flatten(1).mean(dim=1).to(x.dtype)


def _default_ssim_window(h: int, w: int) -> int:
    side = min(h, w, 11)
    return side if side % 2 else side - 1


# ---------------------------------------------------------------------------------------------------------
# The detector
# ---------------------------------------------------------------------------------------------------------


@register("detector", "lmd")
class LMD(Detector):
    """Lift, Map, Detect (Liu et al., ICML 2023): inpaint masked copies of each image with the prior and score
    the median distance between the reconstructions and the image. **Higher = more shifted.**

    ``prior``: a denoiser ``D(x, σ)`` (VE, [-1, 1] images); ``operator``: must be ``None`` — LMD scores
    images ``(B, C, H, W)`` and builds its own masks. ``masks``: ``"checkerboard_alt"`` (default),
    ``"checkerboard"`` or ``"center"`` (:func:`lmd_masks`); ``n_blocks``: blocks per side (must divide H and W;
    the paper uses 8 at 32×32); ``attempts``: R (≥ 2, even for alternating masks); ``plan``: the inpainting
    :class:`~priorshift.samplers.SamplingPlan` (or a mapping of its fields — one without ``"sampler"`` refines
    :data:`DEFAULT_PLAN`, e.g. ``{"steps": 1000}``; default :data:`DEFAULT_PLAN`) — any sampler with a
    measurement step; the replacement inpainter is the ``"projection"`` sampler;
    ``distance``: ``"lpips"``, ``"ssim"`` (``1 − SSIM``) or ``"mse"``; ``None`` (default): LPIPS if it can run
    offline, else SSIM; ``aggregate``: ``"median"`` (default) or ``"mean"`` over attempts;
    ``lpips_weights``: path of torchvision's AlexNet weights for LPIPS (else the torch hub cache is used);
    ``ssim_window``: odd SSIM window (default 11, or the largest odd size the image allows).

    See the module docstring for the math, the outputs and the defaults.
    """

    input_kind = "images"
    needs_fit = False
    samples_posterior = True
    stochastic = True

    def __init__(
        self,
        prior,
        operator=None,
        *,
        masks: str = "checkerboard_alt",
        n_blocks: int = 8,
        attempts: int = 10,
        plan: SamplingPlan | Mapping[str, Any] | None = None,
        distance: str | None = None,
        aggregate: str = "median",
        lpips_weights: str | Path | None = None,
        ssim_window: int | None = None,
    ):
        if operator is not None:
            raise ValueError(
                "LMD scores images (B, C, H, W) and builds its own inpainting masks; operator must be None "
                f"(got {type(operator).__name__})"
            )
        _check_masks(masks, attempts, 2)
        if not isinstance(n_blocks, numbers.Integral) or isinstance(n_blocks, bool) or n_blocks < 1:
            raise ValueError(f"n_blocks must be a positive int, got {n_blocks!r}")
        if aggregate not in AGGREGATES:
            raise ValueError(f"unknown aggregate {aggregate!r}; choose one of {', '.join(AGGREGATES)}")
        if ssim_window is not None and (
            not isinstance(ssim_window, numbers.Integral) or isinstance(ssim_window, bool) or ssim_window < 1 or ssim_window % 2 == 0
        ):
            raise ValueError(f"ssim_window must be an odd positive int, got {ssim_window!r}")
        weights = None if lpips_weights is None else Path(lpips_weights).expanduser()
        if distance is None:
            distance = "lpips" if _lpips_missing(weights) is None else "ssim"
            if weights is not None and distance != "lpips":
                raise ValueError(f"lpips_weights was given but LPIPS cannot run: {_lpips_missing(weights)}")
        elif distance not in DISTANCES:
            raise ValueError(f"unknown distance {distance!r}; choose one of {', '.join(DISTANCES)}")
        elif distance == "lpips" and (why := _lpips_missing(weights)) is not None:
            raise ValueError(f"distance='lpips' cannot run offline: {why}. Use distance='ssim' or 'mse'")
        if plan is None:
            plan = DEFAULT_PLAN
        elif isinstance(plan, Mapping) and "sampler" not in plan:
            # A partial mapping refines the default replacement inpainter (not the library-wide default, DPS).
            plan = {"sampler": DEFAULT_PLAN.sampler, "steps": DEFAULT_PLAN.steps, "params": dict(DEFAULT_PLAN.params), **plan}
        plan = SamplingPlan.coerce(plan)
        if not plan.likelihood_stages:
            raise ValueError(f"LMD inpaints, so its sampler needs a measurement step; {plan.sampler!r} has none (use 'projection')")
        if plan.sampler == "exact":
            raise ValueError(
                "the 'exact' sampler builds one dense operator matrix for the whole batch, but LMD's batch holds one "
                "mask per (image, attempt) row; use 'projection'"
            )

        self.prior = prior
        self.operator = None
        self.masks = masks
        self.n_blocks = int(n_blocks)
        self.attempts = int(attempts)
        self.plan = plan
        self.distance = distance
        self.aggregate = aggregate
        self.lpips_weights = weights
        self.ssim_window = None if ssim_window is None else int(ssim_window)
        size = self._image_size()
        if size is not None:
            self._check_geometry(*size)

    @classmethod
    def example(cls) -> "LMD":
        """4 attempts of an 8-step replacement inpainter on a stationary Gaussian prior over 8×8 images
        (2×2-pixel checkerboard blocks), MSE distance: 32 exact-denoiser NFE per image."""
        from priorshift.analytic import stationary_gaussian  # noqa: PLC0415

        plan = SamplingPlan("projection", steps=8, params={"corrector": False, "method": "ancestral"})
        return cls(stationary_gaussian(8), n_blocks=4, attempts=4, plan=plan, distance="mse")

    # -- geometry ------------------------------------------------------------------------------------
    def _image_size(self) -> tuple[int, int] | None:
        size = getattr(self.prior, "image_size", None)
        if size is not None:
            return as_size(size)
        shape = getattr(self.prior, "shape", None)
        if shape is not None and len(shape) == 3:
            return int(shape[1]), int(shape[2])
        return None

    def _check_geometry(self, h: int, w: int) -> None:
        if self.masks != "center" and (h % self.n_blocks or w % self.n_blocks):
            raise ValueError(f"n_blocks={self.n_blocks} must divide the image size {h}×{w} (blocks of equal size)")
        if self.distance == "ssim" and self.ssim_window is not None and min(h, w) < self.ssim_window:
            raise ValueError(f"ssim_window={self.ssim_window} is larger than the {h}×{w} image")

    def attempt_masks(self, size) -> Tensor:
        """The ``(attempts, 1, H, W)`` masks (1 = kept) this detector uses on images of ``size``."""
        return lmd_masks(size, self.masks, self.n_blocks, self.attempts)

    # -- scoring -------------------------------------------------------------------------------------
    def _distances(self, recon: Tensor, ref: Tensor) -> tuple[Tensor, dict[str, Any]]:
        if self.distance == "mse":
            return (recon - ref).pow(2).flatten(1).mean(dim=1), {}
        if self.distance == "ssim":
            window = self.ssim_window or _default_ssim_window(*ref.shape[-2:])
            return 1.0 - ssim(recon, ref, data_range=2.0, window=window, sigma=1.5), {"ssim_window": window}
        if self.lpips_weights is not None:
            return _lpips_with(str(self.lpips_weights), recon, ref), {}
        return lpips_distance(recon, ref), {}

    def _score(self, data: Tensor, *, seed, hooks: tuple) -> Scores:
        x = data
        B, C, H, W = x.shape
        R = self.attempts
        # Everything that can fail is checked before the sampler runs.
        self._check_geometry(H, W)
        if self.distance == "lpips" and C not in (1, 3):
            raise ValueError(f"LPIPS needs 1- or 3-channel images, got {C} channels; use distance='ssim' or 'mse'")
        seeds = attempt_seeds(resolve_seeds(seed, B), R)

        keep = self.attempt_masks((H, W)).to(device=x.device, dtype=x.dtype)  # (R, 1, H, W)
        rows_keep = keep.repeat(B, 1, 1, 1)  # row b·R + r ↦ mask r
        x_rows = x.repeat_interleave(R, dim=0)  # (B·R, C, H, W)
        operator = Inpainting(rows_keep)  # one mask per row
        result = self.plan.sample(self.prior, operator, operator.A(x_rows), samples=1, seed=seeds, hooks=hooks)
        recon = result.x0[:, 0]  # (B·R, C, H, W)

        dist, info = self._distances(recon, x_rows)
        dist = dist.reshape(B, R)
        if self.aggregate == "median":
            score = torch.quantile(dist, 0.5, dim=1)  # mean of the two middle values when R is even
        else:
            score = dist.mean(dim=1)

        hidden = (1.0 - keep).unsqueeze(0)  # (1, R, 1, H, W)
        err = (recon - x_rows).pow(2).reshape(B, R, C, H, W).mean(dim=2, keepdim=True) * hidden
        pixel_map = (err.sum(dim=1) / hidden.sum(dim=1).clamp_min(1.0))[:, 0]  # (B, H, W)
        pair = recon.reshape(B, R, C, H, W)
        merged = torch.where(hidden[:, 0].bool(), pair[:, 0], pair[:, 1])  # each pixel from the attempt that hid it

        extras = {
            "distance": self.distance,
            "aggregate": self.aggregate,
            "attempts": R,
            "distances": dist,
            "reconstruction": merged,
            "nfe_per_image": result.nfe / B,
            **info,
        }
        return Scores(score=score, map=pixel_map, nfe=int(result.nfe), extras=extras)

    def config(self) -> dict[str, Any]:
        return {
            **super().config(),
            "masks": self.masks,
            "n_blocks": self.n_blocks,
            "attempts": self.attempts,
            "distance": self.distance,
            "aggregate": self.aggregate,
            "plan": self.plan.describe(),
            "lpips_weights": None if self.lpips_weights is None else str(self.lpips_weights),
            "ssim_window": self.ssim_window,
        }

    def __repr__(self) -> str:
        return (
            f"LMD(masks={self.masks!r}, n_blocks={self.n_blocks}, attempts={self.attempts}, distance={self.distance!r}, "
            f"aggregate={self.aggregate!r}, plan={self.plan.sampler}×{self.plan.steps})"
        )
