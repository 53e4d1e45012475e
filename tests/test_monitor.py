"""The stream monitor (priorshift.calibrate.monitor): online conformal p-values, the Simple Jumper martingale,
Ville's bound on false alarms, detection after a change point, and ``priorshift monitor`` on cached scores."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from priorshift.calibrate import alarm_index, monitor, online_pvalues, simple_jumper


def _null_streams(k: int, n_cal: int, length: int, seed: int) -> torch.Tensor:
    return torch.randn(k, n_cal + length, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_online_pvalues_independent_uniform():
    """Exchangeable calibration + stream: the smoothed p-values are iid U(0, 1) (KS on 20,000 values; the lag-1
    correlation is ~0). Against the fixed calibration set only, they would not be: all depend on it."""
    z = _null_streams(200, 20, 100, seed=0)
    p = torch.stack([online_pvalues(row[:20], row[20:], seed=i) for i, row in enumerate(z)])
    assert stats.kstest(p.flatten().numpy(), "uniform").pvalue > 1e-3
    r = np.corrcoef(p[:, :-1].flatten().numpy(), p[:, 1:].flatten().numpy())[0, 1]
    assert abs(r) < 4 / math.sqrt(p[:, 1:].numel())
    # by hand: calibration [1, 3], stream [2, 2]: bag {1, 2, 3} → (1 + θ·1)/3; bag {1, 2, 2, 3} → (1 + θ·2)/4
    th = torch.rand(2, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    got = online_pvalues(torch.tensor([1.0, 3.0]), torch.tensor([2.0, 2.0]), seed=5)
    assert torch.allclose(got, torch.stack([(1 + th[0]) / 3, (1 + 2 * th[1]) / 4]))


def test_simple_jumper_by_hand():
    # J = 1: the capital is spread evenly before every step, and the mean of the three bets is 1: M stays 1.
    assert torch.allclose(simple_jumper(torch.tensor([0.01, 0.9, 0.3]), jump=1.0), torch.ones(3, dtype=torch.float64))
    # two steps with J = 0.01, p = (0.1, 0.2): C_ε = 1/3 each, mixing keeps them equal at step 1
    c = [1 / 3] * 3
    expected = []
    for p in (0.1, 0.2):
        total = sum(c)
        c = [(0.99 * ci + 0.01 * total / 3) * (1 + e * (p - 0.5)) for ci, e in zip(c, (-1, 0, 1))]
        expected.append(sum(c))
    assert torch.allclose(simple_jumper(torch.tensor([0.1, 0.2]), jump=0.01), torch.tensor(expected, dtype=torch.float64))
    assert alarm_index(torch.tensor([1.0, 19.0, 20.0, 30.0]), 0.05) == 2
    assert alarm_index(torch.tensor([1.0, 2.0]), 0.05) is None
    with pytest.raises(ValueError, match="jump"):
        simple_jumper(torch.tensor([0.5]), jump=0.0)


def test_false_alarm_probability_bounded_by_alpha():
    """Ville: P(sup_t M_t ≥ 1/α) ≤ α. 1000 exchangeable streams of 200 after 50 calibration items: the number of
    streams that ever alarm is within Binomial(1000, α)'s 99.9 % upper bound."""
    alpha, k = 0.1, 1000
    z = _null_streams(k, 50, 200, seed=1)
    alarms = sum(monitor(row[:50], row[50:], alpha=alpha, seed=i).alarm is not None for i, row in enumerate(z))
    assert alarms <= stats.binom.ppf(0.999, k, alpha)


def test_detects_a_change_point_quickly():
    z = _null_streams(1, 100, 200, seed=2)[0]
    stream = z[100:].clone()
    stream[120:] += 3.0  # from item 120 on, the scores shift up
    r = monitor(z[:100], stream, alpha=0.05)
    assert r.alarm is not None and 120 <= r.alarm <= 120 + 25
    assert r.martingale[:120].max() < 20 and r.threshold == 20
    # per-item p-values against the calibration set: small after the change
    assert r.pvalues[120:].median() < 0.05 < r.pvalues[:120].median()
    assert "alarm at item" in r.summary()


def test_monitor_cli_on_cached_scores(tmp_path):
    from priorshift.cli import main

    z = _null_streams(1, 100, 150, seed=3)[0]
    stream = z[100:].clone()
    stream[100:] += 4.0
    np.save(tmp_path / "cal.npy", z[:100].numpy())
    np.save(tmp_path / "s1.npy", stream[:60].numpy())
    np.save(tmp_path / "s2.npy", stream[60:].numpy())
    out = tmp_path / "mon"
    assert main(["monitor", "--scores", str(tmp_path / "s1.npy"), str(tmp_path / "s2.npy"), "--calibration-scores", str(tmp_path / "cal.npy"),
                 "--alpha", "0.05", "--out", str(out), "--quiet"]) == 0
    import json

    summary = json.loads((out / "monitor.json").read_text())
    assert summary["alarm"] is not None and 100 <= summary["alarm"] <= 125
    assert summary["n_items"] == 150 and summary["n_calibration"] == 100
    rows = (out / "stream.csv").read_text().splitlines()
    assert rows[0].split(",")[:5] == ["index", "file", "score", "pvalue", "online_pvalue"] and len(rows) == 151
    assert (out / "monitor.png").is_file() and (out / "config.toml").is_file()
    # an existing output is not replaced without --overwrite; bad alpha is one clear error
    assert main(["monitor", "--scores", str(tmp_path / "s1.npy"), "--calibration-scores", str(tmp_path / "cal.npy"), "--out", str(out)]) == 2
    assert main(["monitor", "--scores", str(tmp_path / "s1.npy"), "--calibration-scores", str(tmp_path / "cal.npy"), "--alpha", "2",
                 "--out", str(tmp_path / "m2")]) == 2


def test_monitor_cli_scores_a_stream_of_image_files(tmp_path):
    """Images in two files, read in order, scored by a zero-NFE detector fitted and calibrated on --calibrate (split
    in half): garments then digits; the alarm comes after the change, in the second file."""
    from priorshift.cli import main
    from priorshift.data import fashion_mnist, load_dataset

    u8 = lambda t: ((t[:, 0] + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).numpy()  # noqa: E731
    garments = fashion_mnist("test", n=260)
    np.save(tmp_path / "cal.npy", u8(garments[:200]))
    np.save(tmp_path / "a.npy", u8(garments[200:260]))
    np.save(tmp_path / "b.npy", u8(load_dataset("mnist", split="test", n=40)))
    out = tmp_path / "mon"
    assert main(["monitor", "--task", "fmnist-blur", "--detector", "measurement-norm", "--images", str(tmp_path / "a.npy"), str(tmp_path / "b.npy"),
                 "--calibrate", str(tmp_path / "cal.npy"), "--out", str(out), "--quiet"]) == 0
    import json

    summary = json.loads((out / "monitor.json").read_text())
    assert summary["n_calibration"] == 100 and summary["n_items"] == 100
    assert summary["alarm"] is not None and summary["alarm"] >= 60 and summary["alarm_file"] == "b.npy"
    assert main(["monitor", "--task", "fmnist-blur", "--detector", "measurement-norm", "--images", str(tmp_path / "a.npy"),
                 "--out", str(tmp_path / "m3")]) == 2  # no --calibrate: one clear error
    assert main(["monitor", "--task", "fmnist-blur", "--detector", "measurement-norm", "--images", str(tmp_path / "a.npy"),
                 "--calibrate", str(tmp_path / "cal.npy"), "--fit-size", "1", "--out", str(tmp_path / "m4")]) == 2
