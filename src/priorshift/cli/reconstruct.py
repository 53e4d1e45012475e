"""``priorshift reconstruct``: the reconstruction and its warning from one sampler pass.

For measurements (or images to measure) and a task, or a prior and an operator: the posterior mean, the per-pixel
standard deviation over the S posterior samples, the samples themselves (``--keep-samples``), KLIP's image score
and map — KLIP rides on the reconstruction's sampler pass as a hook (:mod:`priorshift.calibrate.onepass`) — and,
with ``--calibrate ID.npy``, each image's conformal p-value and its flagged blocks (family-wise over the blocks).
Everything is written into ``--out`` at once (a temporary directory renamed into place), as ``score`` does.

Two KLIPs ride on the pass when a task gives different settings for detection and for maps: the image's score and
p-value use the task's dataset-level window and block (``--param``), the map and its flagged blocks the
image-level ones (``--map-param``). The shared helpers (``_setup``, ``_read_inputs``, ``_read_calibration``) also
serve ``priorshift monitor``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from ._common import _check_threads, _plain
from .score_config import VALUE_RANGE_CHOICES, check_device

CAL_SEED = 1_000_000  # calibration item i uses seed CAL_SEED + i; data item j seed --seed + j


def add_input_arguments(p, *, many: bool = False) -> None:
    """Options shared by ``reconstruct`` and ``monitor``: data, prior, operator, device, output."""
    nargs = {"nargs": "+"} if many else {}
    p.add_argument("--measurements", metavar="Y.npy", default=None, **nargs, help="measurements (N, ...) as the operator produces them"
                   + (" (several files: read in order)" if many else ""))
    p.add_argument("--images", metavar="X.npy", default=None, **nargs, help="images (N, 1, H, W) to measure with the operator first")
    p.add_argument("--calibrate", metavar="ID.npy", default=None, help="in-distribution data to calibrate p-values on, of the data's kind: "
                   "measurements with --measurements, images (measured) with --images; never the data themselves (default: none)")
    p.add_argument("--task", default=None, help="a named task: its prior, operator, sampling plan and KLIP settings (default: none)")
    p.add_argument("--prior", default=None, help="bundled prior name or checkpoint path (default: the task's)")
    p.add_argument("--operator", default=None, metavar="SPEC", help="e.g. blur:sigma=1.5,noise=0.02 (default: the task's)")
    p.add_argument("--mask", default=None, metavar="MASK.npy", help="inpainting / MRI mask (default: the spec's)")
    p.add_argument("--value-range", choices=VALUE_RANGE_CHOICES, default=None, help="how image files map to [-1, 1] (default: by dtype)")
    p.add_argument("--alpha", type=float, default=0.05, help="false-alarm rate to allow (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="item i uses seed + i; calibration item i 1000000 + i (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=16, help="items per batch; results do not depend on it (default: %(default)s)")
    p.add_argument("--device", default="cpu", help="torch device (default: %(default)s)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads, 0 = torch's choice (default: %(default)s)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    p.add_argument("--quiet", action="store_true", help="no progress output")


def add_parser(sub) -> None:
    r = sub.add_parser("reconstruct", help="posterior mean, per-pixel std and KLIP map from one sampler pass; with --calibrate, p-values "
                       "and flagged blocks: .npy, a figure per image, scores.csv, report.html, config.toml")
    add_input_arguments(r)
    r.add_argument("--plan", action="append", default=[], metavar="K=V", help="sampling plan field or sampler parameter, e.g. steps=50 (default: the task's)")
    r.add_argument("--samples", type=int, default=None, help="posterior samples S per measurement (default: the task's, else 4)")
    r.add_argument("--param", action="append", default=[], metavar="K=V", help="KLIP parameter of the image score, e.g. window=0.35,0.45 "
                   "(default: the task's dataset-level settings)")
    r.add_argument("--map-param", action="append", default=[], metavar="K=V", help="KLIP parameter of the map, e.g. block=4 (default: the "
                   "task's image-level settings)")
    r.add_argument("--method", choices=["marginal", "bh"], default="marginal", help="flag p <= alpha per image, or Benjamini-Hochberg "
                   "over the batch (false-discovery rate <= alpha) (default: %(default)s)")
    r.add_argument("--keep-samples", action="store_true", help="also write the posterior samples (N, S, C, H, W)")
    r.add_argument("--max-figures", type=int, default=64, help="overlay figures for the first K images (default: %(default)s)")
    r.add_argument("--out", default="out/reconstruct", help="output directory, written atomically (default: %(default)s)")
    r.set_defaults(func=_cmd_reconstruct)


# -- shared with `monitor` ------------------------------------------------------------------------------
def _setup(args):
    """Validate the shared options; ``(prior, prior_name, operator, task, device)``."""
    import torch

    from priorshift import load_prior
    from priorshift.operators.spec import operator_from_spec, parse_spec
    from priorshift.tasks import get_task

    threads = _check_threads(args.threads, args.command) or 0
    if threads:
        torch.set_num_threads(threads)
    if not 0.0 < args.alpha < 1.0:
        raise ValueError(f"--alpha must be in (0, 1), got {args.alpha}")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    if (args.measurements is None) == (args.images is None):
        raise ValueError("give exactly one of --measurements Y.npy or --images X.npy")
    _check_out(args)
    spec = parse_spec(args.operator) if args.operator else None
    device = check_device(args.device)
    task = get_task(args.task) if args.task else None
    prior_name = args.prior or (task.prior if task else None)
    if prior_name is None:
        raise ValueError("give --prior NAME|PATH (or --task NAME)")
    prior = load_prior(prior_name, device=device)
    if spec is not None:
        op = operator_from_spec(spec, prior.image_size, args.mask)
    elif task is not None:
        op = task.make_operator()
    else:
        raise ValueError("give --operator SPEC (e.g. blur:sigma=1.5,noise=0.02) or --task NAME")
    return prior, str(prior_name), op, task, device


def _check_out(args) -> None:
    """``--out``: refused before any work when it is a file, holds results (without ``--overwrite``) or cannot be
    written (as ``score``'s; a symlink is followed, its target replaced)."""
    from priorshift.io import check_writable, resolve_out

    out = resolve_out(args.out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is an existing file; give a directory")
    if out.is_dir() and any(out.iterdir()) and not args.overwrite:
        raise ValueError(f"--out {out} already holds results; pass --overwrite to replace them, or choose another directory")
    check_writable(out)


def _measure(op, x, first_seed: int):
    return op(x, seed=list(range(first_seed, first_seed + x.shape[0])))


def _read(path: str, flag: str, kind: str, args, op, prior, prior_name, device, first_seed: int):
    """One file as measurements: read as ``kind`` declares (:mod:`.inputs`, the reading of ``score``), images
    measured with the operator, item i with seed ``first_seed + i``."""
    from .inputs import read_images, read_measurements

    if kind == "measurements":
        return read_measurements(path, flag, op, prior, prior_name)[0].to(device)
    x, _ = read_images(path, flag, args.value_range, prior, prior_name)
    return _measure(op, x.to(device), first_seed)


def _read_inputs(args, op, prior, prior_name, device):
    """The data as measurements (N, ...) and the file each item came from: ``--measurements`` as they are, ``--images``
    measured with the operator (item i of all the files with seed ``--seed + i``)."""
    import torch

    kind = "measurements" if args.measurements is not None else "images"
    paths = args.measurements if args.measurements is not None else args.images
    paths = [paths] if isinstance(paths, str) else list(paths)
    parts, start = [], args.seed
    for path in paths:
        parts.append(_read(path, f"--{kind}", kind, args, op, prior, prior_name, device, start))
        start += parts[-1].shape[0]
    files = [Path(path).name for path, part in zip(paths, parts) for _ in range(part.shape[0])]
    return torch.cat(parts), files


def _read_calibration(args, op, prior, prior_name, device):
    """``--calibrate``: of the kind of the data (measurements with ``--measurements``, images — measured with seeds
    1000000 + i — with ``--images``)."""
    kind = "measurements" if args.measurements is not None else "images"
    return _read(args.calibrate, "--calibrate", kind, args, op, prior, prior_name, device, CAL_SEED)


def _progress(args, what: str):
    t0 = time.perf_counter()

    def progress(done, total):
        if not args.quiet:
            print(f"\r  {what} {done}/{total} ({time.perf_counter() - t0:.0f}s)", end="" if done < total else "\n", file=sys.stderr, flush=True)

    return progress


# -- reconstruct ----------------------------------------------------------------------------------------
def _klips(args, prior, op, task):
    """The detection KLIP (``--param`` over the task's dataset-level settings) and the map KLIP (``--map-param`` over its
    image-level ones), sharing ``--plan`` and ``--samples``."""
    from priorshift.detectors import KLIP
    from priorshift.operators.spec import parse_pairs

    shared = {}
    plan = parse_pairs(args.plan, "--plan")
    if plan:
        shared["plan"] = plan
    if args.samples is not None:
        if args.samples < 1:
            raise ValueError(f"--samples must be >= 1, got {args.samples}")
        shared["samples"] = args.samples
    out = []
    for flag, items, objective in (("--param", args.param, "dataset"), ("--map-param", args.map_param, "image")):
        given = parse_pairs(items, flag)
        for key in ("plan", "samples", "keep_step_maps", "progress"):
            if key in given:
                raise ValueError(f"{flag} {key}=...: set the shared sampling with --plan / --samples" if key in ("plan", "samples")
                                 else f"{flag} {key} is not a setting of reconstruct")
        kw = {**shared, **given}
        if task is not None:
            kw = task.settings_under("klip", kw, objective=objective)
        try:
            out.append(KLIP(prior, op, **kw))
        except (TypeError, ValueError) as e:
            what = "image score" if flag == "--param" else "map"
            raise ValueError(f"the {what}'s KLIP ({flag} over the task's settings, with --plan / --samples): {e}") from None
    return out


def _cmd_reconstruct(args) -> int:
    import numpy as np
    import torch

    import priorshift
    from priorshift.calibrate import Conformal, block_pvalues, flag_pvalues, reconstruct_batches
    from priorshift.io import atomic_directory

    if args.max_figures < 0:
        raise ValueError(f"--max-figures must be >= 0, got {args.max_figures}")
    prior, prior_name, op, task, device = _setup(args)
    det, map_det = _klips(args, prior, op, task)
    y, _ = _read_inputs(args, op, prior, prior_name, device)
    cal = _read_calibration(args, op, prior, prior_name, device) if args.calibrate else None
    same = det.config() == map_det.config()
    klips = [det] if same else [det, map_det]
    t0 = time.perf_counter()
    conf = None
    if cal is not None:
        c = reconstruct_batches(klips, cal, batch_size=args.batch_size, seed=CAL_SEED, full=False, progress=_progress(args, "calibration"))
        conf = Conformal.from_scores(c.scores[0].score, c.scores[-1].map)
    r = reconstruct_batches(klips, y, batch_size=args.batch_size, seed=args.seed, keep_samples=args.keep_samples, progress=_progress(args, "reconstructed"))
    seconds = time.perf_counter() - t0
    s, m = r.scores[0], r.scores[-1]
    n = y.shape[0]
    p = bp = bf = flags = None
    if conf is not None:
        p = conf.pvalues_of(s.score)
        flags = flag_pvalues(p, args.alpha, args.method)
        bp = block_pvalues(conf.calibration_maps_, m.map)
        bf = bp <= args.alpha
    out = Path(args.out)
    config = _config(args, prior_name, op, det, map_det, n=n, nfe=r.nfe, seconds=seconds, conf=conf, steps_run=r.steps_run)
    with atomic_directory(out) as tmp:
        arrays = {"mean": r.mean, "std": r.std, "samples": r.samples, "map": m.map, "score_map": None if same else s.map,
                  "block_pvalues": bp, "flagged_blocks": bf}
        for name, a in arrays.items():
            if a is not None:
                np.save(tmp / f"{name}.npy", a.numpy() if a.dtype == torch.bool else a.float().numpy())
        _write_csv(tmp / "scores.csv", s, m, p, flags, bf, r.nfe / n, args.seed)
        k = min(args.max_figures, n)
        shown = op.A_pinv(y[:k]).cpu() if k else None
        figures = [_overlay(tmp / "figures" / f"image_{i:04d}.png", i, shown[i], r, m.map[i], None if bf is None else bf[i],
                            None if p is None else float(p[i])) for i in range(k)]
        _report(tmp, config, s, p, flags, figures, conf, args)
        (tmp / "config.toml").write_text(_toml(config), encoding="utf-8")
    what = f"; {int(flags.sum())} of {n} flagged at alpha = {args.alpha:g} ({args.method}), calibration n = {conf.n_}" if conf is not None else ""
    print(f"priorshift reconstruct: {n} measurements, {r.nfe / n:.0f} NFE per image, one pass{what}")
    print(f"  wrote {out}/ (mean.npy, std.npy, map.npy, scores.csv, report.html, config.toml, figures/); priorshift {priorshift.__version__}")
    return 0


def _write_csv(path, s, m, p, flags, bf, nfe_img, seed) -> None:
    import csv

    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        head = ["index", "seed", "score", "kl_nats", "map_max", "nfe"]
        if p is not None:
            head += ["pvalue", "flagged", "flagged_blocks"]
        w.writerow(head)
        for i in range(s.score.shape[0]):
            row = [i, seed + i, f"{float(s.score[i]):.6g}", f"{float(s.extras['kl_nats'][i]):.6g}", f"{float(m.map[i].max()):.6g}", f"{nfe_img:.6g}"]
            if p is not None:
                row += [f"{float(p[i]):.6g}", int(flags[i]), int(bf[i].sum())]
            w.writerow(row)


def _overlay(path: Path, i: int, shown, r, block_map, flagged, pvalue):
    """One image: A⁺y, the posterior mean, its per-pixel std, the KLIP map over the mean, the flagged blocks."""
    from torch.nn import functional as F

    from priorshift.plotting import pyplot, save_figure

    plt = pyplot()
    path.parent.mkdir(parents=True, exist_ok=True)
    mean = r.mean[i, 0].float()
    h, w = mean.shape
    up = F.interpolate(block_map[None, None].float(), size=(h, w), mode="nearest")[0, 0]
    panels = 5 if flagged is not None else 4
    fig, axes = plt.subplots(1, panels, figsize=(1.9 * panels, 2.2))
    axes[0].imshow(shown[0].float().numpy(), cmap="gray", vmin=-1, vmax=1)
    axes[0].set_title("A⁺ y", fontsize=8)
    axes[1].imshow(mean.numpy(), cmap="gray", vmin=-1, vmax=1)
    axes[1].set_title("posterior mean", fontsize=8)
    std = r.std[i, 0].float().numpy() if r.std is not None else mean.numpy() * 0
    axes[2].imshow(std, cmap="magma")
    axes[2].set_title("posterior std" if r.std is not None else "std (S = 1)", fontsize=8)
    axes[3].imshow(mean.numpy(), cmap="gray", vmin=-1, vmax=1)
    axes[3].imshow(up.numpy(), cmap="inferno", alpha=0.6)
    axes[3].set_title("KLIP map", fontsize=8)
    if flagged is not None:
        axes[4].imshow(mean.numpy(), cmap="gray", vmin=-1, vmax=1)
        bh, bw = h // flagged.shape[0], w // flagged.shape[1]
        for (a, b) in flagged.nonzero().tolist():
            axes[4].add_patch(plt.Rectangle((b * bw - 0.5, a * bh - 0.5), bw, bh, fill=False, edgecolor="red", linewidth=1.2))
        axes[4].set_title(f"flagged blocks (p = {pvalue:.3g})", fontsize=8)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"image {i}", fontsize=9)
    return save_figure(fig, path)


def _config(args, prior_name, op, det, map_det, *, n, nfe, seconds, conf, steps_run) -> dict:
    import datetime
    import shlex

    import priorshift

    return _plain({
        "prior": prior_name, "task": args.task, "operator": args.operator, "operator_repr": repr(op), "input": args.measurements or args.images,
        "calibrate": args.calibrate, "alpha": args.alpha, "method": args.method, "seed": args.seed, "batch_size": args.batch_size,
        "keep_samples": args.keep_samples, "score_klip": det.config(), "map_klip": map_det.config(),
        "run": {"n": n, "nfe_total": nfe, "nfe_per_image": nfe / n, "steps_run": steps_run, "seconds": round(seconds, 2),
                "n_calibration": None if conf is None else conf.n_, "min_pvalue": None if conf is None else 1.0 / (conf.n_ + 1),
                "calibration_seeds": None if conf is None else f"{CAL_SEED} + i", "command": "priorshift " + " ".join(shlex.quote(a) for a in args.argv),
                "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), "priorshift": priorshift.__version__},
    })


def _toml(config: dict) -> str:
    from priorshift.io import toml_dumps

    from ._common import _drop_none

    return ("# priorshift reconstruct: the settings of this run ([run]: what it resolved to and cost).\n"
            "# Image score and p-value: score_klip; map and flagged blocks: map_klip (family-wise over each image's blocks).\n\n"
            + toml_dumps(_drop_none(config)))


def _report(tmp: Path, config, s, p, flags, figures, conf, args) -> None:
    from priorshift.bench.report import Report

    rep = Report("priorshift reconstruct", tmp)
    if conf is not None:
        rep.add_text(f"{int(flags.sum())} of {s.score.shape[0]} images flagged at alpha = {args.alpha:g} ({args.method}). Calibration: "
                     f"{conf.n_} in-distribution measurements ({args.calibrate}); smallest attainable p-value 1/(n+1) = {1 / (conf.n_ + 1):.3g}. "
                     "Flagged blocks: family-wise over each image's blocks at alpha (max-statistic): an in-distribution image has any "
                     "block flagged with probability <= alpha.")
    else:
        rep.add_text("No --calibrate: scores and maps without p-values (higher = more shifted).")
    rows = [[i, float(s.score[i]), *([float(p[i]), "yes" if flags[i] else ""] if p is not None else [])] for i in range(s.score.shape[0])]
    rep.add_table(["image", "KLIP score", *(["p-value", "flagged"] if p is not None else [])], rows[:200])
    for f in figures:
        rep.add_figure(f, f.stem)
    rep.add_config(config)
    rep.write("report.html")
