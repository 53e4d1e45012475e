"""Two local CT insertions of priorshift's own design, on which no CT setting was tuned (issue 21's local shifts):
rim-enhancing lesions (:func:`insert_ring_lesion`) and mean-preserving texture patches (:func:`insert_texture`).

Same contract as :mod:`priorshift.data.artifacts` (whose placement machinery they use): an image ``(C, H, W)`` or
``(N, C, H, W)`` in [-1, 1] (or a :class:`~priorshift.data.Phantom`, whose liver mask is the region), never
modified in place; returns ``(image, mask)`` with the exact footprint (coverage >= ``MIN_COVERAGE``); outside the
mask bit-for-bit unchanged; ``seed`` an int or one seed per image. :func:`ring_set` and :func:`texture_set` are the
labelled phantom sets.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from ._render import pixel_blob
from .artifacts import LabeledSet, Phantom, _batch, _insert, _out, _phantom_set, _range, _region, _rngs, _TAGS

__all__ = ["insert_ring_lesion", "insert_texture", "ring_set", "texture_set"]

_TAGS.setdefault("ring", 0x5196)
_TAGS.setdefault("texture", 0x7E87)


def _ellipse(rng, lo, hi, scale):
    r = rng.uniform(lo, hi) * scale
    return r * rng.uniform(0.85, 1.15), r * rng.uniform(0.85, 1.15), rng.uniform(0, np.pi)


def insert_ring_lesion(image, liver_mask=None, *, rim: float = 0.2, core: float = -0.15, radius=(2.5, 4.5),
                       thickness: float = 1.0, count: int = 1, edge: float = 1.0, seed=0):
    """Rim-enhancing lesions (an abscess, a treated metastasis): a hypodense core inside a hyperdense rim.

    A smooth ellipse of ``radius`` px (a number or a (min, max) range; axis ratio 0.85-1.15) whose outer
    ``thickness`` px change the tissue by ``rim`` and whose inside by ``core`` (at full coverage; both clamped to
    [-1, 1]) — unlike :func:`insert_lesion`, its mean contrast can be near zero while its edges are not. Placement,
    ``liver_mask``, ``seed`` and the returned ``(image, mask)`` as :func:`insert_lesion`; the mask is the outer ellipse.
    """
    if isinstance(image, Phantom):
        image, liver_mask = image.image, image.liver_mask if liver_mask is None else liver_mask
    img, single = _batch(image)
    regions = _region(liver_mask, img.shape[0], img.shape[-2:], "liver_mask")
    lo, hi = _range(radius, "radius")
    if not 0 < thickness < lo:
        raise ValueError(f"thickness must be in (0, min radius = {lo}), got {thickness!r}")
    shape, last = img.shape[-2:], {}

    def make(rng, scale):
        rx, ry, ang = _ellipse(rng, lo, hi, scale)

        def render(cy, cx):  # the last call is the one placed (``_place`` returns right after it)
            slc, outer = pixel_blob(shape, cy, cx, ry, rx, ang, None, edge)
            islc, inner = pixel_blob(shape, cy, cx, ry - thickness, rx - thickness, ang, None, edge)
            last["inner"] = np.zeros_like(outer)
            last["inner"][islc[0].start - slc[0].start: islc[0].stop - slc[0].start,
                          islc[1].start - slc[1].start: islc[1].stop - slc[1].start] = inner
            return slc, outer
        return render, max(rx, ry)

    def paint(x, slc, alpha):
        inner = np.minimum(last["inner"], alpha)
        change = np.float32(rim) * (alpha - inner) + np.float32(core) * inner
        region = x[(slice(None), *slc)]
        region[:] = np.clip(region + change, -1.0, 1.0)

    masks = _insert(img, regions, _rngs(seed, img.shape[0], "ring"), make, count, "ring lesion", paint)
    return _out(img, masks, single, image)


def insert_texture(image, liver_mask=None, *, amplitude: float = 0.15, radius=(3.0, 6.0), grain: float = 0.7,
                   count: int = 1, edge: float = 1.0, seed=0):
    """Patches of altered texture at unchanged mean intensity (nodular or heterogeneous parenchyma).

    Inside a smooth ellipse (``radius`` as :func:`insert_ring_lesion`), zero-mean Gaussian noise smoothed over
    ``grain`` px is added, scaled so that the change ``amplitude · alpha · n`` has a coverage-weighted mean of
    exactly 0 and a root-mean-square of ``amplitude`` over the mask — a shift no intensity statistic sees
    (before the clamp to [-1, 1]). Placement, ``seed`` and the returned ``(image, mask)`` as :func:`insert_lesion`.
    """
    if isinstance(image, Phantom):
        image, liver_mask = image.image, image.liver_mask if liver_mask is None else liver_mask
    img, single = _batch(image)
    regions = _region(liver_mask, img.shape[0], img.shape[-2:], "liver_mask")
    lo, hi = _range(radius, "radius")
    if amplitude <= 0 or grain < 0:
        raise ValueError(f"need amplitude > 0 and grain >= 0, got amplitude={amplitude!r}, grain={grain!r}")
    shape, last = img.shape[-2:], {}

    def make(rng, scale):
        rx, ry, ang = _ellipse(rng, lo, hi, scale)
        last["rng"] = rng
        return (lambda cy, cx: pixel_blob(shape, cy, cx, ry, rx, ang, None, edge)), max(rx, ry)

    def paint(x, slc, alpha):
        n = last["rng"].standard_normal(alpha.shape)
        n = ndimage.gaussian_filter(n, grain) if grain > 0 else n
        n -= (alpha * n).sum() / alpha.sum()  # Σ alpha·n = 0: the mean change over the footprint is 0
        foot = alpha > 0
        n *= np.sqrt(np.count_nonzero(foot) / ((alpha * n)[foot] ** 2).sum())
        region = x[(slice(None), *slc)]
        region[:] = np.clip(region + np.float32(amplitude) * (alpha * n).astype(np.float32), -1.0, 1.0)

    masks = _insert(img, regions, _rngs(seed, img.shape[0], "texture"), make, count, "texture patch", paint)
    return _out(img, masks, single, image)


def ring_set(n: int, size: int = 64, seed: int = 0, *, rim: float = 0.2, core: float = -0.15, count: int = 1) -> LabeledSet:
    """``PhantomCT(n, size, seed)`` with rim-enhancing liver lesions (:func:`insert_ring_lesion`); radius
    ``(2.5, 4.5) * size / 64`` px, rim ``size / 64`` px."""
    k = size / 64
    return _phantom_set(n, size, seed, lambda ph, s: insert_ring_lesion(
        ph.image, ph.liver_mask, rim=rim, core=core, radius=(2.5 * k, 4.5 * k), thickness=k, count=count, seed=s))


def texture_set(n: int, size: int = 64, seed: int = 0, *, amplitude: float = 0.15, count: int = 1) -> LabeledSet:
    """``PhantomCT(n, size, seed)`` with texture patches in the liver (:func:`insert_texture`); radius
    ``(3, 6) * size / 64`` px."""
    k = size / 64
    return _phantom_set(n, size, seed, lambda ph, s: insert_texture(
        ph.image, ph.liver_mask, amplitude=amplitude, radius=(3 * k, 6 * k), count=count, seed=s))
