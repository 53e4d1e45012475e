"""Issue 22, part 2: refuse before computing, never after — figures never cost scores, outputs are checked first and
written whole, interruptions leave nothing half-written, every message names the key and the file.

Tiny data as in ``test_robustness_inputs.py`` (``robust_helpers``).
"""

from __future__ import annotations

import json
import os
import signal

import numpy as np
import pytest
import torch

from priorshift.cli import main
from robust_helpers import SCORE, refused, scores, snapshot, train_tiny


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("outputs")
    prior = train_tiny(d)
    np.save(d / "x8.npy", np.load(d / "imgs.npy")[:8].astype(np.float32) / 127.5 - 1)
    return d, prior


def _argv(tiny, out, *extra):
    d, prior = tiny
    return ["score", "--prior", str(prior), "--images", str(d / "x8.npy"), "--operator", "identity:noise=0.1", "--param", "block=8",
            "--out", str(out), *SCORE, *extra]


# -- a failed figure is a warning; scores and arrays are written -------------------------------------------
def test_a_failed_figure_never_loses_the_scores(tiny, tmp_path, capsys, monkeypatch):
    def broken(*a, **k):
        raise RuntimeError("matplotlib says no")

    monkeypatch.setattr("priorshift.bench.figures.heatmap_figure", broken)
    capsys.readouterr()
    assert main(_argv(tiny, tmp_path / "out")) == 0
    err = capsys.readouterr().err
    assert "warning: heatmaps.png was not drawn (RuntimeError: matplotlib says no)" in err
    assert {p.name for p in (tmp_path / "out").iterdir()} == {"scores.csv", "maps.npy", "config.json", "config.toml"}
    assert len(scores(tmp_path / "out")) == 8 and np.load(tmp_path / "out" / "maps.npy").shape == (8, 2, 2)
    assert "matplotlib says no" in json.loads((tmp_path / "out" / "config.json").read_text())["figure_error"]


def test_heatmaps_of_all_negative_or_nonfinite_maps_are_drawn(tmp_path):
    """Legitimate signed maps (multiscale KLIP's z-scores) can all lie below 0: the colour scale must hold them."""
    from priorshift.bench.figures import heatmap_figure

    x = torch.zeros(2, 1, 8, 8)
    for name, maps in (("neg", -torch.rand(2, 2, 2) - 1), ("nan", torch.tensor([[[float("nan"), -1.0], [-2.0, -3.0]]] * 2))):
        path = heatmap_figure(x, x, maps, None, tmp_path / f"{name}.png", labels=["a", "b"], reconstruction_title="x̂0 at σ=0.5")
        assert path.stat().st_size > 0


def test_a_failed_report_figure_is_a_warning(tmp_path, capsys, monkeypatch):
    from priorshift.bench.report import comparison_report

    def broken(*a, **k):
        raise ValueError("no figure today")

    monkeypatch.setattr("priorshift.bench.figures.roc_figure", broken)
    results = {"klip@x": {"detector": "klip", "domain": "x", "scores_id": [0.1, 0.2, 0.3], "scores_ood": [0.5, 0.6, 0.7],
                          "nfe_per_image": 3, "seconds_per_image": 0.1, "chosen": "library defaults"}}
    path = comparison_report(tmp_path, results, title="t")
    assert "no figure today" in path.read_text() and "warning: figure 'ROC, x (OOD positive)'" in capsys.readouterr().err
    assert (tmp_path / "figures" / "hist_klip_x.png").is_file()


# -- --out: checked before any scoring; a symlink is followed; nothing stale ------------------------------------
def test_an_unusable_out_is_refused_before_scoring(tiny, tmp_path, capsys, monkeypatch):
    def never(*a, **k):
        raise AssertionError("the prior was loaded before --out was checked")

    monkeypatch.setattr("priorshift.load_prior", never)
    refused(_argv(tiny, "/proc/priorshift-nope/out"), capsys, tmp_path, "--out /proc/priorshift-nope/out", "cannot write in /proc")


