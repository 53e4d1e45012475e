"""Metric parity with scikit-learn / scikit-image and hand-made cases (priorshift.metrics).

Rank metrics are exact up to float rounding, hence 1e-10. sklearn and skimage are test-only dependencies.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import ndimage
from sklearn.metrics import average_precision_score, roc_auc_score
from sklearn.metrics import roc_curve as sk_roc_curve

from priorshift import metrics as M
from priorshift.metrics import image as image_mod

TOL = 1e-10


# ================================================================================================================
# dataset-level OOD metrics
# ================================================================================================================


def _cases():
    rng = np.random.default_rng(12345)
    return {
        "continuous": (rng.normal(0, 1, 200), rng.normal(1, 1.5, 150)),
        "unbalanced_small_ood": (rng.normal(0, 1, 400), rng.normal(0.5, 1, 7)),
        "unbalanced_small_id": (rng.normal(0, 1, 3), rng.normal(0.5, 1, 333)),
        "ties_012": (rng.integers(0, 3, 120).astype(float), rng.integers(0, 3, 90).astype(float)),
        "ties_012_shifted": (rng.integers(0, 2, 60).astype(float), rng.integers(1, 3, 41).astype(float)),
        "separated": (rng.uniform(0, 1, 50), rng.uniform(2, 3, 20)),
        "inverted": (rng.uniform(2, 3, 50), rng.uniform(0, 1, 20)),
        "all_tied": (np.ones(10), np.ones(13)),
        "one_each": (np.array([0.3]), np.array([0.7])),
        "float32_rounding": (
            rng.normal(0, 1, 100).astype(np.float32).astype(np.float64),
            rng.normal(0, 1, 100).astype(np.float32).astype(np.float64),
        ),
    }


CASES = _cases()


def _labels(s_id, s_ood):
    y = np.r_[np.zeros(len(s_id)), np.ones(len(s_ood))]
    s = np.r_[s_id, s_ood]
    return y, s


def _fpr_from_sklearn(s_id, s_ood, tpr, positive):
    """Reference: read sklearn's full ROC curve at the first point with TPR >= tpr."""
    y, s = _labels(s_id, s_ood)
    if positive == "id":
        y, s = 1 - y, -s
    fpr, tpr_, _ = sk_roc_curve(y, s, drop_intermediate=False)
    a = fpr[np.searchsorted(tpr_, tpr, side="left")]
    b = fpr[np.argmax(tpr_ >= tpr)]  # pytorch-ood / OpenOOD style reading
    assert a == b
    return a


def _fpr_brute(s_id, s_ood, tpr, positive):
    """Reference: try every candidate threshold with Python loops, straight from the definition."""
    if positive == "ood":
        pos, neg = list(s_ood), list(s_id)
        flag = lambda v, t: v >= t  # noqa: E731
        cands = sorted(set(pos) | set(neg), reverse=True)  # highest threshold first
    else:
        pos, neg = list(s_id), list(s_ood)
        flag = lambda v, t: v <= t  # noqa: E731 — kept as ID
        cands = sorted(set(pos) | set(neg))  # lowest threshold first
    for t in cands:
        if sum(flag(v, t) for v in pos) / len(pos) >= tpr:
            return sum(flag(v, t) for v in neg) / len(neg)
    raise AssertionError("unreachable")


@pytest.mark.parametrize("name", sorted(CASES))
def test_rank_metrics_match_sklearn(name):
    s_id, s_ood = CASES[name]
    y, s = _labels(s_id, s_ood)
    assert abs(M.auroc(s_id, s_ood) - roc_auc_score(y, s)) < TOL
    assert abs(M.aupr_out(s_id, s_ood) - average_precision_score(y, s)) < TOL
    assert abs(M.aupr_in(s_id, s_ood) - average_precision_score(1 - y, -s)) < TOL
    for drop in (False, True):
        fpr, tpr, thr = M.roc_curve(s_id, s_ood, drop_intermediate=drop)
        rf, rt, rth = sk_roc_curve(y, s, drop_intermediate=drop)
        np.testing.assert_allclose(fpr, rf, rtol=0, atol=TOL)
        np.testing.assert_allclose(tpr, rt, rtol=0, atol=TOL)
        np.testing.assert_array_equal(thr, rth)


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("positive", ["ood", "id"])
def test_fpr_at_tpr_matches_roc_curve_reading(name, positive):
    s_id, s_ood = CASES[name]
    for tpr in (0.95, 0.9, 0.5, 1.0, 0.01, 0.8):
        got = M.fpr_at_tpr(s_id, s_ood, tpr, positive=positive)
        assert abs(got - _fpr_from_sklearn(s_id, s_ood, tpr, positive)) < TOL, tpr
        if len(s_id) + len(s_ood) <= 250:
            assert abs(got - _fpr_brute(s_id, s_ood, tpr, positive)) < TOL, tpr
    fixed = M.fpr_at_95_tpr_ood if positive == "ood" else M.fpr_at_95_tpr_id
    assert fixed(s_id, s_ood) == M.fpr_at_tpr(s_id, s_ood, positive=positive)


