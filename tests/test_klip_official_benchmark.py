"""benchmarks/klip_official.py, tiny: the official preset beside the defaults on both tasks, in a subprocess.

The script itself checks that each row recomputed from the kept per-step maps gives back the detector's own score
(rtol 1e-4), so a wrong re-weighting fails here."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ROWS = ("‖y‖² (trivial baseline)", "our defaults (task settings)", "defaults, weight → sqrt(β_t/ᾱ_t)", "**official preset**",
        "official, sampler → ΠGDM", "official, weight → g", "official, ‖r‖ → per sample")


def _run(*argv, timeout=600):
    return subprocess.run([sys.executable, "benchmarks/klip_official.py", *argv], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_klip_official_benchmark_runs_tiny(tmp_path):
    from priorshift.data.datasets import FASHION_MNIST_DIR

    if not FASHION_MNIST_DIR.joinpath("t10k-images-idx3-ubyte.gz").is_file():
        pytest.skip("Fashion-MNIST not installed")
    out = tmp_path / "klip-official.md"
    r = _run("--n", "3", "--steps", "20", "--samples", "2", "--out", str(out))
    assert r.returncode == 0, r.stderr[-3000:]
    text = out.read_text()
    assert "## fmnist-blur: Fashion-MNIST test [0, 3) vs MNIST test [0, 3)" in text and "## ct: healthy phantoms" in text
    assert f"Command: `python benchmarks/klip_official.py --n 3 --steps 20 --samples 2 --tasks fmnist-blur,ct --threads 1 --out {out}`" in text
    results = json.loads(out.with_suffix(".json").read_text())
    for task, other in zip(results, ("defaults, sampler → DPS", "defaults, sampler → ΠGDM")):
        rows = {row["row"]: row for row in task["rows"]}
        assert set(rows) == {*ROWS, other}, task["task"]
        assert all(0 <= row["auroc"] <= 1 and row["se"] >= 0 for row in rows.values())
        assert rows["our defaults (task settings)"]["spearman"] == pytest.approx(1.0)
        # NFE per image = S × the steps run (sampling stops at the window's end: step 17 of 20 for the preset).
        assert rows["**official preset**"]["nfe"] == 2 * 17 == rows["official, weight → g"]["nfe"] == rows["official, ‖r‖ → per sample"]["nfe"]
        assert rows["**official preset**"]["block"] == 1 and rows["**official preset**"]["window"] == "[13, 17)"
        assert rows["‖y‖² (trivial baseline)"]["nfe"] == 0


def test_klip_official_benchmark_refuses_an_unknown_task(tmp_path):
    r = _run("--tasks", "mri", "--out", str(tmp_path / "x.md"), timeout=120)
    assert r.returncode == 2 and "--tasks: unknown mri" in r.stderr and not (tmp_path / "x.md").exists()
