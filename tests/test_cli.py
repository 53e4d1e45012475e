"""The command line end to end: help, version, listings, training, the demo and the README's example."""

import subprocess
import sys

import numpy as np
import pytest
import torch

from priorshift.cli import main


def run(*args):
    return subprocess.run([sys.executable, "-m", "priorshift", *args], capture_output=True, text=True, timeout=600)


def test_help_and_version():
    r = run("--help")
    assert r.returncode == 0 and "whether the image behind them" in r.stdout and "train" in r.stdout and "demo" in r.stdout
    r = run("--version")
    assert r.returncode == 0 and r.stdout.startswith("priorshift ")
    import priorshift

    assert priorshift.__version__ in r.stdout


def test_listings(capsys):
    assert main(["datasets"]) == 0
    assert "phantom-ct" in capsys.readouterr().out
    assert main(["priors"]) == 0
    out = capsys.readouterr().out
    assert "phantom-ct-64" in out and "fashion-mnist-32" in out and "priorshift train" in out


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A 16×16 prior trained for 3 steps by the CLI (once for this module)."""
    tmp = tmp_path_factory.mktemp("cli")
    data = (np.random.default_rng(0).random((40, 1, 16, 16)) * 255).astype(np.uint8)
    np.save(tmp / "imgs.npy", data)
    argv = ["train", "--data", f"npy:{tmp / 'imgs.npy'}", "--image-size", "16", "--steps", "3", "--batch-size", "4",
            "--widths", "8,16", "--out", str(tmp / "run"), "--quiet", "--checkpoint-every", "2"]
    assert main(argv) == 0
    return tmp, argv


def test_train_end_to_end_and_resume(tiny_run, capsys):
    tmp_path, argv = tiny_run
    prior = tmp_path / "run" / "run.safetensors"
    assert prior.exists() and (tmp_path / "run" / "run_samples.png").exists()
    from priorshift import load_prior

    D = load_prior(prior)
    assert D(torch.zeros(1, 1, 16, 16), torch.ones(1)).shape == (1, 1, 16, 16)
    assert "npy:" in D.config["command"] and D.config["dataset"]["n"] == 40
    before = {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir()}
    assert main(argv) == 0  # a finished run is recognised as finished and rewrites nothing
    assert "already trained" in capsys.readouterr().out
    assert {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir()} == before


def test_score_command(tiny_run, tmp_path, capsys):
    run_dir, _ = tiny_run
    prior = str(run_dir / "run" / "run.safetensors")
    out = tmp_path / "out"
    argv = ["score", "--prior", prior, "--images", str(run_dir / "imgs.npy"), "--operator", "blur:kernel=5,sigma=1,noise=0.05",
            "--plan", "steps=4", "--param", "window=0,1", "--param", "block=4", "--param", "samples=2", "--out", str(out), "--quiet", "--batch-size", "16"]
    assert main(argv) == 0
    rows = (out / "scores.csv").read_text().splitlines()
    assert rows[0].startswith("index,score,nfe,seed,kl_nats") and len(rows) == 41
    # NFE per image is the total over all 40 images (the last batch of 8 is smaller), not the last batch's.
    assert {r.split(",")[2] for r in rows[1:]} == {"8"}, "4 steps × 2 samples per image"
    assert [r.split(",")[3] for r in rows[1:4]] == ["0", "1", "2"]
    assert np.load(out / "maps.npy").shape == (40, 4, 4) and (out / "heatmaps.png").exists()
    import json

    config = json.loads((out / "config.json").read_text())
    assert config["detector"]["plan"]["steps"] == 4 and config["detector"]["block"] == 4 and config["nfe_per_image"] == 8
    # A second run into the same directory is refused unless --overwrite; a refused run changes nothing.
    before = sorted(p.name for p in out.iterdir())
    assert main(argv) == 2 and "--overwrite" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == before
    assert main(argv + ["--overwrite"]) == 0
    assert main(["report", str(out)]) == 0, "a score run's folder rebuilds into a report"
    report = (out / "report.html").read_text()
    assert "heatmaps.png" in report and (out / "figures" / "scores_hist.png").is_file()
    assert main(["score", "--prior", prior, "--operator", "ct", "--out", str(tmp_path / "x")]) == 2
    assert "exactly one of --measurements" in capsys.readouterr().err
    assert not (tmp_path / "x").exists(), "a refused run creates nothing"


@pytest.mark.parametrize("extra, message", [
    (["--operator", "warp"], "unknown operator 'warp'"),
    (["--operator", "blur:sigma"], "key=value"),
    (["--operator", "identity", "--param", "block"], "key=value"),
    (["--operator", "identity", "--detector", "nope"], "unknown detector 'nope'"),
    (["--operator", "identity", "--plan", "sampler=unconditional"], "no likelihood step"),
    (["--operator", "identity", "--plan", "sampler=dps", "--plan", "zeta=-1", "--plan", "steps=2"], "zeta must be > 0"),
    (["--operator", "identity", "--batch-size", "0"], "--batch-size"),
])
def test_score_bad_arguments(tiny_run, tmp_path, capsys, extra, message):
    run_dir, _ = tiny_run
    argv = ["score", "--prior", str(run_dir / "run" / "run.safetensors"), "--images", str(run_dir / "imgs.npy"), "--out", str(tmp_path / "o"), "--quiet", *extra]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_train_init_fine_tunes_from_a_prior(tiny_run, capsys):
    """--init starts from a prior's weights with its architecture, records it, and refuses a mismatch."""
    tmp_path, _ = tiny_run
    base = tmp_path / "run" / "run.safetensors"
    argv = ["train", "--data", f"npy:{tmp_path / 'imgs.npy'}", "--image-size", "16", "--steps", "1", "--batch-size", "4",
            "--init", str(base), "--out", str(tmp_path / "ft"), "--quiet", "--no-grid", "--lr", "1e-12"]
    assert main(argv) == 0
    from priorshift import load_prior
    from priorshift.diffusion.checkpoint import sha256

    ft, D0 = load_prior(tmp_path / "ft" / "ft.safetensors"), load_prior(base)
    assert ft.config["init"] == {"prior": str(base), "sha256": sha256(base)} and ft.config["unet"]["widths"] == [8, 16]
    x, s = torch.randn(2, 1, 16, 16, generator=torch.Generator().manual_seed(0)), torch.tensor([0.3, 3.0])
    assert torch.allclose(ft(x, s), D0(x, s), atol=1e-2)  # lr ~0: the fine-tuned net is the initial one
    assert main(argv[:-2] + ["--widths", "8,32", "--out", str(tmp_path / "ft2")]) == 2
    assert "drop --widths" in capsys.readouterr().err and not (tmp_path / "ft2").exists()


