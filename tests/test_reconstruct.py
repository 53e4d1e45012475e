"""One sampler pass for the reconstruction and KLIP's maps (priorshift.calibrate.onepass) and ``priorshift reconstruct``."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from priorshift.calibrate import reconstruct, reconstruct_batches
from priorshift.detectors import KLIP


@pytest.fixture(scope="module")
def klips():
    base = KLIP.example()  # 8×8 Gaussian prior, 50 % inpainting, ΠGDM 30 steps, S = 2, window [0.65, 0.85)
    other = KLIP(base.prior, base.operator, plan=base.plan, samples=base.samples, window=(0.2, 0.4), block=2)
    y = base.operator(base.prior.sample(3, generator=torch.Generator().manual_seed(0)), seed=[0, 1, 2])
    return base, other, y


def test_one_pass_equals_each_klip_and_the_plain_reconstruction(klips):
    base, other, y = klips
    r = reconstruct([base, other], y, seed=[5, 6, 7], keep_samples=True)
    for det, s in zip((base, other), r.scores):
        ref = det.score(y, seed=[5, 6, 7])  # stops sampling at its window's end: the same steps up to there
        assert torch.equal(s.map, ref.map) and torch.equal(s.score, ref.score)
        assert torch.allclose(s.extras["kl_nats"], ref.extras["kl_nats"])
    plain = base.plan.sample(base.prior, base.operator, y, samples=base.samples, seed=[5, 6, 7])
    assert r.steps_run == base.plan.steps and r.nfe == plain.nfe
    assert torch.equal(r.samples, plain.x0) and torch.equal(r.mean, plain.x0.mean(1))
    assert torch.allclose(r.std, plain.x0.std(1, correction=1))
    # calibration passes stop at the latest window's end
    short = reconstruct([base, other], y, seed=[5, 6, 7], full=False)
    assert short.steps_run == base.window_steps[1] and torch.equal(short.scores[0].map, r.scores[0].map)


def test_batches_do_not_change_the_result(klips):
    base, other, y = klips
    a = reconstruct_batches([base], y, batch_size=1, seed=3)
    b = reconstruct_batches([base], y, batch_size=3, seed=3)
    assert torch.allclose(a.mean, b.mean, atol=1e-6) and torch.allclose(a.scores[0].map, b.scores[0].map, rtol=1e-5)
    assert a.samples is None and a.nfe == b.nfe


def test_klips_of_one_pass_must_share_the_plan(klips):
    base, _, y = klips
    with pytest.raises(ValueError, match="share"):
        reconstruct([base, KLIP(base.prior, base.operator, plan={"steps": 10}, samples=base.samples)], y)
    with pytest.raises(ValueError, match="KLIP"):
        reconstruct([], y)


@pytest.fixture(scope="module")
def fmnist_files(tmp_path_factory):
    from priorshift.data import fashion_mnist

    d = tmp_path_factory.mktemp("recon")
    x = fashion_mnist("test", n=11)
    to_uint8 = lambda t: ((t[:, 0] + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).numpy()  # noqa: E731
    np.save(d / "x.npy", to_uint8(x[:3]))
    np.save(d / "cal.npy", to_uint8(x[3:]))
    return d


def test_reconstruct_cli_writes_everything(fmnist_files):
    from priorshift.cli import main

    d = fmnist_files
    out = d / "run"
    args = ["reconstruct", "--task", "fmnist-blur", "--images", str(d / "x.npy"), "--calibrate", str(d / "cal.npy"), "--plan", "steps=20",
            "--samples", "2", "--alpha", "0.2", "--keep-samples", "--out", str(out), "--quiet", "--threads", "1"]
    assert main(args) == 0
    mean, std, maps = (np.load(out / f"{k}.npy") for k in ("mean", "std", "map"))
    assert mean.shape == (3, 1, 32, 32) and std.shape == mean.shape and (std >= 0).all()
    assert np.load(out / "samples.npy").shape == (3, 2, 1, 32, 32)
    bp, bf = np.load(out / "block_pvalues.npy"), np.load(out / "flagged_blocks.npy")
    assert bp.shape == maps.shape == bf.shape and bf.dtype == bool
    assert (bp >= 1 / 9 - 1e-6).all() and (bf == (bp <= 0.2)).all()  # 8 calibration images: p >= 1/9
    rows = list(csv.DictReader(open(out / "scores.csv")))
    assert len(rows) == 3 and all(1 / 9 - 1e-6 <= float(r["pvalue"]) <= 1 for r in rows)
    assert sorted(p.name for p in (out / "figures").iterdir()) == [f"image_{i:04d}.png" for i in range(3)]
    assert (out / "report.html").is_file() and "n_calibration = 8" in (out / "config.toml").read_text()
    # atomic and careful: an existing run is kept unless --overwrite; a bad option is one error, nothing written
    assert main(args) == 2
    assert main([*args[:-5], "--out", str(d / "bad"), "--param", "window=0.9,0.1"]) == 2 and not (d / "bad").exists()
    assert main([*args[:-5], "--out", str(d / "bad"), "--param", "samples=3"]) == 2
