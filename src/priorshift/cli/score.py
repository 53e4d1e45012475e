"""``priorshift score``: load the prior, operator, detector and data, score them (in one process, or under torchrun
with ``--distributed``) and write the run directory."""

from __future__ import annotations

import sys
import time

import priorshift

from ._common import _check_threads, _reading_note, _warn
from .detector import _build_detector, _noise_ignored
from .score_config import _apply_score_config, _file_digest, _score_config_toml, check_device


def _scores_to_cpu(s):
    import torch

    from priorshift.types import Scores

    cpu = lambda v: v.cpu() if isinstance(v, torch.Tensor) else v  # noqa: E731
    return Scores(score=cpu(s.score), map=cpu(s.map), nfe=s.nfe, extras={k: cpu(v) for k, v in s.extras.items()})


def _cmd_score(args) -> int:
    try:
        return _score(args)
    except ValueError as e:
        # A bad value taken from --config: say so (the message names the option it stands for).
        flag = str(e).split(" ", 1)[0].split("=", 1)[0]
        key = flag[2:].replace("-", "_") if flag.startswith("--") else None
        if key and key in getattr(args, "from_file", ()) and key != "config":
            raise ValueError(f"{e} (the {key} of --config {args.config})") from None
        raise


def _score(args) -> int:
    import torch

    from priorshift import load_prior
    from priorshift.detectors import score_batches
    from priorshift.io import check_writable, resolve_out
    from priorshift.operators.spec import operator_from_spec, parse_spec
    from priorshift.tasks import get_task

    from .inputs import fit_kind, read_images, read_measurements

    # -- validate everything before anything is created --
    _apply_score_config(args)
    rank = 0
    if args.distributed:
        from priorshift.distributed import check_env

        rank = check_env()["rank"]
    args.threads = _check_threads(args.threads)
    if args.threads:
        torch.set_num_threads(args.threads)
    if (args.measurements is None) == (args.images is None):
        raise ValueError("give exactly one of --measurements Y.npy (measured data) or --images X.npy (images to measure)")
    if int(args.batch_size) < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    spec = parse_spec(args.operator) if args.operator else None  # read once; built below, once the prior's image size is known
    device = check_device(args.device)
    out = resolve_out(args.out)  # a symlink is followed: its target is written, the link stays
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {args.out} is an existing file; give a directory")
    if out.is_dir() and any(out.iterdir()) and not args.overwrite:
        raise ValueError(f"--out {args.out} already holds results; pass --overwrite to replace them, or choose another directory")
    check_writable(out)  # found now, not after the whole run
    if args.recorded_run and rank == 0 and not args.quiet:
        recorded = args.recorded_run.get("input_sha256")
        if "measurements" in args.from_file or "images" in args.from_file:
            now = _file_digest(args.measurements or args.images)
            if recorded and now and now != recorded:
                print(f"priorshift score: note: {args.measurements or args.images} changed since the recorded run (sha256 {recorded}… then, "
                      f"{now}… now): the scores will differ", file=sys.stderr)
    task = get_task(args.task) if args.task else None
    prior_name = args.prior or (task.prior if task else None)
    if prior_name is None:
        raise ValueError("give --prior NAME|PATH (or --task NAME for a task's prior and settings)")
    prior = load_prior(prior_name, device=device)
    size = prior.image_size
    if spec is not None:
        op = operator_from_spec(spec, size, args.mask)
    elif task:
        op = task.make_operator()
    else:
        raise ValueError("give --operator SPEC (e.g. ct:views=20,noise=0.5, inpaint:p=0.5, blur:sigma=1.5, sr:factor=2, identity:noise=0.05) or --task NAME")
    if args.mask and hasattr(op, "mask") and tuple(op.mask.shape[-2:]) != (size, size):
        raise ValueError(f"--mask {args.mask} is {op.mask.shape[-2]}×{op.mask.shape[-1]}; the prior {prior_name} takes {size}×{size} images")
    if args.mask and hasattr(op, "mask") and rank == 0:
        observed = float(op.mask.float().mean())
        if observed < 0.05:
            _warn("score", f"--mask {args.mask} observes only {100 * observed:.2g}% of its {op.mask.numel()} entries: the measurements "
                           "carry little information, and so will the scores")
    det = _build_detector(args, prior, op)
    inputs = {}  # how every input was read (config.json "inputs", config.toml [run] inputs)
    if args.images is not None:
        x, inputs["input"] = read_images(args.images, "--images", args.value_range, prior, prior_name)
        x = x.to(device)
        kind = "images" if det.input_kind == "images" else "measurements"
        data = x if kind == "images" else op(x, seed=list(range(args.seed, args.seed + x.shape[0])))
        inputs["input"]["measured"] = kind == "measurements"
    else:
        data, inputs["input"] = read_measurements(args.measurements, "--measurements", op, prior, prior_name)
        data, kind = data.to(device), "measurements"
    # With --measurements the data exist: the operator's noise level can only act through the detector.
    noise_ignored = _noise_ignored(det, args.detector) if args.measurements is not None else None
    if noise_ignored and spec is not None and "noise_std" in spec.params:
        raise ValueError(f"--operator {args.operator!r} sets noise=, but {noise_ignored}")
    try:
        det.check_input(data)
    except ValueError as e:
        source = f"--measurements {args.measurements}" if args.images is None else f"--images {args.images} (as {kind})"
        raise ValueError(f"{source}: {e}") from None
    nfe_fit = 0
    if det.needs_fit:
        if not args.fit:
            raise ValueError(f"--detector {args.detector} is calibrated on in-distribution data: give --fit ID.npy ({det.input_kind} or images)")
        args.fit_kind = fit_kind(args)
        if args.fit_kind == "images":
            fit, inputs["fit"] = read_images(args.fit, "--fit", args.value_range, prior, prior_name)
            fit = fit.to(device)
            inputs["fit"]["measured"] = det.input_kind == "measurements"
            if det.input_kind == "measurements":
                fit = op(fit, seed=list(range(10**6 + args.seed, 10**6 + args.seed + fit.shape[0])))
        elif det.input_kind == "images":
            raise ValueError(f"--fit {args.fit} is read as measurements (as --measurements are; --fit-kind measurements), but --detector "
                             f"{args.detector} scores images: give in-distribution images with --fit-kind images")
        else:
            fit, inputs["fit"] = read_measurements(args.fit, "--fit", op, prior, prior_name, images_flag="--fit-kind images")
        try:
            det.check_input(fit.to(device), "fit data")
        except ValueError as e:
            raise ValueError(f"--fit {args.fit} (as {det.input_kind}): {e}") from None
        nfe_fit = _counted(prior, lambda: det.fit(fit.to(device), seed=args.seed))
    elif args.fit and rank == 0:
        _warn("score", f"--fit {args.fit} is not used: --detector {args.detector} needs no calibration")
    readings = {k: r["value_range"] for k, r in inputs.items() if r.get("value_range")}  # config.json "value_range", as before
    if not args.quiet and rank == 0:
        for what, r in inputs.items():
            if r.get("value_range"):
                print(_reading_note(r["flag"], args.images if what == "input" else args.fit, r["value_range"]), file=sys.stderr)

    t0 = time.perf_counter()

    def progress(done, total):
        if not args.quiet:
            print(f"\r  scored {done}/{total} ({time.perf_counter() - t0:.0f}s)", end="" if done < total else "\n", file=sys.stderr, flush=True)

    n = data.shape[0]
    config = {"prior": str(prior_name), "prior_sha256": prior.config.get("prior_sha256"), "operator": repr(op), "operator_spec": args.operator,
              "task": args.task, "detector": det.config() if hasattr(det, "config") else args.detector, "input": args.measurements or args.images,
              "input_kind": kind, "value_range": readings or None, "fit": args.fit, "fit_kind": args.fit_kind if det.needs_fit else None,
              "inputs": inputs, "n": n, "seed": args.seed, "batch_size": args.batch_size, "device": str(device)}
    seconds_before = 0.0
    if args.distributed:
        s, seconds_before = _score_distributed(args, det, data, config, prior, out)
        if s is None:  # not rank 0: its shard is scored; rank 0 merges and writes
            return 0
    else:
        s = score_batches(det, data, batch_size=args.batch_size, seed=args.seed, progress=progress)
    s = _scores_to_cpu(s)
    config.update({"nfe_total": s.nfe + nfe_fit, "nfe_fit": nfe_fit, "nfe_per_image": s.nfe / n,
                   "seconds": round(seconds_before + time.perf_counter() - t0, 2),
                   "versions": {"priorshift": priorshift.__version__, "torch": torch.__version__, "python": sys.version.split()[0]}})
    files = _write_run(args, out, s, data, kind, op, det, config, prior_name=prior_name, prior=prior, spec=spec, noise_ignored=noise_ignored,
                       readings=readings)
    if args.distributed:
        import shutil

        from priorshift.distributed import work_dir_for

        shutil.rmtree(work_dir_for(out))  # the shards are merged into --out
    print(f"priorshift score: {n} {kind} scored with {det!r} ({s.nfe / n:.0f} NFE per image)")
    print(f"  higher = more shifted; wrote {', '.join(str(out / f) for f in files)}")
    return 0


