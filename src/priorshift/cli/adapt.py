"""``priorshift adapt``: align a mismatched prior to measured data (:mod:`priorshift.adapt`).

The measurements come as ``--measurements Y.npy`` (with ``--masks M.npy`` for inpainting and MRI) or are made
here from clean ``--images X.npy`` by the operator (``--operator``, any registered one; inpainting and MRI draw
each image's own mask from ``--p``/``--block`` or ``--accel``/``--center-lines``).
"""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

from priorshift.adapt import KINDS, AdaptConfig

__all__ = ["add_parser"]

_MASK_FLAGS = (("p", "--p"), ("block", "--block"), ("accel", "--accel"), ("center_lines", "--center-lines"))


def _load_array(path: str, what: str):
    import numpy as np
    import torch

    if not Path(path).is_file():
        raise ValueError(f"{what} file {path!r} does not exist")
    try:
        arr = np.load(path, allow_pickle=False)
    except ValueError as e:
        raise ValueError(f"{what} file {path!r} cannot be read as a plain .npy array ({e})") from None
    if arr.size == 0:
        raise ValueError(f"{what} file {path!r} is empty")
    return torch.from_numpy(np.ascontiguousarray(arr)).float()


def _operator(args, prior):
    """``(name, operator)``: a name in KINDS (random masks, made in :func:`simulate_measurements` / given by
    ``--masks``) with operator ``None``, or any other operator built from its spec. Checks which flags apply."""
    from priorshift.operators.spec import OPERATOR_ALIASES, operator_from_spec

    spec = args.operator
    name, _, rest = spec.partition(":")
    name = OPERATOR_ALIASES.get(name, name)
    given = [flag for key, flag in _MASK_FLAGS if getattr(args, key) is not None]
    if name in KINDS:
        if rest:
            raise ValueError(f"--operator {spec!r}: {name} measurements take their masks from --masks, or with --images from "
                             "--p/--block (inpainting) or --accel/--center-lines (mri), and their noise from --noise; give the bare name")
        wrong = [f for f in given if (f in ("--accel", "--center-lines")) == (name == "inpainting")]
        if wrong or (given and args.images is None):
            raise ValueError(f"{', '.join(wrong or given)}: not a setting of {name} measurements"
                             + ("" if wrong else " given as --measurements (they describe the masks drawn for --images)"))
        return name, None
    if given or args.masks is not None:
        raise ValueError(f"{', '.join(given + (['--masks'] if args.masks is not None else []))}: only inpainting and mri measurements "
                         f"have masks; the {name} operator is set by its spec, e.g. --operator 'ct:views=24,noise=0.01'")
    op = operator_from_spec(spec, getattr(prior, "image_size", None))
    if args.noise is not None:
        op.noise_std = float(args.noise)
    return name, op


