"""The ``priorshift`` command line: ``demo``, ``train``, ``score``, ``bench``, ``report``, ``adapt``, ``priors``, ``datasets``."""

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

Detectors (`priorshift score --detector NAME`): KLIP (prior↔posterior KL over time windows and spatial
blocks) and every other registered detector, on one diffusion core with exact analytic oracles, forward
operators (CT, inpainting, blur, super-resolution, MRI) and posterior samplers.
Everything runs offline on a CPU; small priors trained by `priorshift train` ship with the package.
"""


def _parse_widths(text: str) -> tuple[int, ...]:
    try:
        widths = tuple(int(w) for w in str(text).split(","))
    except ValueError:
        raise ValueError(f"--widths {text!r} must be comma-separated positive integers, finest level first (e.g. 16,32,64)") from None
    return widths


def _file_sha(name_or_path) -> str:
    from priorshift.diffusion.checkpoint import resolve_prior_path, sha256

    return sha256(resolve_prior_path(name_or_path))


def _check_out_parent(out: Path) -> None:
    for parent in out.absolute().parents:
        if parent.exists():
            if not parent.is_dir():
                raise ValueError(f"--out {out}: {parent} is a file, not a directory")
            return


def _check_threads(n: int) -> None:
    if n < 0:
        raise ValueError(f"--threads must be >= 0 (0: torch's choice), got {n}")


def _cmd_train(args) -> int:
    import torch

    from priorshift.data import load_dataset
    from priorshift.diffusion.training import TrainConfig, check_run_dir, train, trained_steps
    from priorshift.diffusion.unet import UNetConfig

    # -- validate everything before anything is loaded or created --
    _check_threads(args.threads)
    for flag, value, lo in (("--steps", args.steps, 1), ("--batch-size", args.batch_size, 1), ("--checkpoint-every", args.checkpoint_every, 1),
                            ("--image-size", args.image_size, 8)):
        if value < lo:
            raise ValueError(f"{flag} must be >= {lo}, got {value}")
    if not args.lr > 0:
        raise ValueError(f"--lr must be > 0, got {args.lr}")
    if args.train_size is not None and args.train_size < 1:
        raise ValueError(f"--train-size must be >= 1, got {args.train_size}")
    init_prior = init_meta = None
    if args.init:
        from priorshift.diffusion.checkpoint import load_prior

        init_prior = load_prior(args.init)
        base = init_prior.net.config
        if base.image_size != args.image_size:
            raise ValueError(f"--init {args.init} is a {base.image_size}×{base.image_size} prior; --image-size is {args.image_size}")
        if args.widths is not None and _parse_widths(args.widths) != tuple(base.widths):
            raise ValueError(f"--init {args.init} has widths {','.join(map(str, base.widths))}; drop --widths or give the same")
        if args.no_attention and base.attention:
            raise ValueError(f"--init {args.init} has attention; drop --no-attention")
        init_meta = {"prior": str(args.init), "sha256": init_prior.config.get("sha256") or _file_sha(args.init)}
        unet_kw = {k: v for k, v in base.to_dict().items()}
    else:
        widths = _parse_widths(args.widths or "16,32,64,128")
        unet_kw = dict(image_size=args.image_size, widths=widths, attention=not args.no_attention)
    _check_out_parent(Path(args.out))
    cfg = TrainConfig(
        name=args.name or Path(args.out).name,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        checkpoint_every=args.checkpoint_every,
        unet=UNetConfig(**unet_kw),
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
    data = load_dataset(args.data, split="train", n=args.train_size, image_size=args.image_size, seed=args.data_seed, **options)
    if reading is not None:
        print(_reading_note("--data", args.data, reading))
    if data.shape[-1] != args.image_size:
        raise ValueError(f"dataset {args.data!r} gives {data.shape[-1]}×{data.shape[-1]} images, not {args.image_size}")
    if data.shape[1] != cfg.unet.channels:
        if init_prior is not None:
            raise ValueError(f"--init {args.init} takes {cfg.unet.channels}-channel images; {args.data!r} has {data.shape[1]}")
        cfg.unet = UNetConfig(**unet_kw, channels=data.shape[1])
        cfg.validate()
    import hashlib

    digest = hashlib.sha256(data.numpy().tobytes()).hexdigest()[:16]
    print(f"priorshift train: {data.shape[0]} training images {tuple(data.shape[1:])} from {args.data!r} (sha256 {digest}) in {time.perf_counter() - t0:.1f}s")
    meta = {
        "dataset": {"spec": args.data, "n": int(data.shape[0]), "image_size": args.image_size, "sha256_16": digest, "seed": args.data_seed,
                    **({"value_range": reading} if reading else {})},
        "command": "priorshift " + " ".join(shlex.quote(a) for a in args.argv),
        **({"init": init_meta} if init_meta else {}),
    }
    grid = Path(args.out) / f"{cfg.name}_samples.png"
    done_before = trained_steps(args.out) == cfg.steps and (Path(args.out) / f"{cfg.name}.safetensors").exists()
    init = None if init_prior is None else {k: v.detach().clone() for k, v in init_prior.net.state_dict().items()}
    path = train(cfg, data, args.out, meta=meta, progress=not args.quiet, init=init)
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


def _load_npy(path: str, what: str):
    """A measurement (or fit) array as float32, never unpickled; a missing, pickled or empty file is a ValueError."""
    import numpy as np
    import torch

    from priorshift.data.datasets import read_npy

    if not Path(path).is_file():
        raise ValueError(f"{what} file {path!r} does not exist")
    try:
        arr = read_npy(path)
    except ValueError as e:
        raise ValueError(f"{what} {e}") from None
    if arr.shape[:1] == (0,) or arr.size == 0:
        raise ValueError(f"{what} file {path!r} holds 0 samples (shape {arr.shape})")
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise ValueError(f"{what} file {path!r} holds {arr.dtype} values; save a numeric (float) array")
    return torch.from_numpy(np.ascontiguousarray(arr)).float()


def _load_images(path: str, what: str, value_range: str | None):
    """Images from an ``.npy``, converted to [-1, 1] by the rule of :func:`priorshift.data.npy_stack`
    (``value_range`` forces a reading); returns the images and the reading used."""
    from priorshift.data.datasets import npy_images

    if not Path(path).is_file():
        raise ValueError(f"{what} file {path!r} does not exist")
    try:
        return npy_images(path, value_range=value_range)
    except ValueError as e:
        raise ValueError(f"{what} {e}") from None


def _is_integer_npy(path: str) -> bool:
    import numpy as np

    from priorshift.data.datasets import read_npy

    return bool(np.issubdtype(read_npy(path).dtype, np.integer))


def _reading_note(what: str, path: str, reading: str) -> str:
    from priorshift.data.datasets import VALUE_RANGES

    note = f"{what} {path}: read as {VALUE_RANGES[reading]}"
    if reading == "unit":
        note += " (float data within [0, 1]; if it is already in [-1, 1], pass --value-range symmetric)"
    return note


def _spec_keys(spec: str | None) -> set[str]:
    """The parameter names an operator spec sets explicitly (aliases resolved)."""
    if not spec:
        return set()
    _, _, rest = spec.partition(":")
    from priorshift.operators.spec import PARAM_ALIASES

    return {PARAM_ALIASES.get(k, k) for k in (item.partition("=")[0] for item in rest.split(",")) if k}


def _check_noise_acts(args, det) -> None:
    """With ``--measurements``, the spec's ``noise=`` describes data that already exists: it can only act through
    the detector. Refuse it when the detector declares it ignores ``operator.noise_std`` (a ``uses_noise_std``
    attribute), or, undeclared, when its sampling plan's sampler declares so (``@uses_noise_std(False)``: DPS,
    Langevin). Detectors that declare neither are given the benefit of the doubt."""
    if args.measurements is None or "noise_std" not in _spec_keys(args.operator):
        return
    declared = getattr(det, "uses_noise_std", None)
    plan = getattr(det, "plan", None)
    sampler = getattr(plan, "sampler_fn", None)
    if declared is None and getattr(sampler, "uses_noise_std", None) is False:
        users = ", ".join(n for n in _sampler_names() if getattr(_sampler(n), "uses_noise_std", False))
        raise ValueError(
            f"--operator {args.operator!r} sets noise=, but sampler {plan.sampler!r} does not use the noise level (its "
            f"measurement step is set by zeta), so with --measurements the setting would change nothing; drop noise= from "
            f"--operator, or choose a sampler that weighs the data by it: --plan sampler=projection (samplers that use it: {users})"
        )
    if declared is False:
        raise ValueError(f"--operator {args.operator!r} sets noise=, but --detector {args.detector} does not use the noise level, so "
                         "with --measurements the setting would change nothing; drop noise= from --operator")


def _sampler_names() -> list[str]:
    from priorshift.registry import names

    return names("sampler")


def _sampler(name: str):
    from priorshift.registry import get

    return get("sampler", name)


def _build_detector(args, prior, operator, image_size: int):
    """The detector asked for, from the registry, with the task's defaults (KLIP) and ``--param`` / ``--plan``."""
    from priorshift.registry import get
    from priorshift.tasks import get_task

    cls = get("detector", args.detector)
    from priorshift.operators.spec import parse_pairs

    params = parse_pairs(args.param, "--param")
    plan = {**params.pop("plan", {}), **parse_pairs(args.plan, "--plan")}
    if args.detector == "klip" and args.task:
        task = get_task(args.task)
        base = {"plan": dict(task.plan), "samples": task.samples, **task.klip_settings["dataset"]}
        plan = {**base.pop("plan"), **plan}
        params = {**base, **params}
    if plan:
        params["plan"] = plan
    if args.detector == "klip" and "window" in params:
        from priorshift.detectors.klip import window_steps

        try:
            window_steps(params["window"], 10**6)  # its form and range; the detector checks it against its schedule
        except ValueError as e:
            raise ValueError(f"--param window={_raw_param(args.param, 'window')}: {e}") from None
    if args.quiet is False and "progress" in _init_params(cls):
        params.setdefault("progress", True)
    try:
        if cls.input_kind == "measurements":
            return cls(prior, operator, **params)
        return cls(prior, **params)
    except TypeError as e:
        raise ValueError(f"--detector {args.detector}: {e} (its parameters: {', '.join(_init_params(cls))})") from None


