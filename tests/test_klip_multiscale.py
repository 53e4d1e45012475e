"""Multiscale KLIP: its per-window features are KLIP's own scores, its score is their ID z-sum, and the bench's
trace-based version agrees with the detector (the contract is in test_detectors.py)."""

import pytest
import torch

from priorshift.bench.klip_eval import multiscale_scores, score_set
from priorshift.detectors import KLIP, KLIPMultiscale, NotFittedError
from priorshift.detectors.klip_multiscale import equal_windows, fit_windows, window_features, window_zscores


def _data(det, n, seed):
    x = det.prior.sample(n, torch.Generator().manual_seed(seed))
    return det.operator(x, seed=list(range(seed, seed + n)))


@pytest.fixture(scope="module")
def fitted():
    det = KLIPMultiscale.example()
    det.fit(_data(det, 16, 100), seed=list(range(500, 516)))
    return det


def test_equal_windows_cover_the_schedule():
    assert equal_windows(4) == ((0.0, 0.25), (0.25, 0.5), (0.5, 0.75), (0.75, 1.0))
    with pytest.raises(ValueError, match="integer >= 1"):
        equal_windows(0)


def test_features_are_klips_scores_in_each_window(fitted):
    """exp(f_w) is exactly what KLIP with that window reports as its image score (same seeds, same trajectory)."""
    y = _data(fitted, 3, 7)
    s = fitted.score(y, seed=[1, 2, 3])
    k = fitted._klip
    for j, w in enumerate(fitted.windows):
        ref = KLIP(fitted.prior, fitted.operator, plan=k.plan, block=k.block, samples=k.samples, window=w).score(y, seed=[1, 2, 3]).score
        torch.testing.assert_close(s.extras["features"][:, j].exp(), ref.to(s.extras["features"]), rtol=1e-5, atol=0)


def test_score_is_the_sum_of_id_z_scores(fitted):
    y = _data(fitted, 3, 8)
    s = fitted.score(y, seed=[4, 5, 6])
    z = (s.extras["features"] - fitted.mean_) / fitted.std_
    torch.testing.assert_close(s.extras["z"], z)
    torch.testing.assert_close(s.score, z.sum(1))
    assert s.map.shape == (3, 2, 2) and s.nfe > 0


def test_held_out_in_distribution_data_sit_near_zero():
    """The calibration standardises: on other ID measurements each window's mean z is near 0 and its spread near 1,
    while measurements scaled ×5 (far outside the prior) score far above."""
    det = KLIPMultiscale.example()
    det.fit(_data(det, 40, 200), seed=list(range(40)))
    y = _data(det, 40, 300)
    z = det.score(y, seed=list(range(100, 140))).extras["z"]
    assert z.mean(0).abs().max() < 0.5, z.mean(0)
    assert ((z.std(0) > 0.6) & (z.std(0) < 1.6)).all(), z.std(0)
    high = det.score(5.0 * y[:8], seed=list(range(8))).score
    assert high.min() > z.sum(1).max()


def test_window_standardisation_by_hand():
    # Two windows: calibration features (1, 10), (3, 10) → μ = (2, 10), unbiased s = (√2, 0 → floored to 0.5).
    mean, std = fit_windows(torch.tensor([[1.0, 10.0], [3.0, 10.0]]), min_std=0.5)
    torch.testing.assert_close(mean, torch.tensor([2.0, 10.0]))
    torch.testing.assert_close(std, torch.tensor([2.0**0.5, 0.5]))
    log_maps = torch.tensor([[[[2.0, 4.0]], [[10.0, 11.0]]]])  # (B=1, W=2, h=1, w=2)
    z, block_map = window_zscores(log_maps, torch.tensor([[4.0, 11.0]]), mean, std)
    torch.testing.assert_close(z, torch.tensor([[2 / 2**0.5, 2.0]]))
    torch.testing.assert_close(block_map, torch.tensor([[[0.0, 2 / 2**0.5 + 2.0]]]))


def test_bench_trace_scores_match_the_detector(fitted):
    """bench.klip_eval.multiscale_scores on traces (full schedule, per-step maps) = fit + score of the detector."""
    y_fit, y = _data(fitted, 16, 100), _data(fitted, 4, 9)
    k = fitted._klip
    kw = dict(plan=k.plan, samples=k.samples, base_block=2)
    t_fit = score_set(fitted.prior, fitted.operator, y_fit, seed=list(range(500, 516)), **kw)
    t = score_set(fitted.prior, fitted.operator, y, seed=[11, 12, 13, 14], **kw)
    got = multiscale_scores(t_fit, {"y": t}, windows=fitted.windows, block=fitted.block)["y"]
    ref = fitted.score(y, seed=[11, 12, 13, 14])
    torch.testing.assert_close(got, ref.score.to(got), rtol=1e-4, atol=1e-4)
    score, block_map = multiscale_scores(t_fit, {"y": t}, windows=fitted.windows, block=fitted.block, maps=True)["y"]
    torch.testing.assert_close(score, got)
    torch.testing.assert_close(block_map, ref.map.to(block_map), rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="multiple"):
        multiscale_scores(t_fit, {"y": t}, windows=fitted.windows, block=3)


