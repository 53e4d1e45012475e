"""Shards of a distributed run: which batches each rank scores, the per-rank shard files, and scoring into them.

See :mod:`priorshift.distributed` for the scheme (batches dealt like ``DistributedSampler``, atomic per-rank files
keyed by sample id, resume without rescoring).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from priorshift.io import atomic_write, atomic_write_json

__all__ = ["SHARD_FORMAT", "shard_batches", "shard_indices", "shard_path", "maps_path", "read_shards", "read_arrays", "score_shard"]

SHARD_FORMAT = "priorshift-shard-1"
_SHARD_RE = re.compile(r"rank(\d+)\.json")


# -- sharding -----------------------------------------------------------------------------------------
def shard_batches(n: int, rank: int, world: int, batch_size: int = 1) -> list[list[int]]:
    """The batches rank ``rank`` of ``world`` scores: the single-process batches ``[k·b, min((k+1)·b, n))``
    dealt like ``DistributedSampler(shuffle=False)`` deals samples — batch ``k`` goes to rank ``k mod world``,
    and the list of batches is padded by wrapping around to a multiple of ``world``, so every rank gets
    ``ceil(ceil(n / b) / world)`` batches and some batches appear twice (merge de-duplicates)."""
    for name, value, lo in (("n", n, 1), ("world", world, 1), ("batch_size", batch_size, 1)):
        if int(value) != value or value < lo:
            raise ValueError(f"{name} must be an integer >= {lo}, got {value}")
    if int(rank) != rank or not 0 <= rank < world:
        raise ValueError(f"rank must be an integer in [0, {world}), got {rank}")
    batches = [list(range(start, min(start + batch_size, n))) for start in range(0, n, batch_size)]
    per_rank = -(-len(batches) // world)
    padded = [batches[i % len(batches)] for i in range(per_rank * world)]  # wraps around, repeating when world > batches
    return padded[rank::world]


def shard_indices(n: int, rank: int, world: int, batch_size: int = 1) -> list[int]:
    """The sample ids of rank ``rank``'s shard, in scoring order (:func:`shard_batches` flattened). With
    ``batch_size=1`` these are exactly ``DistributedSampler(shuffle=False)``'s: ``ceil(n / world)`` ids per rank."""
    return [i for batch in shard_batches(n, rank, world, batch_size) for i in batch]


# -- shard files --------------------------------------------------------------------------------------
def shard_path(work_dir: Path, rank: int) -> Path:
    return Path(work_dir) / f"rank{rank}.json"


def maps_path(work_dir: Path, rank: int) -> Path:
    return Path(work_dir) / f"rank{rank}_maps.npz"


def _shard_files(work_dir: Path) -> list[tuple[int, Path]]:
    work_dir = Path(work_dir)
    if not work_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in work_dir.iterdir() if (m := _SHARD_RE.fullmatch(p.name))]
    return sorted(found)


def _read_shard(path: Path, n: int) -> dict:
    try:
        shard = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"shard file {path} cannot be read ({e}); delete it to score its samples again") from None
    if not isinstance(shard, dict) or shard.get("format") != SHARD_FORMAT:
        raise ValueError(f"{path} is not a priorshift shard file (format {shard.get('format') if isinstance(shard, dict) else None!r})")
    if shard["n"] != n:
        raise ValueError(f"shard file {path} belongs to a run of {shard['n']} samples, not {n}: use another work directory")
    shard["records"] = {int(k): v for k, v in shard["records"].items()}
    return shard


def read_shards(work_dir: str | Path, n: int) -> dict[int, dict]:
    """Every shard file in ``work_dir`` by rank (records keyed by int sample id)."""
    return {rank: _read_shard(path, n) for rank, path in _shard_files(Path(work_dir))}


