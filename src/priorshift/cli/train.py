"""``priorshift train``: check the options, load the dataset, train (or fine-tune, ``--init``) a prior, draw a sample grid."""

from __future__ import annotations

import dataclasses
import shlex
import time
from pathlib import Path

from ._common import _check_out_parent, _check_threads, _reading_note


def _parse_widths(text: str) -> tuple[int, ...]:
    try:
        widths = tuple(int(w) for w in str(text).split(","))
    except ValueError:
        raise ValueError(f"--widths {text!r} must be comma-separated positive integers, finest level first (e.g. 16,32,64)") from None
    return widths


def _parse_value(key: str, text: str, like):
    """One ``--network KEY=VALUE``, read by the type of the field's default (``like``)."""
    def read(t: str, kind):
        if kind is bool:
            if t.lower() not in ("true", "false"):
                raise ValueError
            return t.lower() == "true"
        return kind(t)

    try:
        if isinstance(like, tuple):
            return tuple(read(t, type(like[0]) if like else int) for t in text.split(","))
        return read(text, type(like))
    except ValueError:
        what = f"comma-separated {type(like[0]).__name__}s" if isinstance(like, tuple) else f"a {type(like).__name__}"
        raise ValueError(f"--network {key}={text!r}: {key} must be {what} (default {like!r})") from None


def _network_config(backbone_name: str, args):
    """The new network's config: the backbone's defaults, ``--image-size``, the UNet flags and every ``--network``."""
    from priorshift.diffusion.backbones import get_backbone

    try:
        config = get_backbone(backbone_name).config
    except ValueError as e:
        raise ValueError(f"--backbone: {e}") from None
    defaults = config()
    kw = {"image_size": args.image_size}
    if args.widths is not None:
        kw["widths"] = _parse_widths(args.widths)
    if args.no_attention:
        kw["attention"] = False
    settable = [f.name for f in dataclasses.fields(config) if f.name not in ("image_size", "channels")]
    for item in args.network or ():
        key, eq, text = str(item).partition("=")
        if not eq or key not in settable:
            raise ValueError(f"--network {item!r}: give KEY=VALUE with KEY one of {', '.join(settable)} (the {backbone_name!r} backbone's settings)")
        kw[key] = _parse_value(key, text, getattr(defaults, key))
    return config(**kw)


def _file_sha(name_or_path) -> str:
    from priorshift.diffusion.checkpoint import resolve_prior_path, sha256

    return sha256(resolve_prior_path(name_or_path))


