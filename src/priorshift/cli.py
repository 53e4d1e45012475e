"""The ``priorshift`` command line: ``demo``, ``train``, ``priors``, ``datasets``."""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

import priorshift

DESCRIPTION = """\
priorshift tells, from indirect measurements y = A(x) + e alone (a sparse-view CT sinogram, a masked or
blurred image, undersampled MRI), whether the image behind them comes from the distribution a diffusion
prior was trained on — and where in the image it does not.

Methods: KLIP (prior↔posterior KL over time windows and spatial blocks) on one diffusion core with exact
analytic oracles, forward operators (CT, inpainting, blur, super-resolution, MRI) and posterior samplers.
Everything runs offline on a CPU; small priors trained by `priorshift train` ship with the package.
"""


def _cmd_train(args) -> int:
    import torch

    from priorshift.data import load_dataset
    from priorshift.diffusion.training import TrainConfig, train
    from priorshift.diffusion.unet import UNetConfig

    if args.threads:
        torch.set_num_threads(args.threads)
    widths = tuple(int(w) for w in args.widths.split(","))
    t0 = time.perf_counter()
    data = load_dataset(args.data, split="train", n=args.train_size, image_size=args.image_size, seed=args.data_seed)
    if data.shape[-1] != args.image_size:
        raise SystemExit(f"priorshift train: dataset {args.data!r} gives {data.shape[-1]}×{data.shape[-1]} images, not {args.image_size}")
    import hashlib

    digest = hashlib.sha256(data.numpy().tobytes()).hexdigest()[:16]
    print(f"priorshift train: {data.shape[0]} training images {tuple(data.shape[1:])} from {args.data!r} (sha256 {digest}) in {time.perf_counter() - t0:.1f}s")
    cfg = TrainConfig(
        name=args.name or Path(args.out).name,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        checkpoint_every=args.checkpoint_every,
        unet=UNetConfig(image_size=args.image_size, channels=data.shape[1], widths=widths, attention=not args.no_attention),
    )
    meta = {
        "dataset": {"spec": args.data, "n": int(data.shape[0]), "image_size": args.image_size, "sha256_16": digest, "seed": args.data_seed},
        "command": "priorshift " + " ".join(shlex.quote(a) for a in args.argv),
    }
    path = train(cfg, data, args.out, meta=meta, progress=not args.quiet)
    print(f"priorshift train: wrote {path} and {path.with_suffix('.json').name}")
    if args.grid:
        from priorshift.diffusion.checkpoint import load_prior
        from priorshift.diffusion.schedules import karras_sigmas
        from priorshift.operators import Identity
        from priorshift.plotting import save_image_grid
        from priorshift.samplers import sample_unconditional

        prior = load_prior(path)
        y = torch.zeros(64, data.shape[1], args.image_size, args.image_size)
        with torch.no_grad():
            res = sample_unconditional(prior, Identity(), y, karras_sigmas(32, 0.002, 80.0), generator=list(range(64)))
        grid = Path(args.out) / f"{cfg.name}_samples.png"
        save_image_grid(res.x0[:, 0], grid, title=f"{cfg.name}: 64 prior samples (Heun, 32 steps, {res.nfe_per_image:.0f} NFE each)")
        print(f"priorshift train: sample grid {grid}")
    return 0


def _cmd_priors(args) -> int:
    from priorshift.diffusion.checkpoint import bundled_priors

    priors = bundled_priors()
    if not priors:
        print("no bundled priors")
    for name, info in priors.items():
        print(f"{name:20s} {info.get('description', '')}")
        print(f"{'':20s} trained with: {info.get('command', '?')}")
    return 0


def _cmd_datasets(args) -> int:
    from priorshift.registry import names

    print("\n".join(names("dataset")))
    return 0


def _cmd_demo(args) -> int:
    from priorshift.demo import run_demo

    return run_demo(out=args.out, quick=args.quick, n=args.n, prior=args.prior)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="priorshift", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"priorshift {priorshift.__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    d = sub.add_parser("demo", help="healthy vs lesion CT phantoms under sparse-view CT: KLIP table + heatmap (< 5 min on 2 CPU cores)")
    d.add_argument("--out", default="out/demo", help="output directory (default: out/demo)")
    d.add_argument("--quick", action="store_true", help="a smaller, faster run (for tests)")
    d.add_argument("--n", type=int, default=None, help="images per set (default 24; 4 with --quick)")
    d.add_argument("--prior", default="phantom-ct-64", help="a 64×64 CT prior: bundled name or checkpoint path")
    d.set_defaults(func=_cmd_demo)

    t = sub.add_parser("train", help="train a small diffusion prior (EDM loss) on a dataset; resumable")
    t.add_argument("--data", required=True, help="dataset: phantom-ct, fashion-mnist, mnist, folder:PATH, npy:PATH")
    t.add_argument("--image-size", type=int, required=True)
    t.add_argument("--steps", type=int, required=True)
    t.add_argument("--batch-size", type=int, default=64)
    t.add_argument("--out", required=True, help="run directory (checkpoints, the prior, the sample grid)")
    t.add_argument("--name", default=None, help="prior name (default: the run directory's name)")
    t.add_argument("--widths", default="16,32,64,128", help="UNet channels per level, finest first (default 16,32,64,128)")
    t.add_argument("--no-attention", action="store_true", help="no self-attention at the lowest resolution")
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--train-size", type=int, default=None, help="number of training images (procedural data: how many to generate)")
    t.add_argument("--data-seed", type=int, default=0)
    t.add_argument("--checkpoint-every", type=int, default=250)
    t.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    t.add_argument("--no-grid", dest="grid", action="store_false", help="skip the sample grid PNG at the end")
    t.add_argument("--quiet", action="store_true")
    t.set_defaults(func=_cmd_train)

    pr = sub.add_parser("priors", help="list the bundled priors and how each was trained")
    pr.set_defaults(func=_cmd_priors)
    ds = sub.add_parser("datasets", help="list the dataset names")
    ds.set_defaults(func=_cmd_datasets)
    return p


def main(argv=None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args.argv = argv
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except ValueError as e:
        print(f"priorshift {args.command}: error: {e}", file=sys.stderr)
        return 2