def test_a_symlinked_out_is_followed_and_nothing_stale_is_left(tiny, tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "links").mkdir()
    link = tmp_path / "links" / "out"
    link.symlink_to(tmp_path / "real" / "results", target_is_directory=True)
    assert main(_argv(tiny, link)) == 0  # a dangling link: its target is created
    first = scores(tmp_path / "real" / "results")
    assert main(_argv(tiny, link, "--overwrite", "--seed", "3")) == 0
    assert link.is_symlink() and link.resolve() == tmp_path / "real" / "results"
    assert not np.array_equal(scores(link), first)  # the target holds the new run
    assert sorted(p.name for p in (tmp_path / "real").iterdir()) == ["results"]  # no temporary or old copies
    assert sorted(p.name for p in (tmp_path / "links").iterdir()) == ["out"]


# -- sizes are checked before anything is allocated -----------------------------------------------------------
def test_npy_headers_are_checked_against_the_file_size(tiny, tmp_path, capsys, monkeypatch):
    from numpy.lib import format as npy_format

    from priorshift.data import npy_stack

    with open(tmp_path / "huge.npy", "wb") as f:  # declares 40 TB of float32, holds 64 bytes
        npy_format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False, "shape": (10**7, 10**6)})
        f.write(b"\0" * 64)
    import zipfile

    with zipfile.ZipFile(tmp_path / "huge.npz", "w") as z:  # an .npz member with the same lie
        z.writestr("a.npy", (tmp_path / "huge.npy").read_bytes())
    (tmp_path / "text.npy").write_text("1.0, 2.0, 3.0\n4.0, 5.0, 6.0\n")
    (tmp_path / "adir.npy").mkdir()
    monkeypatch.chdir(tmp_path)
    for flag in ("--images", "--measurements"):
        refused([*_argv(tiny, "o")[:3], flag, "huge.npy", *_argv(tiny, "o")[5:]], capsys, tmp_path, f"{flag} huge.npy", "header declares",
                "40,000,000,000,000 bytes", "truncated or damaged")
        refused([*_argv(tiny, "o")[:3], flag, "text.npy", *_argv(tiny, "o")[5:]], capsys, tmp_path, "text.npy", "is a text file",
                "numpy.save")
        refused([*_argv(tiny, "o")[:3], flag, "adir.npy", *_argv(tiny, "o")[5:]], capsys, tmp_path, "adir.npy", "is a directory")
    for name in ("huge.npy", "huge.npz"):
        with pytest.raises(ValueError, match="header declares"):
            npy_stack(tmp_path / name)
    with pytest.raises(ValueError, match="is a text file"):
        npy_stack(tmp_path / "text.npy")


# -- Ctrl-C and SIGTERM ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_an_interrupted_run_says_so_and_leaves_nothing(tiny, tmp_path, capsys, monkeypatch, sig, code):
    import priorshift.detectors

    if sig == signal.SIGINT and signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        pytest.skip("SIGINT is ignored in this process (a background job of a non-interactive shell): Ctrl-C cannot reach it")

    def interrupted(*a, **k):
        os.kill(os.getpid(), sig)
        raise AssertionError("the signal was not delivered")

    monkeypatch.setattr(priorshift.detectors, "score_batches", interrupted)
    before, handler = snapshot(tmp_path), signal.getsignal(signal.SIGTERM)
    capsys.readouterr()
    assert main(_argv(tiny, tmp_path / "new" / "out")) == code
    err = capsys.readouterr().err.strip()
    assert err.splitlines() == [f"priorshift score: interrupted ({signal.Signals(sig).name}); no output was left half-written"]
    assert snapshot(tmp_path) == before
    assert signal.getsignal(signal.SIGTERM) == handler, "the SIGTERM handler before the run is restored"


def test_report_rebuilds_a_finished_run_whole_or_not_at_all(tiny, tmp_path, monkeypatch):
    from priorshift.bench import report

    assert main(_argv(tiny, tmp_path / "run")) == 0
    before = snapshot(tmp_path)

    def interrupted(self, name="report.html"):
        raise KeyboardInterrupt

    monkeypatch.setattr(report.Report, "write", interrupted)
    assert main(["report", str(tmp_path / "run")]) == 130
    assert snapshot(tmp_path) == before, "an interrupted report leaves the run's folder as it was"
    monkeypatch.undo()
    assert main(["report", str(tmp_path / "run")]) == 0
    assert {"report.html", "figures"} <= {p.name for p in (tmp_path / "run").iterdir()}
    assert not [p for p in (tmp_path / "run").iterdir() if p.name.startswith(".")], "no staging folder is left"
    after = snapshot(tmp_path)
    assert all(after[k] == v for k, v in before.items()), "the run's own files are untouched"


