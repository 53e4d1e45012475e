"""KLIP on CT lesions across the measurement noise σ_y: paired statistic, AUROC and localization.

phantom-ct-64, sparse-view parallel-beam CT (20 views). For each σ_y, ``n`` healthy phantoms and the *same*
anatomies with one liver lesion (contrast ``--contrast``) are measured with the *same* noise draw and scored
with the *same* sampler seeds, so each pair differs only by the lesion. Reported per score:

* the **paired statistic** — the fraction of pairs whose lesion image scores higher than its own healthy
  anatomy, ± its binomial standard error (far less noisy than the AUROC at small n: anatomy is held fixed);
* the dataset-level AUROC ± Hanley–McNeil SE (healthy vs lesion, anatomy varying);
* the image-level block AUROC of the lesion maps under both published protocols: ``any`` (KLIP's unified
  pipeline: blocks with any body pixel) and ``all`` (the legacy song22 rule: all-body blocks only).

The x axis is the lesion's signal strength in the data, ``‖A·(x_lesion − x_healthy)‖ / σ_y`` (median over the
pairs). Scores: KLIP with its library-default window/block, the ``ct`` task's window/block (tuned on stars
with the former DPS step — reported as a transfer, not re-tuned), the full window with 8-px blocks, the first and
the last again with ``score="spread"`` (each block's energy over the posterior samples' spread there, floor
0.1; fixed before looking at lesions), window, block and score tuned at each σ_y on a **star tuning split**
(healthy vs star phantoms, other anatomies; dataset-level and image-level objectives; once more for each per-step
weighting), window, block, score and spread floor (and the per-step weighting, dataset level) tuned on a
**focal-blob tuning split** (:func:`priorshift.data.blob_set`: one small smooth blob per image anywhere in the
body, |contrast| 0.1-0.4 of either sign, radius 1.5-5 px — a generic synthetic-anomaly family, other anatomies,
never lesions), multiscale KLIP (:class:`priorshift.detectors.KLIPMultiscale`'s recipe: five equal windows, 8-px
blocks, z-scored on the healthy tuning anatomies — ID data only), the whole-image KL (``kl_nats`` over the full
schedule) and the trivial ``‖y‖²``. With the same
noise draw in both images of a pair, ``‖y‖²`` differs deterministically by ``‖A·lesion‖² + 2⟨A·lesion, A x + e⟩``,
so its paired statistic measures the sign of that difference, not detection; its AUROC is the honest number.
Every tuned row names its tuning AUROC; ``results.png`` plots the paired statistic and the AUROC against the signal.

``--radius lo,hi`` changes the lesions' radius range (px; default 2-4) for the radius sweep; its tables go to
``results-radius{lo}-{hi}.md`` beside the main one, sharing the other sets' cached traces.

    python benchmarks/klip_ct_sweep.py --out benchmarks/results/klip-ct-sweep
    python benchmarks/klip_ct_sweep.py --out benchmarks/results/klip-ct-sweep --noise 0.1,0.5 --radius 1,2
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

from _common import fmt, write_results

from priorshift import load_prior
from priorshift.bench.klip_eval import STEP_WEIGHTINGS, Setting, Trace, load_or_score, multiscale_scores, tune
from priorshift.data import blob_set, healthy_set, lesion_set, star_set
from priorshift.detectors import KLIP
from priorshift.detectors.klip import image_score
from priorshift.detectors.klip_multiscale import equal_windows
from priorshift.metrics import block_auroc, ood_metrics
from priorshift.metrics.ood import auroc_standard_error, paired_rate
from priorshift.tasks import get_task


def _figure(rows: list[dict], path: Path, title: str) -> None:
    """Paired statistic and AUROC (± SE) against the lesion's signal strength, for the scores fixed a priori,
    the blob-tuned one and the trivial baselines (the star-tuned rows are in the table)."""
    from priorshift.plotting import pyplot, save_figure

    plt = pyplot()
    keep = ("whole-image KL", "‖y‖²", "KLIP, library default", "KLIP, full window, 8 px, spread-normalized", "KLIP, blob-tuned (",
            "KLIP multiscale (")
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.4), sharex=True)
    for i, prefix in enumerate(keep):
        sel = sorted((r for r in rows if r["score"] == prefix or (prefix.endswith("(") and r["score"].startswith(prefix))), key=lambda r: r["signal"])
        if not sel:
            continue
        x = [r["signal"] for r in sel]
        label = prefix.rstrip(" (") + (" (re-tuned per σ_y)" if "tuned" in prefix else " (z-scored on healthy anatomies)" if "multiscale" in prefix else "")
        for ax, key in zip(axes, ("paired", "auroc")):
            if key == "paired" and prefix == "‖y‖²":
                continue  # the sign of a deterministic difference, not a detection rate
            ax.errorbar(x, [r[key] for r in sel], yerr=[r[f"{key}_se"] for r in sel], marker="o", capsize=3, label=label, color=f"C{i}")
    for ax, name in zip(axes, ("paired: lesion raises its own anatomy's score", "AUROC: healthy vs lesion")):
        ax.set_xscale("log")
        ticks = sorted({round(r["signal"], 1) for r in rows})
        ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
        ax.xaxis.set_minor_formatter(plt.matplotlib.ticker.NullFormatter())
        ax.set_xlabel("signal ‖A·lesion‖ / σ_y")
        ax.axhline(0.5, color="0.6", lw=0.8, ls=":")
        ax.set_ylim(0.3, 1.02)
        ax.set_title(name, fontsize=10)
    handles, labels = axes[1].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=8, loc="lower center", ncol=3, frameon=False)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout(rect=(0, 0.13, 1, 1))
    save_figure(fig, path)
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--noise", default="0.05,0.1,0.25,0.5", help="σ_y values (sinogram units)")
    ap.add_argument("--contrast", type=float, default=-0.15)
    ap.add_argument("--n", type=int, default=24, help="pairs per σ_y")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--samples", type=int, default=2)
    ap.add_argument("--prior", default="phantom-ct-64")
    ap.add_argument("--radius", default=None, help="lesion radius range lo,hi in px (default 2,4)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    radius = None
    if args.radius is not None:
        try:
            radius = tuple(float(v) for v in args.radius.split(","))
        except ValueError:
            radius = ()
        if len(radius) != 2 or not 0 < radius[0] <= radius[1]:
            ap.error(f"--radius needs lo,hi in px with 0 < lo <= hi (e.g. 1,2), got {args.radius!r}")
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    (out / "traces").mkdir(parents=True, exist_ok=True)
    prior = load_prior(args.prior)
    task = get_task("ct")
    healthy = healthy_set(args.n, 64, seed=31_000)
    lesion = lesion_set(args.n, 64, seed=31_000, contrast=args.contrast, radius=radius)
    assert torch.equal(healthy.body_masks, lesion.body_masks)  # the same anatomies
    tune_id, tune_star = healthy_set(args.n, 64, seed=32_000), star_set(args.n, 64, seed=32_001)  # the star tuning split
    tune_blob = blob_set(args.n, 64, seed=32_002)  # the focal-blob tuning split (other anatomies again)
    klip_kwargs = dict(plan={"sampler": "pigdm", "steps": args.steps}, samples=args.samples)
    default = KLIP(prior, task.make_operator(), **klip_kwargs)
    settings = {
        "KLIP, library default": Setting(tuple(default.window), default.block),
        "KLIP, ct task (star-tuned for DPS)": Setting(tuple(task.klip_settings["dataset"]["window"]), task.klip_settings["dataset"]["block"]),
        "KLIP, full window, 8 px": Setting((0.0, 1.0), 8),
        "KLIP, library default, spread-normalized": Setting(tuple(default.window), default.block, score="spread"),
        "KLIP, full window, 8 px, spread-normalized": Setting((0.0, 1.0), 8, score="spread"),
    }
    rows, t_all = [], time.perf_counter()
    for noise in (float(v) for v in args.noise.split(",")):
        op = task.make_operator(noise_std=noise)
        seeds = [8_000 + i for i in range(args.n)]
        y_h, y_l = op(healthy.images, seed=seeds), op(lesion.images, seed=seeds)
        signal = float(((op.A(lesion.images) - op.A(healthy.images)).flatten(1).norm(dim=1) / noise).median())
        traces: dict[str, Trace] = {}
        tuning = {"tune_id": op(tune_id.images, seed=[11_000 + i for i in range(args.n)]), "tune_star": op(tune_star.images, seed=[12_000 + i for i in range(args.n)]),
                  "tune_blob": op(tune_blob.images, seed=[13_000 + i for i in range(args.n)])}
        for name, y in (("healthy", y_h), ("lesion", y_l), *tuning.items()):
            key = json.dumps({"noise": noise, "set": name, "n": args.n, "contrast": args.contrast, "prior": args.prior, "spread_maps": True, **klip_kwargs,
                              **({"radius": radius} if radius is not None and name == "lesion" else {})}, sort_keys=True)
            t0 = time.perf_counter()

            def progress(done, total, name=name, t0=t0):
                print(f"\r  σ_y {noise} {name}: {done}/{total} ({time.perf_counter() - t0:.0f}s)", end="" if done < total else "\n", file=sys.stderr, flush=True)

            stem = f"noise{noise:g}-{name}" + (f"-radius{args.radius.replace(',', '-')}" if radius is not None and name == "lesion" else "")
            traces[name] = load_or_score(out / "traces" / f"{stem}.safetensors", prior, op, y, seed=[9_000 + i for i in range(args.n)],
                                         base_block=2, key=key, progress=progress, **klip_kwargs)
        tuned, res = tune(traces["tune_id"], traces["tune_star"], None, None, blocks=(2, 4, 8, 16), objective="dataset", scores=("energy", "spread"))
        tuned_map, res_map = tune(traces["tune_id"], traces["tune_star"], tune_star.masks, tune_star.body_masks, blocks=(2, 4, 8, 16), objective="image",
                                  scores=("energy", "spread"))
        floors = (0.03, 0.1, 0.3, 1.0)
        blob, res_blob = tune(traces["tune_id"], traces["tune_blob"], None, None, blocks=(2, 4, 8, 16), objective="dataset", scores=("energy", "spread"),
                              floors=floors, weightings=STEP_WEIGHTINGS, grid=0.1)  # a coarser window grid: this search has 20× the options
        blob_map, res_blob_map = tune(traces["tune_id"], traces["tune_blob"], tune_blob.masks, tune_blob.body_masks, blocks=(2, 4, 8, 16), objective="image",
                                      scores=("energy", "spread"), floors=floors)
        here = {**settings, f"KLIP, star-tuned (tuning AUROC {res['auroc']:.3f}): {tuned.label()}": tuned,
                f"KLIP, star-tuned for maps (tuning block AUROC {res_map['block_auroc_mean']:.3f}): {tuned_map.label()}": tuned_map,
                f"KLIP, blob-tuned (tuning AUROC {res_blob['auroc']:.3f}): {blob.label()}": blob,
                f"KLIP, blob-tuned for maps (tuning block AUROC {res_blob_map['block_auroc_mean']:.3f}): {blob_map.label()}": blob_map}
        for w in STEP_WEIGHTINGS:  # issue §2's per-step weighting: each one star-tuned on its own, then reported on lesions
            star_w, res_w = tune(traces["tune_id"], traces["tune_star"], None, None, blocks=(2, 4, 8, 16), objective="dataset", scores=("energy", "spread"),
                                 weightings=(w,), grid=0.1)
            weighting = w if isinstance(w, str) else f"σ^{-2 * w:g}"
            here[f"KLIP, star-tuned with steps weighted {weighting} (tuning AUROC {res_w['auroc']:.3f}): {star_w.label()}"] = star_w
        # label → (healthy scores, lesion scores, (lesion maps, block) or None)
        scores = {}
        for label, setting in here.items():
            lesion_maps = setting.maps(traces["lesion"])
            scores[label] = (image_score(setting.maps(traces["healthy"])), image_score(lesion_maps), (lesion_maps, setting.block))
        ms = multiscale_scores(traces["tune_id"], {"healthy": traces["healthy"], "lesion": traces["lesion"]}, windows=equal_windows(5), block=8, maps=True)
        scores["KLIP multiscale (5 windows, 8 px; z-scored on the healthy tuning anatomies)"] = (ms["healthy"][0], ms["lesion"][0], (ms["lesion"][1], 8))
        scores["whole-image KL"] = (traces["healthy"].kl_nats, traces["lesion"].kl_nats, None)
        scores["‖y‖²"] = (y_h.flatten(1).pow(2).sum(1), y_l.flatten(1).pow(2).sum(1), None)
        for label, (s_h, s_l, lesion_maps) in scores.items():
            m = ood_metrics(s_h, s_l)
            paired, paired_se = paired_rate(s_h, s_l)
            loc = {}
            if lesion_maps is not None:
                lmap, lblock = lesion_maps
                for rule in ("any", "all"):
                    loc[rule] = block_auroc(lmap, lesion.masks, lblock, body_mask=lesion.body_masks, body_rule=rule).mean
            rows.append({"noise": noise, "signal": signal, "score": label, "paired": paired, "paired_se": paired_se,
                         "auroc": m["auroc"], "auroc_se": auroc_standard_error(m["auroc"], args.n, args.n), "fpr95": m["fpr95_ood_positive"],
                         "block_auroc_any": loc.get("any"), "block_auroc_all": loc.get("all"), "nfe_per_image": traces["lesion"].nfe_per_image_full})
    radius_text = "" if radius is None else f", radius {radius[0]:g}-{radius[1]:g} px"
    lines = [f"# KLIP on CT lesions across σ_y (contrast {args.contrast:+.2f}{radius_text}, {args.n} pairs, ΠGDM {args.steps} steps, S = {args.samples})", "",
             "Paired: fraction of pairs (same anatomy, same noise draw, same sampler seeds) where the lesion raises the score, ± binomial SE. "
             "AUROC: healthy vs lesion (anatomy varies) ± Hanley–McNeil SE. Block AUROC of the lesion maps: `any` = blocks with any body pixel "
             "(KLIP's unified pipeline), `all` = all-body blocks only (legacy song22 rule). Signal = median ‖A·lesion‖ / σ_y. "
             "‖y‖²'s paired value is the sign of a deterministic difference (same noise draw), not a detection rate.", "",
             "| σ_y | signal | score | paired | AUROC | FPR@95 | block AUROC (any) | block AUROC (all) | NFE / image |",
             "|---:|---:|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['noise']:g} | {r['signal']:.1f} | {r['score']} | {r['paired']:.2f} ± {r['paired_se']:.2f} | {fmt(r['auroc'])} ± {fmt(r['auroc_se'])} | "
                     f"{fmt(r['fpr95'])} | {fmt(r['block_auroc_any'])} | {fmt(r['block_auroc_all'])} | {r['nfe_per_image']:.0f} |")
    lines += ["", f"Settings: library default = {settings['KLIP, library default'].label()}; ct task = {settings['KLIP, ct task (star-tuned for DPS)'].label()}.", "",
              f"Machine: {platform.processor() or platform.machine()}, {args.threads} threads, torch {torch.__version__}; {time.perf_counter() - t_all:.0f} s "
              "(cached traces are not re-sampled).", "", f"Command: `python benchmarks/klip_ct_sweep.py --out {args.out} --n {args.n} --noise {args.noise} --contrast {args.contrast:g}"
              + (f" --radius {args.radius}" if args.radius else "") + "`"]
    name = "results" if radius is None else f"results-radius{args.radius.replace(',', '-')}"  # the other sets' traces are shared
    _figure(rows, out / f"{name}.png", f"CT lesions, contrast {args.contrast:+.2f}{radius_text}, {args.n} pairs")
    write_results(out, name, lines, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
