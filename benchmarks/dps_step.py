"""Choose DPS's step ζ on in-distribution *tuning* images only: reconstruction PSNR of one posterior sample.

KLIP's map is the size of the likelihood steps, so ζ sets both reconstruction quality and the signal; it is
chosen here where a user would choose it — on healthy/ID tuning images, for reconstruction — never on OOD data.

    python benchmarks/dps_step.py --task ct --out benchmarks/results/dps-step-ct.md
"""

from __future__ import annotations

import argparse
import time

import torch
from _common import emit, hardware, task_config

from priorshift import load_prior
from priorshift.diffusion import schedule_for
from priorshift.metrics import psnr
from priorshift.samplers import sample_dps


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", required=True)
    p.add_argument("--zetas", default="0.03,0.06,0.1,0.15,0.3,0.6")
    p.add_argument("--n", type=int, default=16)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--prior", default=None)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    cfg = task_config(args.task, args.n, 1)
    prior, op = load_prior(args.prior or cfg["prior"]), cfg["operator"]
    x = cfg["sets"]["tune_id"].images[: args.n]
    y = op(x, seed=[7_000 + i for i in range(args.n)])
    sigmas = schedule_for(prior, args.steps)
    lines = [f"# DPS step ζ — {args.task} (ID tuning images only)", "",
             f"Prior `{args.prior or cfg['prior']}`; {cfg['description']}; DPS without the network Jacobian, {args.steps} steps, "
             f"ζ·(1+σ²) scaling, step divided by ‖y − A x̂0‖; {args.n} ID tuning images, one posterior sample each.", "",
             "| ζ | PSNR (dB, mean ± sd) | ‖y − A x̂0‖ / ‖noise‖ | seconds |", "|---:|---:|---:|---:|"]
    noise_norm = op.noise_std * (op.A(x[:1]).numel() ** 0.5)
    for zeta in [float(z) for z in args.zetas.split(",")]:
        t0 = time.perf_counter()
        with torch.no_grad():
            res = sample_dps(prior, op, y, sigmas, seed=[9_000 + i for i in range(args.n)], zeta=zeta, jacobian=False)
        x0 = res.x0[:, 0].clamp(-1, 1)
        q = psnr(x0, x, data_range=2.0)
        resid = (y - op.A(x0)).flatten(1).norm(dim=1) / noise_norm
        lines.append(f"| {zeta:g} | {q.mean():.2f} ± {q.std():.2f} | {resid.mean():.2f} | {time.perf_counter() - t0:.0f} |")
        print(lines[-1], flush=True)
    if "fbp" in dir(op):
        q = psnr(op.fbp(y, filter="hann").clamp(-1, 1), x, data_range=2.0)
        lines += ["", f"Reference: filtered back-projection (Hann) {q.mean():.2f} ± {q.std():.2f} dB."]
    lines += ["", f"{hardware(args.threads)}. Command: `python benchmarks/dps_step.py --task {args.task} --zetas {args.zetas} --n {args.n} --steps {args.steps}`"]
    emit(lines, args.out)


if __name__ == "__main__":
    main()
