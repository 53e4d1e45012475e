"""Helpers shared by the benchmark scripts: best-of-N timing, a hardware line, writing the results table."""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path

import torch

from priorshift.io import atomic_write


def best_time(fn, repeats: int) -> float:
    """Best wall time of ``repeats`` calls of ``fn`` after one warm-up call."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def hardware(threads: int, device: str = "cpu") -> str:
    return f"{platform.processor() or platform.machine()}, {threads} threads, torch {torch.__version__}, device {device}"


def emit(lines: list[str], out: str | None) -> None:
    """Print the table and, if asked, write it to ``out``."""
    text = "\n".join(lines)
    print(text)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text + "\n")


def write_results(out: Path, name: str, lines: list[str], data) -> str:
    """Write ``out/name.md`` (the table) and ``out/name.json`` (``data``) atomically, print the table, return it."""
    text = "\n".join(lines) + "\n"
    atomic_write(out / f"{name}.md", lambda tmp: Path(tmp).write_text(text))
    atomic_write(out / f"{name}.json", lambda tmp: Path(tmp).write_text(json.dumps(data, indent=1, default=float)))
    print(text)
    return text
