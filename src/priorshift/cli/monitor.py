"""``priorshift monitor``: drift in a stream of measurements, with a false-alarm probability ≤ alpha over the whole stream.

The stream — one or more measurement (or image) files read in order, or cached scores of any detector
(``--scores``) — is scored, each item gets its conformal p-value against the calibration set and an online
p-value, and a conformal test martingale (the Simple Jumper, :mod:`priorshift.calibrate.monitor`) bets on the
online p-values; the alarm is the first item where it reaches 1/alpha (Ville's inequality). Writes
``stream.csv``, ``monitor.png`` (scores and martingale over time), ``monitor.json`` (the alarm index and the
run's numbers) and ``config.toml`` into ``--out`` at once.
"""

from __future__ import annotations

import json
from pathlib import Path

from ._common import _plain
from .reconstruct import CAL_SEED, _check_out, _read_calibration, _read_inputs, _setup, add_input_arguments


def add_parser(sub) -> None:
    m = sub.add_parser("monitor", help="a stream of measurements (or cached scores): running p-values, a conformal test martingale and an "
                       "alarm when it exceeds 1/alpha (false alarm <= alpha over the whole stream): stream.csv, monitor.png, monitor.json")
    m.add_argument("--scores", nargs="+", metavar="S.npy", default=None,
                   help="cached scores of the stream, 1-D arrays read in order (any detector; no detector runs) — with --calibration-scores")
    m.add_argument("--calibration-scores", metavar="C.npy", default=None, help="in-distribution scores of the same detector and settings")
    add_input_arguments(m, many=True)
    m.add_argument("--detector", default="klip", help="a registered detector scoring --measurements / --images (default: %(default)s)")
    m.add_argument("--param", action="append", default=[], metavar="K=V", help="a detector parameter, repeatable (default: the task's settings)")
    m.add_argument("--plan", action="append", default=[], metavar="K=V", help="sampling-plan field or sampler parameter, repeatable")
    m.add_argument("--fit-size", type=float, default=0.5, help="detectors fitted on ID data: the share of --calibrate that fits it "
                   "(the rest calibrates; a value >= 2 is a count) (default: %(default)s)")
    m.add_argument("--jump", type=float, default=0.01, help="the Simple Jumper's jumping rate J in (0, 1] (default: %(default)s)")
    m.add_argument("--out", default="out/monitor", help="output directory, written atomically (default: %(default)s)")
    m.set_defaults(func=_cmd_monitor)


def _load_scores(path: str, what: str):
    import numpy as np
    import torch

    from priorshift.data.npyfile import read_npy

    if not Path(path).is_file():
        raise ValueError(f"{what} file {path!r} does not exist")
    try:
        arr = read_npy(path)
    except ValueError as e:
        raise ValueError(f"{what} {e}") from None
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)) or arr.size == 0:
        raise ValueError(f"{what} {path} holds {arr.size} {arr.dtype} values; save a non-empty numeric array")
    s = torch.from_numpy(np.ascontiguousarray(arr)).double()
    if s.ndim != 1:
        raise ValueError(f"{what} {path} holds an array of shape {tuple(s.shape)}; scores are 1-D (one per item)")
    return s


def _cmd_monitor(args) -> int:
    import torch

    from priorshift.calibrate import Conformal, monitor

    if not 0.0 < args.jump <= 1.0:
        raise ValueError(f"--jump must be in (0, 1], got {args.jump}")
    detector = None
    if args.scores is not None:
        if args.measurements is not None or args.images is not None or args.calibrate is not None:
            raise ValueError("--scores takes cached scores: give --calibration-scores with it, not --measurements / --images / --calibrate")
        if args.calibration_scores is None:
            raise ValueError("--scores needs --calibration-scores C.npy (in-distribution scores of the same detector)")
        if not 0.0 < args.alpha < 1.0:
            raise ValueError(f"--alpha must be in (0, 1), got {args.alpha}")
        _check_out(args)
        parts = [_load_scores(p, "--scores") for p in args.scores]
        scores = torch.cat(parts)
        files = [Path(p).name for p, part in zip(args.scores, parts) for _ in range(part.numel())]
        cal = _load_scores(args.calibration_scores, "--calibration-scores")
    else:
        if args.calibrate is None:
            raise ValueError("give --calibrate ID.npy (in-distribution measurements or images) to calibrate the stream's p-values on")
        if args.calibration_scores is not None:
            raise ValueError("--calibration-scores goes with --scores; with --measurements / --images give --calibrate")
        prior, prior_name, op, task, device = _setup(args)
        detector = _detector(args, prior, op)
        y, files = _read_inputs(args, op, prior, prior_name, device)
        fit_size = int(args.fit_size) if args.fit_size >= 1 else float(args.fit_size)
        if not (0 < args.fit_size < 1 or (fit_size == args.fit_size and fit_size >= 2)):
            raise ValueError(f"--fit-size must be a share in (0, 1) or a count >= 2, got {args.fit_size:g}")
        conf = Conformal(detector, fit_size=fit_size, batch_size=args.batch_size).fit(_read_calibration(args, op, prior, prior_name, device), seed=CAL_SEED)
        scores = conf.decide(y, alpha=args.alpha, seed=args.seed).score
        cal = conf.calibration_scores_
    r = monitor(cal, scores, alpha=args.alpha, jump=args.jump, seed=args.seed)
    _write(args, r, files, detector)
    print(f"priorshift monitor: {r.summary()}")
    print(f"  wrote {args.out}/ (stream.csv, monitor.png, monitor.json, config.toml)")
    return 0


