"""Helpers shared by the commands: checks of ``--out`` and ``--threads``, the note on how an image file was read,
and plain TOML-able values."""

from __future__ import annotations

import contextlib
from pathlib import Path


def _check_out_parent(out: Path) -> None:
    for parent in out.absolute().parents:
        if parent.exists():
            if not parent.is_dir():
                raise ValueError(f"--out {out}: {parent} is a file, not a directory")
            return


def _cpu_count() -> int:
    import os

    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _check_threads(n: int, command: str = "score") -> int:
    """``--threads``: refused below 0; above this machine's CPU cores capped to them with a warning (ten thousand
    threads on two cores make a run twenty times slower). Returns the number to use (0: torch's choice)."""
    if n < 0:
        raise ValueError(f"--threads must be >= 0 (0: torch's choice), got {n}")
    cores = _cpu_count()
    if n > cores:
        _warn(command, f"--threads {n} is more than the {cores} CPU core(s) here; using {cores}")
        return cores
    return n


def _warn(command: str, message: str) -> None:
    """One warning line on stderr: ``priorshift COMMAND: warning: MESSAGE``."""
    import sys

    print(f"priorshift {command}: warning: {message}", file=sys.stderr, flush=True)


def _reading_note(what: str, path: str, reading: str) -> str:
    from priorshift.data.datasets import VALUE_RANGES

    note = f"{what} {path}: read as {VALUE_RANGES[reading]}"
    if reading == "unit":
        note += " (float data within [0, 1]; if it is already in [-1, 1], pass --value-range symmetric)"
    return note


def _plain(value):
    """Plain TOML-able values: tuples → lists, paths and devices → str, 0-d numpy / torch values → Python numbers."""
    from collections.abc import Mapping

    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        return value.item()
    if hasattr(value, "tolist"):
        return _plain(value.tolist())
    return str(value)


def _drop_none(value):
    """``value`` without the ``None`` entries TOML cannot hold (a parameter left out takes its default)."""
    if isinstance(value, dict):
        return {k: _drop_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_none(v) for v in value if v is not None]
    return value


class _Interrupted(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C's ``KeyboardInterrupt`` so that every ``finally`` and atomic write cleans up."""

    signal_name = "SIGTERM"


@contextlib.contextmanager
def interruptible():
    """While the block runs (in the main thread), SIGTERM raises :class:`_Interrupted`; the handler before is restored."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise _Interrupted()

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
