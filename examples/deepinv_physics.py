"""Bring your own model (3/3): a deepinv ``Physics`` as the forward operator of a priorshift detector.

:class:`priorshift.operators.DeepinvOperator` wraps any deepinv ``LinearPhysics`` (``A``, ``A_adjoint`` and, when
present, ``A_dagger``); the noise is priorshift's own (``noise_std``, per-image seeds), the physics' noise model is
never called, and [-1, 1] images pass through unchanged (linear operators do not care about the range). Here a deepinv
inpainting (or blur) physics measures Fashion-MNIST garments, half of them with a bright star, and KLIP — with the
bundled ``fashion-mnist-32`` prior — scores the measurements beside the ‖y‖² baseline.

    python examples/deepinv_physics.py --tiny              # a tiny random prior (16×16): seconds on a CPU
    python examples/deepinv_physics.py                     # the bundled fashion-mnist-32 prior, 50 DPS steps
    python examples/deepinv_physics.py --physics blur      # a deepinv Gaussian blur instead of inpainting

deepinv is optional: ``pip install "priorshift[deepinv]"`` (it needs a torch with torchvision). Without it this
script says so and exits without error.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from priorshift.data import healthy_set, insert_star
from priorshift.detectors import KLIP, MeasurementNorm
from priorshift.metrics import auroc
from priorshift.operators import DeepinvOperator


def make_physics(dinv, kind: str, size: int, device):
    """A deepinv linear physics on (B, 1, size, size) images, with no noise of its own (priorshift adds it)."""
    if kind == "inpainting":
        g = torch.Generator().manual_seed(0)
        mask = (torch.rand(1, size, size, generator=g) < 0.7).float().to(device)  # a fixed mask: 70% of pixels observed
        return dinv.physics.Inpainting((1, size, size), mask=mask, device=device)
    kernel = dinv.physics.blur.gaussian_blur(sigma=(1.5, 1.5))
    return dinv.physics.Blur(filter=kernel, padding="circular", device=device)


def load_images(size: int, n: int, tiny: bool):
    """``2n`` images in [-1, 1]: ``n`` in-distribution, ``n`` with a bright star; and the star masks."""
    if tiny:
        x = healthy_set(2 * n, size, seed=0).images
    else:
        from priorshift.data import fashion_mnist

        try:
            x = fashion_mnist("test", n=2 * n)
        except (OSError, ValueError) as e:  # the dataset is a system package; phantoms otherwise
            print(f"Fashion-MNIST is not available ({e}); using CT-like phantoms instead")
            x = healthy_set(2 * n, size, seed=0).images
    stars, masks = insert_star(x[n:], None, size=size / 10, intensity=1.0, seed=list(range(n)))
    return torch.cat([x[:n], stars]), masks


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="a tiny random prior and 3 sampling steps (for tests)")
    p.add_argument("--physics", default="inpainting", choices=["inpainting", "blur"], help="the deepinv physics (default: inpainting)")
    p.add_argument("--n", type=int, default=None, help="images per set, ID and star (default: 8; 2 with --tiny)")
    p.add_argument("--steps", type=int, default=None, help="DPS steps (default: 50; 3 with --tiny)")
    p.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    args = p.parse_args(argv)
    try:
        import deepinv as dinv
    except ImportError as e:
        print(f"deepinv is not installed ({e}), so this example has nothing to run.\n"
              'Install the optional extra to run it: pip install "priorshift[deepinv]" (deepinv needs a torch with torchvision).')
        return 0
    n, steps = args.n or (2 if args.tiny else 8), args.steps or (3 if args.tiny else 50)
    device = torch.device(args.device)

    if args.tiny:
        from priorshift.diffusion import EDMDenoiser, UNet, UNetConfig

        torch.manual_seed(0)  # the random initialization only
        size = 16
        prior = EDMDenoiser(UNet(UNetConfig(image_size=size, widths=(8, 16), attention=False)).eval().requires_grad_(False),
                            image_size=size, channels=1).to(device)
    else:
        from priorshift import load_prior

        prior, size = load_prior("fashion-mnist-32", device=device), 32
    physics = make_physics(dinv, args.physics, size, device)
    op = DeepinvOperator(physics, noise_std=0.02)
    print(f"operator: {op!r} (deepinv {getattr(dinv, '__version__', '?')})")

    x, masks = load_images(size, n, args.tiny)
    y = op(x.to(device), seed=list(range(2 * n)))  # per-image seeds: the same y whatever the batch
    t0 = time.perf_counter()
    klip = KLIP(prior, op, plan={"sampler": "dps", "steps": steps, "jacobian": False, "zeta": 0.6}, window=(0.4, 0.9), block=size // 4, samples=1)
    s = klip.score(y, seed=list(range(2 * n)))
    norm = MeasurementNorm(prior, op).fit(op(x[:n].to(device), seed=list(range(1000, 1000 + n))))  # fitted on other draws of ID data
    b = norm.score(y)
    print(f"KLIP: {steps} DPS steps, {s.nfe / (2 * n):.0f} NFE per image, {time.perf_counter() - t0:.1f} s; higher = more shifted")
    for name, scores in (("KLIP", s.score), ("‖y‖² baseline", b.score)):
        sc = scores.cpu()
        print(f"  {name:14s} ID {' '.join(f'{v:8.3g}' for v in sc[:n].tolist())} | star {' '.join(f'{v:8.3g}' for v in sc[n:].tolist())} | "
              f"AUROC {auroc(sc[:n].numpy(), sc[n:].numpy()):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
