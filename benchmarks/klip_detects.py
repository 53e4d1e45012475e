"""Does KLIP detect? Fashion-MNIST (ID) vs MNIST (OOD) and gross shifts, with KLIP's default ΠGDM step.

For each measurement domain, every set is sampled once (full schedule, per-step block maps at 2 px; traces
cached in OUT/traces) and every setting is evaluated from the traces (:mod:`priorshift.bench.klip_eval`):

* ``library default`` — ``KLIP(prior, operator)``'s window and block, nothing chosen on data;
* ``star-tuned`` — window and block chosen on the Fashion-MNIST **star tuning split** (garments with and
  without a bright inserted star; disjoint from every reported set), dataset-level objective;
* ``surrogate-tuned`` — chosen on the same ID tuning garments against a *third* dataset, procedural CT phantoms
  at 32 px (a far, global shift like MNIST's, but not MNIST — outlier-exposure style). MNIST is never used to
  choose anything;
* ``held-out-class-tuned`` — chosen with a sibling prior trained without two classes (``--tune-prior``, default
  ``fashion-mnist-0-7-32``: Fashion-MNIST classes 0-7) on its own ID classes against the two it never saw (bags,
  ankle boots): a global, semantic shift like MNIST's, found without MNIST; the window and block are then used
  unchanged with ``fashion-mnist-32``;
* ``jointly tuned`` — one window, block and per-step weighting (KLIP's ``g``, none, σ⁻², σ) for all three
  tuning shifts at once (held-out classes, stars, CT phantoms): the setting with the highest **mean** tuning AUROC
  (:func:`priorshift.bench.klip_eval.tune_joint`);
* the star- and surrogate-tuned ones again with ``score="spread"`` allowed (each block's energy over the posterior samples' spread there),
  and the library default with it;
* ``whole-image KL`` — ``kl_nats`` over the full schedule (one block, no window): the theory's
  KL(p(x|y) ‖ p(x)), which inherits the likelihood paradox where the operator is near the identity;
* trivial baselines next to it: the raw ``‖y‖²`` and the registered ``measurement-norm`` (``‖y‖²/m``
  standardised on other ID images, two-sided) — the one to beat.

The ID evaluation images are Fashion-MNIST test images [6000, 6000 + n) as they come (not the star split's
large-garment selection, which would bias ‖y‖²: with a background of −1, ‖y‖² mostly counts background);
calibration for ``measurement-norm``: [7000, 7000 + n).

Gross shifts of low prior density (the contract's, on real data): ID measurements scaled ×5, and white-noise
images N(0, 1); constant images (x = 0) are the likelihood-paradox case, reported, not required.

    python benchmarks/klip_detects.py --out benchmarks/results/klip-detects
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import DOMAINS, domain_operator, fmnist_sets, fmt, write_results  # noqa: E402

from priorshift import load_prior  # noqa: E402
from priorshift.bench.klip_eval import STEP_WEIGHTINGS, Setting, Trace, evaluate, load_or_score, tune, tune_joint  # noqa: E402
from priorshift.data import load_dataset  # noqa: E402
from priorshift.detectors import KLIP, MeasurementNorm  # noqa: E402
from priorshift.metrics import ood_metrics  # noqa: E402
from priorshift.metrics.ood import auroc_standard_error  # noqa: E402

BLOCKS = (2, 4, 8, 16)


def _row(name: str, s_id, s_ood, nfe: float | None, chosen: str) -> dict:
    m = ood_metrics(s_id, s_ood)
    return {"method": name, **m, "auroc_se": auroc_standard_error(m["auroc"], m["n_id"], m["n_ood"]), "nfe_per_image": nfe, "chosen": chosen}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--domains", default=",".join(DOMAINS), help=f"comma-separated, from {', '.join(DOMAINS)}")
    ap.add_argument("--n-tune", type=int, default=32)
    ap.add_argument("--n-class-tune", type=int, default=None, help="images per held-out-class tuning set (default: --n-tune)")
    ap.add_argument("--n-eval", type=int, default=48)
    ap.add_argument("--n-shift", type=int, default=24, help="images per gross-shift set")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--samples", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tune-prior", default="fashion-mnist-0-7-32", help="prior trained without classes 8-9, for the held-out-class tuning")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    (out / "traces").mkdir(parents=True, exist_ok=True)
    prior = load_prior("fashion-mnist-32")
    sets = fmnist_sets(args.n_tune, 48)  # only its star tuning split is used here (the first images; n_eval does not move it)
    mnist = load_dataset("mnist", split="test", n=args.n_eval)
    garments = load_dataset("fashion-mnist", split="test", n=7000 + args.n_eval)
    eval_id, calib = garments[6000:6000 + args.n_eval], garments[7000:7000 + args.n_eval]
    surrogate = load_dataset("phantom-ct", split="test", n=args.n_tune, image_size=32, seed=77)
    tune_prior = load_prior(args.tune_prior)
    n_cls = args.n_class_tune or args.n_tune
    seen, unseen = load_dataset("fashion-mnist:classes=0-7", split="test", n=n_cls), load_dataset("fashion-mnist:classes=8-9", split="test", n=n_cls)
    ns = args.n_shift
    white = torch.randn(ns, 1, 32, 32, generator=torch.Generator().manual_seed(8))
    constant = torch.zeros(4, 1, 32, 32)
    plan = {"sampler": "pigdm", "steps": args.steps}
    klip_kwargs = dict(plan=plan, samples=args.samples)
    default = KLIP(prior, domain_operator("identity:noise=0.02"), **klip_kwargs)
    default_setting = Setting(tuple(default.window), default.block)
    lines = ["# KLIP detects: Fashion-MNIST vs MNIST and gross shifts (default ΠGDM likelihood step)", "",
             f"Prior fashion-mnist-32. ΠGDM without the Jacobian, {args.steps} Karras steps, S = {args.samples} posterior samples. "
             f"ID: Fashion-MNIST test images [6000, {6000 + args.n_eval}); OOD: the first {args.n_eval} MNIST test digits. Tuning: {args.n_tune} "
             f"garments without an insertion against {args.n_tune} with a star (star-tuned) or {args.n_tune} CT phantoms at 32 px (surrogate-tuned), "
             f"{n_cls} seen-class against {n_cls} unseen-class garments for the sibling prior (held-out-class-tuned); never MNIST. "
             "AUROC ± Hanley–McNeil SE; FPR@95 with OOD as the positive class. Measurement noise σ_y = 0.02.", ""]
    summary = {}
    t_all = time.perf_counter()
    for dom in args.domains.split(","):
        spec = DOMAINS[dom]
        op = domain_operator(spec)
        inputs = {
            "tune_id": op(sets["tune_id"].images, seed=[1_000_000 + i for i in range(args.n_tune)]),
            "tune_star": op(sets["tune_ood"].images, seed=[2_000_000 + i for i in range(args.n_tune)]),
            "tune_surrogate": op(surrogate, seed=[2_500_000 + i for i in range(args.n_tune)]),
            "eval_id_all": op(eval_id, seed=[3_000_000 + i for i in range(args.n_eval)]),
            "mnist": op(mnist, seed=[4_000_000 + i for i in range(args.n_eval)]),
        }
        inputs["scaled_x5"] = 5.0 * inputs["eval_id_all"][:ns]
        inputs["white_noise"] = op(white, seed=[5_000_000 + i for i in range(ns)])
        inputs["constant"] = op(constant, seed=[6_000_000 + i for i in range(4)])
        traces: dict[str, Trace] = {}
        for j, (name, y) in enumerate(inputs.items()):
            key = json.dumps({"domain": spec, "set": name, "n": y.shape[0], "spread_maps": True, **klip_kwargs}, sort_keys=True)
            t0 = time.perf_counter()

            def progress(done, total, name=name, t0=t0):
                print(f"\r  {dom} {name}: {done}/{total} ({time.perf_counter() - t0:.0f}s)", end="" if done < total else "\n", file=sys.stderr, flush=True)

            traces[name] = load_or_score(out / "traces" / f"{dom}-{name}.safetensors", prior, op, y, seed=[7_000_000 * (j + 1) + i for i in range(y.shape[0])],
                                         base_block=2, key=key, progress=progress, **klip_kwargs)
        for j, (name, x) in enumerate((("class_seen", seen), ("class_unseen", unseen))):
            y = op(x, seed=[9_000_000 + 100_000 * j + i for i in range(x.shape[0])])
            key = json.dumps({"domain": spec, "set": name, "n": y.shape[0], "prior": args.tune_prior, "spread_maps": True, **klip_kwargs}, sort_keys=True)
            traces[name] = load_or_score(out / "traces" / f"{dom}-{name}.safetensors", tune_prior, op, y, seed=[9_500_000 + 100_000 * j + i for i in range(y.shape[0])],
                                         base_block=2, key=key, **klip_kwargs)
        tuned_cls, tune_cls = tune(traces["class_seen"], traces["class_unseen"], None, None, blocks=BLOCKS, objective="dataset")
        tuned, tune_res = tune(traces["tune_id"], traces["tune_star"], None, None, blocks=BLOCKS, objective="dataset")
        tuned_sur, tune_sur = tune(traces["tune_id"], traces["tune_surrogate"], None, None, blocks=BLOCKS, objective="dataset")
        tuned_joint, tune_joint_res = tune_joint([(traces["class_seen"], traces["class_unseen"]), (traces["tune_id"], traces["tune_star"]),
                                                  (traces["tune_id"], traces["tune_surrogate"])], blocks=BLOCKS, weightings=STEP_WEIGHTINGS)
        both = ("energy", "spread")
        tuned_s, tune_s = tune(traces["tune_id"], traces["tune_star"], None, None, blocks=BLOCKS, objective="dataset", scores=both)
        tuned_sur_s, tune_sur_s = tune(traces["tune_id"], traces["tune_surrogate"], None, None, blocks=BLOCKS, objective="dataset", scores=both)
        settings = {"library default": (default_setting, "none (KLIP's defaults)"),
                    "star-tuned": (tuned, f"window, block on the star tuning split (tuning AUROC {tune_res['auroc']:.3f})"),
                    "surrogate-tuned": (tuned_sur, f"window, block on ID vs CT phantoms at 32 px (tuning AUROC {tune_sur['auroc']:.3f})"),
                    "held-out-class-tuned": (tuned_cls, f"window, block with {args.tune_prior} on its classes 0-7 vs unseen 8-9 (tuning AUROC {tune_cls['auroc']:.3f})"),
                    "jointly tuned": (tuned_joint, "window, block maximizing the mean tuning AUROC over held-out classes, stars and CT phantoms ("
                                      + ", ".join(f"{v:.3f}" for v in tune_joint_res["aurocs"]) + ")"),
                    "library default, spread-normalized": (Setting(default_setting.window, default_setting.block, score="spread"), "none (fixed a priori)"),
                    "star-tuned, energy or spread": (tuned_s, f"window, block, score on the star tuning split (tuning AUROC {tune_s['auroc']:.3f})"),
                    "surrogate-tuned, energy or spread": (tuned_sur_s, f"window, block, score on ID vs CT phantoms (tuning AUROC {tune_sur_s['auroc']:.3f})")}
        rows = []
        scores = {}
        for label, (setting, chosen) in settings.items():
            res = evaluate(setting, traces["eval_id_all"], traces["mnist"])
            rows.append({"method": f"KLIP, {label}: {setting.label()}", **res, "auroc_se": auroc_standard_error(res["auroc"], res["n_id"], res["n_ood"]), "chosen": chosen})
            scores[label] = {name: setting.maps(tr).flatten(1).max(1).values for name, tr in traces.items()}
        full = {name: tr.kl_nats for name, tr in traces.items()}
        rows.append(_row("whole-image KL (kl_nats, full schedule)", full["eval_id_all"], full["mnist"], traces["mnist"].nfe_per_image_full, "none"))
        norm = {name: y.flatten(1).pow(2).sum(1) for name, y in inputs.items()}
        rows.append(_row("‖y‖² (raw)", norm["eval_id_all"], norm["mnist"], 0.0, "none"))
        baseline = MeasurementNorm(None, op).fit(op(calib, seed=[8_000_000 + i for i in range(args.n_eval)]))
        fitted = {name: baseline.score(y).score for name, y in inputs.items()}
        rows.append(_row("measurement-norm (‖y‖²/m standardised on ID, two-sided)", fitted["eval_id_all"], fitted["mnist"], 0.0, "fitted on ID calibration images"))
        best_trivial = max(rows[-1]["auroc"], rows[-2]["auroc"])
        lines += [f"## {dom}: `{spec}`", "", "| method | AUROC | FPR@95 | AUPR-in | AUPR-out | NFE / image | settings chosen by |", "|---|---:|---:|---:|---:|---:|---|"]
        for r in rows:
            lines.append(f"| {r['method']} | {fmt(r['auroc'])} ± {fmt(r['auroc_se'])} | {fmt(r['fpr95_ood_positive'])} | {fmt(r['aupr_in'])} | "
                         f"{fmt(r['aupr_out'])} | {fmt(r['nfe_per_image'], 0)} | {r['chosen']} |")
        per_block = {b: evaluate(Setting(tuned.window, b), traces["eval_id_all"], traces["mnist"])["auroc"] for b in (*BLOCKS, None)}
        mid = {b: evaluate(Setting((0.3, 0.65), b), traces["eval_id_all"], traces["mnist"])["auroc"] for b in (*BLOCKS, None)}
        lines += ["", "Diagnostic, not a result (chosen by looking at MNIST in an exploratory run): the mid window (0.30, 0.65), every block: "
                  + ", ".join(f"{'image' if b is None else f'{b} px'} {v:.3f}" for b, v in mid.items()) + "."]
        lines += [f"Same window ({tuned.window[0]:.2f}, {tuned.window[1]:.2f}), every block size (does the block flip the sign?): "
                  + ", ".join(f"{'image' if b is None else f'{b} px'} {v:.3f}" for b, v in per_block.items()) + "."]
        tuned_image, tune_image_res = tune(traces["tune_id"], traces["tune_star"], sets["tune_ood"].masks, None, blocks=BLOCKS, objective="image")
        lines += [f"Image-level objective on the star tuning split (for the maps): {tuned_image.label()} (tuning block AUROC {tune_image_res['block_auroc_mean']:.3f})."]
        beat = [r["method"] for r in rows[:len(settings) + 1] if r["auroc"] > best_trivial]
        lines += ["", f"Best trivial baseline AUROC {best_trivial:.3f}; " + (f"beaten by: {', '.join(beat)}." if beat else "**no KLIP score beats it here.**"), ""]
        # gross shifts: pairwise win rate over the ID evaluation images, per score
        lines += ["Gross shifts — fraction of (shifted, ID) pairs where the shifted input scores higher (AUROC against the ID evaluation set):", "",
                  "| score | scaled ×5 | white noise N(0,1) | constant x = 0 (likelihood paradox) |", "|---|---:|---:|---:|"]
        shift_table = {}
        for label, sc in [*((f"KLIP, {k}", v) for k, v in scores.items()), ("whole-image KL", full), ("‖y‖² (raw)", norm), ("measurement-norm", fitted)]:
            vals = [ood_metrics(sc["eval_id_all"], sc[c])["auroc"] for c in ("scaled_x5", "white_noise", "constant")]
            shift_table[label] = vals
            lines.append(f"| {label} | {fmt(vals[0])} | {fmt(vals[1])} | {fmt(vals[2])} |")
        lines.append("")
        summary[dom] = {"spec": spec, "rows": rows, "tuned": {"window": tuned.window, "block": tuned.block, "tuning_auroc": tune_res["auroc"]},
                        "joint_tuned": {"window": tuned_joint.window, "block": tuned_joint.block, "tuning_aurocs": tune_joint_res["aurocs"]},
                        "class_tuned": {"window": tuned_cls.window, "block": tuned_cls.block, "tuning_auroc": tune_cls["auroc"]},
                        "surrogate_tuned": {"window": tuned_sur.window, "block": tuned_sur.block, "tuning_auroc": tune_sur["auroc"]},
                        "tuned_image": {"window": tuned_image.window, "block": tuned_image.block, "tuning_block_auroc": tune_image_res["block_auroc_mean"]},
                        "per_block": {str(k): v for k, v in per_block.items()}, "gross_shifts": shift_table}
    lines += [f"Machine: {platform.processor() or platform.machine()}, {args.threads} threads, torch {torch.__version__}; "
              f"{time.perf_counter() - t_all:.0f} s (cached traces are not re-sampled).", "",
              f"Command: `python benchmarks/klip_detects.py --out {args.out}" + (f" --domains {args.domains}" if args.domains != ",".join(DOMAINS) else "")
              + (f" --n-eval {args.n_eval}" if args.n_eval != 48 else "") + (f" --n-class-tune {n_cls}" if n_cls != args.n_tune else "")
              + (f" --samples {args.samples}" if args.samples != 2 else "") + (f" --steps {args.steps}" if args.steps != 50 else "") + "`"]
    write_results(out, "results", lines, summary)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