def test_sampling_stops_at_the_last_window():
    base = KLIPMultiscale.example()
    k = base._klip
    det = KLIPMultiscale(base.prior, base.operator, windows=[(0.0, 0.25), (0.25, 0.5)], plan=k.plan, block=k.block, samples=k.samples)
    y = _data(det, 2, 3)
    det.fit(_data(det, 4, 30))
    ref = KLIP(base.prior, base.operator, plan=k.plan, block=k.block, samples=k.samples, window=(0.0, 0.5)).score(y, seed=[0, 1])
    assert det.score(y, seed=[0, 1]).nfe == ref.nfe < base.fit(_data(base, 4, 30)).score(y, seed=[0, 1]).nfe


def test_window_features_shapes():
    maps = torch.rand(2, 10, 4, 4)
    log_maps, f = window_features(maps, equal_windows(2), 10, pool=2)
    assert log_maps.shape == (2, 2, 2, 2) and f.shape == (2, 2)
    torch.testing.assert_close(f[:, 0], maps[:, :5].double().mean(1).reshape(2, 2, 2, 2, 2).sum((2, 4)).flatten(1).max(1).values.log())


@pytest.mark.parametrize("kwargs, match", [
    ({"windows": 0}, "integer >= 1"),
    ({"windows": []}, "empty"),
    ({"windows": [(0.5, 0.4)]}, "0 <= a < b <= 1"),
    ({"windows": ["ab"]}, "sequence of"),
    ({"min_std": 0.0}, "min_std"),
    ({"fit_batch_size": 0}, "fit_batch_size"),
    ({"block": 0}, "block"),
])
def test_bad_arguments_fail_clearly(kwargs, match):
    base = KLIPMultiscale.example()
    with pytest.raises(ValueError, match=match):
        KLIPMultiscale(base.prior, base.operator, plan=base.plan, **kwargs)


def test_score_before_fit_and_config():
    det = KLIPMultiscale.example()
    with pytest.raises(NotFittedError, match="fit"):
        det.score(_data(det, 2, 1))
    cfg = det.config()
    assert cfg["detector"] == "klip-multiscale" and len(cfg["windows"]) == 3 and cfg["block"] == 4 and "window" not in cfg
    assert "windows=3" in repr(det)


def test_pooled_trace_gives_the_same_maps_and_scores(fitted):
    """Trace.pooled(block) re-bins a trace recorded at a finer base block: every map, spread map and multiscale score is unchanged."""
    from priorshift.bench.klip_eval import Setting

    k = fitted._klip
    t = score_set(fitted.prior, fitted.operator, _data(fitted, 3, 4), seed=[1, 2, 3], plan=k.plan, samples=k.samples, base_block=2)
    p = t.pooled(4)
    assert p.base_block == 4 and p.step_maps.shape[-2:] == (2, 2)
    for setting in (Setting((0.2, 0.8), 4), Setting((0.0, 1.0), 8, score="spread")):
        torch.testing.assert_close(setting.maps(p), setting.maps(t), rtol=1e-5, atol=1e-8)
    torch.testing.assert_close(multiscale_scores(p, {"t": p}, windows=fitted.windows, block=4)["t"],
                               multiscale_scores(t, {"t": t}, windows=fitted.windows, block=4)["t"], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="multiple"):
        t.pooled(3)
    sub = p.take(slice(1, 3))
    assert sub.n == 2 and torch.equal(sub.step_maps, p.step_maps[1:3]) and torch.equal(sub.spread_maps, p.spread_maps[1:3])
    assert torch.equal(sub.kl_nats, p.kl_nats[1:3]) and torch.equal(sub.reconstruction, p.reconstruction[1:3])


def test_fit_does_not_depend_on_its_batch_size():
    base = KLIPMultiscale.example()
    k = base._klip
    y = _data(base, 10, 40)
    fits = [KLIPMultiscale(base.prior, base.operator, windows=3, plan=k.plan, block=k.block, samples=k.samples, fit_batch_size=b).fit(y, seed=7)
            for b in (3, 32)]
    torch.testing.assert_close(fits[0].mean_, fits[1].mean_, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(fits[0].std_, fits[1].std_, rtol=1e-4, atol=1e-6)
