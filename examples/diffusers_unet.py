"""Bring your own model (1/3): a diffusers ``UNet2DModel`` + ``DDPMScheduler`` as a priorshift prior.

A DDPM ε-prediction model is adapted once to priorshift's VE denoiser ``D(x, σ)`` by
:func:`priorshift.diffusion.from_diffusers` (``σ = sqrt((1 − ᾱ)/ᾱ)``, input scaled by ``sqrt(ᾱ)``), and is then a
prior like any other: here KLIP scores inpainted measurements of CT-like phantoms, half of them with a bright star
inserted, and its block map says where the measurements disagree with the prior.

    python examples/diffusers_unet.py --tiny        # a tiny random UNet (16×16, 1 channel): seconds on a CPU
    python examples/diffusers_unet.py               # the DDPM CIFAR-10 architecture (32×32×3, 35.7 M parameters), random weights (~1 min)
    python examples/diffusers_unet.py --model DIR   # your trained model: a local diffusers folder (config.json + safetensors
                                                    # weights, or a pipeline folder with unet/ and scheduler/)

With random weights the scores mean nothing; the point is the plumbing — with ``--model DIR`` the same lines score
with your prior. Needs the diffusers extra: ``pip install "priorshift[diffusers]"``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from priorshift.data import healthy_set, star_set
from priorshift.detectors import KLIP
from priorshift.diffusion import from_diffusers
from priorshift.operators import Inpainting, random_block_mask


def build_model(args):
    """``(unet, scheduler)``: loaded from ``--model`` (safetensors weights only), else randomly initialized."""
    from diffusers import DDPMScheduler, UNet2DModel

    if args.model:
        root = Path(args.model)
        unet_dir = root / "unet" if (root / "unet").is_dir() else root
        unet = UNet2DModel.from_pretrained(unet_dir, use_safetensors=True)  # never unpickles
        sched_dir = root / "scheduler" if (root / "scheduler").is_dir() else root
        scheduler = DDPMScheduler.from_pretrained(sched_dir) if (sched_dir / "scheduler_config.json").is_file() else DDPMScheduler(1000)
        return unet, scheduler
    torch.manual_seed(0)  # the random initialization only; priorshift itself takes explicit per-image seeds
    if args.tiny:
        unet = UNet2DModel(sample_size=16, in_channels=1, out_channels=1, layers_per_block=1, block_out_channels=(16, 32),
                           down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=8)
    else:  # the architecture of google/ddpm-cifar10-32
        unet = UNet2DModel(sample_size=32, in_channels=3, out_channels=3, layers_per_block=2, block_out_channels=(128, 256, 256, 256),
                           down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
                           up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"), dropout=0.1)
    return unet, DDPMScheduler(num_train_timesteps=1000)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="a tiny random UNet and 3 sampling steps (for tests)")
    p.add_argument("--model", default=None, help="a local diffusers model folder (default: a randomly initialized UNet)")
    p.add_argument("--n", type=int, default=None, help="images per set, ID and star (default: 4; 2 with --tiny)")
    p.add_argument("--steps", type=int, default=None, help="DPS steps (default: 30; 3 with --tiny)")
    p.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    args = p.parse_args(argv)
    n, steps = args.n or (2 if args.tiny else 4), args.steps or (3 if args.tiny else 30)
    device = torch.device(args.device)

    unet, scheduler = build_model(args)
    unet = unet.to(device).eval().requires_grad_(False)
    size, channels = int(unet.config.sample_size), int(unet.config.in_channels)
    prior = from_diffusers(unet, scheduler)  # D(x, σ) on (B, C, H, W) in [-1, 1]: the library's one denoiser protocol
    print(f"prior: diffusers UNet2DModel, {size}×{size}×{channels}, {sum(q.numel() for q in unet.parameters()) / 1e6:.2f} M parameters, "
          f"σ ∈ [{prior.sigma_min:.3g}, {prior.sigma_max:.3g}]")

    # Images in [-1, 1]: CT-like phantoms, the second set with a bright star (its mask says where).
    ood = star_set(n, size, seed=1)
    x = torch.cat([healthy_set(n, size, seed=0).images, ood.images]).repeat(1, channels, 1, 1).to(device)
    op = Inpainting(random_block_mask(size, 2 if args.tiny else 4, 0.7, generator=torch.Generator().manual_seed(0)), noise_std=0.02)
    y = op(x, seed=list(range(2 * n)))  # one seed per image: results never depend on the batch

    block = size // 4
    klip = KLIP(prior, op, plan={"sampler": "dps", "steps": steps, "jacobian": False, "zeta": 0.6}, window=(0.4, 0.9), block=block, samples=1)
    t0 = time.perf_counter()
    s = klip.score(y, seed=list(range(2 * n)))
    print(f"KLIP: {steps} DPS steps, {s.nfe / (2 * n):.0f} NFE per image, {time.perf_counter() - t0:.1f} s; higher = more shifted")
    print(f"{'image':>8} {'score':>10}  most shifted block (row, col)  the star in it")
    for i in range(2 * n):
        r, c = divmod(int(s.map[i].flatten().argmax()), s.map.shape[-1])  # s.map: (B, H/block, W/block)
        star = "" if i < n else ("yes" if ood.masks[i - n, r * block:(r + 1) * block, c * block:(c + 1) * block].any() else "no")
        print(f"{f'ID {i}' if i < n else f'star {i - n}':>8} {float(s.score[i]):10.4g}  {f'({r}, {c})':<30} {star}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
