"""The HTML report: every file it references exists, tables carry the baselines, bad figures are refused."""

import re

import numpy as np
import pytest

from priorshift.bench.report import Report, comparison_report


def _results():
    rng = np.random.default_rng(0)
    out = {}
    for det, domain, shift in [("klip", "identity", 0.3), ("measurement-norm", "identity", 2.0), ("lmd", "images", 1.0)]:
        out[f"{det}@{domain}"] = {"detector": det, "domain": domain, "scores_id": rng.normal(size=20).tolist(),
                                  "scores_ood": (rng.normal(size=20) + shift).tolist(), "nfe_per_image": 10.0, "seconds_per_image": 0.1, "chosen": "defaults"}
    return out


def test_comparison_report_references_only_existing_files(tmp_path):
    path = comparison_report(tmp_path, _results(), title="test <report>", intro="ID vs OOD", config={"n": 20})
    text = path.read_text()
    refs = re.findall(r'src="([^"]+)"', text)
    assert len(refs) == 2 + 3, "one ROC per domain and one histogram per row"
    for ref in refs:
        assert (tmp_path / ref).is_file() and (tmp_path / ref).stat().st_size > 1000
    assert "test &lt;report&gt;" in text, "text is escaped"
    assert text.count('class="baseline"') == 1, "the trivial baseline row is marked"
    assert "measurement-norm" in text and "&quot;n&quot;: 20" in text


def test_report_refuses_a_missing_figure(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        Report("r", tmp_path).add_figure(tmp_path / "nope.png")
    rep = Report("r", tmp_path).add_table(["a", "b"], [[1, float("nan")]])
    assert "—" in rep.write().read_text()


def test_rebuild_report_from_a_grid_folder(tmp_path):
    import json

    (tmp_path / "scores").mkdir()
    for key, r in _results().items():
        (tmp_path / "scores" / f"{key.replace('@', '__')}.json").write_text(json.dumps({**r, "key": key}))
    from priorshift.bench.report import rebuild_report

    text = rebuild_report(tmp_path).read_text()
    assert all((tmp_path / ref).is_file() for ref in re.findall(r'src="([^"]+)"', text))
    with pytest.raises(ValueError, match="nothing to report"):
        rebuild_report(tmp_path / "scores")


def test_report_with_a_relative_root(tmp_path, monkeypatch):
    # A report folder given relative to the working directory (as `priorshift bench --out results/x` does).
    monkeypatch.chdir(tmp_path)
    text = comparison_report("results/x", _results(), title="relative").read_text()
    assert all((tmp_path / "results" / "x" / ref).is_file() for ref in re.findall(r'src="([^"]+)"', text))
