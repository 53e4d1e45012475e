"""Localization metrics (priorshift.metrics.localization): block AUROC, pixel AUROC and Dice against
reference loops, scikit-learn and hand-made cases.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import ndimage
from sklearn.metrics import roc_auc_score

from priorshift import metrics as M

TOL = 1e-10


# ================================================================================================================
# localization
# ================================================================================================================


def _loop_block_auroc(score_map, mask, block, body=None, rule="any"):
    """Straightforward reference: Python loops over images and blocks, sklearn per image."""
    B, H, W = mask.shape
    out = np.full(B, np.nan)
    for b in range(B):
        ys, ss = [], []
        for i in range(H // block):
            for j in range(W // block):
                win = (b, slice(i * block, (i + 1) * block), slice(j * block, (j + 1) * block))
                if body is not None:
                    inside = body[win].any() if rule == "any" else body[win].all()
                    if not inside:
                        continue
                ys.append(int(mask[win].any()))
                ss.append(score_map[b, i, j])
        if len(set(ys)) == 2:
            out[b] = roc_auc_score(ys, ss)
    return out


def _random_loc(seed=0, B=12, H=24, W=16, block=4, ties=False):
    rng = np.random.default_rng(seed)
    h, w = H // block, W // block
    smap = rng.integers(0, 3, (B, h, w)).astype(float) if ties else rng.normal(size=(B, h, w))
    mask = np.zeros((B, H, W), dtype=bool)
    body = np.zeros((B, H, W), dtype=bool)
    yy, xx = np.mgrid[:H, :W]
    for b in range(B):
        r = rng.uniform(2, 5)
        cy, cx = rng.uniform(0, H), rng.uniform(0, W)
        mask[b] = (yy - cy) ** 2 + (xx - cx) ** 2 < r**2
        body[b] = ((yy - H / 2) / (0.45 * H)) ** 2 + ((xx - W / 2) / (0.4 * W)) ** 2 < 1
        smap[b] += 1.5 * (ndimage.maximum_filter(mask[b], size=3)[::block, ::block])  # signal, not perfect
    mask[0] = False  # an ID image: excluded
    mask[1] = True  # all OOD: excluded
    mask[2, :, :] = False
    mask[2, 0, 0] = True  # only a corner pixel is OOD (outside the body): excluded when a body mask is used
    return smap, mask, body, block


def test_block_labels():
    mask = np.zeros((2, 4, 6), dtype=bool)
    mask[0, 1, 1] = True
    mask[1, 3, 5] = True
    want = np.zeros((2, 2, 3), dtype=bool)
    want[0, 0, 0] = True
    want[1, 1, 2] = True
    np.testing.assert_array_equal(M.block_labels(mask, 2), want)
    np.testing.assert_array_equal(M.block_labels(mask[:, None].astype(np.uint8), 2), want)
    t = M.block_labels(torch.from_numpy(mask).float(), 2)
    assert isinstance(t, torch.Tensor) and t.dtype == torch.bool
    np.testing.assert_array_equal(t.numpy(), want)
    np.testing.assert_array_equal(M.block_labels(mask, 1), mask)


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("with_body", [False, True])
def test_block_auroc_matches_reference_loop(ties, with_body):
    smap, mask, body, block = _random_loc(seed=1 + ties, ties=ties)
    body_arg = body if with_body else None
    ref = _loop_block_auroc(smap, mask, block, body_arg)
    res = M.block_auroc(smap, mask, block, body_arg)
    np.testing.assert_allclose(res.per_image, ref, rtol=0, atol=TOL)  # NaN where NaN
    assert np.isnan(res.per_image[:2]).all()
    assert np.isnan(res.per_image[2]) == with_body
    ok = ~np.isnan(ref)
    assert res.n_scored == ok.sum() and res.n_excluded == (~ok).sum() and res.n_scored + res.n_excluded == len(ref)
    assert res.mean == pytest.approx(ref[ok].mean(), abs=TOL)
    assert res.std == pytest.approx(ref[ok].std(), abs=TOL)
    with pytest.raises(ValueError):
        res.per_image[0] = 0.5  # read-only
    # torch inputs, (B, 1, ...) shapes and 0/1 masks give the same
    res_t = M.block_auroc(
        torch.from_numpy(smap)[:, None].float().double(),
        torch.from_numpy(mask.astype(np.float32))[:, None],
        block,
        None if body_arg is None else torch.from_numpy(body_arg),
    )
    np.testing.assert_array_equal(res_t.per_image, res.per_image)


def test_block_auroc_body_rule_all_and_edge_cases():
    smap, mask, body, block = _random_loc(seed=3)
    ref = _loop_block_auroc(smap, mask, block, body, rule="all")
    res = M.block_auroc(smap, mask, block, body, body_rule="all")
    np.testing.assert_allclose(res.per_image, ref, rtol=0, atol=TOL)
    # no image scoreable: NaN summary, no warning
    none = M.block_auroc(smap[:2], mask[:2], block)
    assert none.n_scored == 0 and none.n_excluded == 2 and math.isnan(none.mean) and math.isnan(none.std)
    # an empty body excludes the image
    empty_body = body.copy()
    empty_body[5] = False
    assert np.isnan(M.block_auroc(smap, mask, block, empty_body).per_image[5])
    # labels come from the pixel mask alone: an OOD pixel outside the body still marks its (body-touching) block
    m = np.zeros((1, 4, 4), dtype=bool)
    bd = np.zeros((1, 4, 4), dtype=bool)
    bd[0, :, :3] = True  # column 3 is outside the body, its blocks still touch it
    m[0, 0, 3] = True
    sm = np.array([[[0.0, 1.0], [0.5, 0.2]]])  # block (0, 1) is positive and scores highest
    assert M.block_auroc(sm, m, 2, bd).per_image[0] == 1.0


def test_pixel_auroc_matches_sklearn_on_upsampled_map():
    smap, mask, body, block = _random_loc(seed=4, ties=True)
    up = smap.repeat(block, axis=1).repeat(block, axis=2)
    assert abs(M.pixel_auroc(smap, mask, block) - roc_auc_score(mask.ravel(), up.ravel())) < TOL
    got = M.pixel_auroc(smap, mask, block, body)
    assert abs(got - roc_auc_score(mask[body], up[body])) < TOL
    # nearest upsampling in torch is the same replication
    up_t = torch.nn.functional.interpolate(torch.from_numpy(smap)[:, None], scale_factor=block, mode="nearest")
    np.testing.assert_array_equal(up_t[:, 0].numpy(), up)
    with pytest.raises(ValueError, match="no OOD"):
        M.pixel_auroc(smap, np.zeros_like(mask), block)


def _pixel_dice(smap, mask, block, thr, body=None):
    up = smap.repeat(block, axis=1).repeat(block, axis=2)
    out = []
    for b in range(len(mask)):
        p, g = up[b] >= thr, mask[b].copy()
        if body is not None:
            p, g = p & body[b], g & body[b]
        den = p.sum() + g.sum()
        out.append(1.0 if den == 0 else 2 * (p & g).sum() / den)
    return np.array(out)


def test_dice_hand_cases():
    mask = np.zeros((3, 4, 4), dtype=bool)
    mask[0, :2, :2] = True  # image 0: GT = top-left block
    mask[1, 0, 0] = True  # image 1: GT = one pixel
    # image 2: no GT
    smap = np.array(
        [
            [[1.0, 0.0], [0.0, 0.0]],  # predicts exactly the GT block
            [[1.0, 0.0], [0.0, 0.0]],  # predicts 4 pixels, 1 of them true: 2*1/(4+1)
            [[0.0, 0.0], [0.0, 0.0]],  # predicts nothing, nothing true: 1
        ]
    )
    np.testing.assert_allclose(M.dice(smap, mask, 2, 0.5), [1.0, 0.4, 1.0])
    # threshold above everything: empty predictions -> 0 where GT exists, 1 where it does not
    np.testing.assert_allclose(M.dice(smap, mask, 2, 2.0), [0.0, 0.0, 1.0])
    # threshold at or below everything: everything predicted (>= is inclusive)
    np.testing.assert_allclose(M.dice(smap, mask, 2, 0.0), [2 * 4 / 20, 2 * 1 / 17, 0.0])
    # a body mask restricts both prediction and ground truth
    body = np.ones((3, 4, 4), dtype=bool)
    body[1, :2, :2] = False
    body[1, 0, 0] = True
    np.testing.assert_allclose(M.dice(smap, mask, 2, 0.5, body), [1.0, 1.0, 1.0])


def test_dice_and_best_dice_match_pixel_reference():
    smap, mask, body, block = _random_loc(seed=5, ties=True)
    for bd in (None, body):
        for thr in (-0.5, 0.0, 0.7, 1.0, 2.0, 10.0):
            np.testing.assert_allclose(M.dice(smap, mask, block, thr, bd), _pixel_dice(smap, mask, block, thr, bd))
        cands = np.r_[np.inf, np.unique(smap)]
        means = np.array([_pixel_dice(smap, mask, block, t, bd).mean() for t in cands])
        res = M.best_dice(smap, mask, block, bd)
        assert res.mean == pytest.approx(means.max(), abs=1e-12)
        assert res.mean == pytest.approx(_pixel_dice(smap, mask, block, res.threshold, bd).mean(), abs=1e-12)
        np.testing.assert_allclose(res.per_image, _pixel_dice(smap, mask, block, res.threshold, bd))
        # the oracle threshold is an upper bound for every fixed threshold
        assert all(res.mean >= m - 1e-12 for m in means)
        # restricted candidate set
        some = np.array([0.5, 1.5, -3.0])
        sub = M.best_dice(smap, mask, block, bd, thresholds=some)
        sub_means = np.array([_pixel_dice(smap, mask, block, t, bd).mean() for t in some])
        assert sub.mean == pytest.approx(sub_means.max(), abs=1e-12) and sub.threshold in some
    # continuous scores too
    smap2, mask2, _, _ = _random_loc(seed=6)
    cands = np.r_[np.inf, np.unique(smap2)]
    best = max(_pixel_dice(smap2, mask2, block, t).mean() for t in cands)
    assert M.best_dice(smap2, mask2, block).mean == pytest.approx(best, abs=1e-12)


def test_localization_bad_inputs():
    smap, mask, body, block = _random_loc(seed=7, B=3)
    fns = [
        lambda s, m, b, **k: M.block_auroc(s, m, b, **k),
        lambda s, m, b, **k: M.pixel_auroc(s, m, b, **k),
        lambda s, m, b, **k: M.dice(s, m, b, 0.5, **k),
        lambda s, m, b, **k: M.best_dice(s, m, b, **k),
    ]
    for fn in fns:
        with pytest.raises(ValueError, match="must divide"):
            fn(smap, mask, 5)
        with pytest.raises(ValueError, match="positive integer"):
            fn(smap, mask, 0)
        with pytest.raises(ValueError, match=r"needs a \(B, H/block, W/block\)"):
            fn(smap, mask, 2)
        with pytest.raises(ValueError, match=r"needs a \(B, H/block, W/block\)"):
            fn(smap[:2], mask, block)
        with pytest.raises(ValueError, match="binary"):
            fn(smap, mask * 0.5, block)
        with pytest.raises(ValueError, match="one channel"):
            fn(smap, np.stack([mask, mask], 1), block)
        with pytest.raises(ValueError, match="body_mask shape"):
            fn(smap, mask, block, body_mask=body[:, :8])
        with pytest.raises(ValueError, match="NaN/Inf"):
            fn(np.where(smap > 0, np.nan, smap), mask, block)
        with pytest.raises(ValueError, match=r"\(B, h, w\)"):
            fn(smap[0], mask, block)
    with pytest.raises(ValueError, match="body_rule"):
        M.block_auroc(smap, mask, block, body, body_rule="most")
    with pytest.raises(ValueError, match="must divide"):
        M.block_labels(mask, 7)