def test_fpr_conventions_by_hand():
    # 20 OOD scores 1..20: catching >= 95% needs 19 of them -> threshold = 2 (the 19th largest).
    s_ood = np.arange(1.0, 21.0)
    s_id = np.array([0.0, 1.0, 2.0, 2.0, 5.0, 30.0, -1.0, 1.5, 0.5, 3.0])
    assert M.fpr_at_95_tpr_ood(s_id, s_ood) == pytest.approx(5 / 10)  # ID >= 2: 2, 2, 5, 30, 3
    # ID positive: keep >= 95% of 10 ID -> all 10 -> threshold = max ID = 30 -> all OOD <= 30 kept as ID.
    assert M.fpr_at_95_tpr_id(s_id, s_ood) == 1.0
    # at 90%: keep 9 ID -> threshold = 9th smallest ID = 5 -> OOD <= 5: 1..5 -> 5/20.
    assert M.fpr_at_tpr(s_id, s_ood, 0.9, positive="id") == pytest.approx(5 / 20)
    # with 10 OOD, 95% rounds up to all of them (k = ceil(9.5) = 10): threshold = min OOD.
    assert M.fpr_at_tpr([0.0, 1.0, 2.0, 3.0], np.arange(1.0, 11.0)) == pytest.approx(3 / 4)
    # sklearn's default drop_intermediate=True can skip the operating point on a run of equal ROC steps
    s_ood = np.r_[np.arange(100.0, 118.0), 10.0, 9.0]  # 18 clean OOD, then two ties of (1 ID, 1 OOD)
    s_id = np.r_[10.0, 9.0, np.zeros(8)]
    y, s = _labels(s_id, s_ood)
    f, t, _ = sk_roc_curve(y, s)  # drop_intermediate=True drops the point (0.1, 0.95)
    assert f[np.argmax(t >= 0.95)] == 0.2
    assert M.fpr_at_95_tpr_ood(s_id, s_ood) == 0.1  # 19 of 20 OOD caught at threshold 10: ID >= 10 is 1 of 10
    # the two conventions are genuinely different numbers
    rng = np.random.default_rng(0)
    a, b = rng.normal(0, 1, 500), rng.normal(2, 2, 500)
    assert abs(M.fpr_at_95_tpr_ood(a, b) - M.fpr_at_95_tpr_id(a, b)) > 0.3


def test_extreme_values():
    sep = (np.arange(5.0), np.arange(10.0, 14.0))
    inv = (np.arange(10.0, 14.0), np.arange(5.0))
    assert M.auroc(*sep) == 1.0 and M.auroc(*inv) == 0.0
    assert M.aupr_out(*sep) == 1.0 and M.aupr_in(*sep) == 1.0
    assert M.fpr_at_95_tpr_ood(*sep) == 0.0 and M.fpr_at_95_tpr_id(*sep) == 0.0
    assert M.fpr_at_95_tpr_ood(*inv) == 1.0 and M.fpr_at_95_tpr_id(*inv) == 1.0
    tied = (np.zeros(4), np.zeros(6))
    assert M.auroc(*tied) == 0.5
    assert M.aupr_out(*tied) == pytest.approx(0.6) and M.aupr_in(*tied) == pytest.approx(0.4)
    assert M.fpr_at_95_tpr_ood(*tied) == 1.0 and M.fpr_at_95_tpr_id(*tied) == 1.0


