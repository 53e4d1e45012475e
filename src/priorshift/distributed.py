"""Scale-out scoring under ``torchrun``: each rank scores its shard into its own file, a merge joins them.

``torchrun --nproc-per-node N -m priorshift score ... --distributed`` (or these functions from Python):

* **Sharding** (:func:`shard_batches`): the unit of work is one *batch* of the single-process run — images
  ``[k·b, (k+1)·b)`` for batch size ``b`` — dealt to the ranks the way ``torch.utils.data.DistributedSampler``
  deals samples (strided, padded by wrapping around so that every rank gets ``ceil(batches / world)``).
  Scoring the very batches a single process would score makes the merged result equal to a single-process run
  bit for bit: per-image seeds are resolved once for all N images (:func:`priorshift.detectors.resolve_seeds`),
  and batched kernels (BLAS, convolutions) are only reproducible for the same batch, not across batch
  compositions (they differ in the last bits). With ``batch_size=1`` this is DistributedSampler over ids.
* **Shard files**: rank ``r`` rewrites ``work_dir/rank{r}.json`` atomically after every batch — per sample id its
  score, NFE, seed and per-image scalar extras — and, when the detector returns maps, ``rank{r}_maps.npz``
  (keyed ``map/<id>``, plus any kept per-image arrays such as ``reconstruction/<id>``), written before the JSON so
  that an id in the JSON always has its map.
* **Resume**: a rank never scores an id recorded in *any* rank's shard file (from this run or an earlier, killed
  one — even one with another world size); with the earlier run's batch size, whole batches are skipped and a batch
  that was interrupted is scored again whole. A recorded seed that differs from this run's is an error (another
  run's files). The CLI resumes only a work directory whose config (batch size included) matches the run's.
* **Merge** (:func:`merge`): the union of the shard files, de-duplicated (padding, and re-runs, record some ids
  twice; identical duplicates are fine, differing ones are an error naming the id); a missing id is an error.

torch.distributed only starts the group, broadcasts rank 0's go-ahead and holds the barriers; results travel
through files.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from priorshift.io import atomic_write, atomic_write_json

__all__ = [
    "Merged",
    "barrier",
    "broadcast",
    "check_env",
    "close",
    "digest",
    "env",
    "init",
    "merge",
    "prepare_work_dir",
    "read_shards",
    "score_shard",
    "shard_batches",
    "shard_indices",
    "work_dir_for",
]

SHARD_FORMAT = "priorshift-shard-1"
_SHARD_RE = re.compile(r"rank(\d+)\.json")
_TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
DEFAULT_TIMEOUT = timedelta(hours=24)
"""Barriers wait for the slowest rank to finish its whole shard, which can take hours; a crashed rank does not
leave the others waiting this long, since torchrun then stops the whole group."""


# -- the process group --------------------------------------------------------------------------------
def env() -> dict[str, int] | None:
    """``{"rank", "world", "local_rank"}`` from the torchrun environment, or None outside torchrun."""
    if any(k not in os.environ for k in _TORCHRUN_VARS):
        return None
    return {"rank": int(os.environ["RANK"]), "world": int(os.environ["WORLD_SIZE"]), "local_rank": int(os.environ["LOCAL_RANK"])}


def check_env() -> dict[str, int]:
    """The torchrun environment, or a ValueError saying how to start a distributed run."""
    found = env()
    if found is None:
        missing = ", ".join(k for k in _TORCHRUN_VARS if k not in os.environ)
        raise ValueError(f"distributed scoring runs under torchrun, which sets {', '.join(_TORCHRUN_VARS)} (missing here: {missing}): "
                         "start it as `torchrun --nproc-per-node N -m priorshift score ... --distributed`, or drop --distributed")
    return found


def init(device: str | torch.device | None = None, *, timeout: timedelta = DEFAULT_TIMEOUT) -> tuple[int, int]:
    """Join the torchrun process group — NCCL when ``device`` is CUDA (each rank on ``cuda:LOCAL_RANK``), gloo
    otherwise — and return ``(rank, world)``. A no-op (beyond the check) when the group is already up."""
    import torch.distributed as dist

    found = check_env()
    cuda = device is not None and torch.device(device).type == "cuda"
    if not dist.is_initialized():
        if cuda:
            torch.cuda.set_device(found["local_rank"])
        dist.init_process_group("nccl" if cuda else "gloo", timeout=timeout)
    return dist.get_rank(), dist.get_world_size()


def _device() -> torch.device | None:
    import torch.distributed as dist

    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else None


def barrier() -> None:
    import torch.distributed as dist

    device = _device()
    dist.barrier(device_ids=[device.index]) if device is not None else dist.barrier()


def broadcast(obj: Any, src: int = 0) -> Any:
    """``obj`` from rank ``src`` on every rank (a picklable value)."""
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=src, device=_device())
    return box[0]


def close() -> None:
    """Leave the process group (if one is up)."""
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


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
def _shard_path(work_dir: Path, rank: int) -> Path:
    return Path(work_dir) / f"rank{rank}.json"


def _maps_path(work_dir: Path, rank: int) -> Path:
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


def _read_arrays(path: Path) -> dict[str, np.ndarray]:
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
                raise ValueError(f"{_shard_path(work_dir, r)} records sample {i} with seed {rec['seed']}, but this run gives it seed "
                                 f"{seeds[i]}: the work directory holds another run's shards; use another one or delete it")
            done.add(i)
    own = shards.get(rank) or {"format": SHARD_FORMAT, "n": n, "columns": [], "dtypes": {}, "records": {}}
    own["rank"], own["world"] = rank, world
    arrays = _read_arrays(_maps_path(work_dir, rank))
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
            _write_arrays(_maps_path(work_dir, rank), arrays)  # before the JSON: an id in the JSON has its map
        for pos, i in enumerate(ids):
            own["records"][i] = {"score": score[pos], "nfe": nfe, "seed": seeds[i], "extras": {key: extras[key][pos] for key in extras}}
        atomic_write_json(_shard_path(work_dir, rank), {**own, "records": {str(i): r for i, r in sorted(own["records"].items())}})
        done.update(ids)
        scored.extend(ids)
        if progress is not None:
            progress(j + 1, len(todo))
    return scored


# -- merge --------------------------------------------------------------------------------------------
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
        arrays = _read_arrays(_maps_path(work_dir, rank))
        if shard["records"]:
            if columns is None:
                columns, dtypes = list(shard["columns"]), dict(shard["dtypes"])
            elif list(shard["columns"]) != columns:
                raise ValueError(f"{_shard_path(work_dir, rank)} records the extras {shard['columns']}, other shards {columns}: "
                                 "they come from different runs")
        for i, rec in shard["records"].items():
            if not 0 <= i < n:
                raise ValueError(f"{_shard_path(work_dir, rank)} records sample {i}, outside 0..{n - 1}: it comes from another run")
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


# -- the work directory of a CLI run ------------------------------------------------------------------
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
