"""Dataset-level OOD metrics (priorshift.metrics.ood): parity with scikit-learn and hand-made cases.

Rank metrics are exact up to float rounding, hence 1e-10. sklearn is a test-only dependency.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, roc_auc_score
from sklearn.metrics import roc_curve as sk_roc_curve

from priorshift import metrics as M

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


def test_paired_rate_is_the_fraction_raised_with_its_binomial_error():
    from priorshift.metrics import paired_rate

    without, with_shift = np.array([1.0, 2.0, 3.0, 4.0]), np.array([1.5, 1.0, 3.5, 4.0])  # raised in 2 of 4 (a tie is not)
    rate, se = paired_rate(without, with_shift)
    assert rate == 0.5 and se == pytest.approx(np.sqrt(0.25 / 4))
    assert paired_rate(without, without + 1) == (1.0, pytest.approx(np.sqrt(1e-12 / 4)))
    with pytest.raises(ValueError, match="one score per pair"):
        paired_rate(without, with_shift[:3])
