"""KLIP's cost: (1) wall time of KLIP vs the same plain posterior sampling (same sampler, steps, S, batch,
stopping at the same step), timed in interleaved pairs because a shared 2-core VM drifts by ~10% between runs,
and the time spent inside KLIP's hook itself (the part of the overhead that is KLIP's, free of that drift); (2) AUROC and NFE per image for steps × samples on the CT lesion task, at the
window and block tuned on the star tuning split (benchmarks/results/klip-ct/metrics.json).

    python benchmarks/klip_cost.py --out benchmarks/results/klip-cost.md
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from _common import emit, hardware

from priorshift import load_prior
from priorshift.bench.klip_eval import Setting, evaluate, score_set
from priorshift.data import healthy_set, lesion_set
from priorshift.detectors import KLIP, KLIPAccumulator
from priorshift.tasks import get_task


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prior", default="phantom-ct-64")
    p.add_argument("--tuned", default="benchmarks/results/klip-ct/metrics.json")
    p.add_argument("--n", type=int, default=32, help="images per set for the AUROC-vs-NFE grid")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--zeta", type=float, default=0.1, help="DPS step (0.1: chosen on healthy phantoms, benchmarks/dps_step.py)")
    p.add_argument("--skip-grid", action="store_true")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    prior = load_prior(args.prior)
    ct = get_task("ct").make_operator()
    tuned = json.loads(Path(args.tuned).read_text())["tuned"]["dataset"]["klip"] if Path(args.tuned).exists() else {"window": (0.55, 0.85), "block": 8}
    window, block = tuple(tuned["window"]), tuned["block"]
    hw = hardware(args.threads)
    lines = [f"# KLIP cost ({hw})", "", "## Overhead of the KLIP hook over plain sampling", "",
             f"Best of {args.repeats} interleaved runs each; 'hook share' = wall time inside KLIP's per-step hook / KLIP's wall time.", "",
             "| batch × S | steps run | plain DPS (s) | KLIP (s) | ratio | hook share |", "|---|---:|---:|---:|---:|---:|"]
    hook_seconds = [0.0]

    def timed(hook):
        def observe(state):
            t = time.perf_counter()
            hook(state)
            hook_seconds[0] += time.perf_counter() - t
        return observe

    x = healthy_set(16, seed=77).images
    y = ct(x, seed=list(range(16)))
    for batch, samples, steps in [(8, 2, 50), (16, 4, 50)]:
        det = KLIP(prior, ct, plan={"sampler": "dps", "steps": steps, "jacobian": False, "zeta": args.zeta}, window=window, block=block, samples=samples)
        k0, k1 = det.window_steps
        yb = y[:batch]

        def plain(hooks=()):
            det.plan.sample(prior, ct, yb, samples=samples, seed=list(range(batch)), hooks=hooks, stop_after=k1)

        def klip():
            det.score(yb, seed=list(range(batch)))

        def hook_alone():
            # KLIP's own accumulator, timed from outside as an extra hook of the same plain sampling run.
            acc = KLIPAccumulator(block=block, k0=k0, k1=k1, normalization=det.normalization, sigma_power=det.sigma_power,
                                  reduction=det.reduction, stage=det.stage)
            hook_seconds[0] = 0.0
            plain(hooks=[timed(acc)])
            return hook_seconds[0]

        plain()  # warm-up
        t_plain, t_klip, share = float("inf"), float("inf"), []
        for _ in range(args.repeats):
            t = time.perf_counter()
            plain()
            t_plain = min(t_plain, time.perf_counter() - t)
            t = time.perf_counter()
            klip()
            dt = time.perf_counter() - t
            t_klip = min(t_klip, dt)
            share.append(hook_alone() / dt)
        lines.append(f"| {batch} × {samples} | {k1} of {steps} | {t_plain:.2f} | {t_klip:.2f} | {t_klip / t_plain:.3f} | {100 * max(share):.2f}% |")

    if not args.skip_grid:
        lines += ["", f"## AUROC vs NFE — CT lesions (contrast −0.15), {args.n} healthy + {args.n} lesion phantoms, "
                  f"window [{window[0]:.2f}, {window[1]:.2f}) and block {block} px as tuned on stars", "",
                  "| steps | S | NFE / image | AUROC | FPR@95 (OOD+) | block AUROC | seconds |", "|---:|---:|---:|---:|---:|---:|---:|"]
        hs, ls = healthy_set(args.n, seed=30_001), lesion_set(args.n, seed=30_002)
        y_id = ct(hs.images, seed=[1000 + i for i in range(args.n)])
        y_ood = ct(ls.images, seed=[2000 + i for i in range(args.n)])
        setting = Setting(window, block)
        for steps in (20, 50, 100):
            for samples in (1, 2, 4):
                t = time.perf_counter()
                kw = dict(plan={"sampler": "dps", "steps": steps, "jacobian": False, "zeta": args.zeta}, samples=samples, base_block=2)
                tr_id = score_set(prior, ct, y_id, seed=range(3000, 3000 + args.n), **kw)
                tr_ood = score_set(prior, ct, y_ood, seed=range(4000, 4000 + args.n), **kw)
                r = evaluate(setting, tr_id, tr_ood, ls.masks, ls.body_masks)
                lines.append(f"| {steps} | {samples} | {r['nfe_per_image']:.0f} | {r['auroc']:.3f} | {r['fpr95_ood_positive']:.3f} | "
                             f"{r['block_auroc_mean']:.3f} | {time.perf_counter() - t:.0f} |")
    lines += ["", f"Command: `python benchmarks/klip_cost.py --n {args.n} --zeta {args.zeta} --threads {args.threads}`"]
    emit(lines, args.out)


if __name__ == "__main__":
    main()
