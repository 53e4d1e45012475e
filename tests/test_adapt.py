"""Prior alignment from measurements (``priorshift adapt``) on a tiny network: the held-out loss falls, early
stopping keeps the best tick, a killed run resumes to exactly the uninterrupted result, files are atomic and
loadable, bad input fails before anything is written."""

import argparse
import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from priorshift.adapt import AdaptConfig, adapt_prior, measured_set, simulate_measurements
from priorshift.analytic import stationary_gaussian
from priorshift.cli.adapt import add_parser
from priorshift.diffusion import UNetConfig
from priorshift.diffusion.checkpoint import load_prior
from priorshift.diffusion.training import TrainConfig, train
from priorshift.operators import MRI, cartesian_mask

TINY = UNetConfig(image_size=8, widths=(8, 16), embedding_dim=16, groups=4)


def _images(n, mean, seed):
    x = stationary_gaussian(8, length_scale=2.0, variance=0.04, mean=mean).sample(n, torch.Generator().manual_seed(seed))
    return x.float().clamp(-1, 1)


@pytest.fixture(scope="module")
def mismatched(tmp_path_factory):
    """A tiny prior trained (briefly) on dark images; the measured data below are bright."""
    cfg = TrainConfig(name="dark", steps=20, batch_size=16, lr=3e-3, warmup_steps=2, checkpoint_every=20, unet=TINY)
    path = train(cfg, _images(64, -0.5, 0), tmp_path_factory.mktemp("dark"), progress=False)
    return path


@pytest.fixture(scope="module")
def bright():
    y, masks = simulate_measurements("inpainting", _images(24, 0.5, 1), seed=0, p=0.5, block=2)
    return measured_set("inpainting", y, masks)


def _cfg(**kw):
    return AdaptConfig(**({"name": "aligned", "steps": 40, "batch_size": 8, "lr": 3e-3, "warmup_steps": 2, "ema_decay": 0.5,
                           "eval_every": 10, "patience": 3, "val_draws": 4} | kw))


def test_held_out_loss_falls_and_the_result_is_a_prior(tmp_path, mismatched, bright):
    res = adapt_prior(load_prior(mismatched), bright, tmp_path / "run", _cfg())
    assert res.n_train == 18 and res.n_val == 6 and res.history[0][0] == 0
    assert res.best_val_loss < 0.8 * res.initial_val_loss, res.history
    assert res.best_step > 0 and (res.best_step, res.best_val_loss) in [tuple(h) for h in res.history]
    D = load_prior(res.path)
    info = json.loads(res.path.with_suffix(".json").read_text())
    assert info["adapted_from"] == "dark" and info["adaptation"]["best_step"] == res.best_step
    assert info["adaptation"]["kind"] == "inpainting" and info["adaptation"]["stopped"] == res.stopped
    assert D(torch.zeros(2, 1, 8, 8), torch.tensor([0.1, 1.0])).shape == (2, 1, 8, 8)
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["adapt_state.json", "aligned.json", "aligned.safetensors", "train"]
    assert not list((tmp_path / "run").glob(".*.tmp"))  # atomic writes leave no temporaries


def test_resume_after_kill_equals_uninterrupted(tmp_path, mismatched, bright):
    a = adapt_prior(load_prior(mismatched), bright, tmp_path / "a", _cfg())
    assert adapt_prior(load_prior(mismatched), bright, tmp_path / "b", _cfg(), stop_at=20) is None  # "killed" after step 20
    state = json.loads((tmp_path / "b" / "adapt_state.json").read_text())
    assert state["step"] == 20 and not state["finished"]
    b = adapt_prior(load_prior(mismatched), bright, tmp_path / "b", _cfg())
    assert a.history == b.history and a.best_step == b.best_step and a.stopped == b.stopped
    wa, wb = load_file(str(a.path)), load_file(str(b.path))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    before = b.path.stat().st_mtime_ns
    again = adapt_prior(load_prior(mismatched), bright, tmp_path / "b", _cfg())  # finished: nothing retrained or rewritten
    assert again.history == b.history and b.path.stat().st_mtime_ns == before


def test_early_stopping_keeps_the_best_tick(tmp_path, mismatched, bright):
    res = adapt_prior(load_prior(mismatched), bright, tmp_path / "run", _cfg(lr=1e-9, steps=200, patience=2, min_improvement=0.05))
    assert res.stopped.startswith("early stop") and res.steps_run == 20 and res.best_step == 0
    start, kept = load_file(str(mismatched)), load_file(str(res.path))
    assert all(torch.equal(start[k], kept[k]) for k in start)  # no tick improved: the prior is returned unchanged


