"""``priorshift demo``: where KLIP detects and where it does not yet, in a few minutes on a CPU.

Two cases, each beside the whole-image KL and the trivial baselines (‖y‖², a classical reconstruction's
residual), with the AUROC's standard error:

1. *detects*: the bundled ``fashion-mnist-32`` prior, Fashion-MNIST garments (ID) vs MNIST digits (OOD) seen
   through Gaussian deblurring (the ``fmnist-blur`` task, ΠGDM); KLIP's window and block chosen with the
   sibling prior ``fashion-mnist-0-7-32`` on its seen vs unseen classes (``benchmarks/klip_detects.py``),
   never on MNIST;
2. *not yet*: the bundled ``phantom-ct-64-long`` prior (the ``ct`` task's), 20-view parallel-beam CT of healthy vs lesion phantoms (the
   ``ct`` task; window and block tuned on CT stars, never on lesions), with the maps and their block AUROC, and
   beside KLIP the local residual of KLIP's own reconstruction (``local-residual``, the image detector that sees
   the lesion on clean phantoms: ``benchmarks/results/ct-ceiling``).
Prints a table and writes ``report.html`` (table, ROC curves, heatmaps, config), ``results.md``, ``metrics.json``, ``roc.png``
and ``heatmaps.png`` to the output directory, all at once (a temporary directory renamed into place). It ends with a
decision: how many OOD and how many ID items each detector flags at α = 0.05, by conformal p-values calibrated on
the case's own ID calibration measurements (:mod:`priorshift.calibrate`; full conformal for the detectors fitted on
them, so that every calibration item counts).

The output directory is written whole or not at all: the files go into a temporary directory beside it, renamed
into place at the end, so an interrupted or failed demo leaves the previous output (or nothing) — never a mix.
An existing ``--out`` is replaced only when it holds nothing but a previous demo's files; anything else is refused
before any work is done, as are a prior of the wrong size and ``n < 2``.
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import Callable, Mapping

import torch

from priorshift.bench.figures import heatmap_figure, roc_figure
from priorshift.bench.klip_eval import Setting, evaluate, multiscale_scores, score_set
from priorshift.calibrate import conformal_pvalues, full_conformal_pvalues
from priorshift.detectors.klip import image_score
from priorshift.detectors.klip_multiscale import DEFAULT_BLOCK, DEFAULT_WINDOWS, equal_windows, fit_windows, window_features
from priorshift.metrics import auroc_standard_error, block_auroc, ood_metrics
from priorshift.registry import get
from priorshift.tasks import get_task, make_detector

__all__ = ["run_demo", "DEMO_FILES", "check_output_dir", "write_output_dir"]

DEMO_FILES = ("heatmaps.png", "roc.png", "results.md", "metrics.json", "report.html")
"""What a demo writes; an existing output directory holding only these is a previous demo, and is replaced."""

ALPHA = 0.05  # the false-alarm rate of the demo's decisions
TASK = get_task("ct")  # prior, 20-view CT with noise, the sampler, KLIP's tuned window and block
FMNIST_TASK = get_task("fmnist-blur")  # the case where KLIP detects


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


def _report(path: Path, cases: dict, *, text: str, config: dict) -> Path:
    """``report.html`` beside the demo's figures: one table per case (baselines shaded), ROC curves, the heatmaps, the config."""
    from priorshift.bench.report import Report

    rep = Report("priorshift demo: where KLIP detects, and where it does not yet", path.parent)
    rep.add_text(text)
    for case in cases.values():
        n_id, n_ood = case["n"]
        rep.add_text(case["title"])
        rows = [[name, r["auroc"], auroc_standard_error(r["auroc"], n_id, n_ood), r["fpr95_ood_positive"], r["aupr_out"], r["block_auroc_mean"],
                 round(r["nfe_per_image"]), f"{r['flagged_ood']}/{n_ood}", f"{r['flagged_id']}/{n_id}"] for name, r in case["results"].items()]
        rep.add_table(["method", "AUROC", "± SE", "FPR@95 (OOD+)", "AUPR-out", "block AUROC", "NFE / image", f"OOD flagged (α = {ALPHA})",
                       f"ID flagged (α = {ALPHA})"], rows, highlight=[name in TRIVIAL for name in case["results"]])
    rep.add_text("Shaded: trivial baselines (the statistic standardised on other in-distribution images). Block AUROC: does the map find the lesion. "
                 f"Flagged: conformal p-value ≤ {ALPHA}, calibrated on the case's ID calibration measurements (priorshift.calibrate).", note=True)
    rep.add_figure(path.parent / "roc.png", "ROC curves, OOD = positive")
    rep.add_figure(path.parent / "heatmaps.png", "CT: FBP → posterior reconstruction → KLIP map → ground truth")
    rep.add_config(config)
    return rep.write(path.name)