def read_arrays(path: Path) -> dict[str, np.ndarray]:
    if not path.exists():
        return {}
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def _write_arrays(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    def write(tmp):
        with open(tmp, "wb") as f:  # a file object: np.savez would append ".npz" to a path
            np.savez(f, **arrays)

    atomic_write(path, write)


def _numpy(t: Tensor) -> np.ndarray:
    t = t.detach().cpu()
    return (t.float() if t.dtype == torch.bfloat16 else t).numpy()  # numpy has no bfloat16


def _dtype_name(t: Tensor) -> str:
    return str(t.dtype).removeprefix("torch.")


def score_shard(
    detector,
    data: Tensor,
    *,
    work_dir: str | Path,
    seed=0,
    batch_size: int = 16,
    rank: int,
    world: int,
    progress: Callable[[int, int], None] | None = None,
    keep: Sequence[str] = (),
    keep_first: int | None = None,
) -> list[int]:
    """Score rank ``rank``'s batches of ``data`` (all N samples, identical on every rank) into ``work_dir``;
    return the ids scored by this call.

    Seeds are resolved once for all N (as :func:`priorshift.detectors.score_batches` does), so a sample's result
    does not depend on which rank scores it. Ids recorded by any rank's shard file are never scored again
    (resume; with the earlier run's batch size whole batches are skipped). After every batch this rank's files are rewritten atomically. ``progress(done, total)``:
    after each batch, over the batches this call has to score. ``keep``: names of per-image array extras (e.g.
    ``"reconstruction"``) to save with the maps, for ids below ``keep_first`` (all ids when None)."""
    from priorshift.detectors.base import resolve_seeds

    work_dir = Path(work_dir)
    n = int(data.shape[0])
    if n == 0:
        raise ValueError("no data to score: the input holds 0 samples")
    batches = shard_batches(n, rank, world, int(batch_size))
    seeds = resolve_seeds(seed, n)
    shards = read_shards(work_dir, n)
    done: set[int] = set()
    for r, shard in shards.items():
        for i, rec in shard["records"].items():
            if rec["seed"] != seeds[i]:
                raise ValueError(f"{shard_path(work_dir, r)} records sample {i} with seed {rec['seed']}, but this run gives it seed "
                                 f"{seeds[i]}: the work directory holds another run's shards; use another one or delete it")
            done.add(i)
    own = shards.get(rank) or {"format": SHARD_FORMAT, "n": n, "columns": [], "dtypes": {}, "records": {}}
    own["rank"], own["world"] = rank, world
    arrays = read_arrays(maps_path(work_dir, rank))
    n_batches = -(-n // int(batch_size))
    todo = [(k, b) for k, b in enumerate(batches) if not set(b) <= done]
    scored: list[int] = []
    for j, (k, batch) in enumerate(todo):
        if k * world + rank >= n_batches:
            # A padding batch (a repeat of another rank's): that rank may have recorded it since we started.
            done |= {i for r, p in _shard_files(work_dir) if r != rank for i in _read_shard(p, n)["records"]}
        # Only ids nobody has recorded: with the same batch size as the earlier run, a batch is all or nothing.
        ids = [i for i in batch if i not in done]
        if not ids:
            if progress is not None:
                progress(j + 1, len(todo))
            continue
        s = detector.score(data[ids], seed=[seeds[i] for i in ids])
        b = len(ids)
        if s.score.shape != (b,):
            raise ValueError(f"{type(detector).__name__}.score returned scores of shape {tuple(s.score.shape)} for a batch of {b}")
        per_image = {key: v for key, v in s.extras.items() if isinstance(v, Tensor) and v.ndim == 1 and v.shape[0] == b and key != "seeds"}
        if not own["dtypes"]:
            own["columns"] = list(per_image)
            own["dtypes"] = {"score": _dtype_name(s.score), **{key: _dtype_name(v) for key, v in per_image.items()}}
        lacking = [key for key in own["columns"] if key not in per_image]
        if lacking:
            raise ValueError(f"{type(detector).__name__}.score returned no per-image {', '.join(lacking)} for samples {ids}, "
                             "unlike for its earlier batches")
        # Per-image NFE: the batch's total over its size. For detectors whose cost is per image (every detector
        # here: NFE = images × posterior samples × steps) this equals the single-process run's NFE / N; and since
        # these are the single-process run's batches, the merged total equals that run's total NFE.
        nfe = float(s.nfe) / b
        score = s.score.detach().cpu().tolist()
        extras = {key: per_image[key].detach().cpu().tolist() for key in own["columns"]}
        added = False
        for pos, i in enumerate(ids):
            if s.map is not None:
                arrays[f"map/{i}"], added = _numpy(s.map[pos]), True
            for name in keep:
                v = s.extras.get(name)
                if isinstance(v, Tensor) and v.ndim >= 1 and v.shape[0] == b and (keep_first is None or i < keep_first):
                    arrays[f"{name}/{i}"], added = _numpy(v[pos]), True
        if added:
            _write_arrays(maps_path(work_dir, rank), arrays)  # before the JSON: an id in the JSON has its map
        for pos, i in enumerate(ids):
            own["records"][i] = {"score": score[pos], "nfe": nfe, "seed": seeds[i], "extras": {key: extras[key][pos] for key in extras}}
        atomic_write_json(shard_path(work_dir, rank), {**own, "records": {str(i): r for i, r in sorted(own["records"].items())}})
        done.update(ids)
        scored.extend(ids)
        if progress is not None:
            progress(j + 1, len(todo))
    return scored
