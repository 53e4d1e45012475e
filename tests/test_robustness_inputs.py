"""Issue 22, part 1: one reading of every input, declared, checked and recorded — no silent wrong result.

Each case through the CLI (``priorshift.cli.main``) and, where the input exists there, the Python API. Tiny data:
a 16×16 prior trained for 3 steps by ``priorshift train``, 8 images, 3 sampler steps (``robust_helpers``).
"""

from __future__ import annotations

import json
import shutil
import warnings

import numpy as np
import pytest
import torch

from priorshift.cli import main
from robust_helpers import SCORE, refused, scores, train_tiny

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("inputs")
    prior = train_tiny(d)
    imgs = np.load(d / "imgs.npy")
    np.save(d / "x8.npy", imgs[:8].astype(np.float32) / 127.5 - 1)
    np.save(d / "id_u8.npy", imgs[8:16])
    np.save(d / "id_f01.npy", imgs[8:16].astype(np.float32) / 255)  # the same images as floats in [0, 1]
    return d, prior


def _argv(tiny, out, *extra, detector="measurement-norm", operator="identity:noise=0.1"):
    d, prior = tiny
    return ["score", "--prior", str(prior), "--operator", operator, "--detector", detector, "--out", str(out), "--quiet", "--threads", "1",
            *extra]


# -- the kind of an array is declared by its flag, never guessed from a shape --------------------------------
def test_fit_kind_is_declared_not_guessed(tiny, tmp_path):
    """README's example shape: --images X --fit ID.npy with float ID images under an operator whose measurements have
    the images' shape. The fit file is read as images (as --images are): measured first, [0, 1] floats rescaled —
    the same scores as the same images saved as uint8, as measuring everything beforehand, and as the API."""
    from priorshift import load_prior
    from priorshift.data import npy_stack
    from priorshift.detectors import MeasurementNorm
    from priorshift.operators.spec import operator_from_spec

    d, prior_path = tiny
    assert main(_argv(tiny, tmp_path / "u8", "--images", str(d / "x8.npy"), "--fit", str(d / "id_u8.npy"))) == 0
    assert main(_argv(tiny, tmp_path / "f01", "--images", str(d / "x8.npy"), "--fit", str(d / "id_f01.npy"))) == 0
    s_u8, s_f01 = scores(tmp_path / "u8"), scores(tmp_path / "f01")
    np.testing.assert_allclose(s_f01, s_u8, rtol=1e-4, atol=1e-4)  # was 12.26 vs 9.91 when float fit images were taken for measurements
    # measured beforehand, with the seeds the CLI uses (input: seed + i, fit: 10**6 + seed + i)
    op = operator_from_spec("identity:noise=0.1", 16)
    x, x_id = torch.from_numpy(np.load(d / "x8.npy")), npy_stack(d / "id_u8.npy")
    np.save(tmp_path / "y.npy", op(x, seed=list(range(8))).numpy())
    np.save(tmp_path / "y_id.npy", op(x_id, seed=list(range(10**6, 10**6 + 8))).numpy())
    assert main(_argv(tiny, tmp_path / "meas", "--measurements", str(tmp_path / "y.npy"), "--fit", str(tmp_path / "y_id.npy"),
                      operator="identity")) == 0
    np.testing.assert_allclose(scores(tmp_path / "meas"), s_u8, rtol=1e-4, atol=1e-4)
    # an explicit --fit-kind overrides: measured fit data with --images input
    assert main(_argv(tiny, tmp_path / "mixed", "--images", str(d / "x8.npy"), "--fit", str(tmp_path / "y_id.npy"),
                      "--fit-kind", "measurements")) == 0
    np.testing.assert_allclose(scores(tmp_path / "mixed"), s_u8, rtol=1e-4, atol=1e-4)
    det = MeasurementNorm(load_prior(prior_path), op).fit(op(x_id, seed=list(range(10**6, 10**6 + 8))))
    np.testing.assert_allclose(det.score(op(x, seed=list(range(8)))).score.numpy(), s_u8, rtol=1e-4, atol=1e-4)