TRIVIAL = ("‖y‖²", "FBP residual", "residual ‖y − A x̂‖²")


def _score_case(task, prior, op, y_id, y_ood, y_cal, *, steps: int, seeds: tuple[int, int], progress, masks=None, body_masks=None) -> tuple[dict, dict, tuple]:
    """KLIP (the task's dataset-level window and block; the image-level ones for the map), the whole-image KL
    and the trivial baselines on one ID/OOD pair of measurement sets. Returns ``(results, curves, traces)``."""
    kw = dict(plan={**task.plan, "steps": steps}, samples=task.samples, base_block=task.base_block, batch_size=8)
    n_id, n_ood = y_id.shape[0], y_ood.shape[0]
    tr_id = score_set(prior, op, y_id, seed=range(seeds[0], seeds[0] + n_id), progress=progress("ID"), **kw)
    tr_ood = score_set(prior, op, y_ood, seed=range(seeds[1], seeds[1] + n_ood), progress=progress("OOD"), **kw)
    rows = {
        "KLIP": (Setting(**task.klip_settings["dataset"]), Setting(**task.klip_settings["image"])),
        "whole-image KL": (Setting((0.0, 1.0), None, "whole_image"), None),
    }
    results, curves, pvalues = {}, {}, {}
    # Multiscale KLIP: every window, z-scored on the ID calibration measurements (its recipe's defaults), summed.
    tr_cal = score_set(prior, op, y_cal, seed=range(seeds[0] + 50_000, seeds[0] + 50_000 + y_cal.shape[0]), progress=progress("calibration"), **kw)
    ms = multiscale_scores(tr_cal, {"id": tr_id, "ood": tr_ood}, windows=equal_windows(DEFAULT_WINDOWS), block=DEFAULT_BLOCK, maps=True)
    curves["KLIP multiscale"] = (ms["id"][0].numpy(), ms["ood"][0].numpy())
    pvalues["KLIP multiscale"] = _multiscale_pvalues(tr_cal, tr_id, tr_ood)
    loc = (block_auroc(ms["ood"][1], masks, DEFAULT_BLOCK, body_mask=body_masks) if masks is not None else None)
    ms_result = {**ood_metrics(*curves["KLIP multiscale"]), "nfe_per_image": tr_ood.nfe_per_image_full,
                                  "block_auroc_mean": float("nan") if loc is None else loc.mean, "block_auroc_std": float("nan") if loc is None else loc.std,
                                  "setting": f"{DEFAULT_WINDOWS} equal windows, block {DEFAULT_BLOCK}px, z-scored on {y_cal.shape[0]} ID calibration measurements",
                                  "map_setting": None}
    for name, (ds, im) in rows.items():
        curves[name] = (image_score(ds.maps(tr_id)).numpy(), image_score(ds.maps(tr_ood)).numpy())
        cal = image_score(ds.maps(tr_cal))  # needs no fit: the calibration measurements calibrate (split conformal)
        pvalues[name] = [conformal_pvalues(cal, torch.from_numpy(c)) for c in curves[name]]
        r = evaluate(ds, tr_id, tr_ood)
        loc = evaluate(im, tr_id, tr_ood, masks, body_masks) if (im is not None and masks is not None) else {"block_auroc_mean": float("nan"), "block_auroc_std": float("nan")}
        results[name] = {**r, "block_auroc_mean": loc["block_auroc_mean"], "block_auroc_std": loc["block_auroc_std"], "setting": ds.label(),
                         "map_setting": None if im is None else im.label()}
        if name == "KLIP":
            results["KLIP multiscale"] = ms_result
    # The local residual of KLIP's own reconstruction (its posterior mean; + 12 NFE): the image detector that sees a
    # lesion on clean phantoms (benchmarks/results/ct-ceiling), here through the measurements. Calibration-free: split conformal.
    lr = make_detector("local-residual", prior, task=task)
    lr_out = {k: lr.score(t.reconstruction, seed=list(range(seeds[0] + 60_000 + off, seeds[0] + 60_000 + off + t.n)))
              for off, (k, t) in zip((0, 10_000, 20_000), (("id", tr_id), ("ood", tr_ood), ("cal", tr_cal)))}
    name = "local residual (recon)"
    curves[name] = (lr_out["id"].score.numpy(), lr_out["ood"].score.numpy())
    pvalues[name] = [conformal_pvalues(lr_out["cal"].score, torch.from_numpy(c)) for c in curves[name]]
    loc = block_auroc(lr_out["ood"].map, masks, 1, body_mask=body_masks) if masks is not None else None
    results[name] = {**ood_metrics(*curves[name]), "block_auroc_mean": float("nan") if loc is None else loc.mean,
                     "block_auroc_std": float("nan") if loc is None else loc.std, "nfe_per_image": tr_ood.nfe_per_image_full + lr_out["ood"].nfe / tr_ood.n,
                     "setting": f"{lr!r} on KLIP's posterior-mean reconstruction", "map_setting": None}
    # The trivial baselines every table carries: statistics of y alone and of a classical reconstruction's residual
    # (FBP for CT, the pseudo-inverse otherwise), standardised on separate ID calibration images. If they beat
    # KLIP, the table shows it.
    residual = "FBP residual" if task.operator == "ct" else "residual ‖y − A x̂‖²"
    for label, name in (("‖y‖²", "measurement-norm"), (residual, "residual")):
        det = get("detector", name)(prior, op).fit(y_cal)
        curves[label] = (det.score(y_id).score.numpy(), det.score(y_ood).score.numpy())
        r = ood_metrics(*curves[label])
        results[label] = {**r, "block_auroc_mean": float("nan"), "block_auroc_std": float("nan"), "nfe_per_image": 0.0, "setting": repr(det)}
        # decision: full conformal, the standardisation refitted on the calibration measurements plus the item
        pvalues[label] = [full_conformal_pvalues(y_cal, y, lambda rows, det=det: det.fit(rows).score(rows).score) for y in (y_id, y_ood)]
    for name, (p_id, p_ood) in pvalues.items():
        results[name].update(flagged_id=int((p_id <= ALPHA).sum()), flagged_ood=int((p_ood <= ALPHA).sum()), n_calibration=y_cal.shape[0])
    return results, curves, (tr_id, tr_ood)


