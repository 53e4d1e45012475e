"""Issue 10: every bad input, interrupted run and corrupt file gets one clear answer — never a silent wrong result.

One parametrized test per list of the issue, each case fed through the CLI (``priorshift.cli.main`` → exit code 2,
one line on stderr that names the bad value, no traceback, the working directory byte-for-byte as before the call)
and, where the input exists there too, through the Python API (a ``ValueError`` naming it). All data is tiny: a
16×16 prior trained for 3 steps by ``priorshift train`` (once for the module), 8 images, 3 sampler steps.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from priorshift.cli import main
from robust_helpers import SCORE, refused, snapshot


# -- fixtures and helpers ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A 16×16 prior trained for 3 steps by the CLI, and the bad input files of the issue, side by side."""
    d = tmp_path_factory.mktemp("robust")
    rng = np.random.default_rng(0)
    imgs = (rng.random((40, 1, 16, 16)) * 255).astype(np.uint8)
    np.save(d / "imgs.npy", imgs)
    assert main(["train", "--data", f"npy:{d / 'imgs.npy'}", "--image-size", "16", "--steps", "3", "--batch-size", "4",
                 "--widths", "8,16", "--out", str(d / "run"), "--quiet", "--no-grid", "--threads", "1"]) == 0
    x = imgs[:8].astype(np.float32) / 127.5 - 1
    np.save(d / "x8.npy", x)
    np.save(d / "x255.npy", imgs[:8].astype(np.float32))  # float images left in [0, 255]
    np.save(d / "empty.npy", x[:0])
    nan = x.copy()
    nan[2, 0, 3, 3] = np.nan
    np.save(d / "nan.npy", nan)
    np.save(d / "pickled.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    np.save(d / "big.npy", np.zeros((4, 1, 32, 32), np.float32))
    from priorshift.operators.spec import operator_from_spec

    ct = operator_from_spec("ct:views=8,noise=0.1", 16)
    y = ct(torch.from_numpy(x), seed=list(range(8)))
    np.save(d / "y8.npy", y.numpy())
    y_nan = y.numpy().copy()
    y_nan[1, 0, 0, 0] = np.nan
    np.save(d / "y_nan.npy", y_nan)
    (d / "afile").write_text("not a directory")
    return d


def prior_path(tiny) -> str:
    return str(tiny / "run" / "run.safetensors")


def damaged_copy(src: Path, dst: Path, *, keep_checksum: bool) -> Path:
    """``src`` with bytes in the middle of its tensor data overwritten by 0xFF (float16 NaN); the header intact."""
    raw = bytearray(src.read_bytes())
    header = struct.unpack("<Q", raw[:8])[0]
    start = 8 + header
    mid = start + ((len(raw) - start) // 4) * 2  # an even offset inside the data
    raw[mid:mid + 512] = b"\xff" * 512
    dst.write_bytes(bytes(raw))
    cfg = json.loads(src.with_suffix(".json").read_text())
    if not keep_checksum:  # an older checkpoint, written before checksums and digests were recorded
        cfg.pop("weights_sha256", None)
        cfg.pop("prior_sha256", None)
    dst.with_suffix(".json").write_text(json.dumps(cfg))
    return dst


# -- 1. silent wrong results: must become an error ---------------------------------------------------------
SILENT = {
    # DPS ignores operator.noise_std (its step is normalised): an explicit noise with --measurements is refused.
    "dps-ignores-noise": (["score", "--measurements", "y8.npy", "--operator", "ct:views=8,noise=5.0", "--plan", "sampler=dps"],
                          ["noise=", "'dps'", "projection"]),
    "langevin-ignores-noise": (["score", "--measurements", "y8.npy", "--operator", "ct:views=8,noise=0.01", "--plan", "sampler=langevin",
                                "--plan", "inner=1"], ["noise=", "'langevin'"]),
    "unconditional-sampler": (["score", "--images", "x8.npy", "--operator", "identity", "--plan", "sampler=unconditional"],
                              ["'unconditional'", "no likelihood step"]),
    "train-steps-0": (["train", "--steps", "0"], ["--steps", "0"]),
    "train-steps-negative": (["train", "--steps", "-5"], ["--steps", "-5"]),
    "train-batch-0": (["train", "--steps", "2", "--batch-size", "0"], ["--batch-size", "0"]),
    "train-lr-0": (["train", "--steps", "2", "--lr", "0"], ["--lr", "0"]),
    "train-checkpoint-every-0": (["train", "--steps", "2", "--checkpoint-every", "0"], ["--checkpoint-every", "0"]),
    "train-image-size-4": (["train", "--steps", "2", "--image-size", "4"], ["--image-size", "4"]),
    "train-image-size-not-multiple": (["train", "--steps", "2", "--image-size", "18", "--widths", "8,16,32"], ["--image-size", "18", "divisible by 4"]),
    "images-0-255-float": (["score", "--images", "x255.npy", "--operator", "identity"], ["x255.npy", "255", "rescale"]),
    "damaged-weights-checksum": (["score", "--images", "x8.npy", "--operator", "identity", "--prior", "dmg_sum/p.safetensors"],
                                 ["dmg_sum/p.safetensors", "SHA-256", "corrupt"]),
    "damaged-weights-nan": (["score", "--images", "x8.npy", "--operator", "identity", "--prior", "dmg_nan/p.safetensors"],
                            ["dmg_nan/p.safetensors", "NaN/Inf", "damaged"]),
}


@pytest.mark.parametrize("case", list(SILENT))
def test_silent_wrong_results_are_refused(case, tiny, tmp_path, capsys, monkeypatch):
    argv, needles = SILENT[case]
    for name in ("x8.npy", "x255.npy", "y8.npy"):
        shutil.copy(tiny / name, tmp_path / name)
    for tag, keep in (("dmg_sum", True), ("dmg_nan", False)):
        (tmp_path / tag).mkdir()
        damaged_copy(Path(prior_path(tiny)), tmp_path / tag / "p.safetensors", keep_checksum=keep)
    monkeypatch.chdir(tmp_path)
    if argv[0] == "train":
        argv = ["train", "--data", f"npy:{tiny / 'imgs.npy'}", "--image-size", "16", "--widths", "8,16", "--out", "newrun", "--quiet",
                "--no-grid", *argv[1:]]
    else:
        argv = [*argv, "--out", "out", *SCORE]
        if "--prior" not in argv:
            argv += ["--prior", prior_path(tiny)]
    refused(argv, capsys, tmp_path, *needles)


def test_silent_wrong_results_api(tiny, tmp_path):
    """The same inputs through the Python API."""
    from priorshift import load_prior
    from priorshift.analytic import stationary_gaussian
    from priorshift.detectors import KLIP
    from priorshift.diffusion.training import TrainConfig, train
    from priorshift.diffusion.unet import UNetConfig
    from priorshift.operators import Identity, Inpainting
    from priorshift.registry import get, names
    from priorshift.samplers import SamplingPlan

    # Every registered sampler declares whether it reads operator.noise_std; the ones that do are affected by it.
    declared = {n: getattr(get("sampler", n), "uses_noise_std", None) for n in names("sampler")}
    assert None not in declared.values(), declared
    assert declared["dps"] is declared["langevin"] is declared["unconditional"] is False
    assert declared["projection"] is declared["exact"] is True
    prior = stationary_gaussian(8, length_scale=1.5, variance=0.25)
    y = Inpainting.example(image_size=8, noise_std=0.0)(prior.sample(2, generator=torch.Generator().manual_seed(0)), seed=[0, 1])
    plan = SamplingPlan("projection", steps=3)
    runs = [plan.sample(prior, Inpainting.example(image_size=8, noise_std=s), y, seed=[0, 1]).x0 for s in (0.01, 0.5)]
    assert not torch.allclose(*runs), "a sampler that declares uses_noise_std must act on it"
    # A sampler with no likelihood step cannot feed KLIP.
    with pytest.raises(ValueError, match="'unconditional' has no likelihood step"):
        KLIP(prior, Identity(), plan={"sampler": "unconditional", "steps": 3})
    # Training settings that would write an untrained (or NaN) prior, refused before anything is written.
    data = torch.rand(8, 1, 8, 8) * 2 - 1
    tiny_unet = UNetConfig(image_size=8, widths=(8, 16), embedding_dim=16, groups=4)
    for bad, match in [({"steps": 0}, "steps must be an integer >= 1, got 0"), ({"steps": -1}, "got -1"),
                       ({"batch_size": 0}, "batch_size must be an integer >= 1, got 0"), ({"lr": 0.0}, "lr must be"),
                       ({"checkpoint_every": 0}, "checkpoint_every"),
                       ({"unet": UNetConfig(image_size=4, widths=(8,), groups=4)}, "image_size must be an integer >= 8, got 4"),
                       ({"unet": UNetConfig(image_size=10, widths=(8, 16, 32), groups=4)}, "image_size 10 must be divisible by 4")]:
        cfg = TrainConfig(**{"name": "t", "steps": 2, "batch_size": 2, "unet": tiny_unet, **bad})
        with pytest.raises(ValueError, match=match):
            train(cfg, data if "unet" not in bad else torch.zeros(2, 1, cfg.unet.image_size, cfg.unet.image_size), tmp_path / "run", progress=False)
        assert not (tmp_path / "run").exists()
    with pytest.raises(ValueError, match=r"spans \[0, 255\].*\[-1, 1\]"):
        train(TrainConfig(name="t", steps=1, batch_size=2, unet=tiny_unet), torch.linspace(0, 255, 128).reshape(2, 1, 8, 8), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()
    # Images in [0, 255] (float or uint8) handed to an operator are refused where they enter: operator(x).
    x = torch.from_numpy(np.load(tiny / "x8.npy"))
    op = Identity(noise_std=0.1)
    with pytest.raises(ValueError, match=r"values in \[0, 25\d\]: images must be in \[-1, 1\].*rescale.*x / 127.5 - 1"):
        op((x + 1) * 127.5)
    with pytest.raises(ValueError, match="dtype torch.uint8.*127.5"):
        op(((x + 1) * 127.5).to(torch.uint8))
    # [0, 1] data cannot be told from [-1, 1] by its range: accepted (documented), as are analytic Gaussian tails.
    assert op((x + 1) / 2).shape == x.shape and op(3 * torch.randn(2, 1, 16, 16)).shape == (2, 1, 16, 16)
    # Damaged weights behind an intact header: named, never loaded.
    src = Path(prior_path(tiny))
    assert json.loads(src.with_suffix(".json").read_text())["weights_sha256"] == hashlib.sha256(src.read_bytes()).hexdigest()
    with pytest.raises(ValueError, match=r"c\.safetensors: SHA-256 .* corrupt"):
        load_prior(damaged_copy(src, tmp_path / "c.safetensors", keep_checksum=True))
    with pytest.raises(ValueError, match=r"n\.safetensors: weight tensor .* NaN/Inf"):
        load_prior(damaged_copy(src, tmp_path / "n.safetensors", keep_checksum=False))
    from safetensors.torch import load_file, save_file

    huge = {k: torch.full_like(v, 6e4) if k.endswith("weight") else v for k, v in load_file(str(src)).items()}  # finite, useless
    save_file(huge, str(tmp_path / "h.safetensors"), metadata={"format": "priorshift-prior/1"})
    shutil.copy(tmp_path / "n.json", tmp_path / "h.json")
    with pytest.raises(ValueError, match=r"h\.safetensors: the network's output .* NaN/Inf"):
        load_prior(tmp_path / "h.safetensors")


def test_zero_one_images_are_accepted_and_the_reading_is_said(tiny, tmp_path, capsys):
    """[0, 1] float images cannot be told from [-1, 1] ones without negative values: the CLI says which reading it
    used (stderr, and config.json), and --value-range overrides it."""
    x01 = (np.load(tiny / "x8.npy") + 1) / 2
    np.save(tmp_path / "x01.npy", x01)
    argv = ["score", "--prior", prior_path(tiny), "--images", str(tmp_path / "x01.npy"), "--operator", "identity", "--param", "block=8",
            "--threads", "1", "--plan", "steps=2", "--param", "samples=1"]
    capsys.readouterr()
    assert main([*argv, "--out", str(tmp_path / "a")]) == 0
    err = capsys.readouterr().err
    assert "x01.npy: read as [0, 1] → 2x − 1" in err and "pass --value-range symmetric" in err
    assert json.loads((tmp_path / "a" / "config.json").read_text())["value_range"] == {"input": "unit"}
    assert main([*argv, "--out", str(tmp_path / "b"), "--value-range", "symmetric", "--quiet"]) == 0
    assert json.loads((tmp_path / "b" / "config.json").read_text())["value_range"] == {"input": "symmetric"}


def test_bundled_weights_record_and_match_their_checksums():
    from priorshift.diffusion.checkpoint import WEIGHTS_DIR, bundled_priors

    for name, info in bundled_priors().items():
        path = WEIGHTS_DIR / info["file"]
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        assert info["sha256"] == digest == json.loads(path.with_suffix(".json").read_text())["weights_sha256"], name


# -- 2. unclear errors: must say what to fix ---------------------------------------------------------------
UNCLEAR = {
    "empty-images": (["--images", "empty.npy", "--operator", "identity"], ["empty.npy", "0 images"]),
    "empty-measurements": (["--measurements", "empty.npy", "--operator", "identity"], ["empty.npy", "0 samples"]),
    "nan-images": (["--images", "nan.npy", "--operator", "identity"], ["nan.npy", "1 NaN/Inf", "image 2"]),
    "nan-measurements": (["--measurements", "y_nan.npy", "--operator", "ct:views=8"], ["y_nan.npy", "1 NaN/Inf"]),
    "window-one-number": (["--images", "x8.npy", "--operator", "identity", "--param", "window=0.8"], ["window=0.8", "two numbers"]),
    "batch-size-0": (["--images", "x8.npy", "--operator", "identity", "--batch-size", "0"], ["--batch-size", "0"]),
    "out-is-a-file": (["--images", "x8.npy", "--operator", "identity", "--out", "afile"], ["afile", "existing file"]),
    "out-under-a-file": (["--images", "x8.npy", "--operator", "identity", "--out", "afile/sub"], ["afile", "not a directory"]),
    "missing-images": (["--images", "nope.npy", "--operator", "identity"], ["nope.npy", "does not exist"]),
    "missing-measurements": (["--measurements", "nope.npy", "--operator", "identity"], ["nope.npy", "does not exist"]),
    "missing-prior": (["--images", "x8.npy", "--operator", "identity", "--prior", "nope.safetensors"], ["nope.safetensors"]),
    "pickled-images": (["--images", "pickled.npy", "--operator", "identity"], ["pickled.npy", "pickle"]),
    "pickled-measurements": (["--measurements", "pickled.npy", "--operator", "identity"], ["pickled.npy", "pickle"]),
    "wrong-size-images": (["--images", "big.npy", "--operator", "identity"], ["big.npy", "32×32", "16×16"]),
    "wrong-size-measurements": (["--measurements", "big.npy", "--operator", "identity"], ["big.npy", "32×32", "16×16"]),
    "threads-negative": (["--images", "x8.npy", "--operator", "identity", "--threads", "-1"], ["--threads", "-1"]),
    "train-missing-data": (["train:npy:nope.npy"], ["nope.npy"]),
    "train-empty-data": (["train:npy:empty.npy"], ["empty.npy", "0 images"]),
    "train-nan-data": (["train:npy:nan.npy"], ["nan.npy", "NaN/Inf"]),
    "train-pickled-data": (["train:npy:pickled.npy"], ["pickled.npy", "pickle"]),
    "train-bad-widths": (["train:npy:x8.npy", "--widths", "8,x"], ["--widths", "8,x"]),
    "train-out-is-a-file": (["train:npy:x8.npy", "--out", "afile"], ["--out afile", "existing file"]),
}


@pytest.mark.parametrize("case", list(UNCLEAR))
def test_unclear_errors_say_what_to_fix(case, tiny, tmp_path, capsys, monkeypatch):
    args, needles = UNCLEAR[case]
    for name in ("x8.npy", "empty.npy", "nan.npy", "y_nan.npy", "pickled.npy", "big.npy", "afile"):
        shutil.copy(tiny / name, tmp_path / name)
    monkeypatch.chdir(tmp_path)
    if args[0].startswith("train:"):
        argv = ["train", "--data", args[0][len("train:"):], "--image-size", "16", "--steps", "1", "--widths", "8,16", "--quiet", "--no-grid",
                *args[1:]]
        argv += [] if "--out" in argv else ["--out", "newrun"]
    else:
        argv = ["score", *SCORE, *args]
        argv += [] if "--prior" in argv else ["--prior", prior_path(tiny)]
        argv += [] if "--out" in argv else ["--out", "out"]
    refused(argv, capsys, tmp_path, *needles)


def test_unclear_errors_api(tiny):
    from priorshift import load_prior
    from priorshift.data import npy_stack
    from priorshift.detectors import KLIP, score_batches
    from priorshift.detectors.klip import window_steps

    with pytest.raises(ValueError, match=r"empty\.npy holds 0 images"):
        npy_stack(tiny / "empty.npy")
    with pytest.raises(ValueError, match=r"nan\.npy: 1 NaN/Inf value\(s\) \(first in image 2\)"):
        npy_stack(tiny / "nan.npy")
    with pytest.raises(ValueError, match=r"pickled\.npy .*never loads pickles"):
        npy_stack(tiny / "pickled.npy")
    with pytest.raises(FileNotFoundError, match=r"nope\.npy"):
        npy_stack(tiny / "nope.npy")
    with pytest.raises(ValueError, match="window needs two numbers.*got 0.8"):
        window_steps(0.8, 10)
    with pytest.raises(ValueError, match="window needs two numbers"):
        KLIP(KLIP.example().prior, KLIP.example().operator, window=(0.8,))
    det = KLIP.example()
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1, got 0"):
        score_batches(det, torch.zeros(2, 1, 8, 8), batch_size=0)
    D = load_prior(prior_path(tiny))
    with pytest.raises(ValueError, match="trained on 16×16 images; got 32×32"):
        D(torch.zeros(1, 1, 32, 32), torch.ones(1))


# -- 3. outputs that can mix runs ------------------------------------------------------------------------
def _score_argv(tiny, out, *extra):
    return ["score", "--prior", prior_path(tiny), "--images", str(tiny / "x8.npy"), "--operator", "identity:noise=0.1",
            "--param", "block=8", "--out", str(out), *SCORE, *extra]


MIXING = ["score-twice", "score-interrupted", "train-other-run", "train-foreign-dir", "train-fewer-steps", "demo-out-file",
          "demo-foreign-dir", "demo-interrupted"]


@pytest.mark.parametrize("case", MIXING)
def test_outputs_never_mix_runs(case, tiny, tmp_path, capsys, monkeypatch):
    train_argv = ["train", "--data", f"npy:{tiny / 'imgs.npy'}", "--image-size", "16", "--widths", "8,16", "--batch-size", "4",
                  "--quiet", "--no-grid", "--threads", "1"]
    if case == "score-twice":
        assert main(_score_argv(tiny, tmp_path / "out")) == 0
        refused(_score_argv(tiny, tmp_path / "out"), capsys, tmp_path, "already holds results", "--overwrite")
    elif case == "score-interrupted":
        # Killed (here: a failing figure) after scores.csv is written: the previous run stays whole, no temp dir left.
        assert main(_score_argv(tiny, tmp_path / "out")) == 0
        before = snapshot(tmp_path)

        def boom(*a, **k):
            raise KeyboardInterrupt

        monkeypatch.setattr("priorshift.bench.figures.heatmap_figure", boom)
        assert main(_score_argv(tiny, tmp_path / "out", "--overwrite", "--seed", "5")) == 130  # Ctrl-C: the conventional code
        assert "interrupted (SIGINT)" in capsys.readouterr().err
        assert snapshot(tmp_path) == before
    elif case == "train-other-run":
        shutil.copytree(tiny / "run", tmp_path / "run")
        refused([*train_argv, "--steps", "3", "--lr", "0.01", "--out", str(tmp_path / "run")], capsys, tmp_path,
                "another training run", "lr 0.001 → 0.01")
    elif case == "train-foreign-dir":
        (tmp_path / "stuff").mkdir()
        (tmp_path / "stuff" / "notes.txt").write_text("mine")
        refused([*train_argv, "--steps", "3", "--out", str(tmp_path / "stuff")], capsys, tmp_path, "not empty", "no training run")
    elif case == "train-fewer-steps":
        shutil.copytree(tiny / "run", tmp_path / "run")
        refused([*train_argv, "--steps", "2", "--out", str(tmp_path / "run")], capsys, tmp_path, "already at step 3", "2 steps")
    elif case == "demo-out-file":
        (tmp_path / "f").write_text("x")
        refused(["demo", "--quick", "--out", str(tmp_path / "f")], capsys, tmp_path, "existing file")
    elif case == "demo-foreign-dir":
        (tmp_path / "d").mkdir()
        (tmp_path / "d" / "mine.txt").write_text("x")
        refused(["demo", "--quick", "--out", str(tmp_path / "d")], capsys, tmp_path, "mine.txt", "did not write")
    elif case == "demo-interrupted":
        from priorshift.demo import DEMO_FILES, check_output_dir, write_output_dir

        out = tmp_path / "demo"
        write_output_dir(out, {name: (lambda p, name=name: p.write_text(f"old {name}")) for name in DEMO_FILES})
        before = snapshot(tmp_path)

        def failing(path):
            raise KeyboardInterrupt

        with pytest.raises(KeyboardInterrupt):
            write_output_dir(out, {"heatmaps.png": lambda p: p.write_text("new"), "results.md": failing})
        assert snapshot(tmp_path) == before, "an interrupted demo leaves the previous output whole"
        assert check_output_dir(out) == out  # a previous demo's output may be replaced ...
        write_output_dir(out, {name: (lambda p, name=name: p.write_text(f"new {name}")) for name in DEMO_FILES})
        assert sorted(p.name for p in tmp_path.iterdir()) == ["demo"] and (out / "results.md").read_text() == "new results.md"


def test_train_resumes_only_the_same_run(tiny, tmp_path, capsys):
    """The same run resumes (steps may grow); a finished run is not retrained or rewritten."""
    shutil.copytree(tiny / "run", tmp_path / "run")
    argv = ["train", "--data", f"npy:{tiny / 'imgs.npy'}", "--image-size", "16", "--widths", "8,16", "--batch-size", "4",
            "--quiet", "--no-grid", "--threads", "1", "--out", str(tmp_path / "run")]
    before = snapshot(tmp_path)
    assert main([*argv, "--steps", "3"]) == 0
    assert "already trained" in capsys.readouterr().out and snapshot(tmp_path) == before
    assert main([*argv, "--steps", "4"]) == 0
    assert "resuming" in capsys.readouterr().out
    assert json.loads((tmp_path / "run" / "train_state.json").read_text())["step"] == 4


# -- 4. a failed run leaves nothing behind ---------------------------------------------------------------
NOTHING = {
    "score-bad-block": ["score", "--images", "x8.npy", "--operator", "identity", "--param", "block=0"],
    "score-nan-measurements": ["score", "--measurements", "y_nan.npy", "--operator", "ct:views=8"],
    "score-bad-operator": ["score", "--images", "x8.npy", "--operator", "warp"],
    "train-bad-config": ["train", "--steps", "0"],
    "train-nan-data": ["train", "--steps", "1", "--data", "npy:nan.npy"],
    "train-unknown-data": ["train", "--steps", "1", "--data", "cifar-10"],
    "demo-n-1": ["demo", "--quick", "--n", "1"],
    "demo-wrong-prior": ["demo", "--quick", "--prior", "TINY"],
}


@pytest.mark.parametrize("case", list(NOTHING))
def test_failed_runs_leave_nothing(case, tiny, tmp_path, capsys, monkeypatch):
    for name in ("x8.npy", "y_nan.npy", "nan.npy"):
        shutil.copy(tiny / name, tmp_path / name)
    monkeypatch.chdir(tmp_path)
    argv = [a.replace("TINY", prior_path(tiny)) for a in NOTHING[case]]
    if argv[0] == "score":
        argv += ["--prior", prior_path(tiny), "--out", "new/out", *SCORE]
    elif argv[0] == "train":
        if "--data" not in argv:
            argv += ["--data", f"npy:{tiny / 'imgs.npy'}"]
        argv += ["--image-size", "16", "--widths", "8,16", "--out", "new/run", "--quiet", "--no-grid"]
    else:
        argv += ["--out", "new/demo"]
    err = refused(argv, capsys, tmp_path)
    assert not (tmp_path / "new").exists(), err
