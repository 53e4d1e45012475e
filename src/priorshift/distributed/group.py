"""The torchrun process group of a distributed run: its environment, joining it, barriers and broadcasts.

torch.distributed only starts the group, broadcasts rank 0's go-ahead and holds the barriers; results travel
through files (:mod:`priorshift.distributed.shards`).
"""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Any

import torch

__all__ = ["env", "check_env", "init", "barrier", "broadcast", "close", "DEFAULT_TIMEOUT"]

_TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
DEFAULT_TIMEOUT = timedelta(hours=24)
"""Barriers wait for the slowest rank to finish its whole shard, which can take hours; a crashed rank does not
leave the others waiting this long, since torchrun then stops the whole group."""


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
