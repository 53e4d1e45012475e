"""Sampler overhead: NFE/s of each sampler vs the raw batched denoiser forward rate on the same batch.

The network is the 64×64 prior architecture (UNet widths 16,32,64,128, attention), randomly initialized:
speed does not depend on the weights. Each sampler runs `--steps` steps on B images × S samples under
sparse-view CT (and inpainting); overhead = sampler time per NFE / network time per NFE − 1. DPS with the
network Jacobian does a backward pass per step, so it is compared with the forward+backward rate.

    python benchmarks/samplers.py --threads 2 --out benchmarks/results/samplers.md
"""

from __future__ import annotations

import argparse

import torch
from _common import best_time, emit, hardware

from priorshift.diffusion import EDMDenoiser, UNet, UNetConfig, karras_sigmas
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
    n = args.images * args.samples
    x = torch.randn(n, 1, 64, 64, device=dev)
    s = torch.full((n,), 1.0, device=dev)

    def forward():
        with torch.no_grad():
            for _ in range(args.steps):
                D(x, s)

    def forward_backward():
        for _ in range(args.steps):
            xi = x.clone().requires_grad_(True)
            torch.autograd.grad(D(xi, s).sum(), xi)

    t_fwd = best_time(forward, args.repeats) / (args.steps * n)
    t_fb = best_time(forward_backward, args.repeats) / (args.steps * n)
    sig = karras_sigmas(args.steps, 0.002, 80.0)
    ct = ParallelBeamCT(image_size=64, n_views=20, noise_std=0.5)
    inp = Inpainting(mask=random_pixel_mask(64, 0.5, generator=torch.Generator().manual_seed(0)).to(dev), noise_std=0.05)
    y_ct = ct(torch.zeros(args.images, 1, 64, 64, device=dev), generator=0)
    y_in = inp(torch.zeros(args.images, 1, 64, 64, device=dev), generator=0)
    rows = []
    cases = [
        ("unconditional (Euler)", sample_unconditional, ct, y_ct, dict(method="euler"), t_fwd),
        ("dps, no Jacobian — CT", sample_dps, ct, y_ct, dict(jacobian=False), t_fwd),
        ("dps, Jacobian — CT", sample_dps, ct, y_ct, dict(jacobian=True), t_fb),
        ("projection PC — CT (CG projection)", sample_projection, ct, y_ct, dict(), t_fwd),
        ("projection PC — inpainting", sample_projection, inp, y_in, dict(), t_fwd),
        ("langevin (2 inner), no Jacobian — CT", sample_langevin, ct, y_ct, dict(inner=2, jacobian=False), t_fwd),
    ]
    for name, fn, op, y, kw, t_net in cases:
        result = {}

        def run():
            result["r"] = fn(D, op, y, sig, samples=args.samples, generator=list(range(args.images)), **kw)

        t = best_time(run, args.repeats)
        nfe = result["r"].nfe
        per = t / nfe
        rows.append((name, nfe, nfe / t, 1 / t_net, per / t_net - 1))
    hw = hardware(args.threads, args.device)
    lines = [
        f"# Sampler overhead ({args.images} images × {args.samples} samples = {n} rows, 64×64, {args.steps} steps)",
        "",
        f"Hardware: {hw}. Network: forward {1 / t_fwd:.1f} images/s, forward+backward {1 / t_fb:.1f} images/s (batch {n}).",
        "",
        "| sampler | NFE | NFE/s | network rate (img/s) | overhead |",
        "|---|---:|---:|---:|---:|",
    ]
    lines += [f"| {r[0]} | {r[1]} | {r[2]:.1f} | {r[3]:.1f} | {100 * r[4]:+.1f}% |" for r in rows]
    lines += ["", f"Command: `python benchmarks/samplers.py --images {args.images} --samples {args.samples} --steps {args.steps} --threads {args.threads}`"]
    emit(lines, args.out)


if __name__ == "__main__":
    main()
