"""The CLI reads each thing once: one parse of ``--operator``, one operator, one detector, one noise check and no
window check of its own per ``score`` run; one detector factory (:func:`priorshift.tasks.make_detector`) for the
CLI and the bench, which gives every detector its task's settings; config.toml round-trips without a rebuild."""

import argparse
import functools
import json

import numpy as np
import pytest
import torch

from priorshift.cli import main


def _counter(monkeypatch, owner, attr, when=lambda *a, **k: True):
    """Count the calls of ``owner.attr`` (for which ``when`` holds), calling through; the signature is kept."""
    calls = []
    original = getattr(owner, attr)

    @functools.wraps(original)
    def counting(*a, **k):
        if when(*a, **k):
            calls.append(a)
        return original(*a, **k)

    monkeypatch.setattr(owner, attr, counting)
    return calls


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Four 32×32 images in [-1, 1] for the bundled fashion-mnist-32 prior, and their fmnist-blur measurements."""
    from priorshift.tasks import get_task

    d = tmp_path_factory.mktemp("once")
    x = torch.rand(4, 1, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    np.save(d / "x.npy", x.numpy())
    np.save(d / "y_blur.npy", get_task("fmnist-blur").make_operator()(x, seed=[0, 1, 2, 3]).numpy())
    np.save(d / "y_id.npy", (x + 0.1 * torch.randn(x.shape, generator=torch.Generator().manual_seed(1))).numpy())
    return d


def _count_everything(monkeypatch):
    import priorshift.cli.score as score
    import priorshift.detectors.klip as klip
    import priorshift.operators as operators
    import priorshift.operators.spec as spec
    from priorshift.detectors import KLIP
    from priorshift.registry import get

    return {
        "parse": _counter(monkeypatch, spec, "parse_spec", when=lambda s: isinstance(s, str)),
        "operator": _counter(monkeypatch, operators, "make_operator"),
        "klip": _counter(monkeypatch, KLIP, "__init__"),
        "measurement-norm": _counter(monkeypatch, get("detector", "measurement-norm"), "__init__"),
        "window": _counter(monkeypatch, klip, "window_steps"),
        "noise": _counter(monkeypatch, score, "_noise_ignored"),
    }


def test_score_reads_the_operator_once_and_builds_the_detector_once(data, tmp_path, monkeypatch):
    from priorshift import load_prior
    from priorshift.detectors import KLIP
    from priorshift.operators.spec import operator_from_spec

    calls = _count_everything(monkeypatch)
    settings = dict(plan={"steps": 2}, samples=1, block=8, window=(0, 1))
    KLIP(load_prior("fashion-mnist-32"), operator_from_spec("blur:kernel=5,sigma=1,noise=0.05", 32), **settings)
    per_klip = len(calls["window"])  # what one KLIP construction costs in window checks: the detector's own
    for c in calls.values():
        c.clear()
    argv = ["score", "--prior", "fashion-mnist-32", "--images", str(data / "x.npy"), "--operator", "blur:kernel=5,sigma=1,noise=0.05",
            "--detector", "klip", "--plan", "steps=2", "--param", "samples=1", "--param", "block=8", "--param", "window=0,1",
            "--quiet", "--out", str(tmp_path / "a")]
    assert main(argv) == 0
    assert len(calls["parse"]) == 1, "--operator is read once"
    assert len(calls["operator"]) == 1, "the operator is built once"
    assert len(calls["klip"]) == 1, "the detector is built once (config.toml does not rebuild it)"
    assert len(calls["window"]) == per_klip >= 1, "window is checked by the detector only"
    assert calls["noise"] == [], "with --images the operator's noise acts: nothing to check"
    cfg = (tmp_path / "a" / "config.toml").read_text()
    assert 'operator = "blur:kernel=5,sigma=1,noise=0.05"' in cfg and "window = [0, 1]" in cfg


def test_score_with_measurements_checks_the_noise_once(data, tmp_path, monkeypatch):
    calls = _count_everything(monkeypatch)
    argv = ["score", "--prior", "fashion-mnist-32", "--measurements", str(data / "y_id.npy"), "--operator", "identity",
            "--detector", "measurement-norm", "--fit", str(data / "x.npy"), "--quiet", "--out", str(tmp_path / "b")]
    assert main(argv) == 0
    assert (len(calls["parse"]), len(calls["operator"]), len(calls["measurement-norm"]), len(calls["noise"])) == (1, 1, 1, 1)
    import tomllib

    assert tomllib.loads((tmp_path / "b" / "config.toml").read_text())["operator"] == "identity:noise_std=0.0", "the noise written out"


def test_task_settings_reach_detectors_other_than_klip_through_the_cli(data, tmp_path):
    import tomllib

    # Multiscale KLIP takes the task's sampler and posterior sample count (S = 2); --plan steps=3 goes over the plan.
    out = tmp_path / "ms"
    argv = ["score", "--task", "fmnist-blur", "--detector", "klip-multiscale", "--images", str(data / "x.npy"), "--fit", str(data / "x.npy"),
            "--plan", "steps=3", "--param", "windows=3", "--quiet", "--out", str(out)]
    assert main(argv) == 0
    det = json.loads((out / "config.json").read_text())["detector"]
    assert det["plan"]["sampler"] == "pigdm" and det["plan"]["steps"] == 3 and det["samples"] == 2
    assert {r.split(",")[2] for r in (out / "scores.csv").read_text().splitlines()[1:]} == {"6"}, "3 steps × the task's 2 samples"
    cfg = tomllib.loads((out / "config.toml").read_text())
    assert cfg["task"] == "fmnist-blur" and cfg["operator"] == "blur:kernel_size=7,sigma=1.5,noise_std=0.02" and cfg["param"]["samples"] == 2
    assert main(["score", "--config", str(out), "--out", str(tmp_path / "ms2"), "--quiet"]) == 0
    assert (tmp_path / "ms2" / "scores.csv").read_text() == (out / "scores.csv").read_text()
    # An image detector on measurements reconstructs with the task's sampler; --plan is its reconstruction's plan.
    out = tmp_path / "de"
    argv = ["score", "--task", "fmnist-blur", "--detector", "denoising-error", "--measurements", str(data / "y_blur.npy"),
            "--fit", str(data / "y_blur.npy"), "--plan", "steps=2", "--param", "sigmas=0.1,0.5", "--quiet", "--out", str(out)]
    assert main(argv) == 0
    det = json.loads((out / "config.json").read_text())["detector"]
    assert det["detector"] == "from-measurements" and det["plan"]["sampler"] == "pigdm" and det["plan"]["steps"] == 2
    assert {r.split(",")[2] for r in (out / "scores.csv").read_text().splitlines()[1:]} == {"4"}, "2 reconstruction steps + 2 σ levels"
    cfg = tomllib.loads((out / "config.toml").read_text())
    assert cfg["plan"]["sampler"] == "pigdm" and cfg["plan"]["steps"] == 2 and cfg["param"]["sigmas"] == [0.1, 0.5]
    assert main(["score", "--config", str(out), "--out", str(tmp_path / "de2"), "--quiet"]) == 0
    assert (tmp_path / "de2" / "scores.csv").read_text() == (out / "scores.csv").read_text()


def test_task_settings_reach_detectors_other_than_klip_through_the_bench():
    from priorshift import load_prior
    from priorshift.bench.grid import _detector, _row_definition
    from priorshift.detectors import FromMeasurements
    from priorshift.tasks import get_task

    prior, task = load_prior("fashion-mnist-32"), get_task("fmnist-blur")
    cfg = {"domains": {"blur": "task:fmnist-blur", "plain": "blur:kernel=7,sigma=1.5,noise=0.02"},
           "reconstruction": {"plan": {"sampler": "dps", "steps": 50, "jacobian": False}}}
    ops = {"blur": task.make_operator(), "plain": task.make_operator()}

    def row(detector, domain, **params):
        return {"detector": detector, "domain": domain, "params": params, "label": ""}

    ms = _detector(row("klip-multiscale", "blur"), prior, ops, cfg)
    assert (ms.plan.sampler, ms.plan.steps, ms.samples) == ("pigdm", 50, 2), "the task's sampler and S"
    assert _detector(row("klip-multiscale", "plain"), prior, ops, cfg).samples == 4, "no task: the library default"
    assert _detector(row("klip-multiscale", "blur", samples=1), prior, ops, cfg).samples == 1, "the row's params win"
    klip = _detector(row("klip", "blur"), prior, ops, cfg)
    assert (klip.window, klip.block, klip.samples) == ((0.35, 0.45), 16, 2)
    de = _detector(row("denoising-error", "blur"), prior, ops, cfg)
    assert isinstance(de, FromMeasurements) and de.plan.sampler == "dps" and de.plan.params["zeta"] == task.extra["dps_zeta"], \
        "a DPS reconstruction takes the task's DPS step"
    assert "zeta" not in _detector(row("denoising-error", "plain"), prior, ops, cfg).plan.params
    # The settings a task gives a row are part of its cache key; rows that set them all keep their key.
    assert _row_definition(row("klip-multiscale", "blur"), cfg)["params"] == {"plan": {"sampler": "pigdm", "steps": 50}, "samples": 2}
    full = row("klip", "blur", plan={"sampler": "pigdm", "steps": 50}, samples=2, window=[0.35, 0.45], block=16)
    assert _row_definition(full, cfg)["params"] == full["params"]
    with pytest.raises(ValueError, match="row klip@images: detector 'klip' scores measurements"):
        _detector(row("klip", "images"), prior, ops, cfg)
    with pytest.raises(ValueError, match=r"row klip@blur: params\.bogus is not a parameter of row klip@blur: detector 'klip'"):
        _detector(row("klip", "blur", bogus=1), prior, ops, cfg)


def _complete_plans(cfg):
    """A detector config with each described plan's parameters completed by its sampler's defaults."""
    from priorshift.cli.detector import _sampler_defaults
    from priorshift.cli._common import _plain

    if isinstance(cfg, dict):
        out = {k: _complete_plans(v) for k, v in cfg.items()}
        if isinstance(out.get("sampler"), str) and isinstance(out.get("params"), dict):
            out["params"] = {**_plain(_sampler_defaults(out["sampler"])), **out["params"]}
        return out
    if isinstance(cfg, list):
        return [_complete_plans(v) for v in cfg]
    return cfg


def _names(kind):
    from priorshift.registry import get, names

    return [n for n in names("detector") if get("detector", n).input_kind == kind]


@pytest.mark.parametrize("name, wrapped", [(n, False) for n in _names("measurements") + _names("images")] + [(n, True) for n in _names("images")])
def test_config_toml_settings_rebuild_every_detector(name, wrapped):
    """What config.toml records as [param] / [plan] builds the same detector again, for every registered detector
    (as itself, and an image detector reconstructing measurements): the CLI trusts this instead of rebuilding."""
    from priorshift.cli._common import _plain
    from priorshift.cli.score_config import _resolved_detector_settings
    from priorshift.detectors import FromMeasurements
    from priorshift.operators import Identity
    from priorshift.registry import get
    from priorshift.tasks import make_detector

    det = get("detector", name).example()
    op = getattr(det, "operator", None) or Identity(noise_std=0.1)
    if wrapped:
        det = FromMeasurements(det, op, plan={"sampler": "dps", "steps": 3, "zeta": 0.2})
    args = argparse.Namespace(param_values={}, plan_values={})
    param, plan = _resolved_detector_settings(args, det)
    if name == "measurement-kl":
        param["matched"] = det.matched  # a denoiser: given on the command line as a prior name, recorded as given
    kw = {"params": param, "reconstruction": plan, "inputs": "measurements"} if wrapped else {"params": {**param, **({"plan": plan} if plan else {})}}
    again = make_detector(name, det.prior, op, **kw)
    assert _complete_plans(_plain(again.config())) == _complete_plans(_plain(det.config()))


def test_make_detector_names_where_a_bad_value_was_set(gauss8):
    from priorshift.operators import Identity
    from priorshift.tasks import make_detector

    where = lambda key: f"<{key}>"  # noqa: E731
    with pytest.raises(ValueError, match=r"^<window>: window needs two numbers"):
        make_detector("klip", gauss8, Identity(), params={"window": (0.8,)}, source=where)
    with pytest.raises(ValueError, match=r"^<bogus> is not a parameter of detector 'klip' \(its parameters: plan, window"):
        make_detector("klip", gauss8, Identity(), params={"bogus": 1}, source=where)
    with pytest.raises(ValueError, match="detector 'klip' scores measurements"):
        make_detector("klip", gauss8, Identity(), inputs="images")
    assert make_detector("klip", gauss8, Identity(), progress=True).progress is True
    assert make_detector("denoising-error", gauss8, progress=True).input_kind == "images", "no progress parameter: none given"


def test_operator_spec_is_read_once_into_what_builds_it():
    from priorshift.operators.spec import OperatorSpec, operator_from_spec, parse_spec

    s = parse_spec("ct:views=8,noise=0.5")
    assert (s.name, dict(s.params), str(s)) == ("ct", {"n_views": 8, "noise_std": 0.5}, "ct:views=8,noise=0.5")
    assert parse_spec(s) is s and parse_spec("inpaint").name == "inpainting" and parse_spec("sr:factor=2").params == {"factor": 2}
    assert repr(operator_from_spec(s, 16)) == repr(operator_from_spec("ct:views=8,noise=0.5", 16))
    assert parse_spec("identity").with_param("noise_std", 0.0).text == "identity:noise_std=0.0"
    assert parse_spec("inpaint:p=0.5").with_param("noise_std", 0.1) == OperatorSpec("inpainting", {"p": 0.5, "noise_std": 0.1},
                                                                                     "inpaint:p=0.5,noise_std=0.1")
    with pytest.raises(ValueError, match="already sets noise_std"):
        s.with_param("noise_std", 1.0)
    with pytest.raises(ValueError, match="unknown operator 'warp' in --operator 'warp:a=1'"):
        parse_spec("warp:a=1")
    with pytest.raises(ValueError, match="operator parameter 'sigma' in --operator 'blur:sigma' must look like key=value"):
        parse_spec("blur:sigma")
