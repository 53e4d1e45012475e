"""The smaller commands: ``demo``, ``bench``, ``report``, ``priors``, ``datasets`` (``adapt`` lives in :mod:`priorshift.adapt`)."""

from __future__ import annotations

from pathlib import Path

from ._common import _check_threads


def _cmd_demo(args) -> int:
    from priorshift.demo import run_demo

    return run_demo(out=args.out, quick=args.quick, n=args.n, prior=args.prior)


def _cmd_bench(args) -> int:
    import torch

    from priorshift.bench.grid import load_config, run_grid

    from priorshift.io import check_writable, resolve_out

    threads = _check_threads(args.threads, "bench")
    if threads:
        torch.set_num_threads(threads)
    cfg = load_config(args.config)
    out = resolve_out(Path(args.out) if args.out else Path("out") / Path(args.config).stem)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is an existing file; give a directory")
    check_writable(out)
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
    """Every registered dataset with what its factory's docstring says (source, splits, sizes, options)."""
    import inspect
    import re

    from priorshift.registry import get, names

    for name in names("dataset"):
        doc = " ".join((inspect.getdoc(get("dataset", name)) or "").split())
        doc = re.sub(r":\w+:`~?(?:[\w.]+\.)?([\w]+)`", r"\1", doc).replace("``", "")  # plain text, not reST
        print(f"{name:14s} {doc}")
    print("\nUse as --data NAME[:k=v,...] (train) or dataset = NAME in a bench config; folder:PATH and npy:PATH read your own images.")
    return 0