def test_config_toml_records_every_reading_and_reruns(tiny, tmp_path):
    d, _ = tiny
    assert main(_argv(tiny, tmp_path / "a", "--images", str(d / "x8.npy"), "--fit", str(d / "id_f01.npy"))) == 0
    doc = tomllib.loads((tmp_path / "a" / "config.toml").read_text())
    assert doc["fit_kind"] == "images"
    inputs = doc["run"]["inputs"]
    assert {k: inputs["input"][k] for k in ("flag", "kind", "value_range", "measured", "shape", "dtype")} == \
        {"flag": "--images", "kind": "images", "value_range": "symmetric", "measured": True, "shape": [8, 1, 16, 16], "dtype": "float32"}
    assert {k: inputs["fit"][k] for k in ("flag", "kind", "value_range", "measured")} == \
        {"flag": "--fit", "kind": "images", "value_range": "unit", "measured": True}
    assert json.loads((tmp_path / "a" / "config.json").read_text())["inputs"]["fit"]["path"] == str(d / "id_f01.npy")
    assert main(["score", "--config", str(tmp_path / "a" / "config.toml"), "--out", str(tmp_path / "b"), "--quiet"]) == 0
    assert (tmp_path / "a" / "scores.csv").read_text() == (tmp_path / "b" / "scores.csv").read_text()


def test_inputs_are_checked_against_the_prior_and_the_operator(tiny, tmp_path, capsys, monkeypatch):
    from priorshift import load_prior
    from priorshift.detectors import KLIP, MeasurementNorm
    from priorshift.operators import Identity

    d, prior_path = tiny
    monkeypatch.chdir(tmp_path)
    np.save(tmp_path / "id28.npy", (np.random.default_rng(1).random((8, 1, 28, 28)) * 255).astype(np.uint8))
    np.save(tmp_path / "y.npy", np.zeros((8, 1, 16, 16), np.float32))
    np.save(tmp_path / "y12.npy", np.zeros((8, 1, 12, 12), np.float32))
    np.save(tmp_path / "y_u8.npy", np.zeros((8, 1, 16, 16), np.uint8))
    shutil.copy(d / "x8.npy", tmp_path / "x8.npy")
    base = ["score", "--prior", str(prior_path), "--detector", "measurement-norm", "--out", "out", *SCORE[:3]]
    refused([*base, "--operator", "blur:kernel=5,sigma=1", "--images", "x8.npy", "--fit", "id28.npy"], capsys, tmp_path,
            "--fit id28.npy", "28×28", "16×16")
    refused([*base, "--operator", "identity", "--measurements", "y.npy", "--fit", "y12.npy"], capsys, tmp_path,
            "--fit y12.npy", "1×12×12", "1×16×16", "--fit-kind images")
    refused([*base, "--operator", "identity", "--measurements", "y_u8.npy"], capsys, tmp_path, "--measurements y_u8.npy", "uint8", "--images")
    refused([*base, "--operator", "sr:factor=2", "--measurements", "y.npy"], capsys, tmp_path, "y.npy", "1×16×16", "1×8×8")
    # the same through the API: measurements of the wrong shape for the prior's images are refused by fit and score
    prior = load_prior(prior_path)
    with pytest.raises(ValueError, match=r"fit data has shape \(4, 1, 12, 12\).*16×16 images .*\(B, 1, 16, 16\)"):
        MeasurementNorm(prior, Identity()).fit(torch.zeros(4, 1, 12, 12))
    from priorshift.analytic import stationary_gaussian

    k = KLIP(stationary_gaussian(8, length_scale=1.5, variance=0.25), Identity(noise_std=0.1), block=4, samples=1, plan={"steps": 3})
    with pytest.raises(ValueError, match=r"y has shape \(2, 1, 4, 4\).*8×8 images"):
        k.score(torch.zeros(2, 1, 4, 4, dtype=torch.float64))


# -- a prior is identified by its weights and its config ---------------------------------------------------
def _copy_prior(src, dst_dir, **edits):
    """The prior ``src`` copied into ``dst_dir`` as p.safetensors / p.json, with ``edits`` applied to its JSON
    (``"preconditioning.sigma_data": 5`` edits a nested key)."""
    dst_dir.mkdir(exist_ok=True)
    shutil.copy(src, dst_dir / "p.safetensors")
    cfg = json.loads(src.with_suffix(".json").read_text())
    for key, value in edits.items():
        *parents, leaf = key.split(".")
        target = cfg
        for part in parents:
            target = target[part]
        target[leaf] = value
    (dst_dir / "p.json").write_text(json.dumps(cfg))
    return dst_dir / "p.safetensors"


