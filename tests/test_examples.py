"""The "bring your own model" examples (``--tiny``, in a subprocess each) and the benchmark harness ``benchmarks/run_all.py``."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(*argv, timeout=300, env=None):
    return subprocess.run([sys.executable, *argv], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})


def _has(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


@pytest.mark.skipif(not _has("diffusers"), reason="needs the diffusers extra")
def test_diffusers_unet_example():
    r = _run("examples/diffusers_unet.py", "--tiny")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "diffusers UNet2DModel, 16×16×1" in r.stdout and "KLIP: 3 DPS steps" in r.stdout
    rows = [line for line in r.stdout.splitlines() if line.strip().startswith(("ID ", "star "))]
    assert len(rows) == 4 and all(float(line.split()[2]) == float(line.split()[2]) for line in rows), "a finite score per image"


def test_edm_network_example():
    r = _run("examples/edm_network.py", "--tiny")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "EDM-preconditioned MyNet, 16×16" in r.stdout and "EigenScore" in r.stdout and "AUROC" in r.stdout
    ood = next(line for line in r.stdout.splitlines() if "stars scores" in line)
    assert len(ood.split(":")[1].split()) == 4


@pytest.mark.deepinv
@pytest.mark.skipif(not _has("deepinv"), reason="needs the deepinv extra")
def test_deepinv_physics_example():
    r = _run("examples/deepinv_physics.py", "--tiny")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "DeepinvOperator(Inpainting" in r.stdout and "AUROC" in r.stdout


@pytest.mark.skipif(_has("deepinv"), reason="deepinv is installed: the example runs instead")
def test_deepinv_example_without_deepinv_says_so_and_exits_0():
    r = _run("examples/deepinv_physics.py", "--tiny", timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "deepinv is not installed" in r.stdout and 'pip install "priorshift[deepinv]"' in r.stdout


def test_every_example_has_tiny_and_a_docstring():
    for path in sorted((ROOT / "examples").glob("*.py")):
        text = path.read_text()
        assert text.startswith('"""') and "--tiny" in text and '__name__ == "__main__"' in text, path.name