def test_mri_trains_on_zero_filled_images():
    x = _images(4, 0.0, 2)
    mask = cartesian_mask(8, 2, 2, generator=torch.Generator().manual_seed(0))
    op = MRI(mask)
    data = measured_set("mri", op(x), mask)
    assert data.masks is None and data.kind == "mri"
    torch.testing.assert_close(data.targets, op.A_adjoint(op(x)).clamp(-1, 1))
    y, masks = simulate_measurements("mri", x, seed=0, acceleration=2, center_lines=2)
    assert y.shape == (4, 1, 8, 8, 2) and masks.shape == (4, 8, 8)


def test_bad_input_fails_before_anything_is_written(tmp_path, mismatched, bright):
    prior = load_prior(mismatched)
    with pytest.raises(ValueError, match="at least 2"):
        adapt_prior(prior, bright.subset(torch.tensor([0])), tmp_path / "one", _cfg())
    y, masks = simulate_measurements("inpainting", stationary_gaussian(16).sample(4).float(), seed=0, p=0.5, block=2)
    with pytest.raises(ValueError, match="prior is"):
        adapt_prior(prior, measured_set("inpainting", y, masks), tmp_path / "size", _cfg())
    with pytest.raises(ValueError, match="patience"):
        adapt_prior(prior, bright, tmp_path / "cfg", _cfg(patience=0))
    with pytest.raises(ValueError, match="only 0"):
        measured_set("inpainting", y, masks * 0.5)
    with pytest.raises(ValueError, match="kind"):
        measured_set("ct", y, masks)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not empty"):
        adapt_prior(prior, bright, tmp_path / "full", _cfg())
    assert not any((tmp_path / d).exists() for d in ("one", "size", "cfg"))
    adapt_prior(prior, bright, tmp_path / "other", _cfg(steps=10))
    with pytest.raises(ValueError, match="another alignment run"):
        adapt_prior(prior, bright, tmp_path / "other", _cfg(steps=10, lr=1e-2))


def test_the_adapt_command(tmp_path, mismatched, capsys):
    parser = argparse.ArgumentParser(prog="priorshift")
    add_parser(parser.add_subparsers(dest="command"))
    np.save(tmp_path / "x.npy", _images(8, 0.5, 3).numpy())
    args = parser.parse_args(["adapt", "--prior", str(mismatched), "--kind", "inpainting", "--images", str(tmp_path / "x.npy"),
                              "--p", "0.5", "--block", "2", "--out", str(tmp_path / "run"), "--steps", "4", "--eval-every", "2",
                              "--batch-size", "4", "--quiet"])
    assert args.func(args) == 0
    assert "held-out loss" in capsys.readouterr().out and (tmp_path / "run" / "run.safetensors").exists()
    args = parser.parse_args(["adapt", "--prior", str(mismatched), "--kind", "inpainting", "--measurements", str(tmp_path / "x.npy"),
                              "--out", str(tmp_path / "run2")])
    with pytest.raises(ValueError, match="--masks"):
        args.func(args)


def test_the_adapt_command_with_any_operator(tmp_path, mismatched, capsys):
    from priorshift.cli import main
    from priorshift.operators import make_operator

    x = _images(8, 0.5, 3)
    np.save(tmp_path / "x.npy", x.numpy())
    common = ["adapt", "--prior", str(mismatched), "--steps", "2", "--eval-every", "1", "--batch-size", "4", "--quiet"]
    assert main(common + ["--operator", "ct:views=8,noise=0.01", "--images", str(tmp_path / "x.npy"), "--out", str(tmp_path / "ct")]) == 0
    assert "8 ct measurements" in capsys.readouterr().out
    info = json.loads((tmp_path / "ct" / "ct.json").read_text())
    assert info["adapted_on"]["operator"] == "ct:views=8,noise=0.01" and info["adaptation"]["kind"] == "ct"
    y, _ = simulate_measurements(make_operator("ct", image_size=8, n_views=8, noise_std=0.01), x, seed=0)  # sinograms measured elsewhere
    np.save(tmp_path / "y.npy", y.numpy())
    assert main(common + ["--operator", "ct:views=8", "--measurements", str(tmp_path / "y.npy"), "--out", str(tmp_path / "ct2")]) == 0
    for argv, message in (
        (["--operator", "ct", "--images", str(tmp_path / "x.npy"), "--p", "0.5"], "--p: only inpainting and mri measurements have masks"),
        (["--kind", "mri", "--images", str(tmp_path / "x.npy"), "--p", "0.5"], "--p: not a setting of mri measurements"),
        (["--kind", "inpainting", "--measurements", str(tmp_path / "x.npy"), "--masks", str(tmp_path / "x.npy"), "--block", "2"],
         "--block: not a setting of inpainting measurements given as --measurements"),
        (["--operator", "inpaint:p=0.5", "--images", str(tmp_path / "x.npy")], "give the bare name"),
    ):
        assert main(common + argv + ["--out", str(tmp_path / "bad")]) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
