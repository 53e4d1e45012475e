"""KLIP's ``official`` preset beside our defaults: what ΠGDM, the g weight and per-sample ‖r‖ change.

Two tasks, each with the shipped EDM prior of its task (``priorshift.tasks``):

* ``fmnist-blur``: Fashion-MNIST test images (ID, the first n) vs MNIST test digits (OOD, the first n), 7×7 blur,
  prior ``fashion-mnist-32``;
* ``ct``: healthy phantoms vs phantoms with a liver lesion (contrast −0.15), independent anatomies
  (``healthy_set`` seed 40,001, ``lesion_set`` seed 40,002: sets no tuning ever used), 20-view sinograms, σ_y = 0.5,
  prior ``phantom-ct-64``.

Rows: the trivial baseline ‖y‖²; **our defaults** (the task's tuned settings, ``task.klip``); **the official preset**
(``KLIP.official``: DPS without the Jacobian, ζ = 0.3 with ‖r‖ averaged over the S samples, x̂0 clipped, x_T ~ N(0, I)
in VP coordinates, diffusers' default linear-β DDPM grid — on these EDM priors kept below σ_max = 80 —, weight
sqrt(β_t/ᾱ_t), window [0.65, 0.85), 1-px blocks); and one choice switched at a time: the sampler (ΠGDM ↔ DPS: from
the defaults, the task's other sampler with its own ζ; from the preset, ΠGDM on the same grid, weight and window),
the weight (g ↔ sqrt(β_t/ᾱ_t), recomputed from the same run's per-step maps, so the trajectory and draws are
identical) and ‖r‖ (per sample ↔ averaged over the S samples). Every row of a task uses the same measurements and
the same per-image sampler seeds. Nothing here was chosen on the OOD sets: the defaults are the task's settings
(tuned on other data, see ``priorshift.tasks``), the preset is the official code's.

Columns: AUROC ± its Hanley–McNeil SE (OOD positive), FPR@95 (fraction of ID flagged at 95 % TPR on OOD), AUPR (OOD
positive), NFE per image, and the Spearman correlation between the row's block map and the defaults' (and the preset's) — per image,
over 2-px blocks (each row's own window and weight; its score then pools to its own block), mean over all 2n images.
Cost: n + n images, S posterior samples and ``--steps`` steps for every sampler (the preset's own 100 steps and
S = 8 are cut for a shared CPU; its window is a fraction of the steps, so it moves with them)::

    python benchmarks/klip_official.py --out benchmarks/results/klip-official.md                 # 24 + 24, 50 steps, S = 2
    python benchmarks/klip_official.py --quick --out out/klip-official.md                      # 4 + 4, 20 steps, S = 1
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
from scipy.stats import spearmanr

from priorshift import load_prior
from priorshift.data import fashion_mnist, healthy_set, lesion_set, mnist
from priorshift.detectors import KLIP
from priorshift.diffusion.schedules import ddpm_step_weights
from priorshift.io import atomic_write
from priorshift.metrics import ood_metrics
from priorshift.metrics.ood import auroc_standard_error
from priorshift.tasks import get_task
from priorshift.types import StepState

TASKS = ("fmnist-blur", "ct")
COMPARE_BLOCK = 2  # the block of the map comparison (both tasks' base block)


def task_data(name: str, n: int):
    """``(task, id_images, ood_images, description)`` of a benchmark task."""
    task = get_task(name)
    if name == "fmnist-blur":
        return task, fashion_mnist("test", n=n), mnist("test", n=n), f"Fashion-MNIST test [0, {n}) vs MNIST test [0, {n})"
    contrast = task.extra["lesion_contrast"]
    ood = lesion_set(n, 64, seed=40_002, contrast=contrast).images
    return task, healthy_set(n, 64, seed=40_001).images, ood, f"healthy phantoms (seed 40001) vs lesions {contrast:+.2f} (seed 40002), n = {n} each"


def run_klip(det: KLIP, y: torch.Tensor, seeds: list[int], batch: int) -> dict:
    """Score ``y`` in batches: the detector's scores, 1-px step maps (B, T_run, H, W), NFE per image, its schedule."""
    scores, steps, nfe = [], [], 0
    for i in range(0, y.shape[0], batch):
        s = det.score(y[i : i + batch], seed=seeds[i : i + batch])
        scores.append(s.score)
        steps.append(s.extras["step_maps"].to(torch.float64))
        nfe += s.nfe
    return {"score": torch.cat(scores), "step_maps": torch.cat(steps), "nfe": nfe / y.shape[0], "sigmas": det.sigmas,
            "window": det.window_steps, "normalization": det.normalization}


