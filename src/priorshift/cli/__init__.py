"""The ``priorshift`` command line: ``demo``, ``train``, ``score``, ``bench``, ``report``, ``adapt``, ``reconstruct``, ``monitor``, ``priors``, ``datasets``.

Here: the parser and :func:`main` (an error is one line and exit code 2; ``--debug`` shows the traceback). Each
command lives in its module: :mod:`.train`, :mod:`.score` (with :mod:`.detector` and :mod:`.score_config`),
:mod:`.misc`; ``adapt`` in :mod:`priorshift.adapt`."""

from __future__ import annotations

import argparse
import sys

import priorshift
from priorshift.io import toml_dumps, toml_value

from .detector import _sampler_defaults  # noqa: F401 (imported from here by the tests)
from .misc import _cmd_bench, _cmd_datasets, _cmd_demo, _cmd_priors, _cmd_report
from .score import _cmd_score
from .score_config import SCORE_CONFIG_KEYS, VALUE_RANGE_CHOICES, _add_score_arguments, check_device, read_score_config
from .train import _cmd_train

__all__ = ["DESCRIPTION", "build_parser", "main", "toml_dumps", "toml_value", "read_score_config", "check_device", "SCORE_CONFIG_KEYS",
           "VALUE_RANGE_CHOICES"]


DESCRIPTION = """\
priorshift tells, from indirect measurements y = A(x) + e alone (a sparse-view CT sinogram, a masked or
blurred image, undersampled MRI), whether the image behind them comes from the distribution a diffusion
prior was trained on — and where in the image it does not.

Detectors (`priorshift score --detector NAME`): KLIP (prior↔posterior KL over time windows and spatial
blocks) and every other registered detector, on one diffusion core with exact analytic oracles, forward
operators (CT, inpainting, blur, super-resolution, MRI) and posterior samplers.
Everything runs offline on a CPU; small priors trained by `priorshift train` ship with the package.
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="priorshift", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"priorshift {priorshift.__version__}")
    p.add_argument("--debug", action="store_true", help="show the full traceback on errors")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    d = sub.add_parser("demo", help="healthy vs lesion CT phantoms under sparse-view CT: KLIP table + heatmap (< 5 min on 2 CPU cores)")
    d.add_argument("--out", default="out/demo", help="output directory (default: out/demo)")
    d.add_argument("--quick", action="store_true", help="a smaller, faster run (for tests)")
    d.add_argument("--n", type=int, default=None, help="images per set (default 24; 4 with --quick)")
    d.add_argument("--prior", default=None, help="a 64×64 CT prior: bundled name or checkpoint path (default: the ct task's, phantom-ct-64-long)")
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
    t.add_argument("--backbone", default=None, help="network backbone, a registered name: unet (default), patch-unet (PaDIS patches "
                   "with coordinate channels); with --init: the prior's")
    t.add_argument("--network", action="append", default=None, metavar="KEY=VALUE",
                   help="a backbone setting, repeatable (e.g. patch-unet: patch_size=32, crop_sizes=16,32, widths=32,64,128)")
    t.add_argument("--stream", action="store_true", help="phantom-ct only: render new phantoms on the fly for every step "
                   "(no fixed --train-size set; resumable)")
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

    sc = sub.add_parser("score", help="score measurements (or images) with any registered detector: scores.csv, maps.npy, heatmaps.png, "
                        "config.json, config.toml (rerun it with --config)")
    _add_score_arguments(sc)
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

    from .adapt import add_parser as add_adapt_parser

    add_adapt_parser(sub)

    from .monitor import add_parser as add_monitor_parser
    from .reconstruct import add_parser as add_reconstruct_parser

    add_reconstruct_parser(sub)
    add_monitor_parser(sub)

    pr = sub.add_parser("priors", help="list the bundled priors and how each was trained")
    pr.set_defaults(func=_cmd_priors)
    ds = sub.add_parser("datasets", help="list the datasets: source, splits, sizes and options")
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
    from ._common import _Interrupted, interruptible

    try:
        with interruptible():
            return int(args.func(args) or 0)
    except (ValueError, OSError) as e:  # bad input, a missing / unreadable file: one line that says what to fix
        if args.debug:
            raise
        message = " ".join(str(e).split()) or type(e).__name__
        print(f"priorshift {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:  # Ctrl-C or SIGTERM: outputs are atomic, so nothing half-written is left
        signal_name = e.signal_name if isinstance(e, _Interrupted) else "SIGINT"
        print(f"\npriorshift {args.command}: interrupted ({signal_name}); no output was left half-written", file=sys.stderr)
        return 143 if signal_name == "SIGTERM" else 130