def _cmd_adapt(args) -> int:
    import torch

    from priorshift.adapt import adapt_prior, measured_set, simulate_measurements
    from priorshift.diffusion.checkpoint import load_prior

    if args.threads:
        torch.set_num_threads(args.threads)
    if (args.measurements is None) == (args.images is None):
        raise ValueError("give exactly one of --measurements Y.npy (with --masks M.npy for inpainting / mri) or --images X.npy "
                         "(measured here, for experiments)")
    cfg = AdaptConfig(
        name=args.name or Path(args.out).name, steps=args.steps, batch_size=args.batch_size, lr=args.lr, warmup_steps=args.warmup_steps,
        ema_decay=args.ema_decay, seed=args.seed, eval_every=args.eval_every, patience=args.patience, min_improvement=args.min_improvement,
        val_fraction=args.val_fraction, val_draws=args.val_draws,
    ).validate()
    if args.measurements is not None and args.noise is not None:
        raise ValueError("--noise sets the noise of measurements made here from --images; measured data bring their own")
    prior = load_prior(args.prior)
    name, op = _operator(args, prior)
    if args.measurements is not None:
        if op is None and args.masks is None:
            raise ValueError("--measurements needs --masks M.npy (1 = observed pixel / sampled k-space column)")
        y = _load_array(args.measurements, "--measurements")
        masks = None if args.masks is None else _load_array(args.masks, "--masks")
        source = {"measurements": args.measurements, "masks": args.masks}
    else:
        from priorshift.data import npy_stack

        x = npy_stack(args.images)
        if op is None:
            y, masks = simulate_measurements(name, x, seed=args.seed, p=args.p, block=args.block, acceleration=args.accel,
                                             center_lines=args.center_lines, noise_std=args.noise)
        else:
            y, _ = simulate_measurements(op, x, seed=args.seed)
            masks = None  # the operator draws none: it is its own description
        source = {"images": args.images, **{k: getattr(args, k) for k, _ in _MASK_FLAGS if getattr(args, k) is not None}, "noise": args.noise}
    data = measured_set(name if op is None else op, y, masks)
    argv = getattr(args, "argv", None)
    meta = {"adapted_on": {"kind": data.kind, "operator": args.operator, **source, "n": len(data)}, "prior_source": str(args.prior)}
    if argv:
        meta["command"] = "priorshift " + " ".join(shlex.quote(a) for a in argv)
    res = adapt_prior(prior, data, args.out, cfg, meta=meta, progress=not args.quiet)
    print(f"priorshift adapt: {len(data)} {data.kind} measurements ({res.n_train} train / {res.n_val} held out); "
          f"held-out loss {res.initial_val_loss:.5f} → {res.best_val_loss:.5f} (step {res.best_step} of {res.steps_run}; {res.stopped})")
    print(f"  wrote {res.path} and {res.path.with_suffix('.json').name}")
    return 0


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``priorshift adapt`` on the CLI's subparsers (``cli.build_parser``) with its handler."""
    a = subparsers.add_parser(
        "adapt", help="align a mismatched prior to measured data (masked EDM loss on measurements only, early stopping); resumable",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    a.add_argument("--prior", required=True, help="the prior to align: bundled name or checkpoint path")
    a.add_argument("--operator", "--kind", dest="operator", required=True, metavar="SPEC",
                   help="the operator that made the measurements: inpainting (loss on observed pixels), mri (zero-filled images), or "
                        "any other as NAME[:k=v,...], e.g. ct:views=24,noise=0.01, blur:sigma=1, sr:factor=2 (loss on A⁺y)")
    a.add_argument("--measurements", default=None, help="Y.npy: as the operator makes them: inpainting (N, C, H, W), MRI k-space "
                                                         "(N, C, H, W, 2) centred, CT sinograms (N, C, views, detectors), ...")
    a.add_argument("--masks", default=None, help="M.npy, inpainting / mri: the measurements' masks, 1 = observed; (H, W) or one per measurement")
    a.add_argument("--images", default=None, help="X.npy: clean images to measure here instead (experiments): each its own random mask")
    a.add_argument("--p", type=float, default=None, help="with --images, inpainting: observation probability of a tile (default 0.8)")
    a.add_argument("--block", type=int, default=None, help="with --images, inpainting: tile size in pixels (default 4)")
    a.add_argument("--accel", type=float, default=None, help="with --images, mri: acceleration (default 4)")
    a.add_argument("--center-lines", type=int, default=None, help="with --images, mri: fully sampled centre columns (default W // 8)")
    a.add_argument("--noise", type=float, default=None, help="with --images: measurement noise std in [-1, 1] image units "
                                                             "(default: the operator spec's, else 0)")
    a.add_argument("--out", required=True, help="run directory: the aligned prior NAME.safetensors/.json, adapt_state.json, train/")
    a.add_argument("--name", default=None, help="name of the aligned prior (default: the run directory's name)")
    a.add_argument("--steps", type=int, default=AdaptConfig.steps, help="at most this many steps")
    a.add_argument("--batch-size", type=int, default=AdaptConfig.batch_size)
    a.add_argument("--lr", type=float, default=AdaptConfig.lr)
    a.add_argument("--warmup-steps", type=int, default=AdaptConfig.warmup_steps)
    a.add_argument("--ema-decay", type=float, default=AdaptConfig.ema_decay)
    a.add_argument("--eval-every", type=int, default=AdaptConfig.eval_every, help="steps per tick (held-out evaluation + checkpoint)")
    a.add_argument("--patience", type=int, default=AdaptConfig.patience, help="ticks without improvement before stopping")
    a.add_argument("--min-improvement", type=float, default=AdaptConfig.min_improvement, help="relative improvement that counts")
    a.add_argument("--val-fraction", type=float, default=AdaptConfig.val_fraction, help="share of the measurements held out")
    a.add_argument("--val-draws", type=int, default=AdaptConfig.val_draws, help="noise draws per held-out measurement")
    a.add_argument("--seed", type=int, default=0)
    a.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's choice)")
    a.add_argument("--quiet", action="store_true")
    a.set_defaults(func=_cmd_adapt)
    return a