# -- messages name the key and the file ---------------------------------------------------------------------
MESSAGES = {
    "config-steps-ten": (["--config", "CFG"], 'steps = "ten"', ["c.toml", '[plan] steps = "ten"', "steps must be an integer >= 1, got 'ten'"]),
    "plan-steps-ten": (["--plan", "steps=ten"], None, ["--plan steps=ten", "steps must be an integer >= 1, got 'ten'"]),
    "param-plan-field": (["--param", "plan.sigma_max=abc"], None, ["--param plan.sigma_max=abc", "sigma_max must be a number", "'abc'"]),
    "param-samples-ten": (["--param", "samples=ten"], None, ["--param samples=ten", "samples must be an integer"]),
    "mask-with-p": (["--operator", "inpaint:p=0.5", "--mask", "MASK"], None, ["--mask", "p=0.5", "drop it"]),
    "mask-text": (["--operator", "inpaint", "--mask", "TEXT"], None, ["--mask", "text.npy", "is a text file"]),
    "mask-size": (["--operator", "inpaint", "--mask", "MASK8"], None, ["--mask", "mask8.npy", "is 8×8", "16×16"]),
    "operator-value": (["--operator", "ct:views=abc"], None, ["--operator 'ct:views=abc'", "n_views must be a positive int, got 'abc'"]),
    "noise-negative": (["--operator", "identity:noise=-1"], None, ["--operator 'identity:noise=-1'", "noise_std must be a finite number >= 0"]),
}


@pytest.mark.parametrize("case", list(MESSAGES))
def test_messages_name_the_key_and_the_file(case, tiny, tmp_path, capsys):
    extra, steps, needles = MESSAGES[case]
    d, prior = tiny
    np.save(tmp_path / "mask.npy", np.ones((1, 16, 16), np.float32))
    np.save(tmp_path / "mask8.npy", np.ones((1, 8, 8), np.float32))
    (tmp_path / "text.npy").write_text("0 1 1 0\n")
    (tmp_path / "c.toml").write_text(f'prior = "{prior}"\noperator = "identity:noise=0.1"\nimages = "{d / "x8.npy"}"\n[plan]\n{steps}\n')
    extra = [{"CFG": str(tmp_path / "c.toml"), "MASK": str(tmp_path / "mask.npy"), "MASK8": str(tmp_path / "mask8.npy"), "TEXT": str(tmp_path / "text.npy")}.get(a, a) for a in extra]
    argv = ["score", *extra, "--out", str(tmp_path / "o"), "--quiet"] if "--config" in extra else _argv(tiny, tmp_path / "o", *extra)
    refused(argv, capsys, tmp_path, *needles)  # (a second --operator replaces _argv's)


def test_blur_takes_the_help_example(tiny, tmp_path):
    """``blur:sigma=1.5``, the CLI's own example, works: the kernel defaults to ±3σ (odd, at most the image)."""
    from priorshift.operators.spec import operator_from_spec

    assert main(_argv(tiny, tmp_path / "o", "--operator", "blur:sigma=1.5,noise=0.02")) == 0
    assert operator_from_spec("blur:sigma=1.5", 32).kernel_size == 11 and operator_from_spec("blur:sigma=10", 16).kernel_size == 15


