"""Conformal p-values, flags and block p-values (priorshift.calibrate.conformal).

Exchangeable in-distribution data: exact draws of an analytic Gaussian prior, measured through 50 % inpainting
with Gaussian noise, scored by the zero-NFE ``measurement-norm`` detector fitted on other draws. Tolerances are
binomial: G independent groups (a fresh calibration set and one test item each) give G independent p-values, so a
false-alarm count is Binomial(G, P(p ≤ α)) and is checked against its exact two-sided 99.9 % acceptance region.
"""

from __future__ import annotations

import pytest
import torch
from scipy import stats

from priorshift.analytic import stationary_gaussian
from priorshift.calibrate import Conformal, block_pvalues, conformal_pvalues, flag_pvalues, full_conformal_pvalues
from priorshift.detectors import Detector, MeasurementNorm
from priorshift.operators import Inpainting
from priorshift.types import Scores

PRIOR = stationary_gaussian(8, length_scale=1.5, variance=0.25)
OP = Inpainting.example(image_size=8, noise_std=0.05)


def _measure(n: int, seed: int, scale: float = 1.0) -> torch.Tensor:
    """``n`` exact prior draws (× ``scale``: a shift) measured through OP with its noise, one generator."""
    g = torch.Generator().manual_seed(seed)
    ax = OP.A(PRIOR.sample(n, generator=g) * scale)
    return ax + OP.noise_std * torch.randn(ax.shape, generator=g, dtype=ax.dtype)


@pytest.fixture(scope="module")
def detector():
    return MeasurementNorm(PRIOR, OP).fit(_measure(500, seed=1))


def _grouped_pvalues(det, groups: int, n_cal: int, seed: int) -> torch.Tensor:
    """G independent p-values: group g's first item is the test item, the other n_cal its calibration set."""
    s = det.score(_measure(groups * (n_cal + 1), seed=seed)).score.reshape(groups, n_cal + 1)
    return torch.stack([Conformal.from_scores(row[1:]).pvalues_of(row[:1])[0] for row in s])


def _acceptance(n: int, p: float, level: float = 0.999) -> tuple[int, int]:
    lo, hi = stats.binom.interval(level, n, p)
    return int(lo), int(hi)


def test_pvalue_formula_and_ties():
    cal = torch.tensor([1.0, 2.0, 2.0, 3.0])
    p = conformal_pvalues(cal, torch.tensor([0.0, 2.0, 2.5, 3.0, 9.0]))
    # (1 + #{c >= s}) / (n + 1): ties count against the item
    assert torch.equal(p, torch.tensor([5 / 5, 4 / 5, 2 / 5, 2 / 5, 1 / 5], dtype=torch.float64))
    assert conformal_pvalues(torch.ones(9), torch.ones(1)).item() == 1.0  # all tied: the most conservative value
    with pytest.raises(ValueError, match="NaN"):
        conformal_pvalues(cal, torch.tensor([float("nan")]))
    with pytest.raises(ValueError, match="no calibration"):
        conformal_pvalues(torch.empty(0), torch.ones(1))


def test_pvalues_uniform_on_exchangeable_data(detector):
    """KS: with n = 9 calibration items the p-value is uniform on {1/10, ..., 1}; smoothed by U/10 it is U(0, 1).
    An off-by-one in the count or the denominator moves the distribution by 1/10, which KS sees at G = 3000."""
    n_cal, groups = 9, 3000
    p = _grouped_pvalues(detector, groups, n_cal, seed=2)
    assert set((p * (n_cal + 1)).round().long().tolist()) <= set(range(1, n_cal + 2))
    smooth = p - torch.rand(groups, generator=torch.Generator().manual_seed(3), dtype=torch.float64) / (n_cal + 1)
    assert stats.kstest(smooth.numpy(), "uniform").pvalue > 1e-3
    # the same on the un-smoothed grid: each of the 10 values has probability 1/10 (chi-square)
    counts = torch.bincount((p * (n_cal + 1)).round().long() - 1, minlength=n_cal + 1).numpy()
    assert stats.chisquare(counts).pvalue > 1e-3