def _detector(args, prior, op):
    from priorshift.operators.spec import parse_pairs
    from priorshift.tasks import make_detector

    params = parse_pairs(args.param, "--param")
    plan = {**params.pop("plan", {}), **parse_pairs(args.plan, "--plan")}
    if plan:
        params["plan"] = plan
    return make_detector(args.detector, prior, op, task=args.task, params=params, inputs="measurements", progress=None if args.quiet else True,
                         label=f"--detector {args.detector}")


def _write(args, r, files, detector) -> None:
    import csv
    import shlex

    from priorshift.io import atomic_directory, toml_dumps

    from ._common import _drop_none

    summary = {"alarm": r.alarm, "alarm_file": None if r.alarm is None else files[r.alarm], "n_items": int(r.scores.numel()),
               "n_calibration": r.n_calibration, "min_pvalue": 1.0 / (r.n_calibration + 1), "alpha": r.alpha, "threshold": r.threshold,
               "jump": r.jump, "martingale_max": float(r.martingale.max()), "flagged_marginal": int((r.pvalues <= r.alpha).sum()),
               "detector": "cached scores" if detector is None else detector.config(),
               "guarantee": "if the calibration items and the stream are exchangeable, P(any alarm) <= alpha (Ville's inequality)"}
    with atomic_directory(args.out) as tmp:
        with open(tmp / "stream.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["index", "file", "score", "pvalue", "online_pvalue", "martingale", "flagged"])
            for i in range(r.scores.numel()):
                w.writerow([i, files[i], f"{float(r.scores[i]):.6g}", f"{float(r.pvalues[i]):.6g}", f"{float(r.online_pvalues[i]):.6g}",
                            f"{float(r.martingale[i]):.6g}", int(r.pvalues[i] <= r.alpha)])
        (tmp / "monitor.json").write_text(json.dumps(_plain(summary), indent=2, sort_keys=True) + "\n", encoding="utf-8")
        _figure(tmp / "monitor.png", r)
        config = {"command": "priorshift " + " ".join(shlex.quote(a) for a in args.argv), "scores": args.scores,
                  "calibration_scores": args.calibration_scores, "measurements": args.measurements, "images": args.images,
                  "calibrate": args.calibrate, "task": args.task, "prior": args.prior, "operator": args.operator,
                  "detector": None if detector is None else args.detector, "alpha": args.alpha, "jump": args.jump, "seed": args.seed,
                  "run": {k: v for k, v in summary.items() if k != "detector"}}
        (tmp / "config.toml").write_text("# priorshift monitor: the settings of this run ([run]: its result).\n\n"
                                         + toml_dumps(_drop_none(_plain(config))), encoding="utf-8")


def _figure(path: Path, r) -> None:
    import numpy as np

    from priorshift.plotting import pyplot, save_figure

    plt = pyplot()
    t = np.arange(r.scores.numel())
    fig, (a, b) = plt.subplots(2, 1, figsize=(8, 4.6), sharex=True)
    flagged = (r.pvalues <= r.alpha).numpy()
    a.plot(t, r.scores.numpy(), lw=0.8, color="0.4")
    a.scatter(t[flagged], r.scores.numpy()[flagged], s=8, color="tab:red", label=f"p ≤ {r.alpha:g}", zorder=3)
    a.set_ylabel("score (higher = more shifted)", fontsize=8)
    a.legend(fontsize=7, loc="upper left")
    b.semilogy(t, r.martingale.numpy(), color="tab:blue", lw=1.2, label="Simple Jumper martingale")
    b.axhline(r.threshold, color="tab:red", ls="--", lw=1, label=f"1/alpha = {r.threshold:g}")
    for ax in (a, b):
        if r.alarm is not None:
            ax.axvline(r.alarm, color="tab:red", lw=1, alpha=0.6)
    b.set_xlabel("item", fontsize=8)
    b.set_ylabel("martingale", fontsize=8)
    b.legend(fontsize=7, loc="upper left")
    fig.suptitle(r.summary(), fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)