def _multiscale_pvalues(tr_cal, tr_id, tr_ood) -> list:
    """Multiscale KLIP's full-conformal p-values: its window z-scores refitted on the calibration traces plus the item."""
    def features(t):
        return window_features(t.step_maps, equal_windows(DEFAULT_WINDOWS), t.n_steps, pool=DEFAULT_BLOCK // t.base_block)[1]

    def fit_score(f):
        mean, std = fit_windows(f, 1e-3)  # KLIPMultiscale's min_std
        return ((f - mean) / std).sum(1)

    cal = features(tr_cal)
    return [full_conformal_pvalues(cal, features(t), fit_score) for t in (tr_id, tr_ood)]


def _decision(cases: dict) -> str:
    """The demo's last word: how many OOD and ID items each detector flags at ALPHA."""
    lines = [f"Decision at alpha = {ALPHA}: conformal p-values, calibrated on each case's own ID calibration measurements "
             "(KLIP, whole-image KL: split conformal; multiscale KLIP and the baselines, fitted on them: full conformal)."]
    for case in cases.values():
        n_id, n_ood = case["n"]
        n_cal = next(iter(case["results"].values()))["n_calibration"]
        lines.append(f"  {case['short']}: calibration n = {n_cal}, smallest p-value 1/(n+1) = {1 / (n_cal + 1):.3f}"
                     + ("" if 1 / (n_cal + 1) <= ALPHA else f" > alpha: nothing can be flagged (give --n >= {math.ceil(1 / ALPHA) - 1})"))
        for name, r in case["results"].items():
            lines.append(f"    {name:22s} flags {r['flagged_ood']:3d}/{n_ood} OOD and {r['flagged_id']:3d}/{n_id} ID")
    lines.append(f"  For ID items the expected share flagged is at most alpha = {ALPHA}; flagged OOD items are the detector's power.")
    return "\n".join(lines)


def _table(results: dict) -> str:
    header = f"{'method':22s} {'AUROC':>6s} {'± SE':>6s} {'FPR@95':>7s} {'AUPR-out':>8s} {'block AUROC':>15s} {'NFE/img':>8s}"
    lines = [header, "-" * len(header)]
    for name, r in results.items():
        loc = "      —        " if r["block_auroc_mean"] != r["block_auroc_mean"] else f"{_fmt(r['block_auroc_mean']):>6s} ± {_fmt(r['block_auroc_std']):>6s}"
        se = auroc_standard_error(r["auroc"], r["n_id"], r["n_ood"])
        lines.append(f"{name:22s} {_fmt(r['auroc']):>6s} {_fmt(se):>6s} {_fmt(r['fpr95_ood_positive']):>7s} {_fmt(r['aupr_out']):>8s} "
                     f"{loc} {r['nfe_per_image']:8.0f}")
    return "\n".join(lines)


def run_demo(out: str | Path = "out/demo", quick: bool = False, n: int | None = None, prior: str | None = None) -> int:
    from priorshift import load_prior
    from priorshift.data import fashion_mnist, healthy_set, lesion_set, load_dataset
    from priorshift.io import atomic_write_json

    t0 = time.perf_counter()
    # -- validate everything before any work is done or anything is created --
    out = check_output_dir(out)
    if n is not None and (isinstance(n, bool) or int(n) != n or n < 2):
        raise ValueError(f"--n must be an integer >= 2 (images per set: the AUROC compares two sets), got {n}")
    n = int(n) if n is not None else (4 if quick else 24)
    prior_name = prior or TASK.prior
    ct_prior = load_prior(prior_name)
    ct = TASK.make_operator()
    size, channels = getattr(ct_prior, "image_size", None), getattr(ct_prior, "channels", None)
    if (size, channels) != (ct.image_size, 1):
        raise ValueError(f"the demo needs a {ct.image_size}×{ct.image_size} single-channel CT prior; {prior_name} is "
                         f"{size}×{size} with {channels} channel(s) (default: {TASK.prior})")

    def bar(case):
        def make(label):
            def progress(done, total):
                print(f"\r  {case} {label}: {done}/{total} ({time.perf_counter() - t0:.0f}s)", end="", file=sys.stderr, flush=True)
                if done == total:
                    print(file=sys.stderr)
            return progress
        return make

    # -- case 1, where KLIP detects: Fashion-MNIST garments vs MNIST digits under inpainting --
    fm = FMNIST_TASK
    fm_prior, fm_op = load_prior(fm.prior), fm.make_operator()
    fm_steps = 12 if quick else fm.plan["steps"]
    garments = fashion_mnist("test", n=7000 + n)  # [6000, …) and [7000, …): disjoint from every tuning split
    x_id, x_cal = garments[6000:6000 + n], garments[7000:7000 + n]
    x_ood = load_dataset("mnist", split="test", n=n)
    print(f"priorshift demo 1/2: KLIP on {fm.description}, prior {fm.prior}: {n} Fashion-MNIST garments vs {n} MNIST digits; "
          f"{fm.plan['sampler']} {fm_steps} steps × {fm.samples} posterior samples")
    fm_results, fm_curves, _ = _score_case(
        fm, fm_prior, fm_op, fm_op(x_id, seed=[10_000 + i for i in range(n)]), fm_op(x_ood, seed=[20_000 + i for i in range(n)]),
        fm_op(x_cal, seed=[50_000 + i for i in range(n)]), steps=fm_steps, seeds=(30_000, 40_000), progress=bar("fmnist"))

    # -- case 2, where it does not yet: hypodense liver lesions in sparse-view CT --
    views, noise, samples = ct.n_views, ct.noise_std, TASK.samples
    steps = 12 if quick else TASK.plan["steps"]
    contrast = TASK.extra["lesion_contrast"]
    healthy = healthy_set(n, seed=90_001)
    lesions = lesion_set(n, seed=90_002, contrast=contrast)
    calib = healthy_set(n, seed=90_003)
    print(f"priorshift demo 2/2: KLIP on sparse-view CT ({views} views, noise {noise}), prior {prior_name}: {n} healthy vs {n} lesion phantoms "
          f"(hypodense liver lesion, contrast {contrast}); {TASK.plan['sampler']} {steps} steps × {samples} posterior samples")
    y_id = ct(healthy.images, seed=[10_000 + i for i in range(n)])
    y_ood = ct(lesions.images, seed=[20_000 + i for i in range(n)])
    ct_results, ct_curves, (tr_id, tr_ood) = _score_case(
        TASK, ct_prior, ct, y_id, y_ood, ct(calib.images, seed=[50_000 + i for i in range(n)]), steps=steps, seeds=(30_000, 40_000),
        progress=bar("ct"), masks=lesions.masks, body_masks=lesions.body_masks)

    se = auroc_standard_error(0.5, n, n)
    fm_title = f"1. Where KLIP detects — Fashion-MNIST garments (ID) vs MNIST digits (OOD), {fm.description}"
    ct_title = f"2. Where it does not yet — healthy vs lesion CT phantoms, {views}-view CT (noise {noise}), lesion contrast {contrast}"
    tables = {"fmnist": _table(fm_results), "ct": _table(ct_results)}
    for title, key in ((fm_title, "fmnist"), (ct_title, "ct")):
        print(f"\n{title}\n{tables[key]}")
    print("\n  AUROC / FPR@95 / AUPR-out: dataset level (score = max over blocks; OOD = positive; FPR@95 = ID flagged at 95% OOD caught).")
    print(f"  KLIP multiscale: KLIP's energy in {DEFAULT_WINDOWS} windows covering the schedule, each z-scored on {n} other ID images, summed.")
    print("  block AUROC: does the map find the lesion? Per lesion image, over the blocks inside the body (0.5 = chance).")
    print(f"  ‖y‖² and the residual: trivial baselines (standardised on {n} other ID images); where one beats KLIP, KLIP is not yet useful there.")
    print(f"  ± SE: Hanley–McNeil standard error ({se:.2f} at AUROC 0.5 with {n} + {n} images). Larger runs: benchmarks/results/klip-detects "
          "(Fashion-MNIST vs MNIST), klip-multiscale (multiscale KLIP on a confirmation split) and klip-ct-sweep (lesions across σ_y).")

    k = min(3, n)
    idx = list(range(k))
    meas = torch.cat([ct.fbp(y_id[idx], filter="hann"), ct.fbp(y_ood[idx], filter="hann")])
    rec = torch.cat([tr_id.reconstruction[idx], tr_ood.reconstruction[idx]])
    im = Setting(**TASK.klip_settings["image"])
    maps = torch.cat([im.maps(tr_id)[idx], im.maps(tr_ood)[idx]])
    masks = torch.cat([healthy.masks[idx], lesions.masks[idx]])
    elapsed = time.perf_counter() - t0
    text = (f"# priorshift demo\n\n{elapsed:.0f} s on this machine.\n\n## {fm_title}\n\n```\n{tables['fmnist']}\n```\n\n"
            f"## {ct_title}\n\n```\n{tables['ct']}\n```\n\n![ROC](roc.png)\n\n![heatmaps](heatmaps.png)\n")
    labels = [f"healthy {i}" for i in idx] + [f"lesion {i}" for i in idx]
    config = {"fmnist": {"task": fm.name, "prior": fm.prior, "operator": repr(fm_op), "plan": {**fm.plan, "steps": fm_steps}, "samples": fm.samples,
                         "klip_setting": fm_results["KLIP"]["setting"], "n": n, "data": "fashion-mnist test [6000, 6000 + n) vs mnist test [0, n); calibration fashion-mnist test [7000, 7000 + n)"},
              "ct": {"task": TASK.name, "prior": prior_name, "operator": repr(ct), "plan": {**TASK.plan, "steps": steps}, "samples": samples,
                     "klip_dataset_setting": ct_results["KLIP"]["setting"], "klip_image_setting": im.label(), "lesion_contrast": contrast,
                     "n": n, "seeds": {"healthy": 90_001, "lesions": 90_002, "calibration": 90_003}}}
    curves = {**{f"FMNIST {k}": v for k, v in fm_curves.items() if k in ("KLIP", "KLIP multiscale", "‖y‖²")},
              **{f"CT {k}": v for k, v in ct_curves.items() if k in ("KLIP", "KLIP multiscale", "‖y‖²")}}
    cases = {"fmnist": {"title": fm_title, "short": "Fashion-MNIST vs MNIST (blur)", "results": fm_results, "n": (n, n)},
             "ct": {"title": ct_title, "short": "healthy vs lesion CT", "results": ct_results, "n": (n, n)}}
    decision = _decision(cases)
    text += f"\n## Decision\n\n```\n{decision}\n```\n"
    write_output_dir(out, {
        "heatmaps.png": lambda path: heatmap_figure(meas, rec, maps, masks, path, labels=labels,
                                                    measurement_title=f"FBP ({views} views)", title=f"KLIP map ({im.label()})"),
        "roc.png": lambda path: roc_figure(curves, path, title=f"KLIP, multiscale KLIP and ‖y‖² ({n} + {n} per case)"),
        "results.md": lambda path: path.write_text(text),
        "metrics.json": lambda path: atomic_write_json(path, {"n": n, "seconds": round(elapsed, 1), "fmnist": {"steps": fm_steps, "results": fm_results},
                                                              "ct": {"steps": steps, "results": ct_results}}),
        "report.html": lambda path: _report(path, cases, text=f"{elapsed:.0f} s on this machine; {n} + {n} images per case.", config=config),
    })
    print(f"\n  report:   {out / 'report.html'}\n  heatmaps: {out / 'heatmaps.png'}\n  table:    {out / 'results.md'}\n  done in {elapsed:.0f} s")
    print(f"\n{decision}")
    return 0
