"""Distributed set-up as ``torchrun`` launches it: environment detection, process group, rank-0 helpers.

Without the ``torchrun`` variables (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``) a run is one plain process
and every helper here is a no-op. With them, each process joins the default process group (NCCL on
CUDA, gloo on CPU) and uses the GPU of its ``LOCAL_RANK``. Multi-node runs need nothing more than the
same ``torchrun`` command on every node; there is no process management here.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from .config import ConfigError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """True on rank 0, the only rank that logs and writes."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """True when there is more than one process."""
        return self.world_size > 1


def detect() -> DistInfo:
    """Read ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` as set by ``torchrun`` (defaults: one process).

    Raises:
        ConfigError: the variables are not integers or are inconsistent.
    """
    try:
        rank = int(os.environ.get("RANK", "0"))
        world = int(os.environ.get("WORLD_SIZE", "1"))
        local = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError:
        raise ConfigError("RANK, WORLD_SIZE and LOCAL_RANK must be integers (launch with torchrun)") from None
    if world < 1 or not 0 <= rank < world or local < 0:
        raise ConfigError(f"inconsistent torchrun environment: RANK={rank} WORLD_SIZE={world} LOCAL_RANK={local}")
    return DistInfo(rank, world, local)


def pick_device(kind: str, info: DistInfo) -> torch.device:
    """The device of this process: ``cuda:LOCAL_RANK`` or ``cpu``.

    Args:
        kind: ``"auto"``, ``"cuda"`` or ``"cpu"``.
        info: this process's ranks.

    Raises:
        ConfigError: CUDA asked for but unavailable, or fewer GPUs than local processes.
    """
    use_cuda = kind == "cuda" or (kind == "auto" and torch.cuda.is_available())
    if not use_cuda:
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ConfigError("trainer.device is cuda but no CUDA GPU is available (use trainer.device=cpu)")
    if info.local_rank >= torch.cuda.device_count():
        raise ConfigError(f"LOCAL_RANK {info.local_rank} has no GPU: only {torch.cuda.device_count()} visible")
    torch.cuda.set_device(info.local_rank)
    return torch.device("cuda", info.local_rank)


def init(info: DistInfo, device: torch.device, timeout_s: float = 1800.0) -> None:
    """Join the default process group when there are several processes (NCCL on CUDA, gloo on CPU)."""
    if not info.distributed or dist.is_initialized():
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    kwargs: dict[str, Any] = {"backend": backend, "timeout": timedelta(seconds=timeout_s)}
    if device.type == "cuda":
        kwargs["device_id"] = device
    dist.init_process_group(**kwargs)
    log.info("process group: %s, world size %d", backend, info.world_size)


def destroy() -> None:
    """Leave the process group, if any."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def active() -> bool:
    """True inside an initialised process group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def shard(n: int, rank: int, world_size: int) -> list[int]:
    """The sample ids of one rank: ``i`` goes to rank ``i % world_size``; no padding, no repeats."""
    return list(range(rank, n, world_size))


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over ranks in place (identity in one process); returns it."""
    if active():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_gather_objects(obj: Any) -> list[Any]:
    """``[obj of rank 0, obj of rank 1, ...]`` on every rank (``[obj]`` in one process)."""
    if not active():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    """Wait for every rank (no-op in one process)."""
    if active():
        dist.barrier()
