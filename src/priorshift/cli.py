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

Detectors (`priorshift score --detector NAME`): KLIP (prior↔posterior KL over time windows and spatial
blocks) and every other registered detector, on one diffusion core with exact analytic oracles, forward
operators (CT, inpainting, blur, super-resolution, MRI) and posterior samplers.
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
        from priorshift.diffusion.schedules import schedule_for
        from priorshift.operators import Identity
        from priorshift.plotting import save_image_grid
        from priorshift.samplers import sample_unconditional

        prior = load_prior(path)
        y = torch.zeros(64, data.shape[1], args.image_size, args.image_size)
        with torch.no_grad():
            res = sample_unconditional(prior, Identity(), y, schedule_for(prior, 32), seed=list(range(64)))
        grid = Path(args.out) / f"{cfg.name}_samples.png"
        save_image_grid(res.x0[:, 0], grid, title=f"{cfg.name}: 64 prior samples (Heun, 32 steps, {res.nfe_per_image:.0f} NFE each)")
        print(f"priorshift train: sample grid {grid}")
    return 0


# Short names accepted in operator specs, e.g. ``ct:views=24,noise=0.01`` or ``blur:sigma=2``.
_OPERATOR_ALIASES = {"inpaint": "inpainting", "sr": "downsample", "denoise": "identity"}
_PARAM_ALIASES = {"noise": "noise_std", "views": "n_views", "kernel": "kernel_size"}


def parse_value(text: str):
    """A ``k=v`` value: a Python literal when it is one (``0.1``, ``False``, ``0.4,0.75`` → a tuple), else the string."""
    import ast

    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def parse_pairs(items, what: str) -> dict:
    """``["a=1", "plan.zeta=0.1"]`` → ``{"a": 1, "plan": {"zeta": 0.1}}``."""
    out: dict = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"{what} {item!r} must look like key=value")
        target = out
        *parents, leaf = key.split(".")
        for part in parents:
            target = target.setdefault(part, {})
        target[leaf] = parse_value(value)
    return out