def test_input_types_and_ood_metrics():
    s_id, s_ood = CASES["ties_012"]
    want = M.ood_metrics(s_id, s_ood)
    assert set(want) == {"auroc", "aupr_in", "aupr_out", "fpr95_ood_positive", "fpr95_id_positive", "n_id", "n_ood"}
    assert want["n_id"] == 120 and want["n_ood"] == 90
    assert all(type(v) is float for k, v in want.items() if not k.startswith("n_"))
    assert want["auroc"] == M.auroc(s_id, s_ood)
    assert want["aupr_in"] == M.aupr_in(s_id, s_ood) and want["aupr_out"] == M.aupr_out(s_id, s_ood)
    assert want["fpr95_ood_positive"] == M.fpr_at_95_tpr_ood(s_id, s_ood)
    assert want["fpr95_id_positive"] == M.fpr_at_95_tpr_id(s_id, s_ood)
    t_id = torch.tensor(s_id, dtype=torch.float32, requires_grad=True)
    t_ood = torch.tensor(s_ood, dtype=torch.bfloat16)
    for a, b in [(t_id, t_ood), (s_id.tolist(), s_ood.tolist()), (s_id.astype(np.int64), s_ood.astype(np.int8))]:
        assert M.ood_metrics(a, b) == want


@pytest.mark.parametrize(
    "bad, match",
    [
        ([], "empty"),
        (np.zeros((3, 2)), "1-D"),
        (np.float64(1.0), "1-D"),
        ([0.0, np.nan], "NaN/Inf"),
        (torch.tensor([0.0, float("inf")]), "NaN/Inf"),
        (["a", "b"], "real numbers"),
        (torch.tensor([1 + 1j]), "complex"),
        ([[1.0], [2.0, 3.0]], "could not be converted"),
    ],
)
def test_ood_bad_inputs(bad, match):
    good = [0.1, 0.5]
    for fn in (M.auroc, M.aupr_in, M.aupr_out, M.fpr_at_95_tpr_ood, M.fpr_at_95_tpr_id, M.ood_metrics, M.roc_curve):
        with pytest.raises(ValueError, match=match):
            fn(bad, good)
        with pytest.raises(ValueError, match="scores_ood"):
            fn(good, bad)


def test_fpr_at_tpr_bad_arguments():
    with pytest.raises(ValueError, match="fraction"):
        M.fpr_at_tpr([0.0], [1.0], 95)
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        M.fpr_at_tpr([0.0], [1.0], 0.0)
    with pytest.raises(ValueError, match="positive"):
        M.fpr_at_tpr([0.0], [1.0], positive="in")


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


# ================================================================================================================
# image quality
# ================================================================================================================


def _images(B=3, C=1, H=28, W=33, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(B, C, H, W, generator=g, dtype=torch.float64) * 2 - 1
    x = torch.from_numpy(ndimage.gaussian_filter(x.numpy(), sigma=(0, 0, 1.5, 1.5))) * 2  # some structure
    ref = (x + 0.2 * torch.randn(B, C, H, W, generator=g, dtype=torch.float64)).clamp(-1, 1)
    return x.clamp(-1, 1).to(dtype), ref.to(dtype)


def test_psnr_formula():
    x, ref = _images(C=3)
    mse = ((x - ref) ** 2).mean(dim=(1, 2, 3))
    torch.testing.assert_close(M.psnr(x, ref), 10 * torch.log10(4.0 / mse), rtol=0, atol=1e-12)
    torch.testing.assert_close(M.psnr(x, ref, data_range=1.0), 10 * torch.log10(1.0 / mse), rtol=0, atol=1e-12)
    assert M.psnr(x, ref).shape == (3,)
    assert torch.isinf(M.psnr(x, x)).all()
    assert M.psnr(x.float(), ref.float()).dtype == torch.float32


@pytest.mark.parametrize("C", [1, 3])
def test_ssim_matches_skimage(C):
    skm = pytest.importorskip("skimage.metrics")
    x, ref = _images(C=C, seed=C)
    kw = dict(gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=2.0)
    want = [skm.structural_similarity(x[b].numpy(), ref[b].numpy(), channel_axis=0, **kw) for b in range(len(x))]
    torch.testing.assert_close(M.ssim(x, ref), torch.tensor(want, dtype=torch.float64), rtol=0, atol=1e-10)
    # float32 computation stays within 1e-5 of skimage's float64
    got32 = M.ssim(x.float(), ref.float())
    assert got32.dtype == torch.float32
    np.testing.assert_allclose(got32.numpy(), want, atol=1e-5)
    # the maps: 'same' equals skimage's full map (scipy 'reflect' borders); 'valid' equals its interior
    _, full = skm.structural_similarity(x[0, 0].numpy(), ref[0, 0].numpy(), full=True, **kw)
    np.testing.assert_allclose(M.ssim_map(x, ref, padding="same")[0, 0].numpy(), full, rtol=0, atol=1e-10)
    np.testing.assert_allclose(M.ssim_map(x, ref)[0, 0].numpy(), full[5:-5, 5:-5], rtol=0, atol=1e-10)
    assert M.ssim_map(x, ref).shape == (3, C, 28 - 10, 33 - 10)


def test_ssim_window7_and_identity():
    x, ref = _images(seed=9)
    # reference from scipy's Gaussian filter truncated at 2 sigma (radius 3 -> 7 taps)
    f = lambda a: ndimage.gaussian_filter(a, 1.5, truncate=2.0, mode="reflect")  # noqa: E731
    a, b = x[0, 0].numpy(), ref[0, 0].numpy()
    ux, uy = f(a), f(b)
    vx, vy, vxy = f(a * a) - ux * ux, f(b * b) - uy * uy, f(a * b) - ux * uy
    c1, c2 = (0.01 * 2) ** 2, (0.03 * 2) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux**2 + uy**2 + c1) * (vx + vy + c2))
    got = M.ssim_map(x, ref, window=7)[0, 0].numpy()
    np.testing.assert_allclose(got, s[3:-3, 3:-3], rtol=0, atol=1e-10)
    assert M.ssim(x, ref, window=7)[0].item() == pytest.approx(s[3:-3, 3:-3].mean(), abs=1e-10)
    torch.testing.assert_close(M.ssim(x, x), torch.ones(3, dtype=torch.float64))


