"""How good are the shipped priors? Denoising error per σ vs a Gaussian fitted to the same training data,
ID vs OOD denoising error, and forward throughput.

* held-out ID denoising MSE at σ ∈ {0.05 … 5}: the prior vs the exact MMSE denoiser of a Gaussian fitted to
  training images (the best *linear* denoiser) — a good prior must be clearly below it;
* ID vs OOD: phantom-ct-64 — MSE on the lesion pixels of lesion phantoms vs the same pixels of their healthy
  twins (same seed, same anatomy); fashion-mnist-32 — whole-image MSE on Fashion-MNIST test vs MNIST test;
* forward images/s at batch 64 (no grad).

    python benchmarks/priors.py --prior phantom-ct-64 --out benchmarks/results/prior-phantom-ct-64.md
"""

from __future__ import annotations

import argparse
import time

import torch
from _common import best_time, emit, hardware, mse

from priorshift import load_prior
from priorshift.analytic import fit_gaussian
from priorshift.data import fashion_mnist, healthy_set, lesion_set, load_dataset, mnist

SIGMAS = (0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prior", required=True, help="phantom-ct-64, fashion-mnist-32 or a checkpoint path")
    p.add_argument("--n", type=int, default=256, help="held-out images per set")
    p.add_argument("--fit-n", type=int, default=8000, help="training images for the Gaussian fit")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    D = load_prior(args.prior)
    cfg = D.config
    spec = cfg["dataset"]["spec"]
    size = D.image_size
    lines = [f"# Prior quality: `{args.prior}`", ""]

    train = load_dataset(spec, split="train", n=args.fit_n, image_size=size)
    t = time.perf_counter()
    gauss = fit_gaussian(train.double(), shrinkage=0.02, nugget=1e-5)
    lines.append(f"Gaussian fitted to {train.shape[0]} training images (sample covariance, 2% shrinkage) in {time.perf_counter() - t:.0f}s.")

    if spec == "phantom-ct":
        test_id = healthy_set(args.n, size=size, seed=10_001).images
        lesions, masks, _ = lesion_set(args.n, size=size, seed=10_002)
        twins = healthy_set(args.n, size=size, seed=10_002).images
        ood_desc = "lesion pixels: lesion phantoms vs their healthy twins (same anatomy)"
    else:
        test_id = fashion_mnist("test", n=args.n)
        ood = mnist("test", n=args.n)
        ood_desc = "whole image: Fashion-MNIST test (ID) vs MNIST test (OOD)"

    gauss32 = lambda x, s: gauss(x.double(), s.double()).float()  # noqa: E731
    lines += ["", f"## Held-out ID denoising MSE ({args.n} test images, [-1, 1] units)", "", "| σ | prior | fitted Gaussian | prior / Gaussian |", "|---:|---:|---:|---:|"]
    for i, s in enumerate(SIGMAS):
        a, b = mse(D, test_id, s, i), mse(gauss32, test_id, s, i)
        lines.append(f"| {s:g} | {a:.5f} | {b:.5f} | {a / b:.2f} |")

    lines += ["", f"## ID vs OOD denoising MSE — {ood_desc}", "", "| σ | ID | OOD | OOD / ID |", "|---:|---:|---:|---:|"]
    for i, s in enumerate(SIGMAS):
        if spec == "phantom-ct":
            a, b = mse(D, twins, s, 100 + i, mask=masks), mse(D, lesions, s, 100 + i, mask=masks)
        else:
            a, b = mse(D, test_id, s, 100 + i), mse(D, ood, s, 100 + i)
        lines.append(f"| {s:g} | {a:.5f} | {b:.5f} | {b / a:.2f} |")

    x = torch.randn(64, 1, size, size)
    sig = torch.full((64,), 1.0)
    with torch.no_grad():
        best = best_time(lambda: D(x, sig), 5)
    # one training step (EDM loss, backward, Adam) at the run's batch size, on a copy of the network
    import copy

    from priorshift.diffusion.denoisers import EDMDenoiser
    from priorshift.diffusion.training import edm_loss

    train_info = cfg["training"]
    bs = train_info["batch_size"]
    net = copy.deepcopy(D.net).requires_grad_(True)
    opt = torch.optim.Adam(net.parameters(), lr=1e-4)
    Dt, xb, g = EDMDenoiser(net, sigma_data=train_info.get("sigma_data", 0.5)), train[:bs].float(), torch.Generator().manual_seed(0)

    def train_step():
        loss = edm_loss(Dt, xb, g, -1.2, 1.2)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step_s = best_time(train_step, 5)
    n_params = sum(p.numel() for p in D.net.parameters())
    lines += [
        "",
        "## Throughput",
        "",
        f"- forward, batch 64, no grad: **{64 / best:.0f} images/s** ({hardware(args.threads)}); {n_params / 1e6:.2f} M parameters",
        f"- one training step (EDM loss + backward + Adam), batch {bs}: {step_s:.2f} s = **{bs / step_s:.0f} images/s** ({hardware(args.threads)})",
        f"- the shipped run: {train_info.get('images_per_s')} images/s over {train_info['steps']} steps of batch {bs} "
        f"({train_info.get('wall_time_s')} s on {train_info.get('hardware')}; shared the 2 cores with the other prior's run)",
        "",
        f"Command: `python benchmarks/priors.py --prior {args.prior} --n {args.n} --fit-n {args.fit_n} --threads {args.threads}`",
    ]
    emit(lines, args.out)


if __name__ == "__main__":
    main()