@pytest.mark.parametrize("alpha", [0.01, 0.05, 0.1])
def test_false_alarm_rate_binomial(detector, alpha):
    """n = 99: α(n + 1) is an integer, so P(p ≤ α) = α exactly; the count over G groups is Binomial(G, α)."""
    groups = 3000
    p = _grouped_pvalues(detector, groups, 99, seed=10 + int(alpha * 100))
    lo, hi = _acceptance(groups, alpha)
    assert lo <= int((p <= alpha).sum()) <= hi


def test_ties_are_conservative():
    """A detector with heavy ties (scores rounded to 3 values): P(p ≤ α) ≤ α still; breaking ties in the item's
    favour (counting only c > s) would alarm far more often."""
    g = torch.Generator().manual_seed(0)
    groups, n_cal, alpha = 2000, 19, 0.1
    s = torch.randint(0, 3, (groups, n_cal + 1), generator=g).double()
    p = torch.stack([conformal_pvalues(row[1:], row[:1])[0] for row in s])
    optimistic = (1 + (s[:, 1:] > s[:, :1]).sum(1)) / (n_cal + 1)
    assert int((p <= alpha).sum()) <= _acceptance(groups, alpha)[1]
    assert (optimistic <= alpha).double().mean() > 2 * alpha


def test_full_conformal_refits_on_each_augmented_set():
    """Full conformal with ``measurement-norm`` refitted on calibration ∪ {item}: every calibration item fits and
    calibrates, and the p-value is still uniform on {1/10, ..., 1} (KS after smoothing, G = 1500 groups); by hand,
    it ranks the item among the refitted scores."""
    det = MeasurementNorm(PRIOR, OP)
    fit_score = lambda rows: det.fit(rows).score(rows).score  # noqa: E731  (a fit symmetric in its rows)
    groups, n_cal = 1500, 9
    y = _measure(groups * (n_cal + 1), seed=50).reshape(groups, n_cal + 1, *OP.A(PRIOR.sample(1)).shape[1:])
    p = torch.cat([full_conformal_pvalues(g[1:], g[:1], fit_score) for g in y])
    smooth = p - torch.rand(groups, generator=torch.Generator().manual_seed(4), dtype=torch.float64) / (n_cal + 1)
    assert stats.kstest(smooth.numpy(), "uniform").pvalue > 1e-3
    s = fit_score(torch.cat([y[0, 1:], y[0, :1]]))
    assert full_conformal_pvalues(y[0, 1:], y[0, :1], fit_score).item() == pytest.approx((1 + float((s[:9] >= s[9]).sum())) / 10)
    with pytest.raises(ValueError, match="one score per row"):
        full_conformal_pvalues(y[0, 1:], y[0, :1], lambda rows: torch.zeros(3))


def test_bh_controls_fdr_on_mixed_batches(detector):
    """300 batches of 40 ID + 10 OOD (images scaled × 3), a fresh calibration set (n = 199) each: BH keeps the
    mean false-discovery proportion ≤ q (its bound is q · 40/50) and finds the OOD items; flagging p ≤ q
    instead would not control it."""
    q, batches, n_cal = 0.1, 300, 199
    cal = detector.score(_measure(batches * n_cal, seed=20)).score.reshape(batches, n_cal)
    s_id = detector.score(_measure(batches * 40, seed=21)).score.reshape(batches, 40)
    s_ood = detector.score(_measure(batches * 10, seed=22, scale=3.0)).score.reshape(batches, 10)
    fdp, fdp_marginal, power = [], [], []
    for b in range(batches):
        conf = Conformal.from_scores(cal[b])
        p = conf.pvalues_of(torch.cat([s_id[b], s_ood[b]]))
        for flags, out in ((flag_pvalues(p, q, "bh"), fdp), (flag_pvalues(p, q, "marginal"), fdp_marginal)):
            out.append(float(flags[:40].sum()) / max(int(flags.sum()), 1))
        power.append(float(flag_pvalues(p, q, "bh")[40:].double().mean()))
    assert sum(fdp) / batches <= q
    assert sum(power) / batches > 0.5
    assert sum(fdp_marginal) / batches > q  # the test can fail: marginal flags do not control the FDR here


