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
    (["--operator", "identity", "--plan", "zeta=-1", "--plan", "steps=2"], "zeta must be > 0"),
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


@pytest.mark.parametrize("name, size", [("phantom-ct-64", 64), ("fashion-mnist-32", 32)])
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
    assert "KLIP" in r.stdout and "whole-image KL" in r.stdout
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
