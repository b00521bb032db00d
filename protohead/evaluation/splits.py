"""Seeded per-class train/validation splits of a trainval set.

The transfer protocol of Sariyildiz et al. (ICLR 2023) tunes the logistic-regression penalty on a
held-out part of each dataset's trainval set, then refits on all of trainval. This module draws
that held-out part per class, so that rare classes are represented on both sides: a fraction of
every class (:func:`stratified_split`, the default) or a fixed number of images per class
(:func:`per_class_split`, for datasets whose reference split says so, such as EuroSAT's 540).
"""

from __future__ import annotations

import math

import torch

from protohead import _validation as check

__all__ = ["per_class_split", "stratified_split"]


def stratified_split(
    labels: torch.Tensor, *, val_fraction: float = 0.2, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Split sample indices per class into train and validation indices.

    Every class with ``n_c`` samples gets ``clamp(floor(val_fraction * n_c + 0.5), 1, n_c - 1)``
    validation samples, drawn uniformly with a generator seeded by ``seed`` (classes are visited
    in increasing label order), so the split is deterministic and each class appears on both
    sides.

    Args:
        labels: Integer labels ``(n,)``; any non-negative label values.
        val_fraction: Target validation fraction per class, in ``(0, 1)``.
        seed: Seed of the split, any int.

    Returns:
        ``(train_idx, val_idx)``: sorted int64 index tensors (on the CPU) that partition
        ``range(n)``.

    Raises:
        TypeError: If ``labels`` is not an integer tensor or ``seed`` is not an int.
        ValueError: If ``labels`` is not 1-D, ``val_fraction`` is outside ``(0, 1)`` or a class
            has fewer than 2 samples.

    Example:
        >>> labels = torch.tensor([0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 2, 2])
        >>> train_idx, val_idx = stratified_split(labels, val_fraction=0.2, seed=0)
        >>> sorted(labels[val_idx].tolist())
        [0, 1, 2]
        >>> len(train_idx) + len(val_idx)
        12
    """
    _check_labels(labels)
    val_fraction = check.real_in("val_fraction", val_fraction, above=0, below=1)
    _check_seed(seed)
    if labels.numel() < 2:
        raise ValueError(f"labels must hold at least 2 samples, got {labels.numel()}")
    labels = labels.cpu()
    classes, counts = torch.unique(labels, return_counts=True)
    too_small = classes[counts < 2]
    if too_small.numel() > 0:
        raise ValueError(
            "every class needs at least 2 samples to appear in both train and val, got "
            f"classes {too_small.tolist()} with fewer"
        )
    sizes = [min(max(math.floor(val_fraction * n + 0.5), 1), n - 1) for n in counts.tolist()]
    return _draw(labels, counts.tolist(), sizes, seed)


def per_class_split(
    labels: torch.Tensor, *, per_class: int, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Split sample indices into exactly ``per_class`` validation samples per class and the rest.

    The validation split of datasets whose reference protocol fixes it per class (EuroSAT: 540
    validation images per class of trainval). Draws as :func:`stratified_split` does, with a
    generator seeded by ``seed`` and classes visited in increasing label order.

    Args:
        labels: Integer labels ``(n,)``; any non-negative label values.
        per_class: Validation samples per class, an int ``>= 1``; every class needs more.
        seed: Seed of the split, any int.

    Returns:
        ``(train_idx, val_idx)``: sorted int64 index tensors (on the CPU) that partition
        ``range(n)``; ``val_idx`` holds ``per_class`` samples of every class.

    Raises:
        TypeError: If ``labels`` is not an integer tensor, or ``per_class`` or ``seed`` is not
            an int.
        ValueError: If ``labels`` is not 1-D, ``per_class < 1`` or a class has ``per_class``
            samples or fewer (none would be left for training).

    Example:
        >>> labels = torch.tensor([0] * 5 + [1] * 4)
        >>> train_idx, val_idx = per_class_split(labels, per_class=2, seed=0)
        >>> torch.bincount(labels[val_idx]).tolist(), torch.bincount(labels[train_idx]).tolist()
        ([2, 2], [3, 2])
    """
    _check_labels(labels)
    per_class = check.integer("per_class", per_class, minimum=1)
    _check_seed(seed)
    if labels.numel() == 0:
        raise ValueError("labels must hold at least one sample per class, got none")
    labels = labels.cpu()
    classes, counts = torch.unique(labels, return_counts=True)
    too_small = classes[counts <= per_class]
    if too_small.numel() > 0:
        raise ValueError(
            f"every class needs more than per_class={per_class} samples to keep some for "
            f"training, got classes {too_small.tolist()[:10]} with "
            f"{counts[counts <= per_class].tolist()[:10]} samples"
        )
    return _draw(labels, counts.tolist(), [per_class] * len(counts), seed)


def _check_labels(labels: torch.Tensor) -> None:
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"labels must be a torch.Tensor, got {type(labels).__name__}")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise TypeError(f"labels must be an integer tensor, got dtype {labels.dtype}")
    if labels.ndim != 1:
        raise ValueError(f"labels must have shape (n,), got shape {tuple(labels.shape)}")


def _check_seed(seed: int) -> None:
    check.integer("seed", seed)


def _draw(
    labels: torch.Tensor, counts: list[int], sizes: list[int], seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Shuffle each class (increasing label order) and put its first ``sizes[c]`` in val."""
    generator = torch.Generator().manual_seed(seed)
    order = torch.argsort(labels, stable=True)
    train_parts: list[torch.Tensor] = []
    val_parts: list[torch.Tensor] = []
    start = 0
    for count, n_val in zip(counts, sizes, strict=True):
        members = order[start : start + count]
        start += count
        shuffled = members[torch.randperm(count, generator=generator)]
        val_parts.append(shuffled[:n_val])
        train_parts.append(shuffled[n_val:])
    train_idx = torch.sort(torch.cat(train_parts)).values
    val_idx = torch.sort(torch.cat(val_parts)).values
    return train_idx, val_idx
