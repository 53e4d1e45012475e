"""Helpers shared by the benchmark scripts: best-of-N timing, a hardware line, writing the results table."""

from __future__ import annotations

import platform
import time
from pathlib import Path

import torch


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
