"""``priorshift bench``: a tiny grid end to end — table, CSV/JSON, report, the score cache, config errors."""

import json

import pytest

from priorshift.bench.grid import load_config, run_grid

CONFIG = """
title = "tiny grid"
prior = "fashion-mnist-32"
n = 4
n_fit = 4
batch_size = 3
[data]
id = { dataset = "fashion-mnist", split = "test", start = 0 }
ood = { dataset = "mnist", split = "test", start = 0 }
fit = { dataset = "fashion-mnist", split = "test", start = 100 }
[domains]
inpaint = "inpaint:p=0.5,noise=0.02"
[[rows]]
detector = "measurement-norm"
domain = "inpaint"
chosen = "none to choose"
[[rows]]
detector = "klip"
domain = "inpaint"
params = { plan = { steps = 3 }, samples = 1, block = 8 }
[[rows]]
detector = "denoising-error"
domain = "inpaint"
params = { sigmas = [0.1, 0.5] }
"""


@pytest.fixture
def config(tmp_path):
    path = tmp_path / "grid.toml"
    path.write_text(CONFIG)
    return load_config(path)


@pytest.mark.slow
def test_grid_end_to_end_and_cache(config, tmp_path):
    out = tmp_path / "out"
    summary = run_grid(config, out, log=lambda s: None)
    assert set(summary) == {"measurement-norm@inpaint", "klip@inpaint", "denoising-error@inpaint"}
    assert summary["measurement-norm@inpaint"]["nfe_per_image"] == 0
    assert summary["klip@inpaint"]["nfe_per_image"] == 3, "3 steps × 1 sample"
    # the image detector on measurements reconstructs first (DPS 50 steps) and then denoises at 2 σ levels
    assert summary["denoising-error@inpaint"]["nfe_per_image"] == 50 + 2
    for name in ("results.csv", "results.json", "results.md", "report.html"):
        assert (out / name).is_file()
    assert "| klip | inpaint |" in (out / "results.md").read_text()
    cached = json.loads((out / "scores" / "klip__inpaint.json").read_text())
    assert len(cached["scores_id"]) == 4
    before = (out / "scores" / "klip__inpaint.json").stat().st_mtime_ns
    assert run_grid(config, out, log=lambda s: None) == summary, "a second run reads every row from the cache"
    assert (out / "scores" / "klip__inpaint.json").stat().st_mtime_ns == before


@pytest.mark.parametrize("edit, message", [
    (lambda t: t.replace('prior = "fashion-mnist-32"\n', ""), "needs a 'prior'"),
    (lambda t: t.replace('domain = "inpaint"\nchosen', 'domain = "blur"\nchosen'), "which \\[domains\\] does not define"),
    (lambda t: t.replace("n = 4", "n = = 4"), "not valid TOML"),
])
def test_config_errors(tmp_path, edit, message):
    path = tmp_path / "bad.toml"
    path.write_text(edit(CONFIG))
    with pytest.raises(ValueError, match=message):
        load_config(path)
