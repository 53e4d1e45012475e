"""The ``priorshift`` command line: ``demo``, ``train``, ``score``, ``priors``, ``datasets``."""

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
            res = sample_unconditional(prior, Identity(), y, karras_sigmas(32, 0.002, 80.0), seed=list(range(64)))
        grid = Path(args.out) / f"{cfg.name}_samples.png"
        save_image_grid(res.x0[:, 0], grid, title=f"{cfg.name}: 64 prior samples (Heun, 32 steps, {res.nfe_per_image:.0f} NFE each)")
        print(f"priorshift train: sample grid {grid}")
    return 0


def _operator_from_args(args, image_size: int):
    """Build the forward operator the ``score`` command was asked for."""
    import numpy as np
    import torch

    from priorshift.operators import make_operator

    name = args.operator
    kw = {"noise_std": args.noise_std}
    if name == "ct":
        kw |= {"image_size": image_size, "n_views": args.views}
    elif name == "inpainting":
        if not args.mask:
            raise ValueError("--operator inpainting needs --mask MASK.npy (1 = observed, 0 = missing, H × W)")
        kw["mask"] = torch.from_numpy(np.load(args.mask, allow_pickle=False).astype("float32"))
    elif name == "mri":
        if not args.mask:
            raise ValueError("--operator mri needs --mask MASK.npy (k-space sampling mask, H × W, centred)")
        kw["mask"] = torch.from_numpy(np.load(args.mask, allow_pickle=False).astype("float32"))
    elif name == "blur":
        kw |= {"kernel_size": args.kernel_size, "sigma": args.blur_sigma}
    elif name == "downsample":
        kw["factor"] = args.factor
    return make_operator(name, **kw)


def _sampler_params(args) -> dict:
    if args.sampler != "dps":
        if args.jacobian or args.zeta is not None:
            raise ValueError(f"--jacobian and --zeta apply to --sampler dps only, not {args.sampler!r}")
        return {}
    return {"jacobian": args.jacobian} | ({"zeta": args.zeta} if args.zeta is not None else {})


def _cmd_score(args) -> int:
    import csv

    import numpy as np
    import torch

    from priorshift import load_prior
    from priorshift.bench.figures import heatmap_figure
    from priorshift.detectors import KLIP

    if args.threads:
        torch.set_num_threads(args.threads)
    if (args.measurements is None) == (args.images is None):
        raise ValueError("give exactly one of --measurements Y.npy (measured data) or --images X.npy (images to measure)")
    prior = load_prior(args.prior)
    size = prior.config["unet"]["image_size"]
    op = _operator_from_args(args, size)
    if args.images is not None:
        from priorshift.data import npy_stack

        x = npy_stack(args.images)
        y = op(x, seed=list(range(args.seed, args.seed + x.shape[0])))
    else:
        y = torch.from_numpy(np.load(args.measurements, allow_pickle=False)).float()
    a, b = (float(v) for v in args.window.split(","))
    det = KLIP(prior, op, sampler=args.sampler, steps=args.steps, window=(a, b), block=args.block, samples=args.samples,
               sampler_params=_sampler_params(args), progress=not args.quiet)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    scores, maps, recs = [], [], []
    for start in range(0, y.shape[0], args.batch_size):
        s = det.score(y[start : start + args.batch_size], seed=list(range(args.seed + start, args.seed + min(start + args.batch_size, y.shape[0]))))
        scores.append(torch.stack([s.score.double(), s.kl_nats.double()], 1))
        maps.append(s.map.float())
        recs.append(s.extras["reconstruction"].float())
        nfe = s.nfe
    table = torch.cat(scores)
    with open(out / "scores.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["index", "klip_score", "kl_nats_window"])
        for i, (sc, kl) in enumerate(table.tolist()):
            w.writerow([i, f"{sc:.6g}", f"{kl:.6g}"])
    maps = torch.cat(maps)
    np.save(out / "maps.npy", maps.numpy())
    k = min(8, y.shape[0])
    heatmap_figure(op.A_pinv(y[:k]).float(), torch.cat(recs)[:k], maps[:k], None, out / "heatmaps.png",
                   labels=[f"#{i}" for i in range(k)], measurement_title="A⁺ y", title=repr(det))
    print(f"priorshift score: {y.shape[0]} measurement(s) scored with {det!r} ({nfe / min(args.batch_size, y.shape[0]):.0f} NFE per image)")
    print(f"  higher = more shifted; wrote {out / 'scores.csv'}, {out / 'maps.npy'} ({tuple(maps.shape)}), {out / 'heatmaps.png'}")
    return 0


def _cmd_priors(args) -> int:
    from priorshift.diffusion.checkpoint import bundled_priors

    priors = bundled_priors()
    if not priors:
        print("no bundled priors")
    for name, info in priors.items():
        print(f"{name:20s} {info.get('description', '')}")
        print(f"{'':20s} trained with: {info.get('command', '?')}")
        print(f"{'':20s} {info.get('steps', '?')} steps × batch {info.get('batch_size', '?')}, {info.get('wall_time_s', 0) / 3600:.1f} h on {info.get('hardware', '?')}; "
              f"{info.get('parameters', 0) / 1e6:.2f} M parameters")
        if info.get("note"):
            print(f"{'':20s} note: {info['note']}")
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

    sc = sub.add_parser("score", help="score measurements (or images, measured for you) with KLIP: scores.csv, maps.npy, heatmaps.png")
    sc.add_argument("--prior", required=True, help="bundled prior name or checkpoint path")
    sc.add_argument("--measurements", default=None, help="Y.npy: measurements, (N, ...) as the operator produces them")
    sc.add_argument("--images", default=None, help="X.npy: images (N, 1, H, W) or (N, H, W) to measure with the operator first")
    sc.add_argument("--operator", default="ct", choices=["ct", "inpainting", "blur", "downsample", "mri", "identity"])
    sc.add_argument("--noise-std", type=float, default=0.5)
    sc.add_argument("--views", type=int, default=20, help="CT: number of views")
    sc.add_argument("--mask", default=None, help="inpainting / MRI: mask .npy")
    sc.add_argument("--kernel-size", type=int, default=7, help="blur: kernel size")
    sc.add_argument("--blur-sigma", type=float, default=1.5, help="blur: Gaussian σ in pixels")
    sc.add_argument("--factor", type=int, default=2, help="downsample: factor")
    sc.add_argument("--sampler", default="dps")
    sc.add_argument("--jacobian", action="store_true", help="DPS through the network (slower)")
    sc.add_argument("--zeta", type=float, default=None, help="DPS step ζ (default: the sampler's 0.3; 0.1 was chosen for 20-view CT on healthy phantoms)")
    sc.add_argument("--steps", type=int, default=50)
    sc.add_argument("--samples", type=int, default=2)
    sc.add_argument("--window", default="0.40,0.75", help="a,b: fractions of the steps from the noisy end (default: tuned on CT stars)")
    sc.add_argument("--block", type=int, default=2, help="block size in pixels (default: tuned on CT stars)")
    sc.add_argument("--batch-size", type=int, default=16)
    sc.add_argument("--seed", type=int, default=0)
    sc.add_argument("--threads", type=int, default=0)
    sc.add_argument("--out", default="out/score")
    sc.add_argument("--quiet", action="store_true")
    sc.set_defaults(func=_cmd_score)

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