def test_prior_digest_covers_weights_and_config(tiny, tmp_path, capsys):
    from priorshift import load_prior
    from priorshift.diffusion.checkpoint import WEIGHTS_DIR, bundled_priors, prior_digest, seal_prior, sha256

    d, prior_path = tiny
    written = json.loads(prior_path.with_suffix(".json").read_text())
    assert written["prior_sha256"] == prior_digest(written, sha256(prior_path)) == load_prior(prior_path).config["prior_sha256"]
    for key, value in (("preconditioning.sigma_data", 5.0), ("unet.image_size", 32)):
        edited = _copy_prior(prior_path, tmp_path / key, **{key: value})
        with pytest.raises(ValueError, match=r"p\.json: the prior's digest .* differs .* recorded in p\.json"):
            load_prior(edited)
        refused(["score", "--prior", str(edited), "--images", str(d / "x8.npy"), "--operator", "identity", "--out", str(tmp_path / "o"), *SCORE],
                capsys, tmp_path, "p.json", "digest", "seal_prior")
    # a deliberate edit, re-sealed: it loads, and config.toml records another digest than the original's
    edited = _copy_prior(prior_path, tmp_path / "sealed", **{"preconditioning.sigma_data": 0.6})
    seal_prior(edited)
    digests = []
    for i, p in enumerate((prior_path, edited)):
        out = tmp_path / f"run{i}"
        assert main(["score", "--prior", str(p), "--images", str(d / "x8.npy"), "--operator", "identity:noise=0.1", "--param", "block=8",
                     "--out", str(out), *SCORE]) == 0
        digests.append(tomllib.loads((out / "config.toml").read_text())["run"]["prior_sha256"])
    assert digests[0] == written["prior_sha256"] and digests[1] != digests[0]
    # the bundled priors: the manifest records each digest (weights and JSON), and they load against it
    for name, info in bundled_priors().items():
        config = json.loads((WEIGHTS_DIR / info["file"]).with_suffix(".json").read_text())
        assert info["prior_sha256"] == prior_digest(config, info["sha256"]), f"{name}: run scripts/bundle_prior.py --digests"


def test_prior_architecture_is_bounded_before_allocation(tiny, tmp_path):
    from priorshift import load_prior
    from priorshift.diffusion.checkpoint import prior_digest, sha256

    _, prior_path = tiny
    for key, value, match in (("unet.widths", [8, 16, 4096], r"p\.safetensors: weights do not match the architecture in p\.json: it describes a network of [\d,]+ parameters, the file holds"),
                              ("unet.image_size", 10**6, r"image_size 1000000 .* out of bounds")):
        p = _copy_prior(prior_path, tmp_path / key, **{key: value})
        cfg = json.loads(p.with_suffix(".json").read_text())
        cfg["prior_sha256"] = prior_digest(cfg, sha256(p))  # sealed: only the size check stands in the way
        p.with_suffix(".json").write_text(json.dumps(cfg))
        with pytest.raises(ValueError, match=match):
            load_prior(p)


# -- masks that observe nothing ---------------------------------------------------------------------------------
def test_masks_observing_nothing_are_refused_and_almost_nothing_warned(tiny, tmp_path, capsys):
    from priorshift.operators import Inpainting

    d, prior_path = tiny
    np.save(tmp_path / "zero.npy", np.zeros((1, 16, 16), np.float32))
    one = np.zeros((1, 16, 16), np.float32)
    one[0, 3, 3] = 1
    np.save(tmp_path / "one.npy", one)
    argv = ["score", "--prior", str(prior_path), "--images", str(d / "x8.npy"), "--operator", "inpaint:noise=0.1", "--param", "block=8", *SCORE]
    refused([*argv, "--mask", str(tmp_path / "zero.npy"), "--out", str(tmp_path / "o")], capsys, tmp_path, "--mask", "zero.npy",
            "observes nothing")
    capsys.readouterr()
    assert main([*argv, "--mask", str(tmp_path / "one.npy"), "--out", str(tmp_path / "o")]) == 0
    err = capsys.readouterr().err
    assert "warning: --mask" in err and "observes only 0.39% of its 256 entries" in err, err
    with pytest.raises(ValueError, match="observes nothing"):
        Inpainting(torch.zeros(1, 16, 16))
    with pytest.raises(ValueError, match="observes nothing"):
        Inpainting(torch.zeros(3, 1, 16, 16), noise_std=0.1)


