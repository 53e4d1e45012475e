"""The top-level package: a light ``import priorshift``, lazy subpackages, and ``priorshift.io``."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

SUBPACKAGES = ["analytic", "bench", "data", "detectors", "diffusion", "io", "metrics", "operators", "registry", "rng", "samplers", "types"]


def _run(code: str) -> str:
    return subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout


def test_import_is_light_and_subpackages_are_lazy():
    # A fresh interpreter: this test process has torch loaded already.
    out = _run(
        "import sys, priorshift as ps\n"
        "light = 'torch' not in sys.modules and not any(m.startswith('priorshift.') for m in sys.modules)\n"
        "listed = [n for n in dir(ps) if not n.startswith('_')]\n"
        "analytic = ps.analytic\n"
        "print(light, 'torch' in sys.modules, analytic.__name__, ','.join(listed))\n"
    )
    light, torch_after, name, listed = out.split()
    assert light == "True", "import priorshift must not import torch or any subpackage"
    assert torch_after == "True" and name == "priorshift.analytic"
    assert set(SUBPACKAGES) | {"load_prior"} <= set(listed.split(","))


@pytest.mark.parametrize("name", SUBPACKAGES)
def test_every_subpackage_is_reachable_from_the_top(name):
    import importlib

    import priorshift as ps

    assert getattr(ps, name) is importlib.import_module(f"priorshift.{name}")


def test_unknown_attribute_raises():
    import priorshift as ps

    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        ps.nope  # noqa: B018


def test_io_is_torch_free_and_writes_atomically(tmp_path):
    out = _run("import sys, priorshift.io; print('torch' in sys.modules)")
    assert out.strip() == "False"
    from priorshift.io import atomic_write, atomic_write_json

    path = tmp_path / "sub" / "a.json"
    atomic_write_json(path, {"b": 1, "a": [1, 2]})
    assert json.loads(path.read_text()) == {"a": [1, 2], "b": 1} and path.read_text().endswith("\n")

    def fails_half_way(tmp):
        Path(tmp).write_text("half")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        atomic_write(path, fails_half_way)
    assert json.loads(path.read_text()) == {"a": [1, 2], "b": 1}, "a failed write leaves the old file"
    assert sorted(p.name for p in path.parent.iterdir()) == ["a.json"], "and no temporary file"


def test_metrics_all_lists_every_submodule_export():
    """``priorshift.metrics.__all__`` is written out for linters; it must stay the union of its submodules' lists."""
    from priorshift import metrics

    assert sorted(metrics.__all__) == sorted([*metrics.ood.__all__, *metrics.localization.__all__, *metrics.image.__all__])