def test_bh_uses_scipy_and_matches_by_hand():
    p = torch.tensor([0.001, 0.02, 0.5, 0.04])
    # sorted 0.001, 0.02, 0.04, 0.5 against k/4 · 0.05 = 0.0125, 0.025, 0.0375, 0.05: the first two pass
    assert flag_pvalues(p, 0.05, "bh").tolist() == [True, True, False, False]
    assert flag_pvalues(p, 0.05, "marginal").tolist() == [True, True, False, True]
    with pytest.raises(ValueError, match="alpha"):
        flag_pvalues(p, 1.5)
    with pytest.raises(ValueError, match="method"):
        flag_pvalues(p, 0.05, "bonferroni")


def test_conformal_splits_fit_and_calibration():
    y = _measure(40, seed=30)
    det = MeasurementNorm(PRIOR, OP)
    conf = Conformal(det, fit_size=10).fit(y)
    assert (conf.n_fit_, conf.n_) == (10, 30) and conf.min_pvalue == pytest.approx(1 / 31)
    # the detector was fitted on the first 10 items only; the calibration scores are those of the other 30
    ref = MeasurementNorm(PRIOR, OP).fit(y[:10])
    assert torch.allclose(conf.calibration_scores_, ref.score(y[10:]).score)
    p = conf.pvalues(_measure(5, seed=31))
    assert p.shape == (5,) and bool((p >= 1 / 31).all()) and bool((p <= 1).all())
    # a fitted detector is only calibrated, on every item
    again = Conformal(det).fit(y)
    assert (again.n_fit_, again.n_) == (0, 40)
    assert Conformal(MeasurementNorm(PRIOR, OP), fit_size=0.25).fit(y).n_fit_ == 10
    with pytest.raises(ValueError, match="cannot be split"):
        Conformal(MeasurementNorm(PRIOR, OP), fit_size=10).fit(y[:10])
    with pytest.raises(ValueError, match="not calibrated"):
        Conformal(det).pvalues(y)
    with pytest.raises(ValueError, match="fit_size"):
        Conformal(det, fit_size=1.5)


def test_decision_reports_calibration_size_and_flags():
    det = MeasurementNorm(PRIOR, OP).fit(_measure(100, seed=40))
    conf = Conformal(det).fit(_measure(99, seed=41))
    d = conf.decide(torch.cat([_measure(6, seed=42), _measure(4, seed=43, scale=4.0)]), alpha=0.05)
    assert d.n_calibration == 99 and d.min_pvalue == pytest.approx(0.01)
    assert d.flagged[6:].all() and d.block_pvalue is None
    assert torch.equal(d.flagged, d.pvalue <= 0.05)
    assert "of 10 flagged" in d.summary()


class _Noisy(Detector):
    """A stochastic detector (its score is a draw from the item's seed) — for the seed rule."""

    input_kind = "images"

    def __init__(self):
        self.prior = PRIOR

    def _score(self, data, *, seed, hooks):
        from priorshift.rng import per_image_rng

        return Scores(score=per_image_rng(seed, data.shape[0]).randn(()).double(), map=None, nfe=0)


def test_stochastic_detector_refuses_calibration_seeds():
    x = PRIOR.sample(20, generator=torch.Generator().manual_seed(0)).float().clamp(-1, 1)
    conf = Conformal(_Noisy()).fit(x, seed=100)
    with pytest.raises(ValueError, match="reuses seeds"):
        conf.pvalues(x[:5], seed=110)
    assert conf.pvalues(x[:5], seed=0).shape == (5,)