def test_train_bad_input(tmp_path, capsys):
    assert main(["train", "--data", "cifar-10", "--image-size", "32", "--steps", "1", "--out", str(tmp_path)]) == 2
    assert "unknown dataset" in capsys.readouterr().err


@pytest.mark.parametrize("name, size", [("phantom-ct-64", 64), ("fashion-mnist-32", 32), ("fashion-mnist-0-7-32", 32), ("mnist-32", 32)])
def test_bundled_priors_load(name, size):
    from priorshift import load_prior

    D = load_prior(name)
    x = torch.zeros(2, 1, size, size)
    with torch.no_grad():
        out = D(x, torch.tensor([0.5, 5.0]))
    assert out.shape == x.shape and out.dtype == torch.float32 and torch.isfinite(out).all()


@pytest.mark.slow
def test_demo_quick(tmp_path):
    r = run("demo", "--quick", "--out", str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert "KLIP" in r.stdout and "KLIP multiscale" in r.stdout and "whole-image KL" in r.stdout and "local residual (recon)" in r.stdout
    assert (tmp_path / "heatmaps.png").stat().st_size > 10_000 and (tmp_path / "results.md").exists()


@pytest.mark.slow
def test_readme_example_runs():
    # The Python example of README.md, executed as written (with fewer steps to keep the suite fast).
    import re
    from pathlib import Path

    readme = Path(__file__).resolve().parents[1] / "README.md"
    code = re.search(r"```python\n(.*?)```", readme.read_text(), re.S).group(1)
    code = code.replace('"steps": 50', '"steps": 6')
    assert '"steps": 6' in code
    namespace = {}
    exec(compile(code, "README.md", "exec"), namespace)
    s = namespace["s"]
    # The shapes the README's comments promise are the shapes the code returns.
    stated_map = tuple(int(v) for v in re.search(r"s\.map\s+# \(([\d, ]+)\)", code).group(1).split(","))
    assert s.score.shape == (8,) and tuple(s.map.shape) == stated_map and s.nfe > 0


# -- score: config.toml, --config, --device, help ---------------------------------------------------------
def _toml_random(rng, depth=0):
    """A random TOML-able value: nested tables, arrays, awkward strings and keys, extreme numbers."""
    strings = ["", "plain", 'qu"ote', "back\\slash", "new\nline", "tab\t", "\x00\x1f\x7f", "ünïcødé ✓", "'single'", "a = b", "[x]", "#hash"]
    kind = rng.integers(0, 8 if depth < 3 else 5)
    if kind == 0:
        return strings[rng.integers(len(strings))]
    if kind == 1:
        return int(rng.choice([0, -1, 7, 2**63 - 1, -(2**63), int(rng.integers(-10**9, 10**9))]))
    if kind == 2:
        return float(rng.choice([0.0, -0.0, 1.0, 0.1, 1e-8, 1e16, 1.5e300, -2.5e-300, float("inf"), float("-inf"), rng.normal()]))
    if kind == 3:
        return bool(rng.integers(2))
    if kind == 4:
        return "x" * int(rng.integers(1, 5))
    if kind == 5:
        return [_toml_random(rng, depth + 1) for _ in range(rng.integers(0, 4))]
    if kind == 6:
        return tuple(_toml_random(rng, depth + 1) for _ in range(rng.integers(0, 3)))
    keys = ["a", "b-c", "d_e", "1", "", "with space", "dot.ted", 'q"uote', "ü", "A"]
    return {keys[i]: _toml_random(rng, depth + 1) for i in rng.choice(len(keys), size=rng.integers(0, 4), replace=False)}


def _as_read(v):
    return [_as_read(x) for x in v] if isinstance(v, (list, tuple)) else {k: _as_read(x) for k, x in v.items()} if isinstance(v, dict) else v


def test_toml_emitter_round_trips():
    """priorshift's TOML writer against the standard library's reader: 300 random documents (nested tables,
    tables in arrays, empty tables and arrays, escapes, quoted keys, 64-bit extremes, ±inf, -0.0), plus nan."""
    import math
    import tomllib

    from priorshift.io import toml_dumps

    rng = np.random.default_rng(0)
    for i in range(300):
        doc = {f"k{j}": _toml_random(rng) for j in range(rng.integers(0, 6))}
        doc["t"] = {"inner": {"deeper": _toml_random(rng)}, "empty": {}}
        text = toml_dumps(doc)
        assert tomllib.loads(text) == _as_read(doc), f"case {i}:\n{text}"
    back = tomllib.loads(toml_dumps({"x": float("nan"), "y": [float("nan")]}))
    assert math.isnan(back["x"]) and math.isnan(back["y"][0])
    assert repr(tomllib.loads(toml_dumps({"z": -0.0}))["z"]) == "-0.0"
    for bad in ({"a": None}, {"a": [1, None]}, {1: "x"}, {"a": object()}, {"a": 2**63}, {"a": "\ud800"}):
        with pytest.raises((TypeError, ValueError)):
            toml_dumps(bad)


@pytest.fixture(scope="module")
def six(tiny_run):
    """The tiny prior, six of its images and the score arguments for them."""
    run_dir, _ = tiny_run
    np.save(run_dir / "six.npy", np.load(run_dir / "imgs.npy")[:6])
    return run_dir, ["score", "--prior", str(run_dir / "run" / "run.safetensors"), "--images", str(run_dir / "six.npy"), "--quiet"]


def _read_toml(path):
    import tomllib

    return tomllib.loads(path.read_text())


@pytest.mark.parametrize("extra", [
    ["--detector", "measurement-norm", "--operator", "inpaint:p=0.5", "--fit", "{imgs}"],
    ["--detector", "klip", "--operator", "blur:kernel=5,sigma=1,noise=0.05", "--plan", "steps=3", "--param", "samples=1", "--param", "block=8",
     "--param", "window=0,1", "--batch-size", "4"],
    ["--detector", "klip-multiscale", "--operator", "inpaint:p=0.5", "--fit", "{imgs}", "--plan", "steps=3", "--param", "samples=1",
     "--param", "windows=3"],
], ids=["measurement-norm", "klip", "klip-multiscale"])
def test_score_config_toml_reproduces_the_run(six, tmp_path, extra):
    run_dir, base = six
    extra = [e.replace("{imgs}", str(run_dir / "imgs.npy")) for e in extra]
    first = tmp_path / "first"
    assert main([*base, *extra, "--out", str(first)]) == 0
    cfg = _read_toml(first / "config.toml")
    assert (first / "config.json").is_file(), "config.json is kept"
    assert cfg["prior"] == str(run_dir / "run" / "run.safetensors") and cfg["images"] == str(run_dir / "six.npy")
    assert cfg["operator"] == extra[3] if "noise" in extra[3] else cfg["operator"] == extra[3] + ",noise_std=0.0", "the spec with its noise"
    assert cfg["run"]["noise_std"] == (0.05 if "noise" in extra[3] else 0.0) and cfg["seed"] == 0 and cfg["device"] == "cpu"
    assert cfg["detector"] == extra[1] and cfg["run"]["versions"]["torch"] == torch.__version__ and cfg["run"]["n"] == 6
    assert cfg["param"]["side" if extra[1] == "measurement-norm" else "normalization"], "every parameter, defaults included"
    if extra[1] == "klip":
        from priorshift.cli import _sampler_defaults

        plan = cfg["plan"]
        assert plan["steps"] == 3 and set(_sampler_defaults(plan["sampler"])) <= set(plan), "the resolved plan, sampler defaults included"
        assert cfg["batch_size"] == 4 and cfg["param"]["block"] == 8 and cfg["param"]["window"] == [0, 1]
    # --config FILE (or its directory) alone reproduces the run; the new file is the same but for where and when.
    again = tmp_path / "again"
    assert main(["score", "--config", str(first / "config.toml"), "--out", str(again), "--quiet"]) == 0
    assert (again / "scores.csv").read_text() == (first / "scores.csv").read_text()
    if (first / "maps.npy").exists():
        assert np.array_equal(np.load(first / "maps.npy"), np.load(again / "maps.npy"))
    strip = lambda c: {k: v for k, v in c.items() if k not in ("run", "out")}  # noqa: E731
    assert strip(_read_toml(again / "config.toml")) == strip(cfg)
    # Flags given with --config override the file's values.
    other = tmp_path / "other"
    assert main(["score", "--config", str(first), "--out", str(other), "--seed", "3", "--quiet"]) == 0
    assert _read_toml(other / "config.toml")["seed"] == 3
    if extra[1] == "klip":  # a stochastic detector: other seeds, other scores
        assert (other / "scores.csv").read_text() != (first / "scores.csv").read_text()
        assert main(["score", "--config", str(first), "--out", str(tmp_path / "b4"), "--param", "block=4", "--quiet"]) == 0
        b4 = _read_toml(tmp_path / "b4" / "config.toml")
        assert b4["param"]["block"] == 4 and b4["param"]["samples"] == 1 and np.load(tmp_path / "b4" / "maps.npy").shape == (6, 4, 4)


@pytest.mark.parametrize("edit, message", [
    (lambda t: t.replace("prior =", "foo = 1\nprior ="), "unknown key 'foo'"),
    (lambda t: t.replace("seed = 0", 'seed = "zero"'), "seed must be an integer"),
    (lambda t: t.replace("batch_size = 16", "batch_size = 0"), "--batch-size must be >= 1, got 0 (the batch_size of --config"),
    (lambda t: t.replace("\n[param]\n", "\n[param]\nbogus = 1\n"), "[param] bogus = 1 is not a parameter of --detector measurement-norm"),
    (lambda t: t.replace('side = "both"', 'side = "sideways"', 1), "sideways"),
    (lambda t: t.replace("prior =", 'value_range = "bytes"\nprior ='), "value_range must be one of"),
    (lambda t: t.replace("seed = 0", "seed = ["), "is not valid TOML"),
    (lambda t: t.replace("device = \"cpu\"", "device = \"warp-drive\""), "is not a torch device"),
], ids=["unknown-key", "wrong-type", "bad-value", "unknown-param", "bad-param", "bad-choice", "not-toml", "bad-device"])
def test_score_config_errors(six, tmp_path, capsys, edit, message):
    run_dir, base = six
    assert main([*base, "--detector", "measurement-norm", "--operator", "identity:noise=0.1", "--fit", str(run_dir / "imgs.npy"),
                 "--out", str(tmp_path / "first")]) == 0
    bad = tmp_path / "bad.toml"
    bad.write_text(edit((tmp_path / "first" / "config.toml").read_text()))
    capsys.readouterr()
    assert main(["score", "--config", str(bad), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert not (tmp_path / "o").exists()
    assert main(["score", "--config", str(tmp_path / "missing.toml"), "--out", str(tmp_path / "o")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_score_device(six, tmp_path, capsys):
    run_dir, base = six
    argv = [*base, "--detector", "measurement-norm", "--operator", "identity:noise=0.1", "--fit", str(run_dir / "imgs.npy")]
    assert main([*argv, "--device", "cpu", "--out", str(tmp_path / "cpu")]) == 0
    assert _read_toml(tmp_path / "cpu" / "config.toml")["device"] == "cpu"
    import json

    assert json.loads((tmp_path / "cpu" / "config.json").read_text())["device"] == "cpu"
    if torch.cuda.is_available():
        assert main([*argv, "--device", "cuda", "--out", str(tmp_path / "cuda")]) == 0
        assert (tmp_path / "cuda" / "scores.csv").read_text() == (tmp_path / "cpu" / "scores.csv").read_text()
    else:
        capsys.readouterr()
        assert main([*argv, "--device", "cuda", "--out", str(tmp_path / "cuda")]) == 2
        err = capsys.readouterr().err
        assert "--device cuda: CUDA is not available" in err and "--device cpu" in err and len(err.strip().splitlines()) == 1
        assert not (tmp_path / "cuda").exists()


def test_score_help_shows_every_default():
    from priorshift.cli import build_parser

    parser = build_parser()
    score = next(a for a in parser._actions if isinstance(a, type(parser._subparsers._group_actions[0]))).choices["score"]
    options = [a for a in score._actions if a.option_strings and a.dest != "help"]
    assert len(options) >= 20
    missing = [a.option_strings[0] for a in options if not a.help or "default" not in a.help]
    assert not missing, f"score options without their default in --help: {missing}"
    text = score.format_help()
    assert "(default: 16)" in text and "(default: cpu)" in text and "(default: klip)" in text
