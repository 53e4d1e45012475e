"""Merging the shard files of a distributed run into one row per sample id, de-duplicated."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from priorshift.distributed.shards import maps_path, read_arrays, read_shards, shard_path

__all__ = ["Merged", "merge"]


@dataclass(frozen=True)
class Merged:
    """The merged per-id table of a sharded run: one row per sample id ``0..n-1``."""

    score: Tensor
    nfe: Tensor
    """(n,) float64: NFE per image (its batch's total over the batch size)."""
    seed: Tensor
    extras: dict[str, Tensor] = field(default_factory=dict)
    """Per-image scalar extras, (n,) each, in the detector's order."""
    map: Tensor | None = None
    arrays: dict[str, Tensor] = field(default_factory=dict)
    """Kept per-image arrays (``score_shard(keep=...)``) for ids ``0..k-1``, stacked."""

    @property
    def nfe_total(self) -> int | float:
        """The run's total NFE (an int when it is one, as the detectors count it)."""
        total = float(self.nfe.sum())
        return int(round(total)) if abs(total - round(total)) < 1e-6 * max(1.0, abs(total)) else total

    def to_scores(self):
        """The :class:`~priorshift.types.Scores` :func:`priorshift.detectors.score_batches` returns for the same
        run (per-image extras, ``seeds``, ``nfe_per_image``; run-level extras are not recorded in shards)."""
        from priorshift.types import Scores

        n = self.score.shape[0]
        extras = {**self.extras, **self.arrays, "seeds": self.seed, "nfe_per_image": self.nfe_total / n}
        return Scores(score=self.score, map=self.map, nfe=self.nfe_total, extras=extras)


def _canonical(value) -> str:
    return json.dumps(value, sort_keys=True)  # NaN == NaN here, unlike in a float comparison


def merge(work_dir: str | Path, n: int) -> Merged:
    """Join the shard files in ``work_dir`` into one row per sample id ``0..n-1``.

    Ids recorded more than once (padding, re-runs) must agree exactly; a differing duplicate is an error naming the
    id, and so is an id that no shard records (re-run the same command to score it)."""
    work_dir = Path(work_dir)
    shards = read_shards(work_dir, n)
    if not shards:
        raise ValueError(f"{work_dir} holds no shard files (rank*.json): nothing has been scored there yet")
    rows: dict[int, tuple[dict, int]] = {}
    maps: dict[int, np.ndarray] = {}
    kept: dict[str, dict[int, np.ndarray]] = {}
    columns: list[str] | None = None
    dtypes: dict[str, str] = {}
    for rank, shard in shards.items():
        arrays = read_arrays(maps_path(work_dir, rank))
        if shard["records"]:
            if columns is None:
                columns, dtypes = list(shard["columns"]), dict(shard["dtypes"])
            elif list(shard["columns"]) != columns:
                raise ValueError(f"{shard_path(work_dir, rank)} records the extras {shard['columns']}, other shards {columns}: "
                                 "they come from different runs")
        for i, rec in shard["records"].items():
            if not 0 <= i < n:
                raise ValueError(f"{shard_path(work_dir, rank)} records sample {i}, outside 0..{n - 1}: it comes from another run")
            m = arrays.get(f"map/{i}")
            if i in rows:
                first, r0 = rows[i]
                same_map = (m is None) == (i not in maps) and (m is None or np.array_equal(m, maps[i]))
                if _canonical(rec) != _canonical(first) or not same_map:
                    what = next((k for k in ("seed", "score", "nfe", "extras") if _canonical(rec.get(k)) != _canonical(first.get(k))), "map")
                    raise ValueError(f"sample {i} is recorded twice with different results ({what}: rank{r0}.json vs rank{rank}.json "
                                     f"in {work_dir}): the shards come from different runs or a nondeterministic detector")
                continue
            rows[i] = (rec, rank)
            if m is not None:
                maps[i] = m
        for key, value in arrays.items():
            name, _, i = key.rpartition("/")
            if name != "map":
                kept.setdefault(name, {}).setdefault(int(i), value)
    missing = [i for i in range(n) if i not in rows]
    if missing:
        shown = ", ".join(map(str, missing[:10])) + (", ..." if len(missing) > 10 else "")
        raise ValueError(f"{len(missing)} of {n} samples have no score in {work_dir} (ids {shown}): the run did not finish; "
                         "re-run the same command to score them (finished samples are not scored again)")
    if maps and len(maps) != n:
        lacking = [i for i in range(n) if i not in maps][:10]
        raise ValueError(f"samples {lacking} have scores but no map in {work_dir}: delete their shard files and re-run")

    def column(values, dtype):
        return torch.tensor(values, dtype=getattr(torch, dtype, torch.float64))

    recs = [rows[i][0] for i in range(n)]
    arrays_out = {}
    for name, by_id in kept.items():
        k = 0
        while k in by_id:
            k += 1
        if k:
            arrays_out[name] = torch.from_numpy(np.stack([by_id[i] for i in range(k)]))
    return Merged(
        score=column([r["score"] for r in recs], dtypes.get("score", "float64")),
        nfe=torch.tensor([r["nfe"] for r in recs], dtype=torch.float64),
        seed=torch.tensor([r["seed"] for r in recs], dtype=torch.int64),
        extras={c: column([r["extras"][c] for r in recs], dtypes.get(c, "float64")) for c in (columns or [])},
        map=torch.from_numpy(np.stack([maps[i] for i in range(n)])) if maps else None,
        arrays=arrays_out,
    )
