"""An evaluation sampler that splits a dataset over processes without duplicating samples."""

from __future__ import annotations

from collections.abc import Iterator, Sized

from torch.utils.data import Sampler

from protohead import _validation as check
from protohead.distributed import get_rank, get_world_size

__all__ = ["ShardedEvalSampler"]


class ShardedEvalSampler(Sampler[int]):
    """Rank ``r`` of ``w`` gets indices ``r, r + w, r + 2w, ...``: each sample exactly once.

    ``torch.utils.data.DistributedSampler`` pads every shard to the same length by repeating
    samples, which biases a distributed accuracy. Here shards may differ in length by one and
    nothing is repeated, so summing correct counts and totals over ranks gives exactly the
    single-process accuracy (as reported for t-ReX, Sariyildiz et al., ICLR 2023). The order is
    deterministic (no shuffling).

    Args:
        data_source: The dataset (anything with a length).
        num_replicas: Number of processes, >= 1; default: the process group's world size.
        rank: This process's rank, in ``[0, num_replicas)``; default: the process group's rank.

    Raises:
        TypeError: If ``data_source`` has no length.
        ValueError: If ``num_replicas`` or ``rank`` is out of range.

    Example:
        >>> [list(ShardedEvalSampler(range(5), num_replicas=2, rank=r)) for r in (0, 1)]
        [[0, 2, 4], [1, 3]]
    """

    def __init__(
        self, data_source: Sized, num_replicas: int | None = None, rank: int | None = None
    ) -> None:
        if not isinstance(data_source, Sized):
            raise TypeError(f"data_source must have a length, got {type(data_source).__name__}")
        replicas = get_world_size() if num_replicas is None else num_replicas
        replicas = check.integer("num_replicas", replicas, minimum=1)
        this = get_rank() if rank is None else rank
        this = check.integer("rank", this, minimum=0, maximum=replicas - 1)
        self.num_samples_total = len(data_source)
        self.num_replicas = replicas
        self.rank = this

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.num_samples_total, self.num_replicas))

    def __len__(self) -> int:
        return len(range(self.rank, self.num_samples_total, self.num_replicas))
