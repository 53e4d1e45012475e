"""``priorshift demo``: KLIP on sparse-view CT — healthy vs lesion phantoms — in a few minutes on a CPU.

A quick form of ``benchmarks/klip_experiment.py --task ct``: the bundled ``phantom-ct-64`` prior, 20-view
parallel-beam CT with measurement noise, DPS posterior sampling; KLIP's window and block are the ones tuned
on the *star* tuning split by that benchmark (never on lesions), compared with the whole-image KL ablation.
Prints a table and writes ``report.html`` (table, ROC curves, heatmaps, config), ``results.md``, ``metrics.json``, ``roc.png``
and ``heatmaps.png`` to the output directory, all at once (a temporary directory renamed into place).

The output directory is written whole or not at all: the files go into a temporary directory beside it, renamed
into place at the end, so an interrupted or failed demo leaves the previous output (or nothing) — never a mix.
An existing ``--out`` is replaced only when it holds nothing but a previous demo's files; anything else is refused
before any work is done, as are a prior of the wrong size and ``n < 2``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Callable, Mapping

import torch

from priorshift.bench.figures import heatmap_figure, roc_figure
from priorshift.bench.klip_eval import Setting, evaluate, score_set
from priorshift.detectors.klip import image_score
from priorshift.metrics import auroc_standard_error, ood_metrics
from priorshift.registry import get
from priorshift.tasks import get_task

__all__ = ["run_demo", "DEMO_FILES", "check_output_dir", "write_output_dir"]

DEMO_FILES = ("heatmaps.png", "roc.png", "results.md", "metrics.json", "report.html")
"""What a demo writes; an existing output directory holding only these is a previous demo, and is replaced."""

TASK = get_task("ct")  # prior, 20-view CT with noise, DPS ζ, KLIP's tuned window and block


def _fmt(v: float) -> str:
    return "  —  " if v != v else f"{v:.3f}"


def check_output_dir(out: str | Path, files: tuple[str, ...] = DEMO_FILES) -> Path:
    """Refuse an ``out`` that :func:`write_output_dir` may not replace: a file, or a directory holding anything
    but ``files`` (a previous run's output). Creates nothing."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is an existing file; give a directory")
    if out.is_dir():
        other = sorted(p.name for p in out.iterdir() if p.name not in files)
        if other:
            raise ValueError(f"--out {out} holds files the demo did not write ({', '.join(other[:3])}{', …' if len(other) > 3 else ''}); "
                             "choose a new directory (an earlier demo's output is replaced)")
    for parent in out.absolute().parents:
        if parent.exists():
            if not parent.is_dir():
                raise ValueError(f"--out {out}: {parent} is a file, not a directory")
            break
    return out


def write_output_dir(out: str | Path, writers: Mapping[str, Callable[[Path], object]]) -> Path:
    """Write a whole output directory at once: ``writers[name](path)`` writes each file into a temporary
    directory beside ``out``, which then replaces ``out``. If any writer fails, ``out`` is as before and the
    temporary directory is gone."""
    from priorshift.io import atomic_directory

    out = Path(out)
    with atomic_directory(out) as tmp:
        for name, write in writers.items():
            write(tmp / name)
    return out


def _report(path: Path, results: dict, *, n: int, text: str, config: dict) -> Path:
    """``report.html`` beside the demo's figures: the table (baselines shaded), ROC curves, the heatmaps, the config."""
    from priorshift.bench.report import Report

    rep = Report("priorshift demo: healthy vs lesion CT phantoms", path.parent)
    rep.add_text(text)
    rows = [[name, r["auroc"], auroc_standard_error(r["auroc"], n, n), r["fpr95_ood_positive"], r["aupr_out"], r["block_auroc_mean"], round(r["nfe_per_image"])]
            for name, r in results.items()]
    rep.add_table(["method", "AUROC", "± SE", "FPR@95 (OOD+)", "AUPR-out", "block AUROC", "NFE / image"], rows,
                  highlight=[name in ("‖y‖²", "FBP residual") for name in results])
    rep.add_text("Shaded: trivial baselines (the statistic standardised on other healthy phantoms). Block AUROC: does the map find the lesion.", note=True)
    rep.add_figure(path.parent / "roc.png", "ROC curves, lesion = positive")
    rep.add_figure(path.parent / "heatmaps.png", "FBP → posterior reconstruction → KLIP map → ground truth")
    rep.add_config(config)
    return rep.write(path.name)


def run_demo(out: str | Path = "out/demo", quick: bool = False, n: int | None = None, prior: str | None = None) -> int:
    from priorshift import load_prior
    from priorshift.data import healthy_set, lesion_set
    from priorshift.io import atomic_write_json

    t0 = time.perf_counter()
    # -- validate everything before any work is done or anything is created --
    out = check_output_dir(out)
    if n is not None and (isinstance(n, bool) or int(n) != n or n < 2):
        raise ValueError(f"--n must be an integer >= 2 (images per set: the AUROC compares two sets), got {n}")
    n = int(n) if n is not None else (4 if quick else 24)
    steps = 12 if quick else TASK.plan["steps"]
    prior_name = prior or TASK.prior
    prior = load_prior(prior_name)
    ct = TASK.make_operator()
    size, channels = getattr(prior, "image_size", None), getattr(prior, "channels", None)
    if (size, channels) != (ct.image_size, 1):
        raise ValueError(f"the demo needs a {ct.image_size}×{ct.image_size} single-channel CT prior; {prior_name} is "
                         f"{size}×{size} with {channels} channel(s) (default: {TASK.prior})")
    views, noise, zeta, samples = ct.n_views, ct.noise_std, TASK.plan["zeta"], TASK.samples
    contrast = TASK.extra["lesion_contrast"]
    healthy = healthy_set(n, seed=90_001)
    lesions = lesion_set(n, seed=90_002, contrast=contrast)
    print(f"priorshift demo: KLIP on sparse-view CT ({views} views, noise {noise}), prior {prior_name}")
    print(f"  {n} healthy + {n} lesion phantoms (hypodense liver lesion, contrast {contrast}), "
          f"DPS (ζ = {zeta}) {steps} steps × {samples} posterior samples per image")
    y_id = ct(healthy.images, seed=[10_000 + i for i in range(n)])
    y_ood = ct(lesions.images, seed=[20_000 + i for i in range(n)])

    def bar(label):
        def progress(done, total):
            print(f"\r  scoring {label}: {done}/{total} ({time.perf_counter() - t0:.0f}s)", end="", file=sys.stderr, flush=True)
            if done == total:
                print(file=sys.stderr)
        return progress

    kw = dict(plan={**TASK.plan, "steps": steps}, samples=samples, base_block=TASK.base_block, batch_size=8)
    tr_id = score_set(prior, ct, y_id, seed=range(30_000, 30_000 + n), progress=bar("healthy"), **kw)
    tr_ood = score_set(prior, ct, y_ood, seed=range(40_000, 40_000 + n), progress=bar("lesions"), **kw)

    dataset_setting = Setting(**TASK.klip_settings["dataset"])
    image_setting = Setting(**TASK.klip_settings["image"])
    rows = {
        "KLIP": (dataset_setting, image_setting),
        "whole-image KL": (Setting((0.0, 1.0), None, "whole_image"), Setting((0.0, 1.0), TASK.base_block, "whole_image")),
    }
    results = {}
    curves = {}  # method → (ID scores, OOD scores), for the ROC figure
    for name, (ds, im) in rows.items():
        curves[name] = (image_score(ds.maps(tr_id)).numpy(), image_score(ds.maps(tr_ood)).numpy())
        r = evaluate(ds, tr_id, tr_ood)
        loc = evaluate(im, tr_id, tr_ood, lesions.masks, lesions.body_masks)
        results[name] = {**r, "block_auroc_mean": loc["block_auroc_mean"], "block_auroc_std": loc["block_auroc_std"], "setting": ds.label(), "map_setting": im.label()}
    # The trivial baselines every table carries: statistics of y alone and of a classical (FBP) reconstruction's
    # residual, standardised on separate healthy calibration phantoms. If they beat KLIP, the table shows it.
    calib = healthy_set(n, seed=90_003)
    y_cal = ct(calib.images, seed=[50_000 + i for i in range(n)])
    for label, name in (("‖y‖²", "measurement-norm"), ("FBP residual", "residual")):
        det = get("detector", name)(prior, ct).fit(y_cal)
        curves[label] = (det.score(y_id).score.numpy(), det.score(y_ood).score.numpy())
        r = ood_metrics(*curves[label])
        results[label] = {**r, "block_auroc_mean": float("nan"), "block_auroc_std": float("nan"), "nfe_per_image": 0.0, "setting": repr(det)}
    header = f"{'method':16s} {'AUROC':>6s} {'FPR@95':>7s} {'AUPR-out':>8s} {'block AUROC':>15s} {'NFE/img':>8s}"
    lines = [header, "-" * len(header)]
    for name, r in results.items():
        loc = "      —        " if r["block_auroc_mean"] != r["block_auroc_mean"] else f"{_fmt(r['block_auroc_mean']):>6s} ± {_fmt(r['block_auroc_std']):>6s}"
        lines.append(f"{name:16s} {_fmt(r['auroc']):>6s} {_fmt(r['fpr95_ood_positive']):>7s} {_fmt(r['aupr_out']):>8s} "
                     f"{loc} {r['nfe_per_image']:8.0f}")
    table = "\n".join(lines)
    print()
    print(table)
    print("  AUROC / FPR@95 / AUPR-out: dataset level (score = max over blocks; OOD = positive; FPR@95 = healthy flagged at 95% lesions caught).")
    print("  block AUROC: does the map find the lesion? Per lesion image, over the blocks inside the body (0.5 = chance).")
    print(f"  ‖y‖² and FBP residual: trivial baselines (the statistic standardised on {n} other healthy phantoms); where one beats KLIP, KLIP is not yet useful.")
    print(f"  With {n} + {n} images an AUROC near 0.5 has a standard error of about {auroc_standard_error(0.5, n, n):.2f} "
          "(Hanley–McNeil); the 64 + 64 image experiment is benchmarks/results/klip-ct.")

    k = min(3, n)
    idx = list(range(k))
    meas = torch.cat([ct.fbp(y_id[idx], filter="hann"), ct.fbp(y_ood[idx], filter="hann")])
    rec = torch.cat([tr_id.reconstruction[idx], tr_ood.reconstruction[idx]])
    im = image_setting
    maps = torch.cat([im.maps(tr_id)[idx], im.maps(tr_ood)[idx]])
    masks = torch.cat([healthy.masks[idx], lesions.masks[idx]])
    elapsed = time.perf_counter() - t0
    text = (f"# priorshift demo\n\n{n} healthy vs {n} lesion phantoms, {views}-view CT (noise {noise}), "
            f"DPS {steps} steps × {samples} samples; {elapsed:.0f} s.\n\n```\n{table}\n```\n\n![heatmaps](heatmaps.png)\n")
    labels = [f"healthy {i}" for i in idx] + [f"lesion {i}" for i in idx]
    config = {"task": TASK.name, "prior": prior_name, "operator": repr(ct), "plan": {**TASK.plan, "steps": steps}, "samples": samples,
              "klip_dataset_setting": dataset_setting.label(), "klip_image_setting": image_setting.label(), "lesion_contrast": contrast,
              "n": n, "seeds": {"healthy": 90_001, "lesions": 90_002, "calibration": 90_003}}
    write_output_dir(out, {
        "heatmaps.png": lambda path: heatmap_figure(meas, rec, maps, masks, path, labels=labels,
                                                    measurement_title=f"FBP ({views} views)", title=f"KLIP map ({im.label()})"),
        "roc.png": lambda path: roc_figure(curves, path, title=f"healthy vs lesion ({n} + {n})"),
        "results.md": lambda path: path.write_text(text),
        "metrics.json": lambda path: atomic_write_json(path, {"n": n, "steps": steps, "seconds": round(elapsed, 1), "results": results}),
        "report.html": lambda path: _report(path, results, n=n, text=text.split("\n\n")[1], config=config),
    })
    print(f"\n  report:   {out / 'report.html'}\n  heatmaps: {out / 'heatmaps.png'}\n  table:    {out / 'results.md'}\n  done in {elapsed:.0f} s")
    return 0
