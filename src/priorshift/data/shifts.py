"""Distribution shifts a statistic of the measurements' size cannot see: energy matching and structure-only shifts.

Fashion-MNIST vs MNIST is separated by ``‖y‖²`` alone (MNIST has more background, so more pixels at ±1), which
says nothing about what a diffusion prior adds. The transforms here take that statistic away:

* :func:`match_energy` — each OOD image gets a per-image gain (and, where a gain cannot reach it, a background
  lift) so that the distribution of the noise-free measurement energy ``‖A x‖²`` over the OOD set matches a
  reference (in-distribution) set's under the operator ``A``: a trivial ``‖y‖²`` detector then scores at chance.
* structure-only shifts (:func:`tile_shuffle`, :func:`jigsaw`, :func:`flip`, :func:`rot90`) — each image's
  pixels are permuted, so its pixel histogram (hence ``‖x‖²``, the mean, every intensity statistic) is exactly
  unchanged; only the arrangement, which only a model of images knows, is shifted.

All take and return ``(B, C, H, W)`` images in [-1, 1]; randomness is per image (one generator per image seed,
``seed`` an int → seeds ``seed, seed + 1, …``, or a list of B ints), so an image's result never depends on its batch.
:func:`apply_shift` applies one by spec (``"jigsaw:tile=8"``), as ``priorshift bench`` configs name them.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..rng import per_image_rng

__all__ = ["match_energy", "measurement_energy", "tile_shuffle", "jigsaw", "flip", "rot90", "apply_shift", "SHIFTS"]

BACKGROUND = -1.0


def _check_images(x, name: str) -> Tensor:
    if not isinstance(x, Tensor) or x.ndim != 4:
        raise ValueError(f"{name} must be a (B, C, H, W) tensor, got {type(x).__name__} of shape {tuple(getattr(x, 'shape', ()))}")
    if x.shape[0] == 0:
        raise ValueError(f"{name} is empty (B = 0)")
    if not torch.is_floating_point(x) or not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} must be finite floating-point images")
    lo, hi = float(x.min()), float(x.max())
    if lo < -1 - 1e-6 or hi > 1 + 1e-6:
        raise ValueError(f"{name} must lie in [-1, 1] (the library's range), got values in [{lo:.3g}, {hi:.3g}]")
    return x


def _flat(y: Tensor) -> Tensor:
    y = torch.view_as_real(y) if torch.is_complex(y) else y
    return y.reshape(y.shape[0], -1).to(torch.float64)


def measurement_energy(x: Tensor, operator) -> Tensor:
    """``‖A x‖²`` per image (noise-free; complex measurements count ``|·|²``): (B,) float64."""
    return _flat(operator.A(x)).pow(2).sum(1)


def _targets(e_ood: Tensor, e_ref: Tensor, seed: int) -> Tensor:
    """Rank-preserving quantile matching: the image of rank ``r`` (of n) gets the reference energies' quantile at
    ``(r + ½) / n`` (linear interpolation); ties are ordered by a seeded random permutation."""
    n = e_ood.numel()
    jitter = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed))).to(torch.float64)
    order = sorted(range(n), key=lambda i: (float(e_ood[i]), float(jitter[i])))
    q = (torch.arange(n, dtype=torch.float64) + 0.5) / n
    t = torch.quantile(e_ref, q)
    out = torch.empty(n, dtype=torch.float64)
    out[torch.tensor(order)] = t
    return out


def _solve(t: float, a11: float, a1u: float, auu: float, umax: float) -> tuple[float, float] | None:
    """``(b, c)`` with ``E(b, c) = b² a11 + 2 b c a1u + c² auu = t``, ``b ≥ −1``, ``0 ≤ c ≤ (1 − b) / umax``:
    a gain ``c`` around the background (``b = −1``), the admissible root nearest 1; else the smallest background
    lift ``b`` whose least energy over admissible gains is ``t`` (bisection). ``None`` when ``t`` is unreachable."""
    def energy(b, c):
        return b * b * a11 + 2 * b * c * a1u + c * c * auu

    def cmax(b):
        return (1.0 - b) / umax if umax > 0 else 0.0

    # b = -1: E(c) = a11 - 2 c a1u + c² auu, c in [0, 2 / umax].
    roots = []
    if auu > 0:
        disc = a1u * a1u - auu * (a11 - t)
        if disc >= 0:
            roots = [(a1u - s * math.sqrt(disc)) / auu for s in (1.0, -1.0)]
    ok = [c for c in roots if -1e-12 <= c <= cmax(-1.0) + 1e-12]
    if ok:
        return -1.0, min(max(min(ok, key=lambda c: abs(c - 1.0)), 0.0), cmax(-1.0))

    def least(b):  # the least energy over admissible gains at background b (b < 0 → c* = -b a1u / auu)
        c = 0.0 if auu <= 0 else min(max(-b * a1u / auu, 0.0), cmax(b))
        return energy(b, c), c

    if t > max(energy(-1.0, 0.0), energy(-1.0, cmax(-1.0))) or t < 0:
        return None
    if t > least(-1.0)[0]:  # between the least and the largest energy at b = -1 but no admissible root: cannot happen
        return None
    lo, hi = -1.0, 0.0  # least(b) decreases from least(-1) to least(0) = 0 (see match_energy)
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if least(mid)[0] > t else (lo, mid)
    b = 0.5 * (lo + hi)
    return b, least(b)[1]


def match_energy(x_ood: Tensor, x_reference: Tensor, *, operator, seed: int = 0, rtol: float = 1e-6) -> Tensor:
    """Match the OOD set's measurement energy to a reference set's: ``(B, C, H, W)`` in [-1, 1], same shape as ``x_ood``.

    Targets: the OOD images are ranked by ``‖A x‖²`` and the image of rank ``r`` of ``B`` gets the reference
    set's empirical ``(r + ½)/B`` quantile of ``‖A x_ref‖²`` (rank-preserving quantile matching; ``seed`` orders
    ties). Then each image is changed by an affine intensity map ``x' = b + c (x + 1)``, in this order:

    1. a **gain** around the background value −1 (``b = −1``; background stays −1, the brightest pixel stays ≤ 1:
       ``0 ≤ c ≤ 2 / max(x + 1)``), the root of ``‖A x'‖² = target`` nearest ``c = 1`` — an exposure change;
    2. where no gain reaches the target (an image with too little mid-grey to lose energy — MNIST under identity
       and blur), the **smallest background lift** ``b > −1`` for which the energy-minimising admissible gain
       gives the target (``x'`` stays in ``[b, 1]``) — an exposure and offset change.

    For a linear ``A``, ``‖A(b + c u)‖² = b²‖A1‖² + 2bc⟨A1, Au⟩ + c²‖Au‖²`` (``u = x + 1``), so both steps are
    solved exactly (a quadratic root; a bisection on ``b``: with ``c = −b t`` the least energy is ``b²`` times a
    minimum over a range of ``t`` that grows as ``b → 0``, so it decreases monotonically to 0 at ``b = 0``).
    Each result is checked: ``|‖A x'‖² − target| ≤ rtol · target`` (this also refuses a nonlinear operator).

    ``operator``: any priorshift operator (its noise-free ``A`` is used; measurement noise adds the same
    ``σ_y² m`` to both sets in expectation); ``x_ood`` (B ≥ 1) and ``x_reference`` (≥ 2 images) in [-1, 1].
    Raises ``ValueError`` naming the image when a target is out of reach (above the energy of a blank image and of
    the highest admissible gain)."""
    x_ood = _check_images(x_ood, "x_ood")
    x_reference = _check_images(x_reference, "x_reference")
    if x_reference.shape[0] < 2:
        raise ValueError(f"x_reference needs at least 2 images for a distribution to match, got {x_reference.shape[0]}")
    if x_reference.shape[1:] != x_ood.shape[1:]:
        raise ValueError(f"x_reference's images {tuple(x_reference.shape[1:])} differ from x_ood's {tuple(x_ood.shape[1:])}")
    if not callable(getattr(operator, "A", None)):
        raise ValueError(f"operator must be a priorshift operator with a noise-free A(x), got {type(operator).__name__}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an int, got {seed!r}")
    with torch.no_grad():
        targets = _targets(measurement_energy(x_ood, operator), measurement_energy(x_reference, operator), seed)
        u = x_ood - BACKGROUND
        a1 = _flat(operator.A(torch.ones_like(x_ood[:1])))[0]
        au = _flat(operator.A(u))
        a11, a1u, auu = float(a1 @ a1), (au @ a1).tolist(), au.pow(2).sum(1).tolist()
        umax = u.reshape(u.shape[0], -1).amax(1).tolist()
        out = torch.empty_like(x_ood)
        for i in range(x_ood.shape[0]):
            sol = _solve(float(targets[i]), a11, a1u[i], auu[i], umax[i])
            if sol is None:
                raise ValueError(f"match_energy: image {i} of x_ood cannot reach the target energy {float(targets[i]):.4g} with an "
                                 f"affine map that keeps it in [-1, 1] (‖A·‖² of a blank image: {a11:.4g})")
            b, c = sol
            out[i] = (b + c * u[i]).clamp(-1.0, 1.0)
        got = measurement_energy(out, operator)
        bad = ((got - targets).abs() > rtol * targets.abs().clamp_min(1e-12)).nonzero().flatten().tolist()
        if bad:
            i = bad[0]
            raise ValueError(f"match_energy: image {i} reached energy {float(got[i]):.6g}, not its target {float(targets[i]):.6g}; "
                             "is the operator linear?")
    return out


# ----------------------------------------------------------------------------------------------------------------
# Structure-only shifts: per-image pixel permutations, so each image's histogram is exactly unchanged.

def _tiles(x: Tensor, tile: int, name: str) -> tuple[int, int]:
    _check_images(x, "x")
    if isinstance(tile, bool) or not isinstance(tile, int) or tile < 1:
        raise ValueError(f"{name}: tile must be an integer >= 1, got {tile!r}")
    H, W = x.shape[-2:]
    if H % tile or W % tile:
        raise ValueError(f"{name}: tile={tile} must divide the image size {H}×{W}")
    return H // tile, W // tile


def _blocks(x: Tensor, tile: int) -> Tensor:
    """(B, C, H, W) → (B, C, nh·nw, tile·tile): the pixels of each tile, tiles in row-major order."""
    B, C, H, W = x.shape
    return x.reshape(B, C, H // tile, tile, W // tile, tile).permute(0, 1, 2, 4, 3, 5).reshape(B, C, -1, tile * tile)


def _unblocks(blocks: Tensor, shape, tile: int) -> Tensor:
    B, C, H, W = shape
    return blocks.reshape(B, C, H // tile, W // tile, tile, tile).permute(0, 1, 2, 4, 3, 5).reshape(B, C, H, W)


def tile_shuffle(x: Tensor, *, tile: int = 4, seed=0) -> Tensor:
    """Shuffle the pixels inside each ``tile × tile`` tile (an independent permutation per tile and image, the same
    for every channel). Each tile keeps its pixels — the image's histogram and its ``tile``-scale brightness
    layout are unchanged; edges and texture within tiles are destroyed.

    Met in practice as a block-codec or reader bug: pixels written in the wrong order inside each macroblock or
    DCT block (a wrong stride or interleave in a custom loader), or a detector array read out in the wrong order
    within its readout tiles."""
    _tiles(x, tile, "tile_shuffle")
    blocks = _blocks(x, tile)
    g = per_image_rng(seed, x.shape[0], device=x.device)
    keys = g.rand((blocks.shape[2], tile * tile), dtype=torch.float64)  # (B, tiles, tile²)
    perm = keys.argsort(-1)[:, None].expand(-1, x.shape[1], -1, -1)
    return _unblocks(blocks.gather(-1, perm), x.shape, tile)


def jigsaw(x: Tensor, *, tile: int = 8, seed=0) -> Tensor:
    """Permute the ``tile × tile`` tiles of each image (one random permutation of the tiles per image). Each tile is
    intact; only where the tiles sit is shifted, so local statistics at scales below ``tile`` are in-distribution.

    Met in practice as mis-stitched mosaics: tiles of a whole-slide or satellite image, or patches of a patch-based
    reconstruction pipeline, reassembled in the wrong order."""
    _tiles(x, tile, "jigsaw")
    blocks = _blocks(x, tile)
    g = per_image_rng(seed, x.shape[0], device=x.device)
    perm = g.rand((blocks.shape[2],), dtype=torch.float64).argsort(-1)  # (B, tiles)
    perm = perm[:, None, :, None].expand(-1, x.shape[1], -1, tile * tile)
    return _unblocks(blocks.gather(2, perm), x.shape, tile)


def flip(x: Tensor, *, axis: str = "vertical", seed=None) -> Tensor:
    """Mirror every image: ``axis="vertical"`` turns it upside down (rows reversed), ``"horizontal"`` left-right.
    Deterministic (``seed`` is ignored). A shift only for an orientation-specific dataset — an upside-down garment or
    digit is unlike every training image, a left-right mirrored garment is not.

    Met in practice as an orientation convention mixed up at the data boundary: image origin bottom-left vs top-left
    (FITS, some DICOM and NIfTI readers), or a scanner's patient-orientation tag ignored."""
    _check_images(x, "x")
    axes = {"vertical": -2, "horizontal": -1}
    if axis not in axes:
        raise ValueError(f"flip: axis must be one of {', '.join(axes)}, got {axis!r}")
    return x.flip(axes[axis])


def rot90(x: Tensor, *, k: int = 1, seed=None) -> Tensor:
    """Rotate every (square) image by ``k`` quarter turns counter-clockwise. Deterministic (``seed`` is ignored).
    Met in practice as a transposed or rotated read (row-major vs column-major arrays, a camera's rotation tag)."""
    _check_images(x, "x")
    if isinstance(k, bool) or not isinstance(k, int):
        raise ValueError(f"rot90: k must be an integer, got {k!r}")
    if x.shape[-1] != x.shape[-2]:
        raise ValueError(f"rot90: images must be square, got {x.shape[-2]}×{x.shape[-1]}")
    return x.rot90(k, dims=(-2, -1))


SHIFTS = {"tile-shuffle": tile_shuffle, "jigsaw": jigsaw, "flip": flip, "rot90": rot90}


def apply_shift(x: Tensor, spec: str, *, seed=0) -> Tensor:
    """Apply a structure-only shift by spec, ``NAME`` or ``NAME:key=value,...`` (``"tile-shuffle:tile=4"``,
    ``"jigsaw:tile=8"``, ``"flip:axis=vertical"``, ``"rot90:k=2"``)."""
    from ..operators.spec import parse_value

    name, _, text = str(spec).partition(":")
    if name not in SHIFTS:
        raise ValueError(f"unknown shift {name!r} in {spec!r}; choose one of {', '.join(SHIFTS)}")
    kwargs = {}
    for item in filter(None, text.split(",")):
        k, sep, v = item.partition("=")
        if not sep:
            raise ValueError(f"shift spec {spec!r}: options must look like NAME:key=value[,key=value]")
        kwargs[k.strip()] = parse_value(v.strip())
    try:
        return SHIFTS[name](x, seed=seed, **kwargs)
    except TypeError:
        raise ValueError(f"shift spec {spec!r}: {name} takes no option {', '.join(sorted(kwargs))}") from None