def _counted(prior, run) -> int:
    """Call ``run()`` and return the network evaluations (image rows through ``prior``) it cost, counted by a
    forward pre-hook on the prior (the same count as :class:`~priorshift.diffusion.denoisers.CountingDenoiser`)."""
    count = [0]
    register = getattr(prior, "register_forward_pre_hook", None)
    handle = register(lambda module, args: count.__setitem__(0, count[0] + int(args[0].shape[0]))) if register else None
    try:
        run()
    finally:
        if handle is not None:
            handle.remove()
    return count[0]


def _write_run(args, out, s, data, kind, op, det, config, *, prior_name, prior, spec, noise_ignored, readings) -> list[str]:
    """Write the run directory atomically (a temporary directory moved into place: never a half-written or mixed
    run): scores.csv and maps.npy first, then heatmaps.png — a figure that fails is a warning, never lost scores —
    then config.json and config.toml. Returns the names written."""
    import csv

    import numpy as np
    import torch

    from priorshift.io import atomic_directory, atomic_write_json

    n = data.shape[0]
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
            try:
                _heatmaps(tmp / "heatmaps.png", s, data, kind, op, det)
                files.append("heatmaps.png")
            except Exception as e:  # noqa: BLE001 - a figure must never cost the scores
                _warn("score", f"heatmaps.png was not drawn ({type(e).__name__}: {' '.join(str(e).split())}); the scores and maps are written")
                config["figure_error"] = f"{type(e).__name__}: {e}"
        atomic_write_json(tmp / "config.json", config)
        (tmp / "config.toml").write_text(_score_config_toml(args, prior_name=prior_name, prior=prior, op=op, spec=spec, noise_acts=not noise_ignored,
                                                            det=det, kind=kind, n=n, out=out, config=config, readings=readings), encoding="utf-8")
        files += ["config.json", "config.toml"]
    return files


