"""Sampler overhead: NFE/s of each sampler vs the raw batched denoiser forward rate on the same batch.

The network is the 64×64 prior architecture (UNet widths 16,32,64,128, attention), randomly initialized:
speed does not depend on the weights. Each sampler runs `--steps` steps on B images × S samples under
sparse-view CT (and inpainting); overhead = sampler time per NFE / network time per NFE − 1, where the network
time is measured on the same batch and the same noise levels, interleaved with the sampler's runs (best of
`--repeats` each) so that the drift of a shared machine cancels. That end-to-end ratio still moves by
±5–10% on a shared 2-core VM, so the sampler's own time is also measured directly: the same run with a
zero-cost stand-in denoiser (``0.5 x``), divided by the network's time for the same NFE. DPS with the network Jacobian does a backward
pass per step, so it is compared with the forward+backward rate.

    python benchmarks/samplers.py --threads 2 --out benchmarks/results/samplers.md
"""

from __future__ import annotations

import argparse
import time

import torch
from _common import best_time, emit, hardware
from tqdm import tqdm

from priorshift.diffusion import EDMDenoiser, UNet, UNetConfig, schedule_for
from priorshift.operators import Inpainting, ParallelBeamCT, random_pixel_mask
from priorshift.samplers import sample_dps, sample_langevin, sample_projection, sample_unconditional


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=8)
    p.add_argument("--samples", type=int, default=4)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    net = UNet(UNetConfig(image_size=64, widths=(16, 32, 64, 128))).to(dev).eval().requires_grad_(False)
    D = EDMDenoiser(net, image_size=64, channels=1)

    def free(x, sigma):  # a zero-cost stand-in: what remains of a run is the sampler's own work
        return 0.5 * x

    free.sigma_min, free.sigma_max = D.sigma_min, D.sigma_max
    n = args.images * args.samples
    x = torch.randn(n, 1, 64, 64, device=dev)

    sig = schedule_for(D, args.steps)
    levels = [torch.full((n,), float(v), device=dev) for v in sig[:-1]]

    def network(calls_per_step: int, backward: bool):
        def run():
            for s in levels:
                for _ in range(calls_per_step):
                    if backward:
                        xi = x.clone().requires_grad_(True)
                        torch.autograd.grad(D(xi, s).sum(), xi)
                    else:
                        with torch.no_grad():
                            D(x, s)
        return run

    ct = ParallelBeamCT(image_size=64, n_views=20, noise_std=0.5)
    inp = Inpainting(mask=random_pixel_mask(64, 0.5, generator=torch.Generator().manual_seed(0)).to(dev), noise_std=0.05)
    y_ct = ct(torch.zeros(args.images, 1, 64, 64, device=dev), seed=0)
    y_in = inp(torch.zeros(args.images, 1, 64, 64, device=dev), seed=0)
    rows = []
    cases = [  # name, sampler, operator, y, params, network calls per step, backward
        ("unconditional (Euler)", sample_unconditional, ct, y_ct, dict(method="euler"), 1, False),
        ("dps, no Jacobian — CT", sample_dps, ct, y_ct, dict(jacobian=False), 1, False),
        ("dps, Jacobian — CT", sample_dps, ct, y_ct, dict(jacobian=True), 1, True),
        ("projection PC — CT (spectral projection)", sample_projection, ct, y_ct, dict(), 2, False),
        ("projection PC — inpainting", sample_projection, inp, y_in, dict(), 2, False),
        ("langevin (2 inner), no Jacobian — CT", sample_langevin, ct, y_ct, dict(inner=2, jacobian=False), 2, False),
    ]
    for name, fn, op, y, kw, calls, backward in tqdm(cases, desc="samplers"):
        result = {}

        def run():
            result["r"] = fn(D, op, y, sig, samples=args.samples, seed=list(range(args.images)), **kw)

        def own():
            fn(free, op, y, sig, samples=args.samples, seed=list(range(args.images)), **kw)

        t_own = best_time(own, args.repeats)
        net_run = network(calls, backward)
        run(), net_run()  # warm-up
        t_s = t_n = float("inf")
        for _ in range(args.repeats):
            t = time.perf_counter()
            net_run()
            t_n = min(t_n, time.perf_counter() - t)
            t = time.perf_counter()
            run()
            t_s = min(t_s, time.perf_counter() - t)
        nfe = result["r"].nfe
        if nfe != calls * args.steps * n:
            raise RuntimeError(f"{name}: {nfe} NFE, expected {calls * args.steps * n}")
        rows.append((name, nfe, nfe / t_s, nfe / t_n, t_s / t_n - 1, "fwd+bwd" if backward else "fwd", t_own / t_n))
    hw = hardware(args.threads, args.device)
    lines = [
        f"# Sampler overhead ({args.images} images × {args.samples} samples = {n} rows, 64×64, {args.steps} steps)",
        "",
        f"Hardware: {hw}. Network rate: the bare denoiser on the same batch ({n} rows) and noise levels, interleaved with the sampler's runs, best of {args.repeats}.",
        "",
        "| sampler | NFE | sampler NFE/s | network img/s | network pass | end-to-end overhead | sampler's own time / network time |",
        "|---|---:|---:|---:|---|---:|---:|",
    ]
    lines += [f"| {r[0]} | {r[1]} | {r[2]:.1f} | {r[3]:.1f} | {r[5]} | {100 * r[4]:+.1f}% | {100 * r[6]:.1f}% |" for r in rows]
    lines += ["", f"Command: `python benchmarks/samplers.py --images {args.images} --samples {args.samples} --steps {args.steps} --threads {args.threads}`"]
    emit(lines, args.out)


if __name__ == "__main__":
    main()