def _cmd_train(args) -> int:
    import torch

    from priorshift.data import load_dataset
    from priorshift.diffusion.training import TrainConfig, check_run_dir, train, trained_steps

    # -- validate everything before anything is loaded or created --
    args.threads = _check_threads(args.threads, "train")
    for flag, value, lo in (("--steps", args.steps, 1), ("--batch-size", args.batch_size, 1), ("--checkpoint-every", args.checkpoint_every, 1),
                            ("--image-size", args.image_size, 8)):
        if value < lo:
            raise ValueError(f"{flag} must be >= {lo}, got {value}")
    if not args.lr > 0:
        raise ValueError(f"--lr must be > 0, got {args.lr}")
    if args.train_size is not None and args.train_size < 1:
        raise ValueError(f"--train-size must be >= 1, got {args.train_size}")
    from priorshift._checks import check_memory

    check_memory(4.0 * args.image_size**2 * max(args.train_size or 0, args.batch_size), f"--train-size {args.train_size} / --batch-size "
                 f"{args.batch_size} images of {args.image_size}×{args.image_size} (float32, before any network activation)")
    if args.stream and (args.data != "phantom-ct" or args.train_size is not None):
        raise ValueError(f"--stream renders procedural phantoms on the fly: it needs --data phantom-ct and no --train-size (got --data {args.data!r}"
                         + (f", --train-size {args.train_size})" if args.train_size is not None else ")"))
    init_prior = init_meta = None
    if args.init:  # the backbone and its config are the prior's
        from priorshift.diffusion.checkpoint import load_prior

        init_prior = load_prior(args.init)
        backbone, network = init_prior.config.get("architecture", "unet"), init_prior.net.config
        if init_prior.image_size != args.image_size:
            raise ValueError(f"--init {args.init} is a {init_prior.image_size}×{init_prior.image_size} prior; --image-size is {args.image_size}")
        if args.backbone is not None and args.backbone != backbone:
            raise ValueError(f"--init {args.init} is a {backbone!r} prior; drop --backbone {args.backbone} or give {backbone}")
        if args.network:
            raise ValueError(f"--network sets a new network's architecture; --init {args.init} brings its own: drop --network")
        if backbone != "unet" and (args.widths is not None or args.no_attention):
            raise ValueError(f"--widths and --no-attention are UNet options; --init {args.init} is a {backbone!r} prior: drop them")
        if args.widths is not None and _parse_widths(args.widths) != tuple(network.widths):
            raise ValueError(f"--init {args.init} has widths {','.join(map(str, network.widths))}; drop --widths or give the same")
        if args.no_attention and network.attention:
            raise ValueError(f"--init {args.init} has attention; drop --no-attention")
        init_meta = {"prior": str(args.init), "sha256": _file_sha(args.init)}
    else:
        backbone = args.backbone or "unet"
        if backbone == "unet" and args.widths is None:
            args.widths = "16,32,64,128"
        network = _network_config(backbone, args)
    _check_out_parent(Path(args.out))
    cfg = TrainConfig(
        name=args.name or Path(args.out).name,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        checkpoint_every=args.checkpoint_every,
        backbone=backbone,
        network=network,
    )
    try:
        cfg.validate()
    except ValueError as e:
        flag = {"image_size": "--image-size", "widths": "--widths", "steps": "--steps", "batch_size": "--batch-size", "lr": "--lr"}
        first = str(e).split(" ", 1)[0]
        raise ValueError(f"{flag.get(first, first)}: {e}") from None
    try:
        check_run_dir(args.out, cfg)
    except ValueError as e:
        raise ValueError(f"--out {e}") from None
    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    options, reading = {}, None
    if str(args.data).startswith("npy:"):
        from priorshift.data.datasets import infer_value_range, read_npy

        path = args.data[len("npy:"):]
        if args.value_range:
            options["value_range"] = reading = args.value_range
        elif Path(path).is_file():
            try:
                reading = infer_value_range(read_npy(path), path)
            except ValueError:
                reading = None  # load_dataset below raises the full error (empty, NaN, pickled, out of range)
    elif args.value_range:
        raise ValueError(f"--value-range applies to npy:PATH data only, not {args.data!r}")
    if args.stream:
        from priorshift.data import phantom_batch

        def stream(step: int, batch_size: int, size=args.image_size, seed=args.data_seed):
            return phantom_batch(step * batch_size, batch_size, size, seed)

        data = stream(0, args.batch_size)  # checked and digested below like a fixed set
    else:
        data = load_dataset(args.data, split="train", n=args.train_size, image_size=args.image_size, seed=args.data_seed, **options)
    if reading is not None:
        print(_reading_note("--data", args.data, reading))
    if data.shape[-1] != args.image_size:
        raise ValueError(f"dataset {args.data!r} gives {data.shape[-1]}×{data.shape[-1]} images, not {args.image_size}")
    if data.shape[1] != cfg.network.channels:
        if init_prior is not None:
            raise ValueError(f"--init {args.init} takes {cfg.network.channels}-channel images; {args.data!r} has {data.shape[1]}")
        cfg.network = dataclasses.replace(cfg.network, channels=data.shape[1])
        cfg.validate()
    import hashlib

    digest = hashlib.sha256(data.numpy().tobytes()).hexdigest()[:16]
    if args.stream:
        print(f"priorshift train: {args.data!r} rendered on the fly, {args.batch_size} new images a step (first batch sha256 {digest})")
    else:
        print(f"priorshift train: {data.shape[0]} training images {tuple(data.shape[1:])} from {args.data!r} (sha256 {digest}) in {time.perf_counter() - t0:.1f}s")
    meta = {
        "dataset": {"spec": args.data, "n": None if args.stream else int(data.shape[0]), "image_size": args.image_size, "sha256_16": digest,
                    "seed": args.data_seed, **({"stream": "phantom_batch(step * batch_size, batch_size, image_size, seed)"} if args.stream else {}),
                    **({"value_range": reading} if reading else {})},
        "command": "priorshift " + " ".join(shlex.quote(a) for a in args.argv),
        **({"init": init_meta} if init_meta else {}),
    }
    grid = Path(args.out) / f"{cfg.name}_samples.png"
    done_before = trained_steps(args.out) == cfg.steps and (Path(args.out) / f"{cfg.name}.safetensors").exists()
    init = None if init_prior is None else {k: v.detach().clone() for k, v in init_prior.net.state_dict().items()}
    path = train(cfg, stream if args.stream else data, args.out, meta=meta, progress=not args.quiet, init=init)
    if not done_before:
        print(f"priorshift train: wrote {path} and {path.with_suffix('.json').name}")
    if args.grid and not (done_before and grid.exists()):
        from priorshift.diffusion.checkpoint import load_prior
        from priorshift.diffusion.schedules import schedule_for
        from priorshift.operators import Identity
        from priorshift.plotting import save_image_grid
        from priorshift.samplers import sample_unconditional

        prior = load_prior(path)
        y = torch.zeros(64, data.shape[1], args.image_size, args.image_size)
        with torch.no_grad():
            res = sample_unconditional(prior, Identity(), y, schedule_for(prior, 32), seed=list(range(64)))
        save_image_grid(res.x0[:, 0], grid, title=f"{cfg.name}: 64 prior samples (Heun, 32 steps, {res.nfe_per_image:.0f} NFE each)")
        print(f"priorshift train: sample grid {grid}")
    return 0
