"""Helpers shared by the commands: checks of ``--out`` and ``--threads``, the note on how an image file was read,
and plain TOML-able values."""

from __future__ import annotations

from pathlib import Path


def _check_out_parent(out: Path) -> None:
    for parent in out.absolute().parents:
        if parent.exists():
            if not parent.is_dir():
                raise ValueError(f"--out {out}: {parent} is a file, not a directory")
            return


def _check_threads(n: int) -> None:
    if n < 0:
        raise ValueError(f"--threads must be >= 0 (0: torch's choice), got {n}")


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