def test_python_api_errors_are_one_clear_exception(tiny):
    from priorshift import load_prior
    from priorshift.analytic import stationary_gaussian
    from priorshift.detectors import KLIP, MeasurementNorm
    from priorshift.operators import Identity, Inpainting

    _, prior_path = tiny
    prior = load_prior(prior_path)
    det = KLIP(prior, Identity(noise_std=0.1), block=8, samples=1, plan={"steps": 3})
    with pytest.raises(ValueError, match=r"y is on meta but the prior is on cpu"):  # (CUDA tensors on a CPU prior alike)
        det.score(torch.zeros(2, 1, 16, 16, device="meta"))
    for bad in ("gpu", "cuda:7" if not torch.cuda.is_available() else "tpu"):
        with pytest.raises(ValueError, match=f"device {bad}|device '{bad}'"):
            load_prior(prior_path, device=bad)
    with pytest.raises(ValueError, match=r"y holds no samples \(shape \(0, 1, 16, 16\)\)"):
        det.score(torch.zeros(0, 1, 16, 16))
    with pytest.raises(ValueError, match="fit data holds no samples"):
        MeasurementNorm(prior, Identity()).fit(torch.zeros(0, 1, 16, 16))
    with pytest.raises(ValueError, match="block 3 must divide the image size 16×16"):
        KLIP(prior, Identity(), block=3)
    with pytest.raises(ValueError, match="block 3 must divide the image size 8×8"):
        KLIP(stationary_gaussian(8, length_scale=1.5, variance=0.25), Inpainting.example(8), block=3)
    for bad in (-1.0, float("nan"), True):  # a negative noise level was silently no noise
        with pytest.raises(ValueError, match="noise_std must be a finite number >= 0"):
            Identity(noise_std=bad)
    for plan, match in (({"steps": "5"}, "steps must be an integer >= 1, got '5'"), ({"steps": 5, "sigma_max": "80"}, "sigma_max must be a number")):
        with pytest.raises(ValueError, match=match):
            KLIP(prior, Identity(), plan=plan)


def test_threads_above_the_cores_are_capped_with_a_warning(tiny, tmp_path, capsys):
    from priorshift.cli._common import _cpu_count

    argv = _argv(tiny, tmp_path / "o")
    argv[argv.index("--threads") + 1] = "10000"
    capsys.readouterr()
    assert main(argv) == 0
    assert f"warning: --threads 10000 is more than the {_cpu_count()} CPU core(s) here; using {_cpu_count()}" in capsys.readouterr().err
    assert f"threads = {_cpu_count()}" in (tmp_path / "o" / "config.toml").read_text()


# -- bench: every row validated before the first is scored -----------------------------------------------
def _bench_config(tmp_path, prior, rows: str, n="4") -> str:
    np.save(tmp_path / "data.npy", (np.random.default_rng(2).random((12, 1, 16, 16)) * 255).astype(np.uint8))
    path = tmp_path / "grid.toml"
    path.write_text(f'prior = "{prior}"\nn = {n}\nbatch_size = 4\n[data]\nid = {{ dataset = "npy:{tmp_path / "data.npy"}", start = 0 }}\n'
                    f'ood = {{ dataset = "npy:{tmp_path / "data.npy"}", start = 4 }}\nfit = {{ dataset = "npy:{tmp_path / "data.npy"}", start = 8 }}\n'
                    f'[domains]\nid = "identity:noise=0.1"\n{rows}')
    return str(path)


def test_bench_validates_every_row_before_scoring(tiny, tmp_path, capsys, monkeypatch):
    import priorshift.detectors

    _, prior = tiny

    def never(*a, **k):
        raise AssertionError("a row was scored before every row was checked")

    good = '[[rows]]\ndetector = "measurement-norm"\ndomain = "id"\n'
    monkeypatch.setattr(priorshift.detectors, "score_batches", never)
    for rows, needles in (('[[rows]]\ndetector = "klip"\ndomain = "id"\nparams = { samples = "two" }\n', ["row klip@id: params.samples", "'two'"]),
                          ('[[rows]]\ndetector = "klip"\ndomain = "id"\nparams = { plan = { steps = "ten" } }\n', ["params.plan.steps", "'ten'"]),
                          ('[[rows]]\ndetector = "klipp"\ndomain = "id"\n', ["grid.toml", "'klipp'", "not registered"]),
                          ('[[rows]]\ndetector = "klip"\ndomain = "id"\nparams = { samples = true }\n', ["params.samples", "True"])):
        cfg = _bench_config(tmp_path, prior, good + rows)
        refused(["bench", cfg, "--out", str(tmp_path / "b"), "--quiet"], capsys, tmp_path, *needles)
    refused(["bench", _bench_config(tmp_path, prior, good, n='"ten"'), "--out", str(tmp_path / "b"), "--quiet"], capsys, tmp_path,
            "n in bench config", "grid.toml", "must be an integer >= 1, got 'ten'")


