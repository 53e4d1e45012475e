"""What the warning costs: ``priorshift reconstruct``'s one pass (reconstruction + KLIP maps as hooks) against the
same sampler's plain reconstruction — same prior, operator, steps, S, images and seeds — in one run.

Plain: ``plan.sample`` over the full schedule, then the posterior mean and per-pixel std over the S samples (what a
user reconstructing would compute). One pass: :func:`priorshift.calibrate.reconstruct_batches` with the task's two
KLIPs riding on it (dataset-level window and 16-px blocks for the score; image-level window and 2-px blocks for the
map), which also returns the mean and std. The two are interleaved ``--repeats`` times after a warm-up; the ratio
of the medians (and of the best) is reported. Target: ≤ 1.05.

    python benchmarks/calibration_reconstruct.py --out benchmarks/results/calibration
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import hardware, write_results  # noqa: E402

from priorshift import load_prior  # noqa: E402
from priorshift.calibrate import reconstruct_batches  # noqa: E402
from priorshift.data import fashion_mnist  # noqa: E402
from priorshift.detectors.base import resolve_seeds  # noqa: E402
from priorshift.tasks import get_task  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="benchmarks/results/calibration")
    ap.add_argument("--n", type=int, default=16, help="images (one batch)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    task = get_task("fmnist-blur")
    prior, op = load_prior(task.prior), task.make_operator()
    y = op(fashion_mnist("test", n=args.n), seed=list(range(args.n)))
    klips = [task.klip(prior, op, objective="dataset"), task.klip(prior, op, objective="image")]
    plan, samples, seeds = klips[0].plan, klips[0].samples, resolve_seeds(0, args.n)

    def plain():
        with torch.no_grad():
            x0 = plan.sample(prior, op, y, samples=samples, seed=seeds).x0
            return x0.mean(1), x0.std(1, correction=1)

    def one_pass():
        with torch.no_grad():
            return reconstruct_batches(klips, y, batch_size=args.n, seed=seeds)

    plain(), one_pass()  # warm-up
    times = {"plain": [], "one pass": []}
    for _ in range(args.repeats):
        for name, fn in (("plain", plain), ("one pass", one_pass)):
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    med = {k: statistics.median(v) for k, v in times.items()}
    best = {k: min(v) for k, v in times.items()}
    ratio_med, ratio_best = med["one pass"] / med["plain"], best["one pass"] / best["plain"]
    r = one_pass()
    m_plain = plain()[0]
    lines = ["# reconstruct: one pass (reconstruction + KLIP maps) vs the plain reconstruction", "",
             f"fmnist-blur task, prior {task.prior}, {plan.sampler} {plan.steps} steps (full schedule), S = {samples}, {args.n} images in one batch; "
             f"{hardware(args.threads)}. Interleaved, {args.repeats} repeats after a warm-up; the machine was shared with two training runs, "
             "so single times vary — the ratio of medians is the number to read.", "",
             "| | median (s) | best (s) | NFE / image |", "|---|---:|---:|---:|",
             f"| plain reconstruction (mean + std) | {med['plain']:.2f} | {best['plain']:.2f} | {r.nfe / args.n:.0f} |",
             f"| one pass: + KLIP score and map hooks | {med['one pass']:.2f} | {best['one pass']:.2f} | {r.nfe / args.n:.0f} |",
             f"| **ratio** | **{ratio_med:.3f}** | {ratio_best:.3f} | 1 |", "",
             f"Same reconstruction: max |mean difference| = {float((r.mean - m_plain).abs().max()):.2e}. Target ≤ 1.05: "
             f"{'met' if ratio_med <= 1.05 else '**not met**'}.", "",
             f"Command: `python benchmarks/calibration_reconstruct.py --out {args.out} --n {args.n} --repeats {args.repeats} --threads {args.threads}`"]
    write_results(Path(args.out), "reconstruct", lines, {"times": times, "ratio_median": ratio_med, "ratio_best": ratio_best})


if __name__ == "__main__":
    main()
