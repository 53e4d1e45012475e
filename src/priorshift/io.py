"""Atomic file writes (readers never see a half-written file) and a small TOML emitter. Standard library only (no torch)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

__all__ = ["atomic_write", "atomic_write_json", "atomic_directory", "resolve_out", "check_writable", "toml_dumps", "toml_value"]


def atomic_write(path: str | Path, write: Callable[[str], Any]) -> None:
    """Call ``write(tmp_path)`` then rename onto ``path``: readers never see a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 would make results unreadable to others
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def atomic_write_json(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as indented, key-sorted JSON (with a final newline) through :func:`atomic_write`."""

    def write(tmp):
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=2, sort_keys=True)
            f.write("\n")

    atomic_write(path, write)


def resolve_out(out: str | Path) -> Path:
    """``out`` with a symbolic link at its end followed (to the directory it points to, existing or not), so that
    replacing the directory replaces the link's target and leaves the link in place."""
    out = Path(out)
    return Path(os.path.realpath(out)) if out.is_symlink() else out


def check_writable(out: str | Path, flag: str = "--out") -> None:
    """Raise a one-line ``ValueError`` naming ``flag`` unless a directory can be created at ``out`` (followed
    through a symlink): its nearest existing ancestor must be a directory in which a file can be created — tried,
    not guessed (permission bits do not tell for root or read-only file systems). Leaves nothing behind."""
    out = resolve_out(out)
    for parent in out.absolute().parents:
        if parent.exists():
            break
    if not parent.is_dir():
        raise ValueError(f"{flag} {out}: {parent} is a file, not a directory")
    try:
        fd, probe = tempfile.mkstemp(prefix=".priorshift-probe.", dir=parent)
    except OSError as e:
        raise ValueError(f"{flag} {out}: cannot write in {parent} ({e.strerror or e}); choose a writable directory") from None
    os.close(fd)
    os.remove(probe)


@contextlib.contextmanager
def atomic_directory(out: str | Path) -> Iterator[Path]:
    """Write a whole directory at once: files go into a temporary directory beside ``out`` (yielded), which
    replaces ``out`` when the block ends without error. On error (an exception, Ctrl-C) ``out`` is as before and
    the temporary directory is gone, so readers never see a half-written or mixed run. A symlink ``out`` is
    followed (:func:`resolve_out`): its target is replaced, the link stays."""
    out = resolve_out(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        yield tmp
        mask = os.umask(0)
        os.umask(mask)
        tmp.chmod(0o777 & ~mask)  # mkdtemp's 0700 would hide the results from others
        if out.exists():
            old = out.with_name(f".{out.name}.old.{tmp.name[-8:]}")
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# -- TOML: a small emitter; tomllib reads its output back ------------------------------------------------
_TOML_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}


def _toml_string(s: str) -> str:
    out = []
    for ch in s:
        o = ord(ch)
        if ch in _TOML_ESCAPES:
            out.append(_TOML_ESCAPES[ch])
        elif o < 0x20 or o == 0x7F:
            out.append(f"\\u{o:04x}")
        elif 0xD800 <= o <= 0xDFFF:
            raise ValueError(f"the string {s!r} holds a lone surrogate (U+{o:04X}), which TOML cannot represent")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _toml_key(key) -> str:
    if not isinstance(key, str):
        raise TypeError(f"TOML keys are strings, got {key!r}")
    return key if key and all(c.isascii() and (c.isalnum() or c in "_-") for c in key) else _toml_string(key)


def toml_value(value) -> str:
    """One TOML value: str, int (64-bit), float (inf / nan included), bool, a list / tuple of values (an array) or
    a mapping (an inline table). ``None`` and other types are a ``TypeError``: TOML has no null."""
    import math
    from collections.abc import Mapping

    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        if not -(2**63) <= value < 2**63:
            raise ValueError(f"the integer {value} does not fit TOML's 64-bit integers")
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)  # shortest round-trip form; always holds '.' or 'e' (1.0, 1e-08, 1e+16)
    if isinstance(value, str):
        return _toml_string(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{_toml_key(k)} = {toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"{type(value).__name__} values cannot be written as TOML (got {value!r})")


def toml_dumps(data) -> str:
    """``data`` (a mapping of str keys to TOML values) as a TOML document that :mod:`tomllib` reads back equal
    (tuples come back as lists). Nested mappings become ``[a.b]`` tables, mappings inside lists inline tables."""
    from collections.abc import Mapping

    if not isinstance(data, Mapping):
        raise TypeError(f"a TOML document is a mapping, got {type(data).__name__}")
    lines: list[str] = []

    def table(t: Mapping, path: tuple) -> None:
        own = [(k, v) for k, v in t.items() if not isinstance(v, Mapping)]
        subs = [(k, v) for k, v in t.items() if isinstance(v, Mapping)]
        if path and (own or not subs):  # a table without own keys exists through its sub-tables' headers
            lines.extend(["", "[" + ".".join(_toml_key(p) for p in path) + "]"])
        lines.extend(f"{_toml_key(k)} = {toml_value(v)}" for k, v in own)
        for k, v in subs:
            table(v, (*path, k))

    table(data, ())
    return "\n".join(lines).lstrip("\n") + "\n"
