"""Localized out-of-distribution insertions, each with its exact ground-truth pixel mask.

Every insertion takes an image ``(C, H, W)`` or a batch ``(N, C, H, W)`` in [-1, 1], never modifies it in
place, and returns ``(image, mask)`` with ``mask`` bool ``(H, W)`` / ``(N, H, W)``. The mask is the exact
footprint of the inserted objects: the pixels they cover with coverage >= ``MIN_COVERAGE`` (lower, sub-pixel
coverage is dropped, not painted). Outside the mask the image is bit-for-bit unchanged. Objects of one call
never overlap (at least one pixel apart) and lie entirely inside the allowed region (liver / body / image).

Randomness: ``seed`` is an int (image ``i`` of a batch uses ``derive_seed(seed, i)``) or a sequence of
per-image seeds (image ``i`` depends on ``seed[i]`` only — what the ``*_set`` helpers use, so any subset of a
set is reproducible). Sizes are in pixels; the ``*_set`` helpers scale their defaults with ``size / 64``.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from scipy import ndimage
from torch import Tensor

from .._checks import check_tensor
from ._render import pixel_blob, pixel_curve, pixel_star
from .phantoms import Phantom, PhantomCT, derive_seed

__all__ = ["MIN_COVERAGE", "insert_lesion", "insert_star", "insert_scar", "paste_patch", "LabeledSet",
           "healthy_set", "lesion_set", "blob_set", "star_set", "scar_set"]

MIN_COVERAGE = 0.2
_RING = np.ones((3, 3), dtype=bool)  # objects stay apart in the 8-connected sense
_TAGS = {"lesion": 0x1E51, "star": 0x57A2, "scar": 0x5CA2, "patch": 0x9A7C, "set": 0x5E75, "blob": 0xB10B}


def _batch(image) -> tuple[np.ndarray, bool]:
    check_tensor(image, "image")
    if image.ndim not in (3, 4):
        raise ValueError(f"image must be (C, H, W) or (N, C, H, W), got shape {tuple(image.shape)}")
    single = image.ndim == 3
    return (image[None] if single else image).detach().cpu().numpy().astype(np.float32, copy=True), single


def _region(mask, n: int, hw, name: str) -> np.ndarray:
    """``(N, H, W)`` bool from ``None`` (whole image), ``(H, W)`` or ``(N, H, W)``."""
    if mask is None:
        return np.ones((n, *hw), dtype=bool)
    m = np.asarray(mask.cpu() if isinstance(mask, Tensor) else mask).astype(bool)
    if m.shape == tuple(hw):
        m = np.broadcast_to(m, (n, *hw))
    if m.shape != (n, *hw):
        raise ValueError(f"{name} must have shape {tuple(hw)} or {(n, *hw)}, got {m.shape}")
    return m


def _rngs(seed, n: int, kind: str) -> list[np.random.Generator]:
    tag = _TAGS[kind]
    if isinstance(seed, (int, np.integer)):
        return [np.random.default_rng(derive_seed(int(seed), i, tag)) for i in range(n)]
    seeds = [int(s) for s in seed]
    if len(seeds) != n:
        raise ValueError(f"got {len(seeds)} seeds for {n} images; give an int or one seed per image")
    return [np.random.default_rng(derive_seed(s, 0, tag)) for s in seeds]


def _out(img: np.ndarray, masks: np.ndarray, single: bool, like: Tensor):
    x = torch.from_numpy(img).to(dtype=like.dtype, device=like.device)
    m = torch.from_numpy(masks).to(like.device)
    return (x[0], m[0]) if single else (x, m)


def _range(v, name: str) -> tuple[float, float]:
    lo, hi = (float(v), float(v)) if np.isscalar(v) else (float(v[0]), float(v[1]))
    if not 0 < lo <= hi:
        raise ValueError(f"{name} must be a positive number or a (min, max) pair with 0 < min <= max, got {v!r}")
    return lo, hi


def _place(rng, depth: np.ndarray, region: np.ndarray, taken: np.ndarray, render, reach: float, tries: int = 100):
    """Try random centres until ``render(cy, cx) -> (slc, alpha)`` fits inside ``region`` without touching
    ``taken`` or the border. Centres are drawn where the free space is at least ``0.8 * reach`` deep
    (``depth``: distance transform of the free part of ``region``). Returns ``(slc, alpha)`` with coverage below
    ``MIN_COVERAGE`` zeroed, or ``None``."""
    h, w = region.shape
    idx = np.flatnonzero(depth >= 0.8 * reach)
    if idx.size == 0:
        return None
    for _ in range(tries):
        cy, cx = divmod(int(idx[rng.integers(idx.size)]), w)
        slc, alpha = render(cy + rng.uniform(-0.5, 0.5), cx + rng.uniform(-0.5, 0.5))
        alpha[alpha < MIN_COVERAGE] = 0.0
        foot = alpha > 0
        if not foot.any() or foot[0].any() and slc[0].start == 0 or foot[:, 0].any() and slc[1].start == 0:
            continue
        if foot[-1].any() and slc[0].stop == h or foot[:, -1].any() and slc[1].stop == w:
            continue
        if region[slc][foot].all() and not taken[slc][foot].any():
            return slc, alpha
    return None


def _insert(img, regions, rngs, make, count: int, what: str, paint):
    """Place ``count`` objects per image (``make(rng, scale) -> (render, reach)``; ``reach``: the object's
    radius in px), then ``paint(img_i, slc, alpha)`` each."""
    n, _, h, w = img.shape
    masks = np.zeros((n, h, w), dtype=bool)
    for i in range(n):
        for k in range(int(count)):
            taken = ndimage.binary_dilation(masks[i], _RING) if masks[i].any() else masks[i]
            free = np.pad(regions[i] & ~taken, 1)  # the image border counts as outside
            depth = ndimage.distance_transform_edt(free)[1:-1, 1:-1]
            for attempt in range(5):  # shrink the object a little after each failed round
                got = _place(rngs[i], depth, regions[i], taken, *make(rngs[i], 0.85 ** attempt))
                if got is not None:
                    break
            else:
                raise ValueError(f"could not place {what} #{k + 1} in image {i}: the allowed region "
                                 f"({int(regions[i].sum())} px) is too small or too full; use smaller objects or count")
            slc, alpha = got
            paint(img[i], slc, alpha)
            masks[i][slc] |= alpha > 0
    return masks


def insert_lesion(image, liver_mask=None, *, contrast: float = -0.15, radius=(2.0, 4.0), count: int = 1,
                  edge: float = 1.0, seed=0):
    """Small smooth lesions (tumour-like blobs) inside the liver: the "hallucinated away" case.

    ``image``: a :class:`Phantom` (its liver mask is used) or an image ``(C, H, W)`` / ``(N, C, H, W)`` with
    ``liver_mask`` ``(H, W)`` / ``(N, H, W)`` (``None``: anywhere in the image). ``contrast``: the **mean**
    intensity change over each lesion's mask, relative to the underlying tissue (negative = hypodense; the
    profile is flat with a soft ``edge``-pixel rim, the core change is slightly larger in magnitude).
    ``radius``: px, a number or a (min, max) range drawn per lesion (shape: an ellipse with axis ratio
    0.85-1.15 and a slightly irregular outline). The whole lesion lies inside the liver mask. Values are
    clamped to [-1, 1]. Returns ``(image, mask)``.
    """
    if isinstance(image, Phantom):
        image, liver_mask = image.image, image.liver_mask if liver_mask is None else liver_mask
    img, single = _batch(image)
    regions = _region(liver_mask, img.shape[0], img.shape[-2:], "liver_mask")
    lo, hi = _range(radius, "radius")
    shape = img.shape[-2:]

    def make(rng, scale):
        r = rng.uniform(lo, hi) * scale
        rx, ry, ang = r * rng.uniform(0.85, 1.15), r * rng.uniform(0.85, 1.15), rng.uniform(0, np.pi)
        harm = rng.normal(0, 0.04, 2) + 1j * rng.normal(0, 0.04, 2)
        return (lambda cy, cx: pixel_blob(shape, cy, cx, ry, rx, ang, harm, edge)), max(rx, ry)

    def paint(x, slc, alpha):
        foot = alpha > 0
        amp = float(contrast) * np.count_nonzero(foot) / float(alpha.sum())
        region = x[(slice(None), *slc)]
        region[:, foot] = np.clip(region[:, foot] + np.float32(amp) * alpha[foot], -1.0, 1.0)

    masks = _insert(img, regions, _rngs(seed, img.shape[0], "lesion"), make, count, "lesion", paint)
    return _out(img, masks, single, image)


def _blend(value: float):
    def paint(x, slc, alpha):
        region = x[(slice(None), *slc)]
        region *= 1.0 - alpha  # exact: value where alpha = 1, untouched where alpha = 0
        region += alpha * np.float32(value)
    return paint


def insert_star(image, body_mask=None, *, size: float = 4.0, intensity: float = 1.0, count: int = 1,
                inner_ratio: float = 0.45, edge: float = 1.0, seed=0):
    """Bright 5-point stars inside the body (KLIP's tuning case).

    ``size``: outer radius in px (inner radius ``inner_ratio * size``; orientation random); ``intensity``: the
    value painted, blended with the star's coverage; ``body_mask`` ``(H, W)``/``(N, H, W)`` (``None``: the
    image); a :class:`Phantom` may be passed as ``image`` (its body mask is used). Returns ``(image, mask)``.
    """
    if isinstance(image, Phantom):
        image, body_mask = image.image, image.body_mask if body_mask is None else body_mask
    img, single = _batch(image)
    regions = _region(body_mask, img.shape[0], img.shape[-2:], "body_mask")
    if size <= 0 or not 0 < inner_ratio < 1:
        raise ValueError(f"need size > 0 and 0 < inner_ratio < 1, got size={size}, inner_ratio={inner_ratio}")
    shape = img.shape[-2:]

    def make(rng, scale):
        rot = rng.uniform(0, 2 * np.pi)
        return (lambda cy, cx: pixel_star(shape, cy, cx, size * scale, size * scale * inner_ratio, rot, edge)), \
            size * scale

    masks = _insert(img, regions, _rngs(seed, img.shape[0], "star"), make, count, "star", _blend(intensity))
    return _out(img, masks, single, image)


def insert_scar(image, body_mask=None, *, width: float = 1.0, length: float = 12.0, intensity: float = 1.0,
                count: int = 1, curvature: float = 0.35, edge: float = 1.0, seed=0):
    """Thin curved lines (cubic Bézier curves): scars, wires, cracks.

    ``width``/``length`` in px (chord length of the curve); ``curvature``: the control points are offset up to
    ``curvature * length`` sideways; ``intensity``: the value painted (1 = bright, -1 = dark air track);
    ``body_mask`` as in :func:`insert_star`. Returns ``(image, mask)``.
    """
    if isinstance(image, Phantom):
        image, body_mask = image.image, image.body_mask if body_mask is None else body_mask
    img, single = _batch(image)
    regions = _region(body_mask, img.shape[0], img.shape[-2:], "body_mask")
    if width <= 0 or length <= 0:
        raise ValueError(f"width and length must be positive, got width={width}, length={length}")
    shape = img.shape[-2:]

    def make(rng, scale):
        L, th = length * scale, rng.uniform(0, 2 * np.pi)
        u, n = np.array([np.cos(th), np.sin(th)]), np.array([-np.sin(th), np.cos(th)])
        b1, b2 = rng.uniform(-curvature, curvature, 2) * L

        def render(cy, cx):
            p0 = np.array([cx, cy]) - 0.5 * L * u
            ctrl = np.stack([p0, p0 + L / 3 * u + b1 * n, p0 + 2 * L / 3 * u + b2 * n, p0 + L * u])
            return pixel_curve(shape, ctrl, width, edge)
        return render, 0.5 * width + 1.0  # a curve need not fit in a disc of its length: only its width

    masks = _insert(img, regions, _rngs(seed, img.shape[0], "scar"), make, count, "scar", _blend(intensity))
    return _out(img, masks, single, image)


def paste_patch(image, patch, position=None, *, alpha=None, background: float = -1.0, seed=0):
    """Paste ``patch`` (``(h, w)``, ``(C, h, w)`` or per image ``(N, C, h, w)``, values in [-1, 1]) into images.

    ``position``: ``(row, col)`` of the patch's top-left corner, or ``None`` for a random position (from
    ``seed``) where it fits entirely. ``alpha``: ``None`` -> opacity from the patch itself,
    ``(patch - background) / (1 - background)`` clipped to [0, 1] (a digit's strokes are pasted, its
    background is not); a number -> that opacity over the whole rectangle; an ``(h, w)`` array -> per pixel.
    Result: ``(1 - alpha) * image + alpha * patch``. Returns ``(image, mask)``, mask = ``alpha >= MIN_COVERAGE``.
    """
    img, single = _batch(image)
    n, c, h, w = img.shape
    p = np.asarray(patch.detach().cpu() if isinstance(patch, Tensor) else patch, dtype=np.float32)
    p = p[None, None] if p.ndim == 2 else (p[None] if p.ndim == 3 else p)
    if p.ndim != 4 or p.shape[0] not in (1, n) or p.shape[1] not in (1, c):
        raise ValueError(f"patch must be (h, w), (C, h, w) or (N, C, h, w) matching the image, got {np.shape(patch)}")
    ph, pw = p.shape[-2:]
    if ph > h or pw > w:
        raise ValueError(f"patch {ph}x{pw} does not fit in the image {h}x{w}")
    if alpha is None:
        a = np.clip((p.mean(1) - background) / (1.0 - background), 0.0, 1.0)
    else:
        a = np.broadcast_to(np.asarray(alpha, dtype=np.float32), (ph, pw))[None]
    a = np.where(a >= MIN_COVERAGE, a, 0.0).astype(np.float32)
    rngs = _rngs(seed, n, "patch")
    masks = np.zeros((n, h, w), dtype=bool)
    for i in range(n):
        r, q = position if position is not None else (rngs[i].integers(0, h - ph + 1), rngs[i].integers(0, w - pw + 1))
        if not (0 <= r <= h - ph and 0 <= q <= w - pw):
            raise ValueError(f"position {position} puts the {ph}x{pw} patch outside the {h}x{w} image")
        ai, pi = a[min(i, len(a) - 1)], p[min(i, len(p) - 1)]
        region = img[i, :, r:r + ph, q:q + pw]
        region *= 1.0 - ai
        region += ai * pi
        masks[i, r:r + ph, q:q + pw] = ai > 0
    return _out(img, masks, single, image)


class LabeledSet(NamedTuple):
    """``images`` ``(N, 1, H, W)`` in [-1, 1]; ``masks`` ``(N, H, W)`` bool ground-truth OOD pixels (all False
    for healthy images); ``body_masks`` ``(N, H, W)`` bool (where localization is scored)."""

    images: Tensor
    masks: Tensor
    body_masks: Tensor


def _phantom_set(n, size, seed, insert=None) -> LabeledSet:
    """Phantoms ``0..n-1`` of ``PhantomCT(n, size, seed)``, each with ``insert(phantom, seed_i)`` applied."""
    ds = PhantomCT(n, size, seed)
    ims, masks, bodies = [], [], []
    for i in range(n):
        ph = ds[i]
        if insert is None:
            im, m = ph.image, torch.zeros_like(ph.body_mask)
        else:
            im, m = insert(ph, [derive_seed(seed, i, _TAGS["set"])])
        ims.append(im)
        masks.append(m)
        bodies.append(ph.body_mask)
    return LabeledSet(torch.stack(ims), torch.stack(masks), torch.stack(bodies))


def healthy_set(n: int, size: int = 64, seed: int = 0) -> LabeledSet:
    """The in-distribution phantoms ``PhantomCT(n, size, seed)`` with empty masks."""
    return _phantom_set(n, size, seed)


def lesion_set(n: int, size: int = 64, seed: int = 0, *, contrast: float = -0.15, radius=None,
               count: int = 1) -> LabeledSet:
    """``PhantomCT(n, size, seed)`` with liver lesions (see :func:`insert_lesion`); ``radius`` defaults to
    ``(2, 4) * size / 64`` px. The same ``seed`` gives the same anatomy as :func:`healthy_set` (paired sets);
    use different seeds for independent ID and OOD sets."""
    radius = tuple(r * size / 64 for r in (2.0, 4.0)) if radius is None else radius
    return _phantom_set(n, size, seed, lambda ph, s: insert_lesion(
        ph.image, ph.liver_mask, contrast=contrast, radius=radius, count=count, seed=s))


def blob_set(n: int, size: int = 64, seed: int = 0, *, contrast=(0.1, 0.4), radius=None, count: int = 1) -> LabeledSet:
    """``PhantomCT(n, size, seed)`` with one small smooth blob per image *anywhere in the body*, of either sign:
    a generic focal-anomaly family for tuning (synthetic anomalies), broader than :func:`lesion_set`. Per image,
    ``|contrast|`` is drawn uniformly from the (min, max) range and the sign at random; ``radius`` defaults to
    ``(1.5, 5) * size / 64`` px. The draws depend only on ``seed`` and the image index."""
    lo_c, hi_c = _range(contrast, "contrast (a range of magnitudes; the sign is drawn per image)")
    radius = tuple(r * size / 64 for r in (1.5, 5.0)) if radius is None else radius

    def insert(ph, s):
        rng = np.random.default_rng(s[0] ^ _TAGS["blob"])
        c = float(rng.uniform(lo_c, hi_c)) * (1.0 if rng.random() < 0.5 else -1.0)
        return insert_lesion(ph.image, ph.body_mask, contrast=c, radius=radius, count=count, seed=s)

    return _phantom_set(n, size, seed, insert)


def star_set(n: int, size: int = 64, seed: int = 0, *, star_size: float | None = None, intensity: float = 1.0,
             count: int = 1) -> LabeledSet:
    """``PhantomCT(n, size, seed)`` with stars inside the body (:func:`insert_star`); ``star_size`` defaults to
    ``4 * size / 64`` px."""
    star_size = 4.0 * size / 64 if star_size is None else star_size
    return _phantom_set(n, size, seed, lambda ph, s: insert_star(
        ph.image, ph.body_mask, size=star_size, intensity=intensity, count=count, seed=s))


def scar_set(n: int, size: int = 64, seed: int = 0, *, width: float | None = None, length: float | None = None,
             intensity: float = 1.0, count: int = 1) -> LabeledSet:
    """``PhantomCT(n, size, seed)`` with curved lines inside the body (:func:`insert_scar`); ``width`` and
    ``length`` default to ``1`` and ``12`` px times ``size / 64``."""
    width = size / 64 if width is None else width
    length = 12.0 * size / 64 if length is None else length
    return _phantom_set(n, size, seed, lambda ph, s: insert_scar(
        ph.image, ph.body_mask, width=width, length=length, intensity=intensity, count=count, seed=s))
