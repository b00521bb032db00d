"""Collectives that degrade gracefully when no process group is initialised."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["all_gather_variable", "get_rank", "get_world_size", "is_dist_initialized"]

# torch >= 2.14 renamed all_gather_into_tensor; keep working on older releases too.
_all_gather_single = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor


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
    case. The result carries no gradient.

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
    if tensor.ndim == 0:
        raise ValueError("tensor must have at least 1 dimension, got a 0-d tensor")
    world_size = get_world_size()
    if world_size == 1:
        return tensor.detach()

    tensor = tensor.detach().contiguous()
    local_rows = torch.tensor([tensor.shape[0]], device=tensor.device, dtype=torch.long)
    all_rows = torch.empty(world_size, device=tensor.device, dtype=torch.long)
    _all_gather_single(all_rows, local_rows)
    # The row counts must be known on the host to size the receive buffer; the collective
    # has already synchronised the ranks, so this read costs no extra stall.
    rows = all_rows.tolist()
    max_rows = max(rows)

    if all(r == max_rows for r in rows):
        out = tensor.new_empty((world_size * max_rows, *tensor.shape[1:]))
        _all_gather_single(out, tensor)
        return out

    padded = tensor.new_zeros((max_rows, *tensor.shape[1:]))
    padded[: tensor.shape[0]] = tensor
    gathered = tensor.new_empty((world_size * max_rows, *tensor.shape[1:]))
    _all_gather_single(gathered, padded)
    return torch.cat([gathered[r * max_rows : r * max_rows + n] for r, n in enumerate(rows)], dim=0)