def test_block_pvalues_familywise_by_max_statistic():
    """Independent blocks with block-dependent scales: an ID map has any block flagged with probability ≤ α (FWER,
    exactly α here), a shifted block is found, the other blocks of a shifted map stay ≤ α (subset pivotality holds
    for independent blocks), and per-block p-values without the max would flag ID maps far more often."""
    g = torch.Generator().manual_seed(0)
    groups, n_cal, alpha, hw = 2000, 99, 0.05, (4, 4)
    scale = torch.linspace(0.5, 3.0, 16).reshape(hw)
    maps = torch.rand((groups, n_cal + 2, *hw), generator=g).double() * scale
    maps[:, -1, 1, 2] += 10.0  # the last map of each group: one shifted block
    any_id, null_blocks, found, naive = 0, 0, 0, 0
    for m in maps:
        cal, test = m[:n_cal], m[n_cal:]
        p = block_pvalues(cal, test)
        any_id += bool((p[0] <= alpha).any())
        null = torch.ones(hw, dtype=torch.bool)
        null[1, 2] = False
        null_blocks += bool((p[1][null] <= alpha).any())
        found += bool(p[1, 1, 2] <= alpha)
        naive += bool((((1 + (cal >= test[0]).sum(0)) / (n_cal + 1)) <= alpha).any())
    hi = _acceptance(groups, alpha)[1]
    assert any_id <= hi and null_blocks <= hi
    assert found == groups
    assert naive > 4 * hi
    with pytest.raises(ValueError, match="blocks"):
        block_pvalues(torch.rand(5, 4, 4), torch.rand(2, 2, 2))


def test_conformal_with_maps_gives_block_decisions():
    cal_maps = torch.rand(19, 2, 2, generator=torch.Generator().manual_seed(1)).double()
    conf = Conformal.from_scores(cal_maps.flatten(1).amax(1), cal_maps)
    maps = torch.zeros(3, 2, 2, dtype=torch.float64)
    maps[1, 0, 1] = 5.0
    d = conf.decide_scores(maps.flatten(1).amax(1), maps, alpha=0.05)
    assert d.block_flagged[1].tolist() == [[False, True], [False, False]] and not d.block_flagged[0].any()
    # the image's p-value is its smallest block p-value when the score is the max over blocks (KLIP's)
    assert torch.allclose(d.pvalue, d.block_pvalue.flatten(1).amin(1))


def test_conformal_on_klip_gives_image_and_block_decisions():
    """End to end on KLIP (analytic prior): calibration maps are kept, the block p-values have the map's shape, and
    the image p-value (score = max over blocks) is the smallest block p-value."""
    from priorshift.detectors import KLIP

    det = KLIP.example()
    y = det.operator(det.prior.sample(9, generator=torch.Generator().manual_seed(0)), seed=list(range(9)))
    conf = Conformal(det, batch_size=8).fit(y[:7])
    d = conf.decide(y[7:], alpha=0.5)
    assert conf.calibration_maps_.shape == (7, 2, 2) and d.block_pvalue.shape == (2, 2, 2)
    assert torch.allclose(d.pvalue, d.block_pvalue.flatten(1).amin(1))
    assert torch.equal(d.block_flagged, d.block_pvalue <= 0.5) and d.min_pvalue == pytest.approx(1 / 8)


def test_demo_decision_says_when_nothing_can_be_flagged():
    from priorshift.demo import _decision

    r = {"flagged_ood": 3, "flagged_id": 1, "n_calibration": 24}
    text = _decision({"a": {"short": "case a", "n": (24, 24), "results": {"KLIP": r}},
                      "b": {"short": "case b", "n": (4, 4), "results": {"KLIP": {**r, "n_calibration": 4}}}})
    assert "flags   3/24 OOD and   1/24 ID" in text and "1/(n+1) = 0.040" in text
    assert "case b: calibration n = 4, smallest p-value 1/(n+1) = 0.200 > alpha: nothing can be flagged (give --n >= 19)" in text