def _raw_param(items, key: str) -> str:
    for item in reversed(items or ()):
        k, _, v = item.partition("=")
        if k == key:
            return v
    return "?"


def _init_params(cls) -> list[str]:
    import inspect

    return [n for n, p in inspect.signature(cls.__init__).parameters.items() if p.kind is inspect.Parameter.KEYWORD_ONLY]


def _cmd_score(args) -> int:
    import csv
    import shutil

    import numpy as np
    import torch

    from priorshift import load_prior
    from priorshift.detectors import score_batches
    from priorshift.io import atomic_write_json
    from priorshift.tasks import get_task

    # -- validate everything before anything is created --
    rank = 0
    if args.distributed:
        from priorshift.distributed import check_env

        rank = check_env()["rank"]
    _check_threads(args.threads)
    if args.threads:
        torch.set_num_threads(args.threads)
    if (args.measurements is None) == (args.images is None):
        raise ValueError("give exactly one of --measurements Y.npy (measured data) or --images X.npy (images to measure)")
    if int(args.batch_size) < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    out = Path(args.out)
    _check_out_parent(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is an existing file; give a directory")
    if out.is_dir() and any(out.iterdir()) and not args.overwrite:
        raise ValueError(f"--out {out} already holds results; pass --overwrite to replace them, or choose another directory")
    task = get_task(args.task) if args.task else None
    prior_name = args.prior or (task.prior if task else None)
    if prior_name is None:
        raise ValueError("give --prior NAME|PATH (or --task NAME for a task's prior and settings)")
    prior = load_prior(prior_name)
    size = prior.config["unet"]["image_size"]
    if args.operator:
        from priorshift.operators.spec import operator_from_spec

        op = operator_from_spec(args.operator, size, args.mask)
    elif task:
        op = task.make_operator()
    else:
        raise ValueError("give --operator SPEC (e.g. ct:views=20,noise=0.5, inpaint:p=0.5, blur:sigma=1.5, sr:factor=2, identity:noise=0.05) or --task NAME")
    det = _build_detector(args, prior, op, size)
    readings = {}
    channels = prior.config["unet"].get("channels", 1)
    if args.images is not None:
        x, readings["input"] = _load_images(args.images, "--images", args.value_range)
        if tuple(x.shape[1:]) != (channels, size, size):
            raise ValueError(f"--images {args.images} holds {x.shape[-2]}×{x.shape[-1]} images with {x.shape[1]} channel(s); the prior "
                             f"{prior_name} takes {size}×{size} with {channels}: resize them, or use a prior of that size")
        data = x if det.input_kind == "images" else op(x, seed=list(range(args.seed, args.seed + x.shape[0])))
        kind = "images" if det.input_kind == "images" else "measurements"
    else:
        data, kind = _load_npy(args.measurements, "--measurements"), "measurements"
    if kind == "measurements" and det.input_kind == "images":
        from priorshift.detectors import FromMeasurements

        from priorshift.operators.spec import parse_pairs

        det = FromMeasurements(det, op, plan=parse_pairs(args.plan, "--plan") or None)
    _check_noise_acts(args, det)
    try:
        det.check_input(data)
    except ValueError as e:
        source = f"--measurements {args.measurements}" if args.images is None else f"--images {args.images} (as {kind})"
        raise ValueError(f"{source}: {e}") from None
    if kind == "measurements" and args.images is None:
        implied = tuple(op.A_adjoint(data[:1]).shape[1:])
        if implied != (channels, size, size):
            raise ValueError(f"--measurements {args.measurements} are of {implied[-2]}×{implied[-1]} images with {implied[0]} channel(s) "
                             f"under {op!r}; the prior {prior_name} takes {size}×{size} with {channels}: check --operator and --prior")
    if det.needs_fit:
        if not args.fit:
            raise ValueError(f"--detector {args.detector} is calibrated on in-distribution data: give --fit ID.npy ({det.input_kind} or images)")
        fit = _load_npy(args.fit, "--fit")
        # Images to measure (or to score, for an image detector) go through the image loader's [-1, 1] conversion.
        fit_is_images = det.input_kind == "images" or (fit.ndim == 4 and fit.shape[1:] != data.shape[1:])
        if fit_is_images or _is_integer_npy(args.fit):
            fit, readings["fit"] = _load_images(args.fit, "--fit", args.value_range)
            if det.input_kind == "measurements":
                fit = op(fit, seed=list(range(10**6 + args.seed, 10**6 + args.seed + fit.shape[0])))
        det.fit(fit, seed=args.seed)
    if not args.quiet and rank == 0:
        for what, reading in readings.items():
            print(_reading_note(f"--{'images' if what == 'input' else 'fit'}", args.images if what == "input" else args.fit, reading), file=sys.stderr)

    t0 = time.perf_counter()

    def progress(done, total):
        if not args.quiet:
            print(f"\r  scored {done}/{total} ({time.perf_counter() - t0:.0f}s)", end="" if done < total else "\n", file=sys.stderr, flush=True)

    n = data.shape[0]
    config = {"prior": str(prior_name), "operator": repr(op), "operator_spec": args.operator, "task": args.task,
              "detector": det.config() if hasattr(det, "config") else args.detector, "input": args.measurements or args.images,
              "input_kind": kind, "value_range": readings or None, "fit": args.fit, "n": n, "seed": args.seed, "batch_size": args.batch_size}
    if args.distributed:
        s = _score_distributed(args, det, data, config, prior, out)
        if s is None:  # not rank 0: its shard is scored; rank 0 merges and writes
            return 0
    else:
        s = score_batches(det, data, batch_size=args.batch_size, seed=args.seed, progress=progress)
    # -- write into a temporary directory, then move it into place: never a half-written or mixed run --
    from priorshift.io import atomic_directory

    with atomic_directory(out) as tmp:
        per_image = {k: v for k, v in s.extras.items() if isinstance(v, torch.Tensor) and v.shape[:1] == (n,) and v.ndim == 1 and k != "seeds"}
        with open(tmp / "scores.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["index", "score", "nfe", "seed", *per_image])
            nfe_img = s.nfe / n
            for i in range(n):
                w.writerow([i, f"{float(s.score[i]):.6g}", f"{nfe_img:.6g}", int(s.extras["seeds"][i]), *(f"{float(v[i]):.6g}" for v in per_image.values())])
        files = ["scores.csv"]
        if s.map is not None:
            np.save(tmp / "maps.npy", s.map.float().numpy())
            files.append("maps.npy")
            from priorshift.bench.figures import heatmap_figure

            k = min(8, n)
            shown = data[:k] if kind == "images" else op.A_pinv(data[:k])
            rec = s.extras.get("reconstruction")
            heatmap_figure(shown.float(), (rec[:k] if rec is not None else shown).float(), s.map[:k].float(), None, tmp / "heatmaps.png",
                           labels=[f"#{i}" for i in range(k)], measurement_title="x" if kind == "images" else "A⁺ y", title=repr(det))
            files.append("heatmaps.png")
        config.update({"nfe_total": s.nfe, "nfe_per_image": s.nfe / n, "seconds": round(time.perf_counter() - t0, 2),
                       "versions": {"priorshift": priorshift.__version__, "torch": torch.__version__, "python": sys.version.split()[0]}})
        atomic_write_json(tmp / "config.json", config)
        files.append("config.json")
    if args.distributed:
        from priorshift.distributed import work_dir_for

        shutil.rmtree(work_dir_for(out))  # the shards are merged into --out
    print(f"priorshift score: {n} {kind} scored with {det!r} ({s.nfe / n:.0f} NFE per image)")
    print(f"  higher = more shifted; wrote {', '.join(str(out / f) for f in files)}")
    return 0


def _score_distributed(args, det, data, config, prior, out):
    """``score --distributed`` under torchrun: every rank scores its batches into ``OUT.partial/`` (resuming an
    unfinished run of the same config), then rank 0 merges them and returns the :class:`Scores` a single-process
    run returns; other ranks return None."""
    import torch

    from priorshift import distributed as D

    device = next(iter(prior.parameters()), torch.empty(0)).device if hasattr(prior, "parameters") else torch.device("cpu")
    rank, world = D.init(device)
    if rank != 0:  # progress output on rank 0 only (KLIP's sampling-step bar)
        for d in (det, getattr(det, "image_detector", None)):
            if isinstance(getattr(d, "progress", None), bool):
                d.progress = False
    try:
        work = D.work_dir_for(out)
        run = {**config, "input_sha256": D.digest(data), "prior_sha256": prior.config.get("weights_sha256"),
               **{f"{flag}_sha256": D.digest(getattr(args, flag)) for flag in ("fit", "mask") if getattr(args, flag)},
               "versions": {"priorshift": priorshift.__version__, "torch": torch.__version__}}
        verdict = None
        if rank == 0:
            try:
                verdict = "resume" if D.prepare_work_dir(work, run, overwrite=args.overwrite) else "fresh"
            except (ValueError, OSError) as e:
                verdict = e
        verdict = D.broadcast(verdict)
        if isinstance(verdict, BaseException):
            if rank == 0:
                raise verdict
            raise SystemExit(2)  # the same failure, reported once (by rank 0)
        t0 = time.perf_counter()

        def progress(done, total):
            if rank == 0 and not args.quiet:
                print(f"\r  rank 0/{world}: scored {done}/{total} batches ({time.perf_counter() - t0:.0f}s)", end="" if done < total else "\n",
                      file=sys.stderr, flush=True)

        if rank == 0 and verdict == "resume" and not args.quiet:
            print(f"priorshift score: resuming the unfinished run in {work}", file=sys.stderr)
        scored = D.score_shard(det, data, work_dir=work, seed=args.seed, batch_size=args.batch_size, rank=rank, world=world,
                               progress=progress, keep=("reconstruction",), keep_first=8)  # what heatmaps.png shows
        if not args.quiet:
            print(f"  rank {rank}/{world}: scored {len(scored)} samples", file=sys.stderr, flush=True)
        D.barrier()
        return D.merge(work, data.shape[0]).to_scores() if rank == 0 else None
    finally:
        D.close()


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


def _cmd_bench(args) -> int:
    import torch

    from priorshift.bench.grid import load_config, run_grid

    _check_threads(args.threads)
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = load_config(args.config)
    out = Path(args.out) if args.out else Path("out") / Path(args.config).stem
    _check_out_parent(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is an existing file; give a directory")
    only = set(args.only.split(",")) if args.only else None
    summary = run_grid(cfg, out, only=only, cached_only=args.cached_only, log=(lambda s: None) if args.quiet else None)
    print((out / "results.md").read_text())
    print(f"priorshift bench: {len(summary)} rows; wrote {out / 'results.csv'}, {out / 'results.json'}, {out / 'results.md'}, {out / 'report.html'}")
    return 0


def _cmd_report(args) -> int:
    from priorshift.bench.report import rebuild_report

    path = rebuild_report(args.dir)
    print(f"priorshift report: wrote {path}")
    return 0


def _task_names() -> list[str]:
    from priorshift.tasks import TASKS

    return list(TASKS)


def _detector_names() -> list[str]:
    from priorshift.registry import names

    return names("detector")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="priorshift", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"priorshift {priorshift.__version__}")
    p.add_argument("--debug", action="store_true", help="show the full traceback on errors")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    d = sub.add_parser("demo", help="healthy vs lesion CT phantoms under sparse-view CT: KLIP table + heatmap (< 5 min on 2 CPU cores)")
    d.add_argument("--out", default="out/demo", help="output directory (default: out/demo)")
    d.add_argument("--quick", action="store_true", help="a smaller, faster run (for tests)")
    d.add_argument("--n", type=int, default=None, help="images per set (default 24; 4 with --quick)")
    d.add_argument("--prior", default=None, help="a 64×64 CT prior: bundled name or checkpoint path (default: the ct task's, phantom-ct-64)")
    d.set_defaults(func=_cmd_demo)

    t = sub.add_parser("train", help="train a small diffusion prior (EDM loss) on a dataset; resumable")
    t.add_argument("--data", required=True, help="dataset: phantom-ct, fashion-mnist, mnist, folder:PATH, npy:PATH")
    t.add_argument("--image-size", type=int, required=True)
    t.add_argument("--steps", type=int, required=True)
    t.add_argument("--batch-size", type=int, default=64)
    t.add_argument("--out", required=True, help="run directory (checkpoints, the prior, the sample grid)")
    t.add_argument("--name", default=None, help="prior name (default: the run directory's name)")
    t.add_argument("--widths", default=None, help="UNet channels per level, finest first (default 16,32,64,128; with --init: the prior's)")
    t.add_argument("--init", default=None, metavar="PRIOR",
                   help="fine-tune: start from this prior's weights (bundled name or path; its architecture is used)")
    t.add_argument("--no-attention", action="store_true", help="no self-attention at the lowest resolution")
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--train-size", type=int, default=None, help="number of training images (procedural data: how many to generate)")
    t.add_argument("--data-seed", type=int, default=0)
    t.add_argument("--value-range", default=None, choices=["uint8", "uint16", "unit", "symmetric"],
                   help="npy:PATH data: how values map to [-1, 1] (default: by dtype and range; float data within [0, 1] is read "
                        "as [0, 1] — [-1, 1] data without negative values cannot be told from it; the reading is printed)")
    t.add_argument("--checkpoint-every", type=int, default=250)
    t.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    t.add_argument("--no-grid", dest="grid", action="store_false", help="skip the sample grid PNG at the end")
    t.add_argument("--quiet", action="store_true")
    t.set_defaults(func=_cmd_train)

    sc = sub.add_parser("score", help="score measurements (or images) with any registered detector: scores.csv, maps.npy, heatmaps.png, config.json",
                        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    sc.add_argument("--task", default=None, help="a named task (" + ", ".join(_task_names()) + "): its prior, operator and tuned KLIP settings as defaults")
    sc.add_argument("--prior", default=None, help="bundled prior name or checkpoint path (default: the task's)")
    sc.add_argument("--detector", default="klip", help="a registered detector: " + ", ".join(_detector_names()))
    sc.add_argument("--param", action="append", default=[], metavar="K=V", help="a detector parameter, e.g. window=0.4,0.75 or block=4 (repeatable)")
    sc.add_argument("--plan", action="append", default=[], metavar="K=V",
                    help="a sampling-plan field or sampler parameter, e.g. sampler=dps, steps=50, zeta=0.1, jacobian=False (repeatable)")
    sc.add_argument("--measurements", default=None, help="Y.npy: measurements, (N, ...) as the operator produces them")
    sc.add_argument("--images", default=None, help="X.npy: images (N, 1, H, W) or (N, H, W): uint8 [0, 255], or float [0, 1] / [-1, 1] (see --value-range); measured with the operator first")
    sc.add_argument("--value-range", default=None, choices=["uint8", "uint16", "unit", "symmetric"],
                    help="how --images / --fit image files map to [-1, 1]: uint8 [0, 255], uint16, unit [0, 1] or symmetric [-1, 1] "
                         "(default: by dtype and range — float data within [0, 1] is read as [0, 1], which [-1, 1] data without "
                         "negative values cannot be told from; the reading used is printed and recorded in config.json)")
    sc.add_argument("--fit", default=None, help="ID.npy: in-distribution data for detectors that are calibrated (measurements or images)")
    sc.add_argument("--operator", default=None, metavar="SPEC",
                    help="NAME[:k=v,...]: ct:views=20,noise=0.5 | inpaint:p=0.5,block=4 | blur:kernel=7,sigma=1.5,noise=0.02 | sr:factor=2 | mri:accel=4 | identity:noise=0.1")
    sc.add_argument("--mask", default=None, help="inpainting / MRI: a mask .npy (1 = observed), instead of a random one")
    sc.add_argument("--batch-size", type=int, default=16, help="images per batch (the result does not depend on it)")
    sc.add_argument("--seed", type=int, default=0, help="image i uses seed + i for its noise and posterior samples")
    sc.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's choice)")
    sc.add_argument("--out", default="out/score", help="output directory (written atomically)")
    sc.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    sc.add_argument("--quiet", action="store_true", help="no progress output")
    sc.add_argument("--distributed", action="store_true",
                    help="run under torchrun (torchrun --nproc-per-node N -m priorshift score ... --distributed): each rank scores "
                         "its share of the batches into OUT.partial/, rank 0 merges them into --out; the same command re-run after a "
                         "failure resumes without scoring finished samples again")
    sc.set_defaults(func=_cmd_score)

    be = sub.add_parser("bench", help="run a benchmark grid (detectors × measurement domains) from a TOML config: results table + report.html",
                        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    be.add_argument("config", help="a bench config, e.g. benchmarks/configs/ood-fmnist-mnist.toml (format: priorshift.bench.grid)")
    be.add_argument("--out", default=None, help="results folder (default: out/<config name>); each row's scores are cached in OUT/scores")
    be.add_argument("--only", default=None, metavar="ROWS", help="comma-separated row keys (detector@domain[#label]) to score again")
    be.add_argument("--cached-only", action="store_true", help="score nothing: tabulate the cached rows and list the others as not run")
    be.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's choice)")
    be.add_argument("--quiet", action="store_true", help="no progress output")
    be.set_defaults(func=_cmd_bench)

    rp = sub.add_parser("report", help="(re)build report.html in a results folder (a bench grid or a score run) from its saved scores")
    rp.add_argument("dir", help="the results folder")
    rp.set_defaults(func=_cmd_report)

    from priorshift.adapt import add_parser as add_adapt_parser

    add_adapt_parser(sub)

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
    except (ValueError, OSError) as e:  # bad input, a missing / unreadable file: one line that says what to fix
        if args.debug:
            raise
        message = " ".join(str(e).split()) or type(e).__name__
        print(f"priorshift {args.command}: error: {message}", file=sys.stderr)
        return 2
