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

Modules: :mod:`~priorshift.distributed.group` (the torchrun environment and process group),
:mod:`~priorshift.distributed.shards` (sharding, shard files, :func:`score_shard`),
:mod:`~priorshift.distributed.merging` and :mod:`~priorshift.distributed.workdir` (the CLI's work directory).
"""

from priorshift.distributed.group import barrier, broadcast, check_env, close, env, init
from priorshift.distributed.merging import Merged, merge
from priorshift.distributed.shards import read_shards, score_shard, shard_batches, shard_indices
from priorshift.distributed.workdir import digest, prepare_work_dir, work_dir_for

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
