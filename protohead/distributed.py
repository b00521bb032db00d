"""Collectives that degrade gracefully when no process group is initialised."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = [
    "all_gather_rows",
    "all_gather_scalar",
    "all_gather_variable",
    "get_rank",
    "get_world_size",
    "is_dist_initialized",
]


def _all_gather_single(output: Tensor, tensor: Tensor) -> None:
    # torch >= 2.14 renamed all_gather_into_tensor. Looked up at call time: builds without
    # distributed support have neither name, and importing protohead must still work there.
    gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
    gather(output, tensor)


def is_dist_initialized() -> bool:
    """True when ``torch.distributed`` is available and a default process group exists.

    Example:
        >>> is_dist_initialized()  # a plain Python process has no process group
        False
    """
    return dist.is_available() and dist.is_initialized()


def get_world_size() -> int:
    """Number of processes in the default group, 1 without a process group.

    Example:
        >>> get_world_size()
        1
    """
    return dist.get_world_size() if is_dist_initialized() else 1


def get_rank() -> int:
    """Rank of this process in the default group, 0 without a process group.

    Example:
        >>> get_rank()
        0
    """
    return dist.get_rank() if is_dist_initialized() else 0


@torch.no_grad()
def all_gather_variable(tensor: Tensor) -> Tensor:
    """Concatenate ``tensor`` from every rank along dim 0, in rank order.

    Ranks may hold different numbers of rows: the row counts are exchanged first and every
    tensor is padded to the largest before the collective. Without a process group (or with a
    world size of 1) the input is returned unchanged, so single-process code needs no special
    case. The result carries no gradient. To gather several tensors that share their row
    count, :func:`all_gather_rows` exchanges the counts (and reads them on the host) once.

    Shapes: ``(b_r, *rest)`` on rank ``r`` ``-> (sum_r b_r, *rest)`` on every rank.

    Args:
        tensor: Tensor with at least one dimension; trailing dims and dtype must agree across
            ranks.

    Raises:
        ValueError: If ``tensor`` is 0-dimensional.

    Example:
        >>> all_gather_variable(torch.arange(3)).tolist()  # no process group: identity
        [0, 1, 2]
    """
    if isinstance(tensor, Tensor) and tensor.ndim == 0:
        raise ValueError("tensor must have at least 1 dimension, got a 0-d tensor")
    return all_gather_rows(tensor)[0]


@torch.no_grad()
def all_gather_rows(*tensors: Tensor, equal_rows: bool = False) -> tuple[Tensor, ...]:
    """:func:`all_gather_variable` for several tensors with the same number of rows.

    With a process group, the ranks' row counts are exchanged and read on the host once for
    all the tensors (the one device sync of a distributed gather: the receive buffers must be
    sized), then each tensor is gathered. With ``equal_rows=True`` the caller promises that
    every rank passes the same number of rows (e.g. a ``DistributedSampler`` with
    ``drop_last=True`` feeding equal batches): the exchange is skipped and the gather never
    waits for the device. Unequal counts are then the caller's bug and are not detected
    (detecting them would cost the exchange that ``equal_rows`` saves): gloo aborts a process
    (``SIGABRT``, no Python exception) and may hand the others wrong rows, NCCL may hang or
    gather wrong rows. Without a process group, the inputs come back detached.

    Shapes: ``(b_r, *rest_i)`` for tensor ``i`` on rank ``r`` ``-> (sum_r b_r, *rest_i)``.

    Args:
        *tensors: At least one tensor, each with at least one dimension, all with the same
            number of rows; each one's trailing dims and dtype must agree across ranks.
        equal_rows: Every rank passes the same number of rows (no count exchange, no sync).

    Raises:
        ValueError: If no tensor is given, one is 0-dimensional, or the row counts differ.

    Example:
        >>> x, y = all_gather_rows(torch.zeros(4, 2), torch.arange(4))
        >>> tuple(x.shape), y.tolist()
        ((4, 2), [0, 1, 2, 3])
    """
    if not tensors:
        raise ValueError("all_gather_rows needs at least one tensor, got none")
    for i, tensor in enumerate(tensors):
        if not isinstance(tensor, Tensor):
            raise TypeError(f"tensors[{i}] must be a Tensor, got {type(tensor).__name__}")
        if tensor.ndim == 0:
            raise ValueError(f"tensors[{i}] must have at least 1 dimension, got a 0-d tensor")
    local = tensors[0].shape[0]
    if any(t.shape[0] != local for t in tensors):
        counts = [t.shape[0] for t in tensors]
        raise ValueError(f"tensors must have the same number of rows, got {counts}")
    world_size = get_world_size()
    if world_size == 1:
        return tuple(t.detach() for t in tensors)

    if equal_rows:
        return tuple(_gather_padded(t.detach().contiguous(), [local] * world_size) for t in tensors)
    device = tensors[0].device
    local_rows = torch.tensor([local], device=device, dtype=torch.long)
    all_rows = torch.empty(world_size, device=device, dtype=torch.long)
    _all_gather_single(all_rows, local_rows)
    rows = all_rows.tolist()  # the host must size the receive buffers
    return tuple(_gather_padded(t.detach().contiguous(), rows) for t in tensors)


@torch.no_grad()
def all_gather_scalar(value: Tensor) -> Tensor:
    """Every rank's 0-d ``value`` in rank order, with one small all-gather.

    Meant for flags that all ranks must agree on (e.g. "this rank's input is valid"): each rank
    passes its own, every rank gets all of them and can take the same decision. The result
    stays on the device; reading it (``.tolist()``) is the caller's one host sync. Without a
    process group (or with one process) no collective runs.

    Shapes: ``() -> (world_size,)``.

    Args:
        value: 0-d tensor; dtype and device must agree across ranks (with NCCL, a CUDA
            tensor).

    Raises:
        TypeError: If ``value`` is not a tensor.
        ValueError: If ``value`` is not 0-d.

    Example:
        >>> all_gather_scalar(torch.tensor(3)).tolist()  # no process group: just this rank
        [3]
    """
    if not isinstance(value, Tensor):
        raise TypeError(f"value must be a Tensor, got {type(value).__name__}")
    if value.ndim != 0:
        raise ValueError(f"value must be a 0-d tensor, got shape {tuple(value.shape)}")
    world_size = get_world_size()
    if world_size == 1:
        return value.detach().reshape(1)
    out = value.new_empty(world_size)
    _all_gather_single(out, value.detach().reshape(1))
    return out


def _gather_padded(tensor: Tensor, rows: list[int]) -> Tensor:
    world_size, max_rows = len(rows), max(rows)
    if all(r == max_rows for r in rows):
        out = tensor.new_empty((world_size * max_rows, *tensor.shape[1:]))
        _all_gather_single(out, tensor)
        return out
    padded = tensor.new_zeros((max_rows, *tensor.shape[1:]))
    padded[: tensor.shape[0]] = tensor
    gathered = tensor.new_empty((world_size * max_rows, *tensor.shape[1:]))
    _all_gather_single(gathered, padded)
    return torch.cat([gathered[r * max_rows : r * max_rows + n] for r, n in enumerate(rows)], dim=0)