def window_map(run: dict, weight: str, window: tuple[int, int], prior) -> torch.Tensor:
    """The 1-px map over ``window`` of ``run`` with per-step weight ``weight`` ("g" or "ddpm"), whatever the run used:
    a step map is Σ (Δx/n_k)², so the map of another weight m_k is the same map times (n_k/m_k)²."""
    sig = run["sigmas"]
    k0, k1 = window
    norms = {"g": torch.tensor([StepState.coefficients(float(sig[k]), float(sig[k + 1]))[0] for k in range(k1)], dtype=torch.float64),
             "ddpm": ddpm_step_weights(prior, sig)[:k1]}
    factor = (norms[run["normalization"]] / norms[weight]) ** 2
    return (run["step_maps"][:, k0:k1] * factor[k0:k1].reshape(1, -1, 1, 1)).mean(1)


def pool(m: torch.Tensor, block: int) -> torch.Tensor:
    """Sum of a 1-px map (B, H, W) over ``block``-px blocks (the energy of the larger block)."""
    b, h, w = m.shape
    return m.reshape(b, h // block, block, w // block, block).sum((2, 4))


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean over images of the Spearman correlation between two (B, h, w) maps' blocks (NaN rows, e.g. constant maps, skipped)."""
    rs = [spearmanr(x.flatten().numpy(), y.flatten().numpy())[0] for x, y in zip(a, b)]
    rs = [r for r in rs if not math.isnan(r)]
    return float(sum(rs) / len(rs)) if rs else float("nan")


def benchmark_task(name: str, n: int, steps: int, samples: int, batch: int) -> dict:
    task, x_id, x_ood, data_desc = task_data(name, n)
    prior, op = load_prior(task.prior), task.make_operator()
    x = torch.cat([x_id, x_ood])
    y = op(x, seed=[50_000 + i for i in range(2 * n)])
    seeds = [70_000 + i for i in range(2 * n)]
    labels = torch.cat([torch.zeros(n), torch.ones(n)]).bool()
    # foreground=None: every row scores all blocks, as the official code does (the ct task's tissue rule came later)
    default_kw = task.settings_under("klip", {"plan": {"steps": steps}, "samples": samples, "foreground": None})
    other = "dps" if task.plan["sampler"] == "pigdm" else "pigdm"
    other_plan = {"sampler": other, "steps": steps, **({"jacobian": False} if other == "dps" else {})}  # DPS with the task's ζ, no Jacobian
    other_kw = task.settings_under("klip", {"plan": other_plan, "samples": samples, "foreground": None})
    official_kw = dict(steps=steps, samples=samples)

    def klip(kw):  # a row's KLIP with 1-px step maps kept (its own block is a pooling of them)
        return KLIP(prior, op, **{**kw, "block": 1, "keep_step_maps": True})

    def official(**params):
        det = KLIP.official(prior, op, keep_step_maps=True, **official_kw)
        if params:
            kw = det.config()
            plan = det.plan.describe()
            plan = {**plan, "params": {**plan["params"], **params}} if "sampler" not in params else {"sampler": params["sampler"], "steps": steps,
                                                                                                       "schedule": "ddpm"}
            det = KLIP(prior, op, plan=plan, window=tuple(kw["window"]), block=1, samples=samples, normalization="ddpm",
                       reduction=kw["reduction"], keep_step_maps=True)
        return det

    t0 = time.perf_counter()
    dets = {
        "default": klip(default_kw),
        "default_other": klip(other_kw),
        "official": official(),
        "official_per_sample": official(residual_norm="per_sample"),
        "official_pigdm": official(sampler="pigdm"),
    }
    runs, seconds = {}, {}
    for key, det in dets.items():
        t = time.perf_counter()
        runs[key] = run_klip(det, y, seeds, batch)
        seconds[key] = time.perf_counter() - t
        print(f"  {name}: {key} done in {seconds[key]:.0f} s", flush=True)
    d_block, o_block = default_kw["block"], 1
    d_win = runs["default"]["window"]
    o_win = runs["official"]["window"]
    specs = [  # label, run, weight, window, block, what changed
        ("our defaults (task settings)", "default", "g", d_win, d_block),
        (f"defaults, sampler → {'DPS' if other == 'dps' else 'ΠGDM'}", "default_other", "g", runs["default_other"]["window"], d_block),
        ("defaults, weight → sqrt(β_t/ᾱ_t)", "default", "ddpm", d_win, d_block),
        ("**official preset**", "official", "ddpm", o_win, o_block),
        ("official, sampler → ΠGDM", "official_pigdm", "ddpm", o_win, o_block),
        ("official, weight → g", "official", "g", o_win, o_block),
        ("official, ‖r‖ → per sample", "official_per_sample", "ddpm", o_win, o_block),
    ]
    rows = []
    ynorm = y.flatten(1).pow(2).sum(1)
    rows.append(_metrics("‖y‖² (trivial baseline)", ynorm, labels, nfe=0, rho=None, rho_official=None, block="—", window="—"))
    ref = pool(window_map(runs["default"], "g", d_win, prior), COMPARE_BLOCK)
    ref_official = pool(window_map(runs["official"], "ddpm", o_win, prior), COMPARE_BLOCK)
    for label, key, weight, win, block in specs:
        m1 = window_map(runs[key], weight, win, prior)
        score = pool(m1, block).flatten(1).max(1).values
        if weight == runs[key]["normalization"] and win == runs[key]["window"]:  # the detector's own (1-px) score must come back
            assert torch.allclose(m1.flatten(1).max(1).values, runs[key]["score"].to(torch.float64), rtol=1e-4), f"{label}: recomputed score differs"
        m2 = pool(m1, COMPARE_BLOCK)
        rows.append(_metrics(label, score, labels, nfe=runs[key]["nfe"], rho=spearman(m2, ref), rho_official=spearman(m2, ref_official), block=block,
                             window=f"[{win[0]}, {win[1]})"))
    return {"task": name, "data": data_desc, "prior": task.prior, "operator": task.operator_spec(), "n": n, "steps": steps, "samples": samples,
            "rows": rows, "seconds": time.perf_counter() - t0, "run_seconds": seconds,
            "default": {k: (v if k != "plan" else dict(v)) for k, v in default_kw.items()}, "other_sampler": other,
            "official": {k: v for k, v in dets["official"].config().items() if k in ("plan", "window", "block", "samples", "normalization", "reduction")}}


def _metrics(label, score, labels, *, nfe, rho, rho_official, block, window) -> dict:
    s = score.to(torch.float64)
    m = ood_metrics(s[~labels], s[labels])
    n_id, n_ood = int((~labels).sum()), int(labels.sum())
    return {"row": label, "auroc": m["auroc"], "se": auroc_standard_error(m["auroc"], n_id, n_ood), "fpr95": m["fpr95_ood_positive"],
            "aupr": m["aupr_out"], "nfe": nfe, "spearman": rho, "spearman_official": rho_official, "block": block, "window": window}


def render(results: list[dict], command: str, seconds: float) -> str:
    lines = ["# KLIP: the official preset beside our defaults", "",
             "What priorshift's choices change against the numbers of the official code (`KLIP.official`, issue 24): the sampler "
             "(ΠGDM vs DPS with ‖r‖-normalised step), the per-step weight (g = sqrt(σ_k + σ_{k+1}) vs the official sqrt(β_t/ᾱ_t)) and ‖r‖ "
             "(per sample vs averaged over the S samples). OOD = positive class; AUROC ± Hanley–McNeil SE; FPR@95 = fraction of ID flagged at "
             "95 % TPR; AUPR with OOD positive; NFE per image (network evaluations, counted); ρ = Spearman correlation of the row's map with the "
             "defaults' (or the preset's) map, per image over 2-px blocks (each row's own window and weight), mean over all images. Weight rows reuse their "
             "source run (same trajectory and draws). Nothing was chosen on the OOD sets.", ""]
    for r in results:
        d, o = r["default"], r["official"]
        dplan = ", ".join(f"{k}={v}" for k, v in d["plan"].items())
        lines += [f"## {r['task']}: {r['data']}", "",
                  f"Prior `{r['prior']}`, operator `{r['operator']}`; {r['steps']} steps, S = {r['samples']} for every sampler. "
                  f"Defaults: plan {{{dplan}}}, window {tuple(d['window'])}, block {d['block']} px, weight g, ‖r‖ per sample (DPS only). "
                  f"Official: DPS ζ = 0.3, ‖r‖ averaged over S, x̂0 clipped, x_T ~ N(0, I) (VP), schedule {o['plan']['schedule']} (linear β, steps above "
                  f"σ_max = 80 moved below it), weight sqrt(β_t/ᾱ_t), window {tuple(o['window'])}, block {o['block']} px "
                  f"(their config's S = 8 and 100 steps cut for cost). {r['seconds']:.0f} s.", "",
                  "| row | window (steps) | block | AUROC ± SE | FPR@95 | AUPR | NFE | ρ with defaults | ρ with preset |",
                  "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
        for row in r["rows"]:
            rho = " | ".join("—" if row[k] is None else f"{row[k]:.2f}" for k in ("spearman", "spearman_official"))
            lines.append(f"| {row['row']} | {row['window']} | {row['block']} | {row['auroc']:.3f} ± {row['se']:.3f} | {row['fpr95']:.2f} | "
                         f"{row['aupr']:.3f} | {row['nfe']:.0f} | {rho} |")
        lines.append("")
    lines += [f"{seconds:.0f} s in all, 1 process. Command: `{command}`"]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="markdown file to write (a .json with the numbers beside it)")
    ap.add_argument("--tasks", default=",".join(TASKS), help=f"comma-separated, of {', '.join(TASKS)}")
    ap.add_argument("--n", type=int, default=24, help="ID and OOD images each (default 24)")
    ap.add_argument("--steps", type=int, default=50, help="sampling steps of every row (default 50; the preset's own: 100)")
    ap.add_argument("--samples", type=int, default=2, help="posterior samples S of every row (default 2; the preset's own: 8)")
    ap.add_argument("--batch", type=int, default=8, help="images per KLIP call (results do not depend on it)")
    ap.add_argument("--quick", action="store_true", help="4 + 4 images, 20 steps, S = 1 (shows that it runs, not accuracy)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    if args.quick:
        args.n, args.steps, args.samples = 4, 20, 1
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    bad = [t for t in tasks if t not in TASKS]
    if bad or not tasks:
        ap.error(f"--tasks: unknown {', '.join(bad) or '(none given)'}; choose from {', '.join(TASKS)}")
    for flag in ("n", "steps", "samples", "batch", "threads"):
        if getattr(args, flag) < 1:
            ap.error(f"--{flag} must be >= 1, got {getattr(args, flag)}")
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    results = [benchmark_task(t, args.n, args.steps, args.samples, args.batch) for t in tasks]
    command = "python benchmarks/klip_official.py " + ("--quick " if args.quick else f"--n {args.n} --steps {args.steps} --samples {args.samples} ") + \
        f"--tasks {','.join(tasks)} --threads {args.threads} --out {args.out}"
    text = render(results, command, time.perf_counter() - t0)
    out = Path(args.out)
    atomic_write(out, lambda tmp: Path(tmp).write_text(text))
    atomic_write(out.with_suffix(".json"), lambda tmp: Path(tmp).write_text(json.dumps(results, indent=1, default=float)))
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