def test_image_metric_bad_inputs():
    x, ref = _images()
    with pytest.raises(ValueError, match="same shape"):
        M.ssim(x, ref[:2])
    with pytest.raises(ValueError, match="same shape"):
        M.psnr(x, ref[..., :5])
    with pytest.raises(ValueError, match="smaller than the SSIM window"):
        M.ssim(x[..., :8, :8], ref[..., :8, :8])
    with pytest.raises(ValueError, match="odd"):
        M.ssim(x, ref, window=8)
    with pytest.raises(ValueError, match="data_range"):
        M.psnr(x, ref, data_range=0)
    with pytest.raises(ValueError, match="4 dimensions|shape"):
        M.ssim(x[0], ref[0])
    with pytest.raises(ValueError, match="torch.Tensor"):
        M.psnr(x.numpy(), ref)
    with pytest.raises(ValueError, match="NaN"):
        M.psnr(x.clone().fill_(float("nan")), ref)
    with pytest.raises(ValueError, match="padding"):
        M.ssim_map(x, ref, padding="reflect")


def test_lpips_never_downloads(monkeypatch, tmp_path):
    def boom():
        raise AssertionError("LPIPS model must not be constructed when the backbone file is missing")

    monkeypatch.setattr(image_mod, "_lpips_model", boom)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "_hub_dir", None, raising=False)  # in case someone called set_dir
    assert M.lpips_available() is False
    x, ref = _images(C=3)
    with pytest.raises(RuntimeError, match="LPIPS is unavailable"):
        M.lpips_distance(x, ref)
    # pretend lpips and torchvision are installed: the missing file is now the reason, with the path to fill
    real_find_spec = image_mod.importlib.util.find_spec
    monkeypatch.setattr(
        image_mod.importlib.util,
        "find_spec",
        lambda name, *a: object() if name in ("lpips", "torchvision") else real_find_spec(name, *a),
    )
    assert M.lpips_available() is False
    ckpt = tmp_path / "hub" / "checkpoints" / "alexnet-owt-7be5be79.pth"
    with pytest.raises(RuntimeError, match="alexnet-owt-7be5be79.pth") as err:
        M.lpips_distance(x, ref)
    assert str(ckpt) in str(err.value)
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"")
    assert M.lpips_available() is True


def test_auroc_standard_error_null_closed_form_and_simulation():
    from priorshift.metrics import auroc, auroc_standard_error

    # At A = 0.5, Hanley–McNeil equals the exact Mann–Whitney null variance (n1 + n2 + 1) / (12 n1 n2).
    for n_id, n_ood in [(24, 24), (64, 10), (5, 300)]:
        exact = math.sqrt((n_id + n_ood + 1) / (12 * n_id * n_ood))
        assert abs(auroc_standard_error(0.5, n_id, n_ood) - exact) < 1e-12
    # Away from 0.5 (binormal, d' = 1.5, A ≈ 0.86): the spread of simulated AUROCs matches within 10%.
    rng = np.random.default_rng(0)
    aucs = [auroc(rng.normal(size=40), rng.normal(1.5, size=40)) for _ in range(2000)]
    se = auroc_standard_error(float(np.mean(aucs)), 40, 40)
    assert abs(np.std(aucs) / se - 1) < 0.1, (np.std(aucs), se)
    with pytest.raises(ValueError, match="auc must be in"):
        auroc_standard_error(1.2, 4, 4)