# -- benchmarks/run_all.py ------------------------------------------------------------------------------
def test_run_all_harness_on_one_benchmark(tmp_path):
    out = tmp_path / "bench.md"
    r = _run("benchmarks/run_all.py", "--quick", "--only", "measurement-kl-gaussian", "--threads", "1", "--out", str(out), timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    text = out.read_text()
    import torch

    assert text.startswith("# Benchmarks") and "--quick --only measurement-kl-gaussian" in text
    assert f"torch {torch.__version__}" in text and f"{os.cpu_count()} cores" in text and " UTC" in text, "machine and date"
    assert "## measurement-kl-gaussian" in text and "python benchmarks/measurement_kl.py gaussian --n 32" in text, "the exact command"
    assert "| [measurement-kl-gaussian](#measurement-kl-gaussian) |" in text and "| ok |" in text and "priorshift-bench-" not in text
    assert "\n|" in text.split("## measurement-kl-gaussian", 1)[1], "the benchmark's own table"
    assert not list(tmp_path.glob(".bench.md.*")), "written atomically: no temporary file left"
    bad = _run("benchmarks/run_all.py", "--quick", "--only", "nope", "--out", str(tmp_path / "x.md"), timeout=60)
    assert bad.returncode == 2 and "unknown benchmark nope" in bad.stderr and not (tmp_path / "x.md").exists()


# -- the KLIP detection benchmarks, tiny (they only run in full by hand: hours on a CPU) --------------------
def test_klip_ct_sweep_runs_tiny(tmp_path):
    out = tmp_path / "sweep"
    r = _run("benchmarks/klip_ct_sweep.py", "--out", str(out), "--n", "3", "--steps", "10", "--noise", "0.5", "--threads", "1", timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    text = (out / "results.md").read_text()
    for row in ("| whole-image KL |", "| ‖y‖² |", "KLIP, blob-tuned (tuning AUROC", "KLIP, star-tuned with steps weighted σ^-2", "| KLIP multiscale ("):
        assert row in text, row
    assert (out / "results.png").stat().st_size > 0 and len(list((out / "traces").glob("*.safetensors"))) == 5
    r = _run("benchmarks/klip_ct_sweep.py", "--out", str(out), "--n", "3", "--steps", "10", "--noise", "0.5", "--radius", "1,2", "--threads", "1", timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "radius 1-2 px" in (out / "results-radius1-2.md").read_text() and len(list((out / "traces").glob("*.safetensors"))) == 6, "only the lesions re-sampled"


def test_klip_detects_and_multiscale_run_tiny(tmp_path):
    from priorshift.data.datasets import FASHION_MNIST_DIR

    if not FASHION_MNIST_DIR.joinpath("t10k-images-idx3-ubyte.gz").is_file():
        pytest.skip("Fashion-MNIST not installed")
    out = tmp_path / "detects"
    r = _run("benchmarks/klip_detects.py", "--out", str(out), "--domains", "inpaint50", "--n-tune", "3", "--n-eval", "3", "--n-class-tune", "4",
             "--n-shift", "2", "--steps", "10", "--threads", "1", timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    text = (out / "results.md").read_text()
    for row in ("KLIP, held-out-class-tuned", "KLIP, jointly tuned", "| ‖y‖² (raw) |", "--n-eval 3 --n-class-tune 4 --steps 10"):
        assert row in text, row
    # the multiscale confirmation run, reading the exploration run's held-out-class window and sibling traces
    ms = tmp_path / "multiscale"
    r = _run("benchmarks/klip_multiscale.py", "--out", str(ms), "--domains", "inpaint50", "--n-eval", "3", "--n-calib", "3", "--n-shift", "2",
             "--steps", "10", "--threads", "1", "--explore", str(out), timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    text = (ms / "results.md").read_text()
    for row in ("| KLIP multiscale |", "KLIP, held-out-class-tuned", "KLIP, mid window", "| ‖y‖² (raw) |", "No-MNIST check", "Sensitivity",
                "A local shift", "Design search"):
        assert row in text, row
    assert len(list((ms / "traces").glob("*.safetensors"))) == 6


def test_ct_ceiling_runs_tiny(tmp_path):
    """benchmarks/ct_ceiling.py, both parts at tiny sizes into one folder: the clean table with its reference rows,
    the sinogram rows with their fraction of the clean ceiling, and a second run that reuses the cache."""
    import json

    out = tmp_path / "ceiling"
    r = _run("benchmarks/ct_ceiling.py", "clean", "--priors", "phantom-ct-64", "--n", "3", "--contrasts=-0.3", "--out", str(out))
    assert r.returncode == 0, r.stderr[-3000:]
    r = _run("benchmarks/ct_ceiling.py", "sinogram", "--prior", "phantom-ct-64", "--n", "2", "--noise", "0.5", "--steps", "10",
             "--contrast=-0.3", "--out", str(out))
    assert r.returncode == 0, r.stderr[-3000:]
    text = (out / "results.md").read_text()
    assert "| phantom-ct-64 | 216,000 | local-residual (tissue > −0.9) |" in text and "given the true liver mask" in text
    assert "local-residual on KLIP DPS's reconstruction" in text and "KLIP ΠGDM, library default" in text and "trivial: FBP residual" in text
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert {r["part"] for r in rows} == {"clean", "sinogram"}
    assert all(r["auroc"] is not None for r in rows)
    r = _run("benchmarks/ct_ceiling.py", "clean", "--priors", "phantom-ct-64", "--n", "3", "--contrasts=-0.3", "--out", str(out))
    assert r.returncode == 0 and ": " not in r.stderr.replace("Warning: ", ""), "the second run recomputes nothing"
    assert len(json.loads((out / "results.json").read_text())["rows"]) == len(rows)


def test_ct_prior_curve_runs_tiny(tmp_path):
    """benchmarks/ct_prior_curve.py on a bundled prior and a run snapshot (tiny sizes): MSE rows, the clean-image
    detector table with the liver reference, the JSON beside the table."""
    import json

    import torch

    from priorshift.diffusion.patch_unet import PatchUNetConfig
    from priorshift.diffusion.training import TrainConfig, train

    run = tmp_path / "run"
    cfg = TrainConfig(name="p", steps=2, batch_size=2, backbone="patch-unet", checkpoint_every=1,
                      network=PatchUNetConfig(image_size=64, widths=(8, 16), embedding_dim=16))
    assert train(cfg, lambda step, b: torch.zeros(b, 1, 64, 64) - 1, run, progress=False, stop_at=1) is None
    out = tmp_path / "curve.md"
    r = _run("benchmarks/ct_prior_curve.py", "--priors", "phantom-ct-64", str(run), "--detect", f"phantom-ct-64,{run}",
             "--at-size", "96", "--n", "4", "--n-detect", "4", "--fit-n", "0", "--out", str(out), timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    text = out.read_text()
    assert "| `phantom-ct-64` | unet | 216,000 |" in text and "| `run` | patch-unet | 2 |" in text
    assert "reference: liver-aware local contrast" in text and "trivial baseline: image energy" in text and "at 96 × 96" in text
    rows = json.loads(out.with_suffix(".json").read_text())
    assert {r["label"] for r in rows} == {"phantom-ct-64", "run"} and all("clean_auroc" in r for r in rows)