def test_bench_says_how_each_rows_settings_were_chosen(tiny, tmp_path):
    from priorshift.bench.grid import load_config

    _, prior = tiny
    rows = ('[[rows]]\ndetector = "measurement-norm"\ndomain = "id"\n[[rows]]\ndetector = "measurement-norm"\ndomain = "id"\nlabel = "p"\n'
            'params = { side = "upper" }\n')
    cfg = load_config(_bench_config(tmp_path, prior, rows))
    assert [r["chosen"] for r in cfg["rows"]] == ["library defaults", "the config's params"]


# -- the smaller things -------------------------------------------------------------------------------------
def test_datasets_lists_splits_sizes_and_sources(capsys):
    assert main(["datasets"]) == 0
    out = capsys.readouterr().out
    assert "fashion-mnist  Fashion-MNIST (Debian dataset-fashion-mnist; 60,000 train / 10,000 test)" in out
    assert "4,000 train / 1,000 test" in out and "``" not in out and ":func:" not in out


def test_the_heatmap_says_what_its_middle_column_shows(tiny, tmp_path, monkeypatch):
    import priorshift.bench.figures as figures

    seen = {}
    real = figures.heatmap_figure

    def spy(*a, **k):
        seen["title"] = k["reconstruction_title"]
        return real(*a, **k)

    monkeypatch.setattr(figures, "heatmap_figure", spy)
    assert main(_argv(tiny, tmp_path / "o", "--plan", "steps=5", "--param", "window=0.2,0.4")) == 0
    assert seen["title"].startswith("x̂0 at σ=") and "(stopped at step 2/5)" in seen["title"]
    assert main(_argv(tiny, tmp_path / "full", "--param", "window=0,1")) == 0
    assert seen["title"] == "reconstruction"


def test_nfe_total_counts_the_calibration(tiny, tmp_path):
    d, _ = tiny
    assert main(_argv(tiny, tmp_path / "o", "--detector", "klip-multiscale", "--fit", str(d / "x8.npy"), "--param", "windows=1")) == 0
    config = json.loads((tmp_path / "o" / "config.json").read_text())
    assert config["nfe_fit"] == 8 * 3 and config["nfe_total"] == config["nfe_fit"] + 8 * config["nfe_per_image"]


def test_a_resumed_distributed_run_reports_all_its_seconds(tiny, tmp_path, monkeypatch):
    import socket

    from priorshift import distributed as D

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for var, value in {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}.items():
        monkeypatch.setenv(var, value)
    out = tmp_path / "dist"
    real_merge = D.merge

    def killed(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(D, "merge", killed)
    assert main(_argv(tiny, out, "--distributed")) == 130
    work = D.work_dir_for(out)
    assert (work / ".seconds.json").is_file() and not out.exists()
    (work / ".seconds.json").write_text(json.dumps({"seconds": 1000.0}))  # as if the first attempt had run 1000 s
    monkeypatch.setattr(D, "merge", real_merge)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        monkeypatch.setenv("MASTER_PORT", str(s.getsockname()[1]))
    assert main(_argv(tiny, out, "--distributed")) == 0
    assert json.loads((out / "config.json").read_text())["seconds"] >= 1000.0 and not work.exists()


def test_bench_data_and_reconstruction_errors_name_the_key_and_the_file(tiny, tmp_path, capsys):
    _, prior = tiny
    good = _bench_config(tmp_path, prior, '[[rows]]\ndetector = "denoising-error"\ndomain = "id"\n')
    text = open(good).read()
    for old, new, needles in (('id = { dataset = "npy:', 'id = { split = "test", set = "npy:', ["[data] id in bench config", "grid.toml", "dataset name"]),
                              ("start = 0 }", 'start = "x" }', ["start of [data] id", "grid.toml", "integer >= 0, got 'x'"]),
                              ("[[rows]]", '[reconstruction]\nplan = { steps = "x" }\n[[rows]]', ["row denoising-error@id of bench config",
                                                                                                 "grid.toml", "[reconstruction]", "got 'x'"])):
        (tmp_path / "grid.toml").write_text(text.replace(old, new, 1))
        refused(["bench", str(tmp_path / "grid.toml"), "--out", str(tmp_path / "b"), "--quiet"], capsys, tmp_path, *needles)
