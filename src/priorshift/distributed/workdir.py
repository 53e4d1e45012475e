"""The work directory of a distributed CLI run: where it lives, what run it belongs to, resuming or refusing it."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any, Mapping

from torch import Tensor

from priorshift.io import atomic_write_json

__all__ = ["work_dir_for", "digest", "prepare_work_dir"]


def work_dir_for(out: str | Path) -> Path:
    """Where a distributed run into ``out`` keeps its shards: ``OUT.partial`` beside it."""
    out = Path(out)
    return out.with_name(out.name + ".partial")


def digest(data: Tensor | bytes | str | Path) -> str:
    """A short SHA-256 of a tensor's values, bytes, or a file's contents (to tell runs apart)."""
    h = hashlib.sha256()
    if isinstance(data, Tensor):
        h.update(str((tuple(data.shape), data.dtype)).encode())
        h.update(data.detach().cpu().contiguous().numpy().tobytes())
    elif isinstance(data, (str, Path)):
        with open(data, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    else:
        h.update(data)
    return h.hexdigest()[:16]


def prepare_work_dir(work_dir: str | Path, run_config: Mapping[str, Any], *, overwrite: bool = False, flag: str = "--overwrite") -> bool:
    """Make ``work_dir`` ready for the run described by ``run_config`` (JSON-able); return True when it resumes
    an earlier run of the same config. A work directory of a different run is refused unless ``overwrite``,
    which discards it. Call it on one rank only."""
    work_dir = Path(work_dir)
    wanted = json.loads(json.dumps(run_config, sort_keys=True, default=str))
    path = work_dir / "config.json"
    if work_dir.exists():
        if not work_dir.is_dir():
            raise ValueError(f"{work_dir} is a file, not a work directory; remove it")
        try:
            found = json.loads(path.read_text()) if path.exists() else None
        except json.JSONDecodeError:
            found = None
        if found == wanted:
            return True
        empty = not any(p for p in work_dir.iterdir() if not p.name.startswith("."))
        if not (empty or overwrite):
            if found is None:
                why = "has no readable config.json"
            else:
                keys = sorted(k for k in set(found) | set(wanted) if found.get(k) != wanted.get(k))
                why = f"was started with other settings ({', '.join(keys)} differ)"
            raise ValueError(f"{work_dir} holds the shards of an unfinished run that {why}; re-run that command to finish it, "
                             f"pass {flag} to discard it, or choose another --out")
        shutil.rmtree(work_dir)
    work_dir.mkdir(parents=True)
    atomic_write_json(path, wanted)
    return False