# -- booleans are not numbers ---------------------------------------------------------------------------------
def test_booleans_are_not_integers(tiny, tmp_path, capsys):
    from priorshift.detectors import KLIP, KLIPMultiscale
    from priorshift.samplers import SamplingPlan

    d, prior_path = tiny
    toml = (f'prior = "{prior_path}"\noperator = "identity:noise=0.1"\nimages = "{d / "x8.npy"}"\ndetector = "klip"\n'
            '[param]\nsamples = true\nblock = 8\n[plan]\nsteps = 3\n')
    (tmp_path / "c1.toml").write_text(toml)
    (tmp_path / "c2.toml").write_text(toml.replace("samples = true", "samples = 1").replace("steps = 3", "steps = true"))
    refused(["score", "--config", str(tmp_path / "c1.toml"), "--out", str(tmp_path / "o"), "--quiet"], capsys, tmp_path,
            "c1.toml", "[param] samples = true", "samples must be")
    refused(["score", "--config", str(tmp_path / "c2.toml"), "--out", str(tmp_path / "o"), "--quiet"], capsys, tmp_path,
            "c2.toml", "[plan] steps = true", "steps must be an integer")
    refused(["score", "--prior", str(prior_path), "--images", str(d / "x8.npy"), "--operator", "identity:noise=0.1", "--param", "samples=True",
             "--out", str(tmp_path / "o"), "--quiet"], capsys, tmp_path, "--param samples=True", "got True")
    k = KLIP.example()
    for kw in ({"samples": True}, {"block": True}):
        with pytest.raises(ValueError, match=f"{next(iter(kw))} must be an integer >= 1, got True"):
            KLIP(k.prior, k.operator, **kw)
    with pytest.raises(ValueError, match="fit_batch_size must be an integer >= 1, got True"):
        KLIPMultiscale(k.prior, k.operator, fit_batch_size=True)
    with pytest.raises(ValueError, match="steps must be an integer >= 1, got True"):
        SamplingPlan("pigdm", steps=True)
    with pytest.raises(ValueError, match="zeta must be a number"):
        SamplingPlan("dps", steps=3, params={"zeta": True})


# -- one dtype rule; no autograd graph ---------------------------------------------------------------------------
def _registry_examples():
    from priorshift.registry import get, names

    return [(name, get("detector", name)) for name in names("detector")]


def _data(det, n, seed, dtype):
    """The same data (drawn in float64) in ``dtype``."""
    x = det.prior.sample(n, torch.Generator().manual_seed(seed)).double()
    return (x if det.input_kind == "images" else det.operator(x, seed=list(range(seed, seed + n)))).to(dtype)


@pytest.mark.parametrize("name,cls", _registry_examples(), ids=lambda v: v if isinstance(v, str) else "")
def test_dtype_does_not_change_a_score_and_no_graph_is_kept(name, cls):
    """float32 and float64 copies of the same data score alike (to float32 round-off: analytic priors compute in
    float64, networks in their parameters' dtype), and inputs that require grad give scores without a graph."""
    runs = []
    for dtype in (torch.float64, torch.float32):
        det = cls.example()
        if det.needs_fit:
            det.fit(_data(det, 8, 100, dtype).requires_grad_(True), seed=0)
        y = _data(det, 3, 7, dtype).requires_grad_(True)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            s = det.score(y, seed=[1, 2, 3])
        tensors = [s.score, s.map, *s.extras.values()]
        assert not any(isinstance(t, torch.Tensor) and t.requires_grad for t in tensors), name
        runs.append(s.score.double())
    torch.testing.assert_close(runs[1], runs[0], rtol=1e-4, atol=1e-5)


def test_a_network_prior_scores_float64_input_as_float32(tiny):
    from priorshift import load_prior
    from priorshift.detectors import KLIP
    from priorshift.operators import Identity

    d, prior_path = tiny
    det = KLIP(load_prior(prior_path), Identity(noise_std=0.1), block=8, samples=1, plan={"steps": 3})
    y = Identity(noise_std=0.1)(torch.from_numpy(np.load(d / "x8.npy"))[:3], seed=[0, 1, 2])
    s32, s64 = det.score(y, seed=[0, 1, 2]), det.score(y.double(), seed=[0, 1, 2])
    assert torch.equal(s32.score, s64.score) and torch.equal(s32.map, s64.map)