def _heatmaps(path, s, data, kind, op, det) -> None:
    """heatmaps.png for the first (up to) 8 inputs; the middle column says what it shows: the reconstruction, or —
    when sampling stopped at the end of the detector's window — the estimate x̂0 at the σ where it stopped."""
    from priorshift.bench.figures import heatmap_figure

    k = min(8, data.shape[0])
    shown = (data[:k] if kind == "images" else op.A_pinv(data[:k])).cpu()
    rec = s.extras.get("reconstruction")
    title = "reconstruction" if rec is not None else "input"
    sigmas, steps = s.extras.get("sigmas"), getattr(getattr(det, "plan", None), "steps", None)
    if rec is not None and sigmas is not None and steps and 0 < len(sigmas) < steps:
        title = f"x̂0 at σ={float(sigmas[-1]):.2g}\n(stopped at step {len(sigmas)}/{steps})"
    heatmap_figure(shown.float(), (rec[:k] if rec is not None else shown).float(), s.map[:k].float(), None, path, labels=[f"#{i}" for i in range(k)],
                   measurement_title="x" if kind == "images" else "A⁺ y", title=repr(det), reconstruction_title=title)


def _score_distributed(args, det, data, config, prior, out):
    """``score --distributed`` under torchrun: every rank scores its batches into ``OUT.partial/`` (resuming an
    unfinished run of the same config), then rank 0 merges them and returns ``(scores, seconds_before)``: the
    :class:`Scores` a single-process run returns and the seconds earlier (interrupted) attempts of this run spent,
    kept in ``OUT.partial/.seconds.json``; other ranks return ``(None, 0.0)``."""
    import json

    import torch

    from priorshift.io import atomic_write_json

    from priorshift import distributed as D

    device = next(iter(prior.parameters()), torch.empty(0)).device if hasattr(prior, "parameters") else torch.device("cpu")
    rank, world = D.init(device)
    if rank != 0:  # progress output on rank 0 only (KLIP's sampling-step bar)
        for d in (det, getattr(det, "image_detector", None)):
            if isinstance(getattr(d, "progress", None), bool):
                d.progress = False
    try:
        work = D.work_dir_for(out)
        run = {**config, "input_sha256": D.digest(data),
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
        elapsed = work / ".seconds.json"  # the scoring time of earlier attempts, so that a resumed run reports the whole
        before = float(json.loads(elapsed.read_text())["seconds"]) if rank == 0 and verdict == "resume" and elapsed.is_file() else 0.0

        def progress(done, total):
            if rank == 0:
                atomic_write_json(elapsed, {"seconds": before + time.perf_counter() - t0})
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
        return (D.merge(work, data.shape[0]).to_scores(), before) if rank == 0 else (None, 0.0)
    finally:
        D.close()
