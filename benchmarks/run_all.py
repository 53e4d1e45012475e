"""Run every benchmark script in ``benchmarks/`` and write ``docs/benchmarks-quick.md``: each table, the exact command,
its wall time, the machine and the date.

    python benchmarks/run_all.py --quick                        # small n, few steps: a few minutes on 2 CPU cores
    python benchmarks/run_all.py                                # each script's own settings (hours on a CPU)
    python benchmarks/run_all.py --quick --only samplers,demo --out runs/benchmarks.md
    python benchmarks/run_all.py --suite                        # the shift suite → benchmarks/results/suite/ + docs/benchmarks.md
    python benchmarks/run_all.py --suite --quick                # the suite at CI size (8 + 8 images, 20 steps) → out/suite-quick.md

Without ``--suite`` the page is ``docs/benchmarks-quick.md`` (``--quick``) — the suite's page, ``docs/benchmarks.md``,
is written by ``--suite`` (``benchmarks/suite.py``). Each benchmark runs in its own process from the repository root and writes its table into a temporary folder,
so ``benchmarks/results/`` (the full-size results) is never touched. ``--quick`` numbers show that every script runs
and what it reports, at sizes too small to read accuracy from; the full-size tables are in ``benchmarks/results/``.
Not run here: ``measurement_kl.py trained`` (it needs priors trained beyond the shipped ones) and, in quick mode, the
``priorshift bench`` grid (``benchmarks/configs/*.toml``), which has no quick form.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Benchmark:
    """``script`` (in benchmarks/, or ``priorshift`` for the CLI) run with ``args`` + ``quick`` (``--quick``) or ``args``
    + ``full``. ``table``: ``"out-file"`` (the script writes its table to ``--out FILE``), ``"out-dir"`` (``--out DIR``,
    then ``DIR/results.md``). ``threads``: the script takes ``--threads``."""

    name: str
    script: str
    args: tuple[str, ...] = ()
    quick: tuple[str, ...] = ()
    full: tuple[str, ...] = ()
    table: str = "out-file"
    threads: bool = True
    quick_mode: bool = True
    note: str = ""
    table_name: str = "results.md"  # the table inside an "out-dir"


_KLIP_QUICK = ("--n-tune", "4", "--n-eval", "4", "--steps", "10", "--samples", "1")
BENCHMARKS = [
    Benchmark("samplers", "samplers.py", quick=("--images", "2", "--samples", "1", "--steps", "3", "--repeats", "1")),
    Benchmark("measurement-kl-gaussian", "measurement_kl.py", ("gaussian",),
              quick=("--n", "32", "--test", "4", "--adapt-sizes", "16", "--stability-sizes", "1,4", "--stability-levels", "1,1.2,1.4",
                     "--repeats", "2", "--sigmas", "12", "--levels", "1,2,4", "--p", "0.5")),
    Benchmark("prior-phantom-ct-64", "priors.py", ("--prior", "phantom-ct-64"), quick=("--n", "8", "--fit-n", "64")),
    Benchmark("prior-fashion-mnist-32", "priors.py", ("--prior", "fashion-mnist-32"), quick=("--n", "8", "--fit-n", "64")),
    Benchmark("dps-step-ct", "dps_step.py", ("--task", "ct"), quick=("--zetas", "0.1,0.3", "--n", "2", "--steps", "5")),
    Benchmark("dps-step-fmnist-blur", "dps_step.py", ("--task", "fmnist-blur"), quick=("--zetas", "0.6,1.5", "--n", "2", "--steps", "5")),
    Benchmark("dps-step-fmnist-inpaint", "dps_step.py", ("--task", "fmnist-inpaint"), quick=("--zetas", "0.3,0.6", "--n", "2", "--steps", "5")),
    Benchmark("klip-cost", "klip_cost.py", quick=("--repeats", "1", "--skip-grid"),
              note="quick: the hook-overhead table only (its batch sizes are fixed), without the AUROC-vs-NFE grid"),
    Benchmark("klip-ct", "klip_experiment.py", ("--task", "ct"), quick=_KLIP_QUICK, table="out-dir"),
    Benchmark("klip-fmnist-blur", "klip_experiment.py", ("--task", "fmnist-blur"), quick=_KLIP_QUICK, table="out-dir"),
    Benchmark("klip-fmnist-inpaint", "klip_experiment.py", ("--task", "fmnist-inpaint"), quick=_KLIP_QUICK, table="out-dir"),
    Benchmark("klip-detects", "klip_detects.py", quick=("--domains", "inpaint50", "--n-tune", "3", "--n-eval", "3", "--n-class-tune", "4", "--n-shift", "2",
              "--steps", "10"), full=("--domains", "inpaint50,fmnist-blur", "--n-eval", "96", "--n-class-tune", "96"), table="out-dir",
              note="full: the 96 + 96 run of benchmarks/results/klip-detects-96 (about 40 min on 2 cores)"),
    Benchmark("klip-multiscale", "klip_multiscale.py", quick=("--domains", "inpaint50", "--n-eval", "3", "--n-calib", "3", "--n-shift", "2", "--steps", "10"),
              table="out-dir", note="reads the exploration runs' results (benchmarks/results/klip-detects*) for its comparison rows; never writes them"),
    Benchmark("klip-ct-sweep", "klip_ct_sweep.py", quick=("--n", "3", "--steps", "10", "--noise", "0.5"), table="out-dir"),
    Benchmark("klip-official", "klip_official.py", quick=("--quick",), note="KLIP.official beside the tasks' defaults; full: 24 + 24, 50 steps, S = 2"),
    Benchmark("bench-ood-fmnist-mnist", "priorshift", ("bench", "benchmarks/configs/ood-fmnist-mnist.toml"), table="out-dir",
              threads=True, quick_mode=False, note="the detector grid of the README; no quick form"),
    Benchmark("local-shifts", "local_shifts.py", quick=("--n", "3", "--steps", "10"), table="out-dir", note="five CT insert types; full: 32 + 32, 50 steps"),
    Benchmark("suite", "suite.py", ("run",), quick=("--quick",), table="out-dir", table_name="summary.md",
              note="the shift suite's summary (benchmarks/suite.py); full size: `run_all.py --suite`"),
    Benchmark("demo", "priorshift", ("demo",), quick=("--quick",), table="out-dir", threads=False,
              note="`priorshift demo`, timed end to end (prior loading, sampling, figures, report)"),
]
NAMES = [b.name for b in BENCHMARKS]


def command(b: Benchmark, quick: bool, threads: int, out: Path) -> list[str]:
    """The argv that runs ``b``, its table going to ``out``."""
    head = [sys.executable, "-m", "priorshift"] if b.script == "priorshift" else [sys.executable, str(Path("benchmarks") / b.script)]
    return [*head, *b.args, *(b.quick if quick else b.full), *(["--threads", str(threads)] if b.threads else []), "--out", str(out)]


def shown(argv: list[str], tmp: Path) -> str:
    """``argv`` as one would type it from the repository root (``python``, the temporary folder as ``$TMP``)."""
    words = ["python" if a == sys.executable else a.replace(str(tmp), "$TMP") for a in argv]
    return " ".join(shlex.quote(w) if "$TMP" not in w else w for w in words)


def demote(text: str, levels: int = 2) -> str:
    """The script's markdown with its headings moved ``levels`` down (they sit under this page's own)."""
    return "\n".join("#" * levels + line if line.startswith("#") else line for line in text.strip().splitlines())


def run_one(b: Benchmark, quick: bool, threads: int, tmp: Path, timeout: float | None) -> dict:
    out = tmp / (b.name if b.table == "out-dir" else f"{b.name}.md")
    argv = command(b, quick, threads, out)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}
    t0 = time.perf_counter()
    try:
        r = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
        rc, stdout, stderr = r.returncode, r.stdout, r.stderr
    except subprocess.TimeoutExpired as e:
        rc, stdout, stderr = None, e.stdout or "", f"timed out after {timeout:.0f} s"
        stdout = stdout.decode() if isinstance(stdout, bytes) else stdout
    seconds = time.perf_counter() - t0
    table_file = out / b.table_name if b.table == "out-dir" else out
    table = (table_file.read_text() if rc == 0 and table_file.is_file() else "") or stdout
    return {"benchmark": b, "command": shown(argv, tmp), "seconds": seconds, "rc": rc, "table": table.replace(str(tmp), "$TMP"),
            "error": "" if rc == 0 else (stderr or stdout)[-2000:].replace(str(tmp), "$TMP")}


def machine(threads: int) -> str:
    import torch

    load = ", ".join(f"{v:.2f}" for v in os.getloadavg()) if hasattr(os, "getloadavg") else "?"
    return (f"{platform.platform()}; CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; {threads} thread(s) per "
            f"benchmark; Python {platform.python_version()}, torch {torch.__version__}; load average at start {load}")


def render(results: list[dict], quick: bool, threads: int, argv: list[str], started: str, total: float) -> str:
    env = f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']} " if os.environ.get("OMP_NUM_THREADS") else ""
    mode = "quick (`--quick`: small n, few steps — they show that each script runs and what it reports, not accuracy)" if quick else "full"
    lines = ["# Benchmarks", "",
             f"Generated by `{env}{shown([sys.executable, 'benchmarks/run_all.py', *argv], Path('/nonexistent'))}` on {started} "
             f"({total:.0f} s in all). Mode: {mode}. Full-size results and figures: `benchmarks/results/`.", "",
             f"Machine: {machine(threads)}.", "",
             "| benchmark | wall time (s) | status | command |", "|---|---:|---|---|"]
    for r in results:
        status = "ok" if r["rc"] == 0 else ("timed out" if r["rc"] is None else f"failed (exit {r['rc']})")
        lines.append(f"| [{r['benchmark'].name}](#{r['benchmark'].name}) | {r['seconds']:.1f} | {status} | `{r['command']}` |")
    for r in results:
        b = r["benchmark"]
        lines += ["", f"## {b.name}", "", f"Command (from the repository root; `$TMP` is a temporary folder): `{r['command']}` — {r['seconds']:.1f} s."]
        if b.note:
            lines += ["", f"Note: {b.note}."]
        if r["rc"] != 0:
            lines += ["", "It did not finish; the end of its output:", "", "```", r["error"].strip(), "```"]
        elif r["table"].strip():
            lines += ["", demote(r["table"])]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small n and few steps (default: each script's own settings)")
    p.add_argument("--only", default=None, metavar="NAMES", help="comma-separated benchmarks to run (default: all): " + ", ".join(NAMES))
    p.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS") or 2),
                   help="torch threads per benchmark (default: $OMP_NUM_THREADS, else 2)")
    p.add_argument("--timeout", type=float, default=None, help="seconds per benchmark before it is stopped (default: 900 with --quick, else none)")
    p.add_argument("--suite", action="store_true", help="run the shift suite (benchmarks/suite.py) and write its page instead")
    p.add_argument("--out", default=None, help="the page to write, atomically (default: docs/benchmarks-quick.md; with --suite "
                   "docs/benchmarks.md, with --suite --quick out/suite-quick.md)")
    args = p.parse_args(argv)
    if args.threads < 1:
        p.error(f"--threads must be >= 1, got {args.threads}")
    if args.suite:
        page = args.out or str(ROOT / ("out/suite-quick.md" if args.quick else "docs/benchmarks.md"))
        results = ROOT / ("out/suite-quick" if args.quick else "benchmarks/results/suite")
        cmd = [sys.executable, str(ROOT / "benchmarks" / "suite.py"), "run", *(["--quick"] if args.quick else []), *(["--only", args.only] if args.only else []),
               "--threads", str(args.threads), "--out", str(results), "--page", page]
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
        return subprocess.run(cmd, cwd=ROOT, env=env).returncode
    args.out = args.out or str(ROOT / "docs" / "benchmarks-quick.md")
    selected = [b for b in BENCHMARKS if b.quick_mode or not args.quick]
    if args.only:  # (with --suite, --only names suite cells instead)
        wanted = [w.strip() for w in args.only.split(",") if w.strip()]
        unknown = [w for w in wanted if w not in NAMES]
        if unknown:
            p.error(f"unknown benchmark {', '.join(unknown)}; choose from {', '.join(NAMES)}")
        selected = [b for b in BENCHMARKS if b.name in wanted]
    timeout = args.timeout if args.timeout is not None else (900.0 if args.quick else None)
    sys.path.insert(0, str(ROOT / "src"))
    from priorshift.io import atomic_write

    started = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    t0 = time.perf_counter()
    results = []
    with tempfile.TemporaryDirectory(prefix="priorshift-bench-") as tmp:
        for b in selected:
            print(f"run_all: {b.name} ...", end=" ", flush=True)
            r = run_one(b, args.quick, args.threads, Path(tmp), timeout)
            results.append(r)
            print(f"{r['seconds']:.1f} s" + ("" if r["rc"] == 0 else f" — FAILED ({'timeout' if r['rc'] is None else 'exit ' + str(r['rc'])})"), flush=True)
    text = render(results, args.quick, args.threads, argv, started, time.perf_counter() - t0)
    atomic_write(args.out, lambda path: Path(path).write_text(text, encoding="utf-8"))
    print(f"run_all: wrote {args.out} ({sum(r['rc'] == 0 for r in results)}/{len(results)} benchmarks ok, {time.perf_counter() - t0:.0f} s)")
    return 0 if all(r["rc"] == 0 for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
