"""Reading ``.npy`` / ``.npz`` files safely: never unpickling, saying what a file is when it is not one, and
checking the size each header declares against the bytes the file holds before anything is allocated."""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["read_npy"]


def _npy_header(f, available: int, what: str) -> None:
    """Read a ``.npy`` header from ``f`` and refuse, before anything is allocated, a header that declares more data
    than the ``available`` bytes (counted from the start of ``f``) hold, or object (pickled) values."""
    from numpy.lib import format as npy_format

    try:
        version = npy_format.read_magic(f)
        if version == (1, 0):
            shape, _, dtype = npy_format.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, _, dtype = npy_format.read_array_header_2_0(f)
        else:
            shape, _, dtype = npy_format._read_array_header(f, version)
    except (ValueError, OSError, EOFError, SyntaxError) as e:
        raise ValueError(f"{what}: a damaged .npy header ({e})") from None
    if dtype.hasobject:
        raise ValueError(f"{what} holds Python objects (a pickle); priorshift never loads pickles — save a numeric array with numpy.save")
    need = int(np.prod(shape, dtype=object)) * dtype.itemsize
    have = available - f.tell()
    if need > have:
        raise ValueError(f"{what}: its header declares a {dtype} array of shape {tuple(shape)} ({need:,} bytes) but the file holds "
                         f"{max(have, 0):,} bytes of data: it is truncated or damaged")


def _check_npy_file(path: Path) -> None:
    """Say what ``path`` is when it is not a NumPy file (empty, text, a pickle, something else), and check the
    declared size of every array in it against the bytes it holds (no header can make us allocate terabytes)."""
    import zipfile

    with open(path, "rb") as f:
        head = f.read(64)
        if not head:
            raise ValueError(f"{path} is empty (0 bytes), not a .npy/.npz file")
        if head.startswith(b"\x93NUMPY"):
            f.seek(0)
            _npy_header(f, path.stat().st_size, str(path))
            return
    if head.startswith(b"PK\x03\x04") or head.startswith(b"PK\x05\x06"):
        try:
            with zipfile.ZipFile(path) as z:
                for info in z.infolist():
                    if info.filename.endswith(".npy"):
                        with z.open(info) as member:
                            _npy_header(member, info.file_size, f"{path} (array {info.filename[:-4]!r})")
        except zipfile.BadZipFile as e:
            raise ValueError(f"{path} is a damaged .npz archive ({e})") from None
        return
    if head[:1] == b"\x80":
        raise ValueError(f"{path} is a Python pickle, not a .npy file; priorshift never loads pickles — save a numeric array with numpy.save")
    text = head.decode("utf-8", "ignore")
    if len(text) >= len(head) // 2 and all(c.isprintable() or c in "\t\r\n" for c in text):
        raise ValueError(f"{path} is a text file (it starts {text[:24]!r}), not a .npy file; load it and save a numeric array with numpy.save")
    raise ValueError(f"{path} is not a .npy/.npz file (it starts with bytes {head[:8]!r}); save a numeric array with numpy.save")


def read_npy(path, key: str | None = None) -> np.ndarray:
    """The array of a ``.npy`` / ``.npz`` file, never unpickling: a missing file is a ``FileNotFoundError``; a
    directory, an empty, text, pickled, truncated or non-NumPy file a ``ValueError`` that names it and says what it
    is. The size a header declares is checked against the file's before anything is allocated. ``.npz`` with
    several arrays needs ``key``."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path} is a directory, not a .npy/.npz file")
    if not path.is_file():
        raise FileNotFoundError(f"no such .npy/.npz file: {path}")
    _check_npy_file(path)
    try:
        data = np.load(path, allow_pickle=False)
    except (ValueError, EOFError, OSError) as e:
        raise ValueError(f"{path} cannot be read as a plain numeric .npy/.npz array ({e}); priorshift never loads "
                         "pickles — save a numeric array with numpy.save") from None
    if isinstance(data, np.lib.npyio.NpzFile):
        with data:
            keys = list(data.keys())
            if key is None and len(keys) != 1:
                raise ValueError(f"{path} holds arrays {keys}; choose one with key=")
            if key is not None and key not in keys:
                raise ValueError(f"{path} has no array {key!r}; it holds {keys}")
            try:
                data = data[key if key is not None else keys[0]]
            except ValueError as e:
                raise ValueError(f"{path} cannot be read as plain numeric arrays ({e}); priorshift never loads pickles") from None
    return np.asarray(data)
