"""The clean-image ceiling of CT lesion detection, and KLIP through sparse-view sinograms against it.

**Clean** (``clean``): no measurements — the most any image detector can get with a prior. For each CT prior,
every image detector on healthy phantoms vs phantoms with one liver lesion, *independent anatomies*
(``healthy_set(n, seed=10_004)`` vs ``lesion_set(n, seed=10_005, contrast=c)``, fitted detectors fitted on
``healthy_set(n, seed=10_003)``), at each contrast ``c``; AUROC ± Hanley–McNeil SE, FPR@95, AUPR, NFE. Rows:

* the registered image detectors with their library defaults (``denoising-error``, ``score-norm``), ``local-residual``
  with the ct task's tissue rule (``foreground=-0.9``; its σ levels, draws and window were chosen on the CT
  blob tuning split, never on lesions), and the costly ones at lowered cost, named in the row (``lmd`` 4 × 25,
  ``eigenscore`` 2 levels × 1 repetition, ``eigenscore-trace`` defaults) — at ``--costly-contrasts`` only;
* *local denoising error*: the per-pixel denoising error averaged over σ ∈ {0.05, 0.1, 0.2}, pooled to 4-px
  blocks, z-scored per block location on the fit phantoms, max over blocks inside the body;
* two reference rows that are not detectors: *liver-aware local contrast* (it is **given the true liver mask**,
  which no detector has) and the trivial *image energy* ‖x‖².

**Sinogram** (``sinogram``): 20-view parallel-beam CT (the ``ct`` task's operator) at several σ_y, ``n`` pairs
(``healthy_set(n, seed=31_000)`` and the *same* anatomies with a lesion, the same noise draw and sampler seeds:
the paired statistic), KLIP with the ``ct`` task's plan (DPS, ζ 0.1, 50 steps, S = 2) and settings, and again with
the library's default sampler, window and block (ΠGDM, 50 steps, S = 2), each with
``score="spread"`` over every block and over the blocks with tissue only (the reconstruction's, > −0.9 — no ground
truth), multiscale KLIP (z-scored on ``healthy_set(n, seed=32_000)``, ID only), the whole-image KL, the trivial
‖y‖² and FBP residual (``residual``, fitted on the same ID tuning sinograms), and ``local-residual`` /
``denoising-error`` on KLIP's own reconstruction (the posterior mean of its S samples; +12 / +7 NFE). Each row:
paired statistic, AUROC ± SE, FPR@95, block AUROC of the lesion maps under both protocols (``any``/``all`` body
pixels), NFE, and AUROC as a fraction of the clean-image ceiling (the best detector of ``clean`` at that contrast
for that prior).

Scores are cached per (prior, set, row) under ``OUT/traces/`` (KLIP traces too), so a run that stops resumes;
``results.md`` is rebuilt from the cache at the end of every run.

    python benchmarks/ct_ceiling.py clean --priors phantom-ct-64,phantom-ct-64-long --costly phantom-ct-64-long \\
        --out benchmarks/results/ct-ceiling
    python benchmarks/ct_ceiling.py sinogram --prior phantom-ct-64-long --n 48 --noise 0.05,0.1,0.25,0.5 \\
        --out benchmarks/results/ct-ceiling
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch
from _common import fmt, liver_contrast, load_any, local_error_maps, write_results
from safetensors.torch import load_file, save_file

from priorshift.bench.klip_eval import Setting, load_or_score, multiscale_scores
from priorshift.data import PhantomCT, healthy_set, lesion_set
from priorshift.detectors import KLIP, Residual, score_batches
from priorshift.detectors.klip_maps import image_score, tissue_blocks
from priorshift.detectors.klip_multiscale import equal_windows
from priorshift.io import atomic_write
from priorshift.metrics import block_auroc, ood_metrics
from priorshift.metrics.ood import auroc_standard_error, paired_rate
from priorshift.registry import get
from priorshift.tasks import get_task

CONTRASTS = (-0.1, -0.15, -0.2, -0.3)
FOREGROUND = -0.9  # tissue: not air ([-1, 1] images; air is -1)
CHEAP = {  # label -> (registered detector, its parameters); library defaults unless named
    "denoising-error": ("denoising-error", {}),
    "score-norm": ("score-norm", {}),
    "local-residual (tissue > −0.9)": ("local-residual", {"foreground": FOREGROUND}),
}
COSTLY = {
    "lmd (4 × 25)": ("lmd", {"attempts": 4, "plan": {"steps": 25}}),
    "eigenscore (2 levels × 1 rep)": ("eigenscore", {"sigmas": (0.5219650627362051, 0.9580337146622314), "repetitions": 1}),
    "eigenscore-trace": ("eigenscore-trace", {}),
}
LOCAL_ERROR = "local denoising error (4-px block max, z per location on healthy)"
LIVER = "reference: liver-aware local contrast (given the true liver mask)"
ENERGY = "trivial: image energy ‖x‖²"


class Cache:
    """Scores (and maps) per key in ``dir/<key>.safetensors``, written atomically."""

    def __init__(self, root: Path):
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def path(self, key: str) -> Path:
        return self.root / (key.replace("/", "_").replace(" ", "_") + ".safetensors")

    def get(self, key: str, compute) -> dict[str, torch.Tensor]:
        p = self.path(key)
        if p.exists():
            return load_file(str(p))
        t0 = time.perf_counter()
        out = {k: v.detach().float().contiguous() for k, v in compute().items()}
        print(f"  {key}: {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
        atomic_write(p, lambda tmp: save_file(out, tmp))
        return out


def _metrics(s_id, s_ood, nfe=None) -> dict:
    m = ood_metrics(s_id, s_ood)
    n_id, n_ood = len(s_id), len(s_ood)
    return {"auroc": m["auroc"], "se": auroc_standard_error(m["auroc"], n_id, n_ood), "fpr95": m["fpr95_ood_positive"],
            "aupr": m["aupr_out"], "nfe": nfe}


# -- clean images -----------------------------------------------------------------------------------------
def run_clean(args, cache: Cache) -> list[dict]:
    n = args.n
    fit, healthy = healthy_set(n, seed=10_003), healthy_set(n, seed=10_004)
    lesions = {c: lesion_set(n, seed=10_005, contrast=c) for c in args.contrasts}
    rows = []
    for spec in args.priors:
        den, seen, backbone, label = load_any(spec)
        tag = f"clean-{label}-n{n}"
        rows_here = {}

        def sets(contrasts):
            return [("healthy", healthy)] + [(f"lesion{c:+.2f}", lesions[c]) for c in contrasts]

        detectors = dict(CHEAP)
        if spec in args.costly:
            detectors.update({k: v for k, v in COSTLY.items() if v[0] in args.costly_detectors})
        for name, (reg, params) in detectors.items():
            contrasts = args.contrasts if name in CHEAP else args.costly_contrasts
            det = get("detector", reg)(den, **params)
            if det.needs_fit:
                det.fit(fit.images, seed=list(range(n)))
            out = {}
            for set_name, ls in sets(contrasts):
                seed0 = 100_000 if set_name == "healthy" else 200_000
                out[set_name] = cache.get(f"{tag}-{name}-{set_name}", lambda ls=ls, seed0=seed0: _score_images(det, ls.images, seed0))
            for c in contrasts:
                rows_here[(name, c)] = _metrics(out["healthy"]["score"], out[f"lesion{c:+.2f}"]["score"],
                                                float(out["healthy"]["nfe"]) / n)
        ref = local_error_maps(den, fit.images, 0)
        mu, sd = ref.mean(0), ref.std(0).clamp_min(1e-8)
        for set_name, ls in sets(args.contrasts):
            seed0 = 10_000 if set_name == "healthy" else 20_000
            cache.get(f"{tag}-local-error-{set_name}", lambda ls=ls, seed0=seed0: {"score": _local_error(den, ls, seed0, mu, sd)})
        h = cache.get(f"{tag}-local-error-healthy", None)["score"]
        for c in args.contrasts:
            rows_here[(LOCAL_ERROR, c)] = _metrics(h, cache.get(f"{tag}-local-error-lesion{c:+.2f}", None)["score"], 3.0)
        rows += [{"part": "clean", "prior": label, "backbone": backbone, "images_seen": seen, "row": k[0], "contrast": k[1], **v}
                 for k, v in rows_here.items()]
    livers = {seed: torch.stack([ph.liver_mask for ph in PhantomCT(n, 64, seed)]) for seed in (10_004, 10_005)}
    for c in args.contrasts:  # the prior-free reference rows
        ls = lesions[c]
        for name, fn in ((LIVER, lambda x, seed: liver_contrast(x, livers[seed])), (ENERGY, lambda x, seed: x.flatten(1).pow(2).sum(1))):
            rows.append({"part": "clean", "prior": "—", "backbone": "—", "images_seen": None, "row": name, "contrast": c,
                         **_metrics(fn(healthy.images, 10_004), fn(ls.images, 10_005), 0.0)})
    return rows


def _score_images(det, images, seed0) -> dict[str, torch.Tensor]:
    # batches of 8: EigenScore's probes on 64 images at once take > 22 GB (the first run was killed for memory)
    s = score_batches(det, images, batch_size=8, seed=list(range(seed0, seed0 + images.shape[0])))
    return {"score": s.score, "nfe": torch.tensor(float(s.nfe))}


def _local_error(den, ls, seed0, mu, sd):
    z = (local_error_maps(den, ls.images, seed0) - mu) / sd
    body = tissue_blocks(ls.images, 4, FOREGROUND)
    return torch.where(body, z, torch.full_like(z, -float("inf"))).flatten(1).max(1).values


# -- through 20-view sinograms ------------------------------------------------------------------------------
def run_sinogram(args, cache: Cache) -> list[dict]:
    from priorshift.detectors import DenoisingError, LocalResidual

    n, task = args.n, get_task("ct")
    den, seen, backbone, label = load_any(args.prior)
    healthy = healthy_set(n, 64, seed=31_000)
    lesion = lesion_set(n, 64, seed=31_000, contrast=args.contrast)
    tune_id = healthy_set(n, 64, seed=32_000)  # ID only: multiscale z-scores, the residual's and denoising-error's fits
    settings = task.detector_settings("klip")
    steps = {"steps": args.steps} if args.steps else {}
    default = KLIP(den, task.make_operator())
    plans = {  # name -> (KLIP's sampler arguments, its window/block, what the window/block are)
        "DPS": ({"plan": {**settings["plan"], **steps}, "samples": settings["samples"]}, Setting(tuple(settings["window"]), settings["block"]), "ct task"),
        "ΠGDM": ({"plan": {"sampler": "pigdm", "steps": settings["plan"]["steps"], **steps}, "samples": settings["samples"]},
                 Setting(tuple(default.window), default.block), "library default"),
    }
    rows = []
    for noise in args.noise:
        op = task.make_operator(noise_std=noise)
        y = {"healthy": op(healthy.images, seed=[8_000 + i for i in range(n)]), "lesion": op(lesion.images, seed=[8_000 + i for i in range(n)]),
             "tune_id": op(tune_id.images, seed=[11_000 + i for i in range(n)])}
        signal = float(((op.A(lesion.images) - op.A(healthy.images)).flatten(1).norm(dim=1) / noise).median())
        scores = {  # label -> (healthy scores, lesion scores, (lesion maps, block) or None, NFE per image)
            "trivial: ‖y‖²": (y["healthy"].flatten(1).pow(2).sum(1), y["lesion"].flatten(1).pow(2).sum(1), None, 0)}
        res = Residual(den, op).fit(y["tune_id"])
        scores["trivial: FBP residual"] = (res.score(y["healthy"]).score, res.score(y["lesion"]).score, None, 0)
        for plan_name in args.plans:
            klip_kwargs, setting, what = plans[plan_name]
            traces = {}
            for name, yy in y.items():
                key = json.dumps({"noise": noise, "set": name, "n": n, "contrast": args.contrast, "prior": args.prior, **klip_kwargs}, sort_keys=True)
                stem = f"klip-{label}-noise{noise:g}-{name}-n{n}" + ("" if plan_name == "DPS" else f"-{klip_kwargs['plan']['sampler']}")
                traces[name] = load_or_score(cache.root / f"{stem}.safetensors", den, op, yy, seed=[9_000 + i for i in range(n)], base_block=2, key=key,
                                             **klip_kwargs)
            nfe_klip = traces["lesion"].nfe_per_image_full
            fixed = {  # label -> (Setting, tissue-only image score)
                f"KLIP {plan_name}, {what} ({setting.label()})": (setting, False),
                f"KLIP {plan_name}, {what}, spread-normalized": (Setting(setting.window, setting.block, score="spread"), False),
                f"KLIP {plan_name}, {what}, spread-normalized, tissue blocks only": (Setting(setting.window, setting.block, score="spread"), True),
                f"KLIP {plan_name}, full window, 8 px, spread-normalized": (Setting((0.0, 1.0), 8, score="spread"), False),
                f"KLIP {plan_name}, full window, 8 px, spread-normalized, tissue blocks only": (Setting((0.0, 1.0), 8, score="spread"), True),
            }
            for name, (st, tissue) in fixed.items():
                maps = {k: st.maps(traces[k]) for k in ("healthy", "lesion")}
                if tissue:
                    maps = {k: torch.where(tissue_blocks(traces[k].reconstruction, st.block, FOREGROUND), m, torch.zeros_like(m)) for k, m in maps.items()}
                scores[name] = (image_score(maps["healthy"]), image_score(maps["lesion"]), (maps["lesion"], st.block), st.nfe_per_image(traces["lesion"]))
            ms = multiscale_scores(traces["tune_id"], {"healthy": traces["healthy"], "lesion": traces["lesion"]}, windows=equal_windows(5), block=8, maps=True)
            scores[f"KLIP {plan_name}, multiscale (5 windows, 8 px; z-scored on ID tuning anatomies)"] = (ms["healthy"][0], ms["lesion"][0], (ms["lesion"][1], 8),
                                                                                                           nfe_klip)
            scores[f"KLIP {plan_name}, whole-image KL"] = (traces["healthy"].kl_nats, traces["lesion"].kl_nats, None, nfe_klip)
            rec = {k: traces[k].reconstruction for k in traces}
            lr = LocalResidual(den, foreground=FOREGROUND)
            out = {k: lr.score(rec[k], seed=[50_000 + i for i in range(n)]) for k in ("healthy", "lesion")}
            scores[f"local-residual on KLIP {plan_name}'s reconstruction"] = (out["healthy"].score, out["lesion"].score, (out["lesion"].map, 1), nfe_klip + 12)
            de = DenoisingError(den).fit(rec["tune_id"], seed=list(range(n)))
            scores[f"denoising-error on KLIP {plan_name}'s reconstruction"] = tuple(
                de.score(rec[k], seed=[60_000 + i for i in range(n)]).score for k in ("healthy", "lesion")) + (None, nfe_klip + 7)
        for name, (s_h, s_l, lesion_maps, nfe) in scores.items():
            paired, paired_se = paired_rate(s_h, s_l)
            loc = {}
            if lesion_maps is not None:
                for rule in ("any", "all"):
                    loc[rule] = block_auroc(lesion_maps[0], lesion.masks, lesion_maps[1], body_mask=lesion.body_masks, body_rule=rule).mean
            rows.append({"part": "sinogram", "prior": label, "noise": noise, "signal": signal, "contrast": args.contrast, "row": name,
                         "paired": paired, "paired_se": paired_se, **_metrics(s_h, s_l, nfe), "block_any": loc.get("any"), "block_all": loc.get("all")})
        print(f"σ_y {noise:g} done", file=sys.stderr, flush=True)
    return rows


# -- the tables -----------------------------------------------------------------------------------------------
def tables(rows: list[dict]) -> list[str]:
    clean = [r for r in rows if r["part"] == "clean"]
    contrasts = sorted({r["contrast"] for r in clean}, reverse=True)
    ceiling = {}  # (prior, contrast) -> (best detector AUROC, its row)
    for r in clean:
        if r["prior"] != "—" and r["auroc"] > ceiling.get((r["prior"], r["contrast"]), (-1, ""))[0]:
            ceiling[(r["prior"], r["contrast"])] = (r["auroc"], r["row"])
    lines = ["# The CT lesion ceiling: every image detector on clean phantoms, and KLIP through 20-view sinograms against it", ""]
    if clean:
        lines += ["## Clean images (no measurements): AUROC ± SE, healthy vs lesion phantoms, independent anatomies", "",
                  "`n` + `n` images per cell (healthy `healthy_set(seed=10_004)`, lesions `lesion_set(seed=10_005)`; detectors that fit, fitted on "
                  "`healthy_set(seed=10_003)`). Nothing was tuned on lesions: library defaults, `local-residual`'s defaults chosen on the CT blob tuning "
                  "split, the local error's σ levels and block fixed before any run. The ceiling of a prior is its best detector's AUROC; "
                  "the reference row is given the true liver mask (no detector has it) and bounds what a local filter can do.", "",
                  "| prior | images seen | row | " + " | ".join(f"c = {c:g}" for c in contrasts) + " | FPR@95 / AUPR at −0.15 | NFE / image |",
                  "|---|---:|---|" + "---:|" * len(contrasts) + "---|---:|"]
        for (prior, row) in dict.fromkeys((r["prior"], r["row"]) for r in clean):
            cells = {r["contrast"]: r for r in clean if r["prior"] == prior and r["row"] == row}
            any_r = next(iter(cells.values()))
            at = cells.get(-0.15)
            best = lambda c: ceiling.get((prior, c), (None, None))[1] == row  # noqa: E731
            lines.append(f"| {prior} | {'' if any_r['images_seen'] is None else format(any_r['images_seen'], ',')} | {row} | "
                         + " | ".join(("—" if c not in cells else (("**" if best(c) else "") + f"{fmt(cells[c]['auroc'])} ± {fmt(cells[c]['se'])}"
                                                                     + ("**" if best(c) else ""))) for c in contrasts)
                         + f" | {'—' if at is None else fmt(at['fpr95'], 2) + ' / ' + fmt(at['aupr'], 2)} | {fmt(any_r['nfe'], 0)} |")
    sino = sorted((r for r in rows if r["part"] == "sinogram"), key=lambda r: r["noise"])  # stable: rows keep their order within a σ_y
    if sino:
        r0 = sino[0]
        lines += ["", f"## Through 20-view sinograms (prior {r0['prior']}, contrast {r0['contrast']:g}, {len(sino) and ''}paired sets)", "",
                  "Paired: fraction of pairs (same anatomy, noise draw and sampler seeds) where the lesion raises the score ± binomial SE (‖y‖²'s is the "
                  "sign of a deterministic difference, not a detection rate). AUROC ± SE (healthy vs lesion). Block AUROC of the lesion maps: `any` = blocks "
                  "with any body pixel, `all` = all-body blocks. Fraction = AUROC / the prior's clean-image ceiling at this contrast (its best detector, above). "
                  "Signal = median ‖A·lesion‖ / σ_y.", "",
                  "| σ_y | signal | row | paired | AUROC | fraction of ceiling | FPR@95 | block AUROC (any) | block AUROC (all) | NFE / image |",
                  "|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
        for r in sino:
            ceil = ceiling.get((r["prior"], r["contrast"]), (None,))[0]
            lines.append(f"| {r['noise']:g} | {r['signal']:.1f} | {r['row']} | {r['paired']:.2f} ± {r['paired_se']:.2f} | {fmt(r['auroc'])} ± {fmt(r['se'])} | "
                         f"{fmt(None if ceil is None else r['auroc'] / ceil, 2)} | {fmt(r['fpr95'], 2)} | {fmt(r['block_any'])} | {fmt(r['block_all'])} | {fmt(r['nfe'], 0)} |")
    return lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("part", choices=("clean", "sinogram"))
    ap.add_argument("--out", required=True, help="a folder: results.md/json, traces/ (the score cache)")
    ap.add_argument("--priors", default="phantom-ct-64", help="clean: comma-separated bundled names, checkpoints or run snapshots")
    ap.add_argument("--costly", default="", help="clean: the priors (among --priors) to run LMD and EigenScore on")
    ap.add_argument("--contrasts", default=",".join(map(str, CONTRASTS)))
    ap.add_argument("--costly-contrasts", default="-0.15")
    ap.add_argument("--costly-detectors", default="lmd,eigenscore,eigenscore-trace", help="clean: which of the costly detectors to run")
    ap.add_argument("--prior", default="phantom-ct-64", help="sinogram: the prior")
    ap.add_argument("--contrast", type=float, default=-0.15, help="sinogram: the lesions' contrast")
    ap.add_argument("--noise", default="0.05,0.1,0.25,0.5", help="sinogram: σ_y values (sinogram units)")
    ap.add_argument("--plans", default="DPS,ΠGDM", help="sinogram: KLIP's sampler runs — DPS (the ct task's plan and window/block) and/or "
                    "ΠGDM (the library default sampler, window and block)")
    ap.add_argument("--steps", type=int, default=0, help="sinogram: sampler steps (default: the ct task's)")
    ap.add_argument("--n", type=int, default=64, help="images per class (clean) or pairs (sinogram)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    floats = lambda text: tuple(float(v) for v in text.split(",") if v)  # noqa: E731
    args.priors, args.costly = [p for p in args.priors.split(",") if p], [p for p in args.costly.split(",") if p]
    args.plans = [p for p in args.plans.split(",") if p]
    args.costly_detectors = [d for d in args.costly_detectors.split(",") if d]
    if not set(args.plans) <= {"DPS", "ΠGDM"}:
        ap.error(f"--plans takes DPS and/or ΠGDM, got {','.join(args.plans)}")
    args.contrasts, args.costly_contrasts, args.noise = floats(args.contrasts), floats(args.costly_contrasts), floats(args.noise)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    cache = Cache(out / "traces")
    t0 = time.perf_counter()
    new = run_clean(args, cache) if args.part == "clean" else run_sinogram(args, cache)
    path = out / "results.json"
    old = json.loads(path.read_text())["rows"] if path.exists() else []
    replaced = {(r["part"], r["prior"], r.get("noise"), r["row"], r["contrast"]) for r in new}
    rows = [r for r in old if (r["part"], r["prior"], r.get("noise"), r["row"], r["contrast"]) not in replaced] + new
    commands = (json.loads(path.read_text()).get("commands", {}) if path.exists() else {})
    commands[args.part] = f"python benchmarks/ct_ceiling.py {' '.join(sys.argv[1:] if argv is None else argv)}"
    lines = tables(rows) + ["", f"Machine: {platform.processor() or platform.machine()}, {args.threads} thread(s), torch {torch.__version__}; "
                                f"the last run ({args.part}) took {time.perf_counter() - t0:.0f} s (cached scores are not recomputed).", "",
                            "Commands:", "", *(f"    {c}" for c in commands.values())]
    write_results(out, "results", lines, {"rows": rows, "commands": commands})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