def parse_operator_spec(spec: str, image_size: int, mask_path: str | None = None):
    """``NAME[:k=v,...]`` → an operator. ``ct`` gets the prior's image size; ``inpainting`` without a mask gets
    a random pixel mask with observation probability ``p`` (default 0.5; ``block=b`` for b×b blocks, ``seed``);
    ``mask=PATH.npy`` (or ``--mask``) loads one (1 = observed)."""
    import numpy as np
    import torch

    from priorshift.operators import make_operator, random_block_mask, random_pixel_mask
    from priorshift.registry import names

    name, _, rest = spec.partition(":")
    name = _OPERATOR_ALIASES.get(name, name)
    if name not in names("operator"):
        raise ValueError(f"unknown operator {name!r} in --operator {spec!r}; choose one of {', '.join(names('operator'))} (or inpaint, sr)")
    kw = {}
    for item in filter(None, rest.split(",")):
        k, sep, v = item.partition("=")
        if not sep:
            raise ValueError(f"operator parameter {item!r} in --operator {spec!r} must look like key=value")
        kw[_PARAM_ALIASES.get(k, k)] = parse_value(v)
    mask_path = kw.pop("mask", mask_path)
    if name == "ct":
        kw.setdefault("image_size", image_size)
    if name in ("inpainting", "mri"):
        if mask_path is not None:
            kw["mask"] = torch.from_numpy(np.load(str(mask_path), allow_pickle=False).astype("float32"))
        elif name == "inpainting":
            p, block, seed = float(kw.pop("p", 0.5)), int(kw.pop("block", 1)), int(kw.pop("seed", 0))
            g = torch.Generator().manual_seed(seed)
            kw["mask"] = random_pixel_mask(image_size, p, generator=g) if block == 1 else random_block_mask(image_size, block, p, generator=g)
        else:
            from priorshift.operators import cartesian_mask

            accel, seed = int(kw.pop("accel", 4)), int(kw.pop("seed", 0))
            kw["mask"] = cartesian_mask(image_size, accel, max(1, image_size // 8), generator=torch.Generator().manual_seed(seed))
    try:
        return make_operator(name, **kw)
    except TypeError as e:
        raise ValueError(f"--operator {spec!r}: {e}") from None


def _load_npy(path: str, what: str):
    import numpy as np
    import torch

    if not Path(path).is_file():
        raise ValueError(f"{what} file {path!r} does not exist")
    try:
        arr = np.load(path, allow_pickle=False)
    except ValueError as e:
        raise ValueError(f"{what} file {path!r} cannot be read as a plain .npy array ({e})") from None
    if arr.shape[:1] == (0,):
        raise ValueError(f"{what} file {path!r} holds 0 samples")
    return torch.from_numpy(np.ascontiguousarray(arr)).float()


def _build_detector(args, prior, operator, image_size: int):
    """The detector asked for, from the registry, with the task's defaults (KLIP) and ``--param`` / ``--plan``."""
    from priorshift.registry import get
    from priorshift.tasks import get_task

    cls = get("detector", args.detector)
    params = parse_pairs(args.param, "--param")
    plan = {**params.pop("plan", {}), **parse_pairs(args.plan, "--plan")}
    if args.detector == "klip" and args.task:
        task = get_task(args.task)
        base = {"plan": dict(task.plan), "samples": task.samples, **task.klip_settings["dataset"]}
        plan = {**base.pop("plan"), **plan}
        params = {**base, **params}
    if plan:
        params["plan"] = plan
    if args.quiet is False and "progress" in _init_params(cls):
        params.setdefault("progress", True)
    try:
        if cls.input_kind == "measurements":
            return cls(prior, operator, **params)
        return cls(prior, **params)
    except TypeError as e:
        raise ValueError(f"--detector {args.detector}: {e} (its parameters: {', '.join(_init_params(cls))})") from None


def _init_params(cls) -> list[str]:
    import inspect

    return [n for n, p in inspect.signature(cls.__init__).parameters.items() if p.kind is inspect.Parameter.KEYWORD_ONLY]


def _cmd_score(args) -> int:
    import csv
    import json
    import shutil
    import tempfile

    import numpy as np
    import torch

    from priorshift import load_prior
    from priorshift.detectors import score_batches
    from priorshift.io import atomic_write_json
    from priorshift.tasks import get_task

    if args.threads:
        torch.set_num_threads(args.threads)
    # -- validate everything before anything is created --
    if (args.measurements is None) == (args.images is None):
        raise ValueError("give exactly one of --measurements Y.npy (measured data) or --images X.npy (images to measure)")
    if int(args.batch_size) < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    out = Path(args.out)
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
        op = parse_operator_spec(args.operator, size, args.mask)
    elif task:
        op = task.make_operator()
    else:
        raise ValueError("give --operator SPEC (e.g. ct:views=20,noise=0.5, inpaint:p=0.5, blur:sigma=1.5, sr:factor=2, identity:noise=0.05) or --task NAME")
    det = _build_detector(args, prior, op, size)
    if args.images is not None:
        from priorshift.data import npy_stack

        x = npy_stack(args.images)
        data = x if det.input_kind == "images" else op(x, seed=list(range(args.seed, args.seed + x.shape[0])))
        kind = "images" if det.input_kind == "images" else "measurements"
    else:
        data, kind = _load_npy(args.measurements, "--measurements"), "measurements"
    if kind == "measurements" and det.input_kind == "images":
        from priorshift.detectors import FromMeasurements

        det = FromMeasurements(det, op, plan=parse_pairs(args.plan, "--plan") or None)
    det.check_input(data)
    if det.needs_fit:
        if not args.fit:
            raise ValueError(f"--detector {args.detector} is calibrated on in-distribution data: give --fit ID.npy ({det.input_kind} or images)")
        fit = _load_npy(args.fit, "--fit")
        if det.input_kind == "measurements" and fit.ndim == 4 and fit.shape[1:] != data.shape[1:]:
            fit = op(fit, seed=list(range(10**6 + args.seed, 10**6 + args.seed + fit.shape[0])))
        det.fit(fit, seed=args.seed)

    t0 = time.perf_counter()

    def progress(done, total):
        if not args.quiet:
            print(f"\r  scored {done}/{total} ({time.perf_counter() - t0:.0f}s)", end="" if done < total else "\n", file=sys.stderr, flush=True)

    s = score_batches(det, data, batch_size=args.batch_size, seed=args.seed, progress=progress)
    n = data.shape[0]
    # -- write into a temporary directory, then move it into place: never a half-written or mixed run --
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
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
        config = {"prior": str(prior_name), "operator": repr(op), "operator_spec": args.operator, "task": args.task,
                  "detector": det.config() if hasattr(det, "config") else args.detector, "input": args.measurements or args.images,
                  "input_kind": kind, "fit": args.fit, "n": n, "seed": args.seed, "batch_size": args.batch_size,
                  "nfe_total": s.nfe, "nfe_per_image": s.nfe / n, "seconds": round(time.perf_counter() - t0, 2),
                  "versions": {"priorshift": priorshift.__version__, "torch": torch.__version__, "python": sys.version.split()[0]}}
        atomic_write_json(tmp / "config.json", config)
        files.append("config.json")
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    print(f"priorshift score: {n} {kind} scored with {det!r} ({s.nfe / n:.0f} NFE per image)")
    print(f"  higher = more shifted; wrote {', '.join(str(out / f) for f in files)}")
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

    sc = sub.add_parser("score", help="score measurements (or images) with any registered detector: scores.csv, maps.npy, heatmaps.png, config.json",
                        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    sc.add_argument("--task", default=None, help="a named task (" + ", ".join(_task_names()) + "): its prior, operator and tuned KLIP settings as defaults")
    sc.add_argument("--prior", default=None, help="bundled prior name or checkpoint path (default: the task's)")
    sc.add_argument("--detector", default="klip", help="a registered detector: " + ", ".join(_detector_names()))
    sc.add_argument("--param", action="append", default=[], metavar="K=V", help="a detector parameter, e.g. window=0.4,0.75 or block=4 (repeatable)")
    sc.add_argument("--plan", action="append", default=[], metavar="K=V",
                    help="a sampling-plan field or sampler parameter, e.g. sampler=dps, steps=50, zeta=0.1, jacobian=False (repeatable)")
    sc.add_argument("--measurements", default=None, help="Y.npy: measurements, (N, ...) as the operator produces them")
    sc.add_argument("--images", default=None, help="X.npy: images (N, 1, H, W) or (N, H, W) in [0, 255] or [-1, 1], measured with the operator first")
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
        if args.debug:
            raise
        print(f"priorshift {args.command}: error: {e}", file=sys.stderr)
        return 2
