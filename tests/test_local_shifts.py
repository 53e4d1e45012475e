"""benchmarks/local_shifts.py at tiny size (3 + 3 phantoms, 10 sampler steps): it runs, writes its tables with every
insert and row, its trivial row matches a direct computation, and a second run reuses the cache."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
INSERTS = ("star", "scar", "lesion", "ring", "texture")


def _run(*argv, timeout=600):
    return subprocess.run([sys.executable, "benchmarks/local_shifts.py", *argv], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_local_shifts_tiny_run_tables_and_cache(tmp_path):
    out = tmp_path / "ls"
    r = _run("--n", "3", "--steps", "10", "--out", str(out))
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    text = (out / "results.md").read_text()
    data = json.loads((out / "results.json").read_text())
    assert "--n 3 --steps 10" in text and data["n"] == 3 and data["steps"] == 10, "the exact command and size"
    for k in INSERTS:
        assert f"\n## {k}: " in text
    rows = data["rows"]
    assert len(rows) == 5 * 9 and len(data["summary"]) == 5 * 2, "9 rows per insert (3 clean, 6 sinogram), 2 domains per insert in the summary"
    for r_ in rows:
        assert 0 <= r_["auroc"] <= 1 and 0 <= r_["power_05"] <= 1 and r_["n_id"] == r_["n_ood"] == 3
        assert (r_["block_any"] is None) == r_["row"].startswith("trivial"), r_["row"]
        if r_["block"] == 1:  # a 1-px block is all body or no body: the two protocols agree
            assert r_["block_any"] == r_["block_all"]
    assert all(r_["power_05"] == 0 for r_ in rows), "3 ID scores: the smallest conformal p is 1/4 > 0.05"

    # the trivial image-energy row from the sets themselves (the seeds the script documents)
    from priorshift.data import healthy_set, star_set
    from priorshift.metrics import ood_metrics

    energy = lambda ls: ls.images.flatten(1).pow(2).sum(1)  # noqa: E731
    want = ood_metrics(energy(healthy_set(3, 64, seed=41_001)), energy(star_set(3, seed=41_002)))["auroc"]
    got = next(r_ for r_ in rows if r_["insert"] == "star" and r_["row"] == "trivial: image energy ‖x‖²")
    assert abs(got["auroc"] - want) < 1e-12

    traces = sorted(p.name for p in (out / "traces").glob("klip-*.safetensors"))
    assert len(traces) == 7, traces  # the ID tuning set, the healthy set, 5 insert sets
    again = _run("--n", "3", "--steps", "10", "--inserts", "ring,texture", "--out", str(out))
    assert again.returncode == 0, again.stderr[-3000:]
    computed = [ln for ln in again.stderr.splitlines() if ln.startswith("  ")]  # the script's line per trace or score it computes
    assert not computed, f"every trace and score should come from the cache: {computed}"
    rows2 = json.loads((out / "results.json").read_text())["rows"]
    assert {r_["insert"] for r_ in rows2} == {"ring", "texture"}
    # each set keeps its noise and sampler seeds whatever --inserts picks (‖y‖² and the FBP residual are recomputed)
    assert [r_ for r_ in rows2 if r_["insert"] == "ring"] == [r_ for r_ in rows if r_["insert"] == "ring"]


def test_local_shifts_refuses_an_unknown_insert(tmp_path):
    r = _run("--inserts", "star,nope", "--out", str(tmp_path / "x"), timeout=120)
    assert r.returncode == 2 and "--inserts: unknown insert nope" in r.stderr
    assert not (tmp_path / "x").exists()
