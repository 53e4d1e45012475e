"""Bring your own model (2/3): any network ``F(x, c_noise)`` with EDM preconditioning as a priorshift prior.

EDM (Karras et al. 2022) trains a raw network ``F`` and defines the denoiser as
``D(x, σ) = c_skip(σ) x + c_out(σ) F(c_in(σ) x, c_noise(σ))``; :class:`priorshift.diffusion.EDMDenoiser` is exactly
that wrapper (``σ_data``, the σ range and the range the network was trained on are its arguments). Here ``MyNet`` stands
for your network; EigenScore — the top eigenvalues of the denoising posterior covariance — is fitted on in-distribution
phantoms and scores held-out phantoms against phantoms with a bright star.

    python examples/edm_network.py --tiny                       # a tiny random MyNet (16×16): seconds on a CPU
    python examples/edm_network.py                              # 64×64, a 0.30 M-parameter MyNet, random weights (~2 min on one CPU core)
    python examples/edm_network.py --weights net.safetensors    # your trained MyNet weights (safetensors only)

With random weights the scores mean nothing; load your own network and weights in ``build_net`` to score with them.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

from priorshift.data import healthy_set, star_set
from priorshift.detectors import EigenScore
from priorshift.diffusion import EDMDenoiser
from priorshift.metrics import auroc


class MyNet(nn.Module):
    """A stand-in for your network: ``F(x_in, c_noise) → (B, C, H, W)``, ``c_noise`` (B,) — a residual conv net
    whose blocks see the noise level through a learned embedding."""

    def __init__(self, channels: int = 1, width: int = 32, depth: int = 4):
        super().__init__()
        self.inp = nn.Conv2d(channels, width, 3, padding=1)
        self.embed = nn.Sequential(nn.Linear(1, width), nn.SiLU(), nn.Linear(width, width))
        self.blocks = nn.ModuleList(nn.Sequential(nn.GroupNorm(8, width), nn.SiLU(), nn.Conv2d(width, width, 3, padding=1)) for _ in range(depth))
        self.out = nn.Conv2d(width, channels, 3, padding=1)

    def forward(self, x, c_noise):
        h = self.inp(x)
        e = self.embed(c_noise.reshape(-1, 1).to(x.dtype))[:, :, None, None]
        for block in self.blocks:
            h = h + block(h + e)
        return self.out(h)


def build_net(args) -> tuple[nn.Module, int]:
    """``(F, image_size)``. Replace this with your network; load weights with safetensors (never pickles)."""
    torch.manual_seed(0)  # the random initialization only; priorshift itself takes explicit per-image seeds
    net, size = (MyNet(width=16, depth=2), 16) if args.tiny else (MyNet(width=64, depth=8), 64)
    if args.weights:
        from safetensors.torch import load_file

        net.load_state_dict(load_file(args.weights))
    return net, size


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="a tiny random network and a cheap EigenScore (for tests)")
    p.add_argument("--weights", default=None, help="MyNet weights, .safetensors (default: random initialization)")
    p.add_argument("--n", type=int, default=None, help="images per set: ID fit, ID test, star test (default: 6; 4 with --tiny)")
    p.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    args = p.parse_args(argv)
    n = args.n or (4 if args.tiny else 6)
    device = torch.device(args.device)

    net, size = build_net(args)
    # σ_data = 0.5 and the σ range of EDM; data_range: the range F was trained on ([-1, 1] here; (0, 1) if yours was).
    prior = EDMDenoiser(net.to(device).eval().requires_grad_(False), sigma_data=0.5, sigma_min=0.002, sigma_max=80.0,
                        data_range=(-1.0, 1.0), image_size=size, channels=1)
    print(f"prior: EDM-preconditioned MyNet, {size}×{size}, {sum(q.numel() for q in net.parameters()) / 1e6:.2f} M parameters")

    fit = healthy_set(n, size, seed=0).images.to(device)
    test_id, test_ood = healthy_set(n, size, seed=1).images.to(device), star_set(n, size, seed=2).images.to(device)
    settings = dict(sigmas=(0.1, 0.5), k=2, iters=3, repetitions=1) if args.tiny else dict(sigmas=(0.1, 0.5), k=2, iters=5, repetitions=1)
    det = EigenScore(prior, **settings)
    t0 = time.perf_counter()
    det.fit(fit, seed=list(range(n)))  # z-scores fitted on in-distribution images only
    s_id = det.score(test_id, seed=list(range(100, 100 + n)))
    s_ood = det.score(test_ood, seed=list(range(200, 200 + n)))
    print(f"EigenScore {settings}: {s_id.nfe / n:.0f} NFE per image, {time.perf_counter() - t0:.1f} s; higher = more shifted")
    print(f"  ID    scores: {' '.join(f'{v:7.3f}' for v in s_id.score.tolist())}")
    print(f"  stars scores: {' '.join(f'{v:7.3f}' for v in s_ood.score.tolist())}")
    print(f"  AUROC (stars = positive): {auroc(s_id.score.cpu().numpy(), s_ood.score.cpu().numpy()):.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
