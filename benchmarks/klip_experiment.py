"""KLIP experiments on the shipped priors: tune on a star tuning split, report on held-out sets.

Tasks:
  ct            phantom-ct-64, sparse-view parallel-beam CT; ID healthy phantoms; OOD liver lesions (the tumour
                case) and stars; plus a lesion-contrast sweep
  fmnist-blur   fashion-mnist-32, Gaussian deblurring; OOD stars and scars inserted into garments
  fmnist-inpaint fashion-mnist-32, inpainting (random 4-px blocks, 70% observed); OOD stars and scars

Protocol (KLIP, CVPR 2026): block size and window are tuned on the **star tuning split** only (its own ID and OOD
images, disjoint from everything reported), separately for the dataset-level objective (AUROC of the max over
blocks) and the image-level objective (mean block AUROC), and transferred unchanged to the evaluation sets.
Each set is sampled once (full schedule, per-step block maps at the finest block); every window, block and
ablation variant is evaluated from those traces. Traces are cached in OUT/traces (delete to resample).

    python benchmarks/klip_experiment.py --task ct --out benchmarks/results/klip-ct
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch
from _common import KLIP_TASKS, fmt, task_config

from priorshift import load_prior
from priorshift.detectors.klip import image_score
from priorshift.bench.figures import contrast_figure, heatmap_figure, roc_figure, step_curve_figure
from priorshift.bench.klip_eval import VARIANT_NAMES, Trace, ablation_settings, evaluate, load_or_score
from priorshift.data import LabeledSet
from priorshift.io import atomic_write_json
from priorshift.tasks import get_task

# The measurement setups and the DPS step ζ per task live in priorshift.tasks (ζ: the smallest within 0.2 dB of
# the best reconstruction PSNR on ID tuning images, benchmarks/dps_step.py; results/dps-step-*.md).
ZETA = {name: get_task(name).extra["dps_zeta"] for name in KLIP_TASKS}


def load_or_score_set(path: Path, prior, op, ls: LabeledSet, seed_base: int, klip_kwargs: dict, base_block: int) -> Trace:
    """Measure ``ls`` (noise seeds ``seed_base + i``) and score it once; cached by the run's settings."""
    # The cache key keeps the format of the traces in benchmarks/results (sampler, steps, samples, sampler_params).
    legacy = {"sampler": klip_kwargs["plan"]["sampler"], "steps": klip_kwargs["plan"]["steps"], "samples": klip_kwargs["samples"],
              "sampler_params": {k: v for k, v in klip_kwargs["plan"].items() if k not in ("sampler", "steps")}}
    key = json.dumps({**legacy, "base_block": base_block, "seed_base": seed_base, "n": ls.images.shape[0]}, sort_keys=True)
    n = ls.images.shape[0]
    y = op(ls.images, seed=[seed_base + i for i in range(n)])
    t0 = time.perf_counter()

    def progress(done, total):
        print(f"\r  {path.stem}: {done}/{total} images ({time.perf_counter() - t0:.0f}s)", end="" if done < total else "\n", file=sys.stderr, flush=True)

    return load_or_score(path, prior, op, y, seed=[seed_base + 500_000 + i for i in range(n)], base_block=base_block, key=key, progress=progress, **klip_kwargs)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--n-tune", type=int, default=48)
    p.add_argument("--n-eval", type=int, default=64)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--samples", type=int, default=2)
    p.add_argument("--sampler", default="dps")
    p.add_argument("--jacobian", action="store_true", help="DPS through the network (default: without the Jacobian)")
    p.add_argument("--zeta", type=float, default=None, help="DPS step (default: the task's, chosen on ID tuning data: ZETA)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--prior", default=None, help="override the task's bundled prior (a checkpoint path)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    (out / "traces").mkdir(parents=True, exist_ok=True)
    cfg = task_config(args.task, args.n_tune, args.n_eval)
    prior, op = load_prior(args.prior or cfg["prior"]), cfg["operator"]
    sampler_params = {"jacobian": args.jacobian} if args.sampler == "dps" else {}
    if args.zeta is None and args.sampler == "dps":
        args.zeta = ZETA[args.task]
    if args.zeta is not None:
        sampler_params["zeta"] = args.zeta
    klip_kwargs = dict(plan={"sampler": args.sampler, "steps": args.steps, **sampler_params}, samples=args.samples)
    t_start = time.perf_counter()
    traces = {}
    for i, (name, ls) in enumerate(cfg["sets"].items()):
        traces[name] = load_or_score_set(out / "traces" / f"{name}.safetensors", prior, op, ls, 1_000_000 * (i + 1), klip_kwargs, cfg["base_block"])
    sets = cfg["sets"]
    body = lambda name: sets[name].body_masks  # noqa: E731
    tid, tood = traces["tune_id"], traces["tune_ood"]

    # --- tuning (tuning split only) ---
    tuned = {}
    for objective in ("dataset", "image"):
        tuned[objective] = ablation_settings(tid, tood, sets["tune_ood"].masks, body("tune_ood"), blocks=cfg["blocks"], objective=objective)
    ood_names = [n for n in sets if n.startswith("eval_") and n != "eval_id"]

    # --- evaluation ---
    results = {}
    for objective in ("dataset", "image"):
        for variant, setting in tuned[objective].items():
            for name in ood_names:
                results[(objective, variant, name)] = evaluate(setting, traces["eval_id"], traces[name], sets[name].masks, body(name))
    lines = [
        f"# KLIP — {args.task}",
        "",
        f"Prior `{cfg['prior']}`; {cfg['description']}. Sampler `{args.sampler}` {sampler_params or ''}, {args.steps} steps "
        f"(Karras ρ = 7, σ ∈ [{float(tid.sigmas[-2]):.3g}, {float(tid.sigmas[0]):.3g}]), S = {args.samples} posterior samples, map normalized by g (VE), mean of squares.",
        f"Sets: tuning {args.n_tune} ID + {args.n_tune} star; evaluation {args.n_eval} ID + {args.n_eval} per OOD type (disjoint images, seeds and noise).",
        "Block and window tuned on the star **tuning** split only (dataset-level objective: AUROC of the max over blocks; image-level: mean block AUROC), "
        "then fixed. OOD = positive class; FPR@95 (OOD+) = fraction of ID flagged when 95% of OOD are caught; (ID+) = fraction of OOD passed when 95% of ID are kept.",
        "",
        "## Main results",
        "",
        "| objective | tuned setting | OOD set | AUROC | FPR@95 (OOD+) | FPR@95 (ID+) | AUPR-in | AUPR-out | block AUROC (mean ± sd, n) | NFE / image |",
        "|---|---|---|---:|---:|---:|---:|---:|---|---:|",
    ]
    for objective in ("dataset", "image"):
        s = tuned[objective]["klip"]
        for name in ood_names:
            r = results[(objective, "klip", name)]
            loc = f"{fmt(r['block_auroc_mean'])} ± {fmt(r['block_auroc_std'])} ({r['block_auroc_n']})"
            lines.append(f"| {objective} | {s.label()} | {name[5:]} | {fmt(r['auroc'])} | {fmt(r['fpr95_ood_positive'])} | {fmt(r['fpr95_id_positive'])} | "
                         f"{fmt(r['aupr_in'])} | {fmt(r['aupr_out'])} | {loc} | {r['nfe_per_image']:.0f} |")
    lines += ["", "## Ablation (each variant tuned on the star tuning split over the parameters it has)", "",
              "| variant | dataset-level setting | " + " | ".join(f"AUROC {n[5:]}" for n in ood_names) + " | image-level setting | "
              + " | ".join(f"block AUROC {n[5:]}" for n in ood_names) + " |",
              "|---|---|" + "---:|" * len(ood_names) + "---|" + "---:|" * len(ood_names)]
    for variant in ("whole_image", "spatial_only", "temporal_only", "klip"):
        d = " | ".join(fmt(results[("dataset", variant, n)]["auroc"]) for n in ood_names)
        im = " | ".join(fmt(results[("image", variant, n)]["block_auroc_mean"]) for n in ood_names)
        lines.append(f"| {VARIANT_NAMES[variant]} | {tuned['dataset'][variant].label()} | {d} | {tuned['image'][variant].label()} | {im} |")

    if cfg["contrasts"]:
        lines += ["", "## Lesion contrast sweep (dataset-level settings fixed as tuned)", "", "| contrast | KLIP AUROC | whole-image KL AUROC | KLIP block AUROC (image-level setting) |", "|---:|---:|---:|---:|"]
        series = {"KLIP": [], "whole-image KL": []}
        for c in cfg["contrasts"]:
            name = "eval_lesion" if c == -0.15 else f"lesion_{c:+.2f}"
            rk = evaluate(tuned["dataset"]["klip"], traces["eval_id"], traces[name])
            rw = evaluate(tuned["dataset"]["whole_image"], traces["eval_id"], traces[name])
            ri = evaluate(tuned["image"]["klip"], traces["eval_id"], traces[name], sets[name].masks, body(name))
            series["KLIP"].append(rk["auroc"])
            series["whole-image KL"].append(rw["auroc"])
            lines.append(f"| {c:+.2f} | {fmt(rk['auroc'])} | {fmt(rw['auroc'])} | {fmt(ri['block_auroc_mean'])} |")
        contrast_figure([abs(c) for c in cfg["contrasts"]], series, out / "auroc_vs_contrast.png", title=f"{args.task}: AUROC vs lesion contrast")

    # --- figures ---
    main_ood = cfg["main_ood"]
    ks, wi = tuned["dataset"]["klip"], tuned["dataset"]["whole_image"]
    score = lambda s, tr: image_score(s.maps(tr)).numpy()  # noqa: E731
    roc_figure({f"KLIP ({ks.label()})": (score(ks, traces["eval_id"]), score(ks, traces[main_ood])),
                "whole-image KL": (score(wi, traces["eval_id"]), score(wi, traces[main_ood]))}, out / "roc.png", title=f"{args.task}: ID vs {main_ood[5:]}")
    si = tuned["image"]["klip"]
    k = 3
    idx_id, idx_ood = list(range(k)), list(range(k))
    base = {name: 1_000_000 * (i + 1) for i, name in enumerate(sets)}  # the noise seeds load_or_score used
    meas = torch.cat([cfg["measurement"](op(sets["eval_id"].images[idx_id], seed=[base["eval_id"] + i for i in idx_id])),
                      cfg["measurement"](op(sets[main_ood].images[idx_ood], seed=[base[main_ood] + i for i in idx_ood]))])
    rec = torch.cat([traces["eval_id"].reconstruction[idx_id], traces[main_ood].reconstruction[idx_ood]])
    maps = torch.cat([si.maps(traces["eval_id"])[idx_id], si.maps(traces[main_ood])[idx_ood]])
    masks = torch.cat([sets["eval_id"].masks[idx_id], sets[main_ood].masks[idx_ood]])
    heatmap_figure(meas, rec, maps, masks, out / "heatmaps.png", labels=[f"ID {i}" for i in idx_id] + [f"{main_ood[5:]} {i}" for i in idx_ood],
                   measurement_title=cfg["measurement_title"], title=f"KLIP map ({si.label()})", map_title="KLIP map")
    tr_id, tr_ood = traces["eval_id"], traces[main_ood]
    curve = lambda tr: tr.step_maps.flatten(2).sum(2).double().T  # noqa: E731  (T, N) per-step energy
    step_curve_figure(tr_id.sigmas[:-1], {"ID": curve(tr_id), main_ood[5:]: curve(tr_ood)}, ks.steps(tr_id.n_steps), out / "step_curves.png", title=f"{args.task}: per-step likelihood-update energy")

    total_nfe = sum(tr.nfe_per_image_full * tr.n for tr in traces.values())
    sampled_s = sum(tr.seconds for tr in traces.values())
    lines += ["", "## Cost", "",
              f"Sampling all {sum(tr.n for tr in traces.values())} images once: {total_nfe:.0f} NFE in {sampled_s:.0f} s "
              f"({total_nfe / max(sampled_s, 1e-9):.0f} NFE/s; {platform.processor() or platform.machine()}, {args.threads} threads, torch {torch.__version__}). "
              f"NFE per image at the tuned settings is in the table (sampling stops at the window's end). The official code spends ≈ 16,000 NFE per image "
              f"(VE predictor–corrector backend) or 800 (DDPM backend, 100 steps × 8 samples).",
              "", "Figures: `heatmaps.png`, `roc.png`, `step_curves.png`" + (", `auroc_vs_contrast.png`" if cfg["contrasts"] else "") + ".",
              "", f"Command: `python benchmarks/klip_experiment.py --task {args.task} --out {args.out} --n-tune {args.n_tune} --n-eval {args.n_eval} "
              f"--steps {args.steps} --samples {args.samples} --sampler {args.sampler}{' --jacobian' if args.jacobian else ''}"
              f"{f' --zeta {args.zeta}' if args.zeta is not None else ''} --threads {args.threads}` ({time.perf_counter() - t_start:.0f} s including cached traces)."]
    text = "\n".join(lines)
    print(text)
    (out / "results.md").write_text(text + "\n")
    atomic_write_json(out / "metrics.json", {
        "tuned": {obj: {v: {"window": s.window, "block": s.block} for v, s in d.items()} for obj, d in tuned.items()},
        "results": {f"{o}/{v}/{n}": r for (o, v, n), r in results.items()},
    })


if __name__ == "__main__":
    main()
