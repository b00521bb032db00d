"""Process-group setup from ``torchrun`` and the few collectives a training loop needs.

The t-ReX recipe (Sariyildiz et al., ICLR 2023) trains on several GPUs with a memory bank
gathered across processes. :func:`init_distributed` reads the variables ``torchrun`` sets
(``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT`` or a rendezvous) and
creates the default process group; a plain ``python train.py`` run creates none. Every helper
here is the identity (or a no-op) without a process group, so single-process code needs no
special case.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from protohead.distributed import get_world_size, is_dist_initialized

__all__ = [
    "DistributedInfo",
    "all_gather_objects",
    "all_reduce_sum",
    "barrier",
    "cleanup_distributed",
    "init_distributed",
]


@dataclass(frozen=True)
class DistributedInfo:
    """Where this process sits in the job.

    Attributes:
        rank: Global rank, in ``[0, world_size)``.
        world_size: Number of processes, >= 1.
        local_rank: Rank on this node (the GPU index to use).
        device: The device this process trains on.

    Example:
        >>> info = init_distributed("cpu", env={})  # not launched by torchrun
        >>> (info.rank, info.world_size, info.local_rank, info.device)
        (0, 1, 0, device(type='cpu'))
    """

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """True on rank 0, the process that logs and writes files."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """True when a process group with more than one process exists."""
        return self.world_size > 1


def _env_int(env: Mapping[str, str], name: str) -> int:
    if name not in env:
        raise ValueError(
            f"environment variable {name} must be set when WORLD_SIZE > 1 (launch with torchrun)"
        )
    raw = env[name]
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"environment variable {name} must be an int, got {raw!r}") from None
    if value < 0:
        raise ValueError(f"environment variable {name} must be >= 0, got {value}")
    return value


def init_distributed(
    device: str | torch.device = "cuda",
    backend: str | None = None,
    env: Mapping[str, str] | None = None,
) -> DistributedInfo:
    """Create the default process group when launched by ``torchrun``; otherwise do nothing.

    With ``WORLD_SIZE > 1`` in the environment the process group is initialised (``nccl`` for
    CUDA, ``gloo`` otherwise, unless ``backend`` is given) and, on CUDA, the device becomes
    ``cuda:LOCAL_RANK``. With ``WORLD_SIZE`` unset or 1 no group is created.

    Args:
        device: ``"cuda"``, ``"cpu"`` or a device; on CUDA the index is replaced by the local rank.
        backend: Process-group backend override.
        env: Where to read ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK`` (default
            ``os.environ``). The rendezvous itself (``MASTER_ADDR``, ``MASTER_PORT`` and, under
            torchrun, its agent store) is done by ``torch.distributed`` from ``os.environ``.

    Returns:
        This process's :class:`DistributedInfo`.

    Raises:
        ValueError: If the torchrun variables are malformed or inconsistent.
        RuntimeError: If CUDA is requested but unavailable.

    Example:
        >>> info = init_distributed("cpu", env={})
        >>> info.rank, info.world_size, info.distributed, info.device
        (0, 1, False, device(type='cpu'))
    """
    environ = os.environ if env is None else env
    target = torch.device(device)
    if target.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(
            f"device {str(device)!r} needs CUDA, which is not available; pass --device cpu"
        )
    world_size = _env_int(environ, "WORLD_SIZE") if "WORLD_SIZE" in environ else 1
    if world_size <= 1:
        return DistributedInfo(0, 1, 0, target)
    rank = _env_int(environ, "RANK")
    local_rank = _env_int(environ, "LOCAL_RANK") if "LOCAL_RANK" in environ else rank
    if rank >= world_size:
        raise ValueError(f"RANK must be < WORLD_SIZE={world_size}, got {rank}")
    if target.type == "cuda":
        target = torch.device("cuda", local_rank)
        torch.cuda.set_device(target)
    if not is_dist_initialized():
        chosen = backend or ("nccl" if target.type == "cuda" else "gloo")
        dist.init_process_group(chosen, rank=rank, world_size=world_size)
    return DistributedInfo(rank, world_size, local_rank, target)


def cleanup_distributed() -> None:
    """Destroy the default process group if one exists.

    Example:
        >>> cleanup_distributed()  # safe without a process group
    """
    if is_dist_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    """Wait for every process (no-op without a process group).

    Example:
        >>> barrier()  # returns at once in a single process
    """
    if is_dist_initialized() and get_world_size() > 1:
        dist.barrier()


def all_reduce_sum(tensor: Tensor) -> Tensor:
    """Sum ``tensor`` over all processes into a new tensor (a copy without a process group).

    Example:
        >>> all_reduce_sum(torch.tensor([1.0, 2.0]))
        tensor([1., 2.])
    """
    out = tensor.detach().clone()
    if is_dist_initialized() and get_world_size() > 1:
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


def all_gather_objects(obj: Any) -> list[Any]:
    """Every process's picklable ``obj``, in rank order (``[obj]`` without a process group).

    Example:
        >>> all_gather_objects({"rank": 0})
        [{'rank': 0}]
    """
    if not (is_dist_initialized() and get_world_size() > 1):
        return [obj]
    out: list[Any] = [None] * get_world_size()
    dist.all_gather_object(out, obj)
    return out
