"""Localization metrics: how well a block score map points at the OOD pixels of an image.

A detector's map is ``(B, h, w)`` with one score per ``block × block`` pixel block (``h = H / block``,
``w = W / block``); **higher = more shifted**. Ground truth is a pixel mask ``(B, H, W)`` or ``(B, 1, H, W)``
(bool, or 0/1 numbers) that is true on OOD pixels (a lesion, a star, a scar). An optional body mask of the same
shape marks the pixels that belong to the imaged object (e.g. the patient, not the air around it).

* :func:`block_auroc` — KLIP's image-level (localization) AUROC: per image, an ROC over its blocks; a block is
  positive if **any** of its pixels is OOD; with a body mask only blocks that touch the body (contain **any**
  body pixel) are scored; images whose scored blocks are all one class (every ID image, for instance) are
  excluded and counted; the mean over the remaining images is reported.
* :func:`pixel_auroc` — one ROC pooled over all pixels of all images, the map upsampled by nearest neighbour.
* :func:`dice` / :func:`best_dice` — overlap of the thresholded (upsampled) map with the pixel mask.

All inputs may be numpy arrays or torch tensors (any device); results are numpy / Python floats. The
upsampling is never materialized: with an integer factor, nearest-neighbour upsampling makes every pixel of a
block carry the block's score, so pixel-level counts are block-level counts weighted by pixels per block —
exact, and ``block²`` times cheaper.

Reference: KLIP (arXiv 2605.31596, CVPR 2026), official code ``voilalab/KLIP`` (``pipeline/``): per-image block
ROC, any-pixel positive rule, blocks with any body-mask pixel. (Its legacy ``song22`` code instead required a
block to be entirely body and kept non-body blocks with score 0 inside the ROC; that is ``body_rule="all"``
here for the first part only — non-body blocks are never scored.)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from ._counts import auc_from_counts, count_curve, ood_curve, to_numpy

__all__ = [
    "BlockAUROC",
    "BestDice",
    "block_labels",
    "block_auroc",
    "pixel_auroc",
    "dice",
    "best_dice",
]


# ----------------------------------------------------------------------------------------------------------------
# validation
# ----------------------------------------------------------------------------------------------------------------


def _check_block(block, size: tuple[int, int], name: str) -> int:
    if isinstance(block, bool) or not isinstance(block, (int, np.integer)) or block < 1:
        raise ValueError(f"block must be a positive integer, got {block!r}")
    block = int(block)
    H, W = size
    if H % block or W % block:
        raise ValueError(f"block={block} must divide the {name} size (H, W) = ({H}, {W})")
    return block


def _squeeze_channel(arr: np.ndarray, name: str, what: str) -> np.ndarray:
    if arr.ndim == 4:
        if arr.shape[1] != 1:
            raise ValueError(f"{name} must be {what} or (B, 1, ...) with one channel, got shape {tuple(arr.shape)}")
        arr = arr[:, 0]
    if arr.ndim != 3:
        raise ValueError(f"{name} must be {what} or (B, 1, ...), got shape {tuple(arr.shape)}")
    return arr


def _as_mask(m, name: str) -> np.ndarray:
    """(B, H, W) or (B, 1, H, W), bool or numbers in {0, 1} -> bool (B, H, W)."""
    arr = _squeeze_channel(to_numpy(m, name), name, "(B, H, W)")
    if arr.dtype == np.bool_:
        return arr
    if arr.dtype.kind not in "iuf":
        raise ValueError(f"{name} must be boolean or hold 0/1 numbers, got dtype {arr.dtype}")
    binary = (arr == 0) | (arr == 1)
    if not binary.all():
        bad = np.unique(arr[~binary])[:5]
        raise ValueError(
            f"{name} must be binary (bool or 0/1), found other values such as {bad.tolist()}; "
            "threshold it first (e.g. mask > 0.5)"
        )
    return arr == 1


def _as_map(score_map) -> np.ndarray:
    """(B, h, w) or (B, 1, h, w) finite numbers -> float64 (B, h, w)."""
    arr = _squeeze_channel(to_numpy(score_map, "score_map"), "score_map", "(B, h, w)")
    if arr.dtype.kind not in "biuf":
        raise ValueError(f"score_map must hold real numbers, got dtype {arr.dtype}")
    arr = arr.astype(np.float64, copy=False)
    finite = np.isfinite(arr)
    if not finite.all():
        raise ValueError(f"score_map contains {arr.size - int(finite.sum())} NaN/Inf value(s); clean it first")
    return arr


def _block_counts(mask: np.ndarray, block: int) -> np.ndarray:
    """bool (B, H, W) -> int64 (B, H/block, W/block): number of true pixels per block."""
    B, H, W = mask.shape
    return mask.reshape(B, H // block, block, W // block, block).sum(axis=(2, 4), dtype=np.int64)


def _prepare(score_map, pixel_mask, block, body_mask):
    """Validate everything; return the map (B, h, w), per-block pixel counts and the block size.

    Counts (int64, (B, h, w)): ``ood_all`` OOD pixels; ``ood`` OOD pixels inside the body; ``body_n`` body pixels
    (without a body mask: ``ood = ood_all`` and ``body_n = block²``).
    """
    smap = _as_map(score_map)
    mask = _as_mask(pixel_mask, "pixel_mask")
    if body_mask is not None:
        body = _as_mask(body_mask, "body_mask")
        if body.shape != mask.shape:
            raise ValueError(
                f"body_mask shape {tuple(body.shape)} does not match pixel_mask shape {tuple(mask.shape)}"
            )
    B, H, W = mask.shape
    block = _check_block(block, (H, W), "pixel_mask")
    want = (B, H // block, W // block)
    if smap.shape != want:
        raise ValueError(
            f"score_map has shape {tuple(smap.shape)} but pixel_mask {tuple(mask.shape)} with block={block} "
            f"needs a (B, H/block, W/block) = {want} map"
        )
    ood_all = _block_counts(mask, block)
    if body_mask is None:
        return smap, ood_all, ood_all, np.full(want, block * block, dtype=np.int64), block
    return smap, ood_all, _block_counts(mask & body, block), _block_counts(body, block), block


# ----------------------------------------------------------------------------------------------------------------
# block labels and block AUROC
# ----------------------------------------------------------------------------------------------------------------


def block_labels(pixel_mask, block: int):
    """Block-level labels: a block is positive if **any** of its pixels is true (KLIP's rule).

    Args:
        pixel_mask: ``(B, H, W)`` or ``(B, 1, H, W)``, bool or 0/1 numbers, numpy or torch.
        block: block side in pixels; must divide ``H`` and ``W``.

    Returns:
        ``(B, H/block, W/block)`` bool — a torch tensor on the input's device if the input was a tensor, else a
        numpy array.
    """
    mask = _as_mask(pixel_mask, "pixel_mask")
    block = _check_block(block, mask.shape[1:], "pixel_mask")
    labels = _block_counts(mask, block) > 0
    if isinstance(pixel_mask, torch.Tensor):
        return torch.from_numpy(labels).to(pixel_mask.device)
    return labels


@dataclass(frozen=True, eq=False)
class BlockAUROC:
    """Per-image block AUROC (:func:`block_auroc`).

    ``per_image``: ``(B,)`` float64 (read-only), NaN for excluded images. ``mean`` / ``std``: over the scored
    images (``std`` with ``ddof=0``; both NaN when no image could be scored). ``n_scored`` + ``n_excluded`` = B.
    """

    per_image: np.ndarray
    mean: float
    std: float
    n_scored: int
    n_excluded: int


def block_auroc(
    score_map,
    pixel_mask,
    block: int,
    body_mask=None,
    *,
    body_rule: Literal["any", "all"] = "any",
) -> BlockAUROC:
    """KLIP's image-level localization AUROC: per image, the AUROC of its block scores against its block labels.

    For image ``b``: a block is **positive** if any of its pixels is OOD in ``pixel_mask`` (see
    :func:`block_labels`; labels come from ``pixel_mask`` alone). With ``body_mask``, only the blocks that touch
    the body (contain **any** body pixel; ``body_rule="all"``: consist only of body pixels) are scored.
    The AUROC over the scored blocks (ties count ½, = ``sklearn.metrics.roc_auc_score``) is ``per_image[b]``;
    higher block score = more OOD. An image whose scored blocks are all one class — no OOD block (every ID
    image), only OOD blocks, or no scored block at all — has no ROC: it gets NaN and is counted in
    ``n_excluded``. ``mean`` / ``std`` are over the scored images.

    Args:
        score_map: ``(B, h, w)`` (or ``(B, 1, h, w)``) block scores, ``h = H / block``, ``w = W / block``.
        pixel_mask: ``(B, H, W)`` or ``(B, 1, H, W)``, bool or 0/1: true on OOD pixels.
        block: block side in pixels (must divide ``H`` and ``W``).
        body_mask: optional, same shape as ``pixel_mask``: true on body pixels.
        body_rule: ``"any"`` (default, KLIP's unified pipeline) or ``"all"`` (KLIP's legacy song22 code).

    Reference: KLIP, arXiv 2605.31596 (CVPR 2026), code ``voilalab/KLIP``.
    """
    if body_rule not in ("any", "all"):
        raise ValueError(f"body_rule must be 'any' or 'all', got {body_rule!r}")
    smap, ood_all, _, body_n, block = _prepare(score_map, pixel_mask, block, body_mask)
    B = smap.shape[0]
    pos = (ood_all > 0).reshape(B, -1)
    scored = (body_n > 0 if body_rule == "any" else body_n == block * block).reshape(B, -1)
    flat = smap.reshape(B, -1)
    n_pos = (pos & scored).sum(axis=1)
    n_neg = (~pos & scored).sum(axis=1)
    ok = (n_pos > 0) & (n_neg > 0)
    per_image = np.full(B, np.nan)
    for b in np.flatnonzero(ok):  # one vectorized AUROC per image with both classes
        s, p = flat[b][scored[b]], pos[b][scored[b]]
        per_image[b] = auc_from_counts(*ood_curve(s[~p], s[p]))
    per_image.setflags(write=False)
    n_scored = int(ok.sum())
    vals = per_image[ok]
    mean = float(vals.mean()) if n_scored else float("nan")
    std = float(vals.std()) if n_scored else float("nan")
    return BlockAUROC(per_image=per_image, mean=mean, std=std, n_scored=n_scored, n_excluded=B - n_scored)


# ----------------------------------------------------------------------------------------------------------------
# pixel-level metrics (nearest upsampling, computed on block counts)
# ----------------------------------------------------------------------------------------------------------------


def pixel_auroc(score_map, pixel_mask, block: int, body_mask=None) -> float:
    """AUROC pooled over all pixels of all images, the block map upsampled by nearest neighbour.

    Every pixel carries its block's score; a pixel is positive if ``pixel_mask`` is true there. With
    ``body_mask``, only body pixels take part. Equal to ``roc_auc_score(mask.ravel(), upsampled.ravel())``
    (ties count ½), computed without materializing the upsampled map. Unlike :func:`block_auroc`, large OOD
    regions weigh more than small ones and images are not averaged separately.

    Raises ``ValueError`` when the pooled pixels are all one class.
    """
    smap, _, ood, body_n, _ = _prepare(score_map, pixel_mask, block, body_mask)
    pos_w = ood.ravel()
    neg_w = (body_n - ood).ravel()
    if pos_w.sum() == 0 or neg_w.sum() == 0:
        which = "no OOD" if pos_w.sum() == 0 else "only OOD"
        raise ValueError(f"pixel_auroc is undefined: the (body) pixels contain {which} pixels")
    _, tps, fps = count_curve(smap.ravel(), pos_w, neg_w)
    return auc_from_counts(tps, fps)


def _dice_counts(pred: np.ndarray, ood: np.ndarray, body_n: np.ndarray) -> np.ndarray:
    """Per-image Dice from block-level predictions (B, h, w) bool and pixel counts."""
    B = pred.shape[0]
    inter = np.where(pred, ood, 0).reshape(B, -1).sum(axis=1)
    n_pred = np.where(pred, body_n, 0).reshape(B, -1).sum(axis=1)
    n_true = ood.reshape(B, -1).sum(axis=1)
    denom = n_pred + n_true
    return np.where(denom > 0, 2.0 * inter / np.maximum(denom, 1), 1.0)


def dice(score_map, pixel_mask, block: int, threshold: float, body_mask=None) -> np.ndarray:
    """Per-image Dice of the thresholded, nearest-upsampled map against the pixel mask.

    Prediction ``P = upsample(score_map) >= threshold``; ground truth ``G = pixel_mask``; with ``body_mask``,
    both are restricted to body pixels. ``Dice = 2|P ∩ G| / (|P| + |G|)``, defined as 1 when both are empty
    (an ID image correctly left blank). Returns ``(B,)`` float64.
    """
    smap, _, ood, body_n, _ = _prepare(score_map, pixel_mask, block, body_mask)
    threshold = float(threshold)
    if np.isnan(threshold):
        raise ValueError("threshold must be a number, got NaN")
    return _dice_counts(smap >= threshold, ood, body_n)


@dataclass(frozen=True, eq=False)
class BestDice:
    """Result of :func:`best_dice`: the best ``mean`` per-image Dice, the ``threshold`` reaching it, and the
    ``(B,)`` ``per_image`` Dice at that threshold (read-only)."""

    mean: float
    threshold: float
    per_image: np.ndarray


def best_dice(score_map, pixel_mask, block: int, body_mask=None, *, thresholds=None) -> BestDice:
    """The best mean per-image Dice over one threshold shared by all images (⌈Dice⌉).

    **Optimistic — an upper bound**: the threshold is chosen on the very masks it is scored against, so it
    reports what the map could reach with an oracle threshold, not what a deployed detector would get (pick the
    threshold on held-out data and use :func:`dice` for that). Convention as in Baur et al., "Autoencoders for
    unsupervised anomaly segmentation in brain MR images: a comparative study", Medical Image Analysis 2021.

    Candidates: by default every distinct value of ``score_map`` plus ``+inf`` (empty prediction); or the given
    ``thresholds``. The mean Dice is evaluated at all candidates at once (O(N log N) in the number of blocks N:
    each image's Dice is a step function of the threshold; its steps are merged across images with one sort).
    Among equally good thresholds the highest is returned. ``per_image`` and ``mean`` are then recomputed
    exactly with :func:`dice`.
    """
    smap, _, ood, body_n, _ = _prepare(score_map, pixel_mask, block, body_mask)
    B = smap.shape[0]
    s = smap.reshape(B, -1)
    order = np.argsort(-s, axis=1, kind="stable")  # descending per image
    s_sorted = np.take_along_axis(s, order, axis=1)
    g = np.take_along_axis(ood.reshape(B, -1), order, axis=1)
    c = np.take_along_axis(body_n.reshape(B, -1), order, axis=1)
    n_true = g.sum(axis=1, keepdims=True)
    inter = np.cumsum(g, axis=1)
    n_pred = np.cumsum(c, axis=1)
    denom = n_pred + n_true
    d_prefix = np.where(denom > 0, 2.0 * inter / np.maximum(denom, 1), 1.0)  # Dice after j top blocks
    d0 = np.where(n_true[:, 0] > 0, 0.0, 1.0)  # empty prediction
    deltas = np.diff(np.concatenate([d0[:, None], d_prefix], axis=1), axis=1)
    # Merge steps of all images: the total Dice at threshold t is sum(d0) + sum of deltas of values >= t.
    # Ties inside an image telescope, because a threshold never splits equal values.
    vals = s_sorted.ravel()
    gorder = np.argsort(-vals, kind="stable")
    vals = vals[gorder]
    csum = np.cumsum(deltas.ravel()[gorder])
    base = d0.sum()
    if thresholds is None:
        ends = np.r_[np.flatnonzero(vals[1:] != vals[:-1]), vals.size - 1]
        cand = np.r_[np.inf, vals[ends]]
        total = np.r_[base, base + csum[ends]]
    else:
        cand = np.atleast_1d(to_numpy(thresholds, "thresholds")).astype(np.float64).ravel()
        if cand.size == 0 or np.isnan(cand).any():
            raise ValueError("thresholds must be a non-empty sequence of numbers without NaN")
        n_ge = vals.size - np.searchsorted(vals[::-1], cand, side="left")  # number of block values >= t
        total = base + np.where(n_ge > 0, csum[np.maximum(n_ge - 1, 0)], 0.0)
        cand_order = np.argsort(-cand, kind="stable")  # highest threshold first among ties
        cand, total = cand[cand_order], total[cand_order]
    best = int(np.argmax(total))
    thr = float(cand[best])
    per_image = _dice_counts(smap >= thr, ood, body_n)
    per_image.setflags(write=False)
    return BestDice(mean=float(per_image.mean()), threshold=thr, per_image=per_image)
