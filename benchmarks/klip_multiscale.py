"""Multiscale KLIP (every time window, ID-standardised, summed) on Fashion-MNIST vs MNIST — on a fresh split.

The recipe of :class:`priorshift.detectors.KLIPMultiscale` (five equal windows over the schedule, 8-px blocks,
log max-block energy per window, z-scored on in-distribution calibration measurements, summed) was designed
while looking at the earlier runs' images, MNIST's first 96 test digits included (``klip-detects-96``). So the
numbers that count are on a **confirmation split sampled after the recipe was fixed**, disjoint from every
earlier set: ID Fashion-MNIST test images [8000, 8000 + n), MNIST test digits [96, 96 + n), calibration
Fashion-MNIST test images [9000, 9000 + n_calib). Nothing is tuned on it.

Next to it, on the same traces: KLIP's library default window, the held-out-class-tuned window of
``klip-detects-96`` (chosen without MNIST), the mid window (0.30, 0.65) that the exploration run found *on*
MNIST (its first fair test is here), the whole-image KL, and the trivial baselines ‖y‖² and measurement-norm
(fitted on the same calibration images). Then the recipe's sensitivity to the window count (reported, not
selected) and the gross shifts of the detector contract (scaled ×5, white noise) with the likelihood-paradox case
(constant images), and the design search that chose the recipe, recomputed on the exploration run's traces and
labelled as such.

A second check that needs no MNIST at all, where the traces exist: the held-out-class split of the sibling
prior ``fashion-mnist-0-7-32`` (``klip-detects-96`` traces; calibration = its first half of seen-class garments,
ID = the second half, OOD = the two unseen classes).

    python benchmarks/klip_multiscale.py --out benchmarks/results/klip-multiscale
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
from _common import DOMAINS, domain_operator, write_results  # noqa: E402

from priorshift import load_prior  # noqa: E402
from priorshift.bench.klip_eval import Setting, Trace, load_or_score, multiscale_scores  # noqa: E402
from priorshift.data import load_dataset  # noqa: E402
from priorshift.detectors import KLIP, KLIPMultiscale, MeasurementNorm  # noqa: E402
from priorshift.detectors.klip import image_score  # noqa: E402
from priorshift.detectors.klip_multiscale import equal_windows, window_features  # noqa: E402
from priorshift.metrics import ood_metrics  # noqa: E402
from priorshift.metrics.ood import auroc_standard_error  # noqa: E402

MID_WINDOW = (0.30, 0.65)  # found on MNIST in the exploration run (klip-detects); tested fairly here


def _metrics(s_id, s_ood) -> dict:
    m = ood_metrics(s_id, s_ood)
    return {**m, "auroc_se": auroc_standard_error(m["auroc"], m["n_id"], m["n_ood"])}


def _design_search(run: Path, dom: str, block: int) -> str | None:
    """The comparisons the recipe was chosen by, recomputed on an exploration run's traces (ID calibration =
    its 32 tuning garments; ID vs its MNIST digits — seen while designing, so not a result)."""
    paths = {k: run / "traces" / f"{dom}-{k}.safetensors" for k in ("tune_id", "eval_id_all", "mnist")}
    if not all(p.exists() for p in paths.values()):
        return None
    tr = {k: Trace.load(p) for k, p in paths.items()}
    if any(t.n_steps != tr["tune_id"].n_steps or block % t.base_block for t in tr.values()):
        return None
    out = {}
    for nw in (4, 5, 10):
        feats = {k: window_features(t.step_maps, equal_windows(nw), t.n_steps, pool=block // t.base_block)[1].double() for k, t in tr.items()}
        cal = feats["tune_id"]
        mean, std = cal.mean(0), cal.std(0, unbiased=True)
        z = {k: (f - mean) / std for k, f in feats.items()}
        out[f"sum, {nw}"] = ood_metrics(z["eval_id_all"].sum(1), z["mnist"].sum(1))["auroc"]
        out[f"max, {nw}"] = ood_metrics(z["eval_id_all"].max(1).values, z["mnist"].max(1).values)["auroc"]
        cov = torch.cov(cal.T)
        for shrink in (0.1, 0.5, 1.0):
            prec = torch.linalg.inv((1 - shrink) * cov + shrink * torch.diag(torch.diag(cov)))
            d2 = {k: torch.einsum("ij,jk,ik->i", f - mean, prec, f - mean) for k, f in feats.items()}
            out[f"Mahalanobis (shrinkage {shrink:g}), {nw}"] = ood_metrics(d2["eval_id_all"], d2["mnist"])["auroc"]
    n_id, n_ood = tr["eval_id_all"].n, tr["mnist"].n
    return (f"Design search, on the exploration run `{run.name}` ({n_id} ID vs MNIST [0, {n_ood}) — seen while choosing the recipe, not a result; "
            f"calibration its {tr['tune_id'].n} ID tuning garments; {block}-px blocks; combination, windows → AUROC): "
            + ", ".join(f"{k} {v:.3f}" for k, v in out.items()) + ".")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--domains", default="inpaint50,fmnist-blur,identity", help=f"comma-separated, from {', '.join(DOMAINS)}")
    ap.add_argument("--n-eval", type=int, default=96)
    ap.add_argument("--n-calib", type=int, default=96)
    ap.add_argument("--n-shift", type=int, default=24)
    ap.add_argument("--mnist-offset", type=int, default=96, help="first MNIST test digit of the confirmation split (the exploration runs used [0, 96))")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--samples", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--explore", default="benchmarks/results/klip-detects-96,benchmarks/results/klip-detects",
                    help="the exploration runs (their results.json and traces), for the held-out-class window and the sibling-prior check; "
                         "per domain the first run that has it, skipped where none does")
    ap.add_argument("--sample-only", action="store_true", help="sample and cache the traces, write no table")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    (out / "traces").mkdir(parents=True, exist_ok=True)
    domains = args.domains.split(",")
    unknown = [d for d in domains if d not in DOMAINS]
    if unknown:
        raise SystemExit(f"unknown domain(s) {', '.join(unknown)}; choose from {', '.join(DOMAINS)}")
    prior = load_prior("fashion-mnist-32")
    n, nc, ns = args.n_eval, args.n_calib, args.n_shift
    garments = load_dataset("fashion-mnist", split="test", n=9000 + nc)
    eval_id, calib = garments[8000:8000 + n], garments[9000:9000 + nc]
    mnist = load_dataset("mnist", split="test", n=args.mnist_offset + n)[args.mnist_offset:]
    white = torch.randn(ns, 1, 32, 32, generator=torch.Generator().manual_seed(18))
    constant = torch.zeros(4, 1, 32, 32)
    klip_kwargs = dict(plan={"sampler": "pigdm", "steps": args.steps}, samples=args.samples)
    detector = KLIPMultiscale(prior, domain_operator("identity:noise=0.02"), **klip_kwargs)  # the recipe's defaults: windows and block
    windows, block = detector.windows, detector.block
    default = KLIP(prior, domain_operator("identity:noise=0.02"), **klip_kwargs)
    explore_runs = [Path(p) for p in args.explore.split(",") if p]
    explore_json = {p: json.loads((p / "results.json").read_text()) if (p / "results.json").exists() else {} for p in explore_runs}
    t_all = time.perf_counter()
    lines = ["# Multiscale KLIP: Fashion-MNIST vs MNIST on a confirmation split", "",
             f"Prior fashion-mnist-32; ΠGDM without the Jacobian, {args.steps} Karras steps, S = {args.samples}. Confirmation split, sampled after "
             f"the recipe was fixed: ID = Fashion-MNIST test [8000, {8000 + n}), OOD = MNIST test [{args.mnist_offset}, {args.mnist_offset + n}), "
             f"calibration (ID only) = Fashion-MNIST test [9000, {9000 + nc}). Multiscale KLIP: {len(windows)} equal windows, {block}-px blocks, "
             "z-scored on the calibration measurements, summed (`KLIPMultiscale` defaults). AUROC ± Hanley–McNeil SE; FPR@95 with OOD positive.", ""]
    summary = {}
    sampling_s = 0.0
    for dom in domains:
        spec = DOMAINS[dom]
        op = domain_operator(spec)
        inputs = {"calib": op(calib, seed=[11_000_000 + i for i in range(nc)]),
                  "eval_id": op(eval_id, seed=[12_000_000 + i for i in range(n)]),
                  "mnist": op(mnist, seed=[13_000_000 + i for i in range(n)])}
        inputs["scaled_x5"] = 5.0 * inputs["eval_id"][:ns]
        inputs["white_noise"] = op(white, seed=[14_000_000 + i for i in range(ns)])
        inputs["constant"] = op(constant, seed=[15_000_000 + i for i in range(4)])
        traces: dict[str, Trace] = {}
        for j, (name, y) in enumerate(inputs.items()):
            key = json.dumps({"domain": spec, "set": name, "n": y.shape[0], "split": "confirmation", **klip_kwargs}, sort_keys=True)
            t0 = time.perf_counter()

            def progress(done, total, name=name, t0=t0):
                print(f"\r  {dom} {name}: {done}/{total} ({time.perf_counter() - t0:.0f}s)", end="" if done < total else "\n", file=sys.stderr, flush=True)

            traces[name] = load_or_score(out / "traces" / f"{dom}-{name}.safetensors", prior, op, y, seed=[16_000_000 * (j + 1) + i for i in range(y.shape[0])],
                                         base_block=block, key=key, progress=progress, **klip_kwargs)
        sampling_s += sum(t.seconds for t in traces.values())
        if args.sample_only:
            continue
        scored = {k: v for k, v in traces.items() if k != "calib"}
        nfe_full = traces["mnist"].nfe_per_image_full
        # label → (scores per set, how its settings were chosen, NFE per image)
        methods: dict[str, tuple[dict, str, float]] = {
            "KLIP multiscale": (multiscale_scores(traces["calib"], scored, windows=windows, block=block),
                                "calibration on ID only; recipe fixed before this split", nfe_full * max(w[1] for w in windows))}

        def add_window(label: str, setting: Setting, chosen: str):
            methods[f"{label}: {setting.label()}"] = ({k: image_score(setting.maps(t)) for k, t in scored.items()}, chosen,
                                                      setting.nfe_per_image(traces["mnist"]))

        lib = Setting(tuple(default.window), default.block)
        add_window("KLIP, library default", lib, "none (KLIP's defaults)")
        explore = next((p for p in explore_runs if "class_tuned" in explore_json[p].get(dom, {})), None)
        if explore is not None:
            cls = explore_json[explore][dom]["class_tuned"]
            add_window("KLIP, held-out-class-tuned", Setting(tuple(cls["window"]), cls["block"]),
                       f"window, block on the sibling prior's held-out classes ({explore.name}; no MNIST)")
        add_window("KLIP, mid window", Setting(MID_WINDOW, block), "found on MNIST [0, 96) in the exploration run; first fair test")
        methods["whole-image KL (kl_nats, full schedule)"] = ({k: t.kl_nats for k, t in scored.items()}, "none", nfe_full)
        methods["‖y‖² (raw)"] = ({k: inputs[k].flatten(1).pow(2).sum(1) for k in scored}, "none", 0.0)
        norm = MeasurementNorm(None, op).fit(inputs["calib"])
        methods["measurement-norm (two-sided, fitted)"] = ({k: norm.score(inputs[k]).score for k in scored}, "fitted on the calibration images", 0.0)
        rows = []
        lines += [f"## {dom}: `{spec}`", "", "| method | AUROC | FPR@95 | AUPR-in | AUPR-out | NFE / image | settings chosen by |", "|---|---:|---:|---:|---:|---:|---|"]
        for label, (sc, chosen, nfe) in methods.items():
            m = _metrics(sc["eval_id"], sc["mnist"])
            rows.append({"method": label, **m, "nfe_per_image": nfe, "chosen": chosen})
            lines.append(f"| {label} | {m['auroc']:.3f} ± {m['auroc_se']:.3f} | {m['fpr95_ood_positive']:.3f} | {m['aupr_in']:.3f} | {m['aupr_out']:.3f} | "
                         f"{nfe:.0f} | {chosen} |")
        trivial = max(r["auroc"] for r in rows if r["nfe_per_image"] == 0)
        beat = [r["method"] for r in rows if r["nfe_per_image"] > 0 and r["auroc"] > trivial]
        lines += ["", f"Best trivial baseline AUROC {trivial:.3f}; " + (f"beaten by: {', '.join(beat)}." if beat else "**no KLIP score beats it here.**")]
        sens = {}
        for nw in (3, 4, 5, 10):
            for b in (block, 2 * block):
                s = multiscale_scores(traces["calib"], scored, windows=equal_windows(nw), block=b)
                sens[f"{nw} windows, {b} px"] = ood_metrics(s["eval_id"], s["mnist"])["auroc"]
        lines += ["", "Sensitivity of the recipe (reported, not selected): AUROC with " + ", ".join(f"{k} {v:.3f}" for k, v in sens.items()) + ".", ""]
        lines += ["Gross shifts — AUROC of the shifted set against the ID evaluation set:", "",
                  "| score | scaled ×5 | white noise N(0,1) | constant x = 0 (likelihood paradox) |", "|---|---:|---:|---:|"]
        gross = {}
        for label, (sc, _, _) in methods.items():
            vals = [ood_metrics(sc["eval_id"], sc[c])["auroc"] for c in ("scaled_x5", "white_noise", "constant")]
            gross[label] = vals
            lines.append(f"| {label} | {vals[0]:.3f} | {vals[1]:.3f} | {vals[2]:.3f} |")
        lines.append("")
        sibling = None
        sib = next((p for p in explore_runs if dom in explore_json[p] and (p / "traces" / f"{dom}-class_unseen.safetensors").exists()), None)
        if sib is not None:
            seen_p, unseen_p = sib / "traces" / f"{dom}-class_seen.safetensors", sib / "traces" / f"{dom}-class_unseen.safetensors"
            seen, unseen = Trace.load(seen_p), Trace.load(unseen_p)
            half = seen.n // 2
            s = multiscale_scores(seen.take(slice(0, half)), {"id": seen.take(slice(half, seen.n)), "ood": unseen.take(slice(0, unseen.n - half))}, windows=windows, block=block)
            sl = Setting(tuple(default.window), default.block)
            d_id, d_ood = image_score(sl.maps(seen.take(slice(half, seen.n)))), image_score(sl.maps(unseen.take(slice(0, unseen.n - half))))
            sibling = {"multiscale": ood_metrics(s["id"], s["ood"])["auroc"], "library_default": ood_metrics(d_id, d_ood)["auroc"], "n": seen.n - half}
            lines += [f"No-MNIST check, sibling prior fashion-mnist-0-7-32 on its held-out classes ({sib.name} traces; {seen.n - half} seen vs {seen.n - half} unseen, "
                      f"calibrated on {half} other seen-class garments): multiscale {sibling['multiscale']:.3f}, library default {sibling['library_default']:.3f}.", ""]
        star_run = next((p for p in explore_runs if dom in explore_json[p] and (p / "traces" / f"{dom}-tune_star.safetensors").exists()), None)
        stars = None
        if star_run is not None:
            st = {k: Trace.load(star_run / "traces" / f"{dom}-{k}.safetensors") for k in ("tune_id", "tune_star")}
            if all(t.n_steps == traces["calib"].n_steps and block % t.base_block == 0 for t in st.values()):
                st = {k: t.pooled(block) for k, t in st.items()}
                ms_st = multiscale_scores(traces["calib"], st, windows=windows, block=block)
                lib_st = {k: image_score(lib.maps(t)) for k, t in st.items()}
                stars = {"multiscale": ood_metrics(ms_st["tune_id"], ms_st["tune_star"])["auroc"],
                         "library_default": ood_metrics(lib_st["tune_id"], lib_st["tune_star"])["auroc"], "n": st["tune_id"].n}
                lines += [f"A local shift, for contrast: garments with vs without a bright inserted star ({star_run.name}'s star tuning split, "
                          f"{stars['n']} + {stars['n']}; calibration as above): multiscale {stars['multiscale']:.3f}, library default "
                          f"{stars['library_default']:.3f}. Both are weak on this small local insertion with the ΠGDM step; multiscale KLIP is "
                          "meant for whole-image shifts.", ""]
        design = next((d for d in (_design_search(p, dom, block) for p in explore_runs if dom in explore_json[p]) if d), None)
        if design:
            lines += [design, ""]
        summary[dom] = {"spec": spec, "rows": rows, "sensitivity": sens, "gross_shifts": gross, "sibling_check": sibling, "stars": stars, "design_search": design}
    if args.sample_only:
        return 0
    lines += [f"Machine: {platform.processor() or platform.machine()}, {args.threads} threads, torch {torch.__version__}; "
              f"{time.perf_counter() - t_all:.0f} s for this run (cached traces are not re-sampled); sampling every trace took {sampling_s:.0f} s "
              f"({nc + 2 * n + 2 * ns + 4} images per domain).", "",
              "Command: `python " + " ".join(["benchmarks/klip_multiscale.py", *(argv if argv is not None else sys.argv[1:])]) + "`"]
    write_results(out, "results", lines, summary)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
