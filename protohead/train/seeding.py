"""Reproducible randomness for multi-crop training: process seeds and per-sample seeds.

The multi-crop augmentation of t-ReX (Sariyildiz et al., ICLR 2023) draws a dozen random
values per crop. With :class:`SeededSampler` and :class:`SeededDataset` every sample's
augmentation is a pure function of ``(seed, epoch, index)``, whatever the number of DataLoader
workers, whether workers are persistent, and wherever a run was interrupted and resumed.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sized
from typing import Any, Generic, TypeVar

import torch
from torch.utils.data import Dataset, Sampler

from protohead import _validation as check

__all__ = ["SeededDataset", "SeededSampler", "sample_seed", "seed_everything"]

T_co = TypeVar("T_co", covariant=True)
_MASK64 = (1 << 64) - 1


def _mix(x: int) -> int:
    """SplitMix64 finaliser: nearby inputs give unrelated outputs."""
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9 & _MASK64
    x = (x ^ (x >> 27)) * 0x94D049BB133111EB & _MASK64
    return x ^ (x >> 31)


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed for sample ``index`` in ``epoch`` of a run seeded with ``seed``.

    Args:
        seed: Run seed, >= 0.
        epoch: Epoch, >= 0.
        index: Dataset index, >= 0.

    Raises:
        ValueError: If an argument is negative or not an int.

    Example:
        >>> sample_seed(0, 0, 1) != sample_seed(0, 1, 0)
        True
        >>> 0 <= sample_seed(7, 3, 11) < 2**63
        True
    """
    x = check.integer("seed", seed, minimum=0)
    for name, value in (("epoch", epoch), ("index", index)):
        x = _mix((x + 0x9E3779B97F4A7C15 + check.integer(name, value, minimum=0)) & _MASK64)
    return x >> 1


def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, numpy's global generator (if installed) and torch (CPU, CUDA).

    Example:
        >>> seed_everything(3); a = torch.rand(1)
        >>> seed_everything(3); bool(torch.equal(a, torch.rand(1)))
        True
    """
    value = check.integer("seed", seed, minimum=0)
    random.seed(value)
    torch.manual_seed(value)
    try:
        import numpy as np
    except ImportError:  # numpy is optional
        return
    np.random.seed(value % 2**32)  # noqa: NPY002  (libraries still draw from the global one)


class SeededSampler(Sampler[tuple[int, int]]):
    """Wraps an index sampler and pairs each index with its :func:`sample_seed`.

    Yields ``(index, seed)`` for :class:`SeededDataset`. :meth:`set_epoch` forwards to the wrapped
    sampler (e.g. a ``DistributedSampler``) and changes the seeds, so each epoch draws new
    augmentations.

    Args:
        sampler: Iterable of dataset indices with a length.
        seed: Run seed, >= 0.

    Raises:
        TypeError: If ``sampler`` has no length.
        ValueError: If ``seed`` is negative.

    Example:
        >>> s = SeededSampler(range(2), seed=0)
        >>> s.set_epoch(1)
        >>> [index for index, _ in s]
        [0, 1]
    """

    def __init__(self, sampler: Any, seed: int) -> None:
        if not isinstance(sampler, Sized):
            raise TypeError(f"sampler must have a length, got {type(sampler).__name__}")
        self.sampler: Any = sampler
        self.seed = check.integer("seed", seed, minimum=0)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch (and forward it to the wrapped sampler if it takes one)."""
        self.epoch = check.integer("epoch", epoch, minimum=0)
        inner = getattr(self.sampler, "set_epoch", None)
        if callable(inner):
            inner(self.epoch)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        for index in self.sampler:
            yield int(index), sample_seed(self.seed, self.epoch, int(index))

    def __len__(self) -> int:
        return len(self.sampler)


class SeededDataset(Dataset[T_co], Generic[T_co]):
    """Runs ``dataset[index]`` with torch's CPU generator seeded by the given seed.

    Indexed with the ``(index, seed)`` pairs of :class:`SeededSampler`. The global CPU generator
    is saved and restored around the call, so the caller's random stream is untouched (this
    matters with ``num_workers=0``, where samples load in the training process).
    Transforms that draw from torch's global generator, such as
    :class:`~protohead.MultiCropTransform`, then give the same crops for the same
    ``(seed, epoch, index)`` in any worker. A plain integer key loads without reseeding.

    Args:
        dataset: Map-style dataset to wrap; it is not modified.

    Example:
        >>> from torch.utils.data import TensorDataset
        >>> class Noisy(TensorDataset):
        ...     def __getitem__(self, i): return torch.rand(())
        >>> ds = SeededDataset(Noisy(torch.zeros(3)))
        >>> bool(ds[(1, 42)] == ds[(2, 42)]), len(ds)
        (True, 3)
    """

    def __init__(self, dataset: Dataset[T_co]) -> None:
        if not isinstance(dataset, Sized):
            raise TypeError(f"dataset must have a length, got {type(dataset).__name__}")
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int] | int) -> T_co:
        if isinstance(key, tuple):
            index, seed = key
            with torch.random.fork_rng(devices=[]):
                torch.default_generator.manual_seed(seed)
                return self.dataset[index]
        return self.dataset[key]
