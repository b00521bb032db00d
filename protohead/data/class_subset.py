"""Class subsets of labelled datasets: train on some classes, evaluate transfer on the others.

The ImageNet-CoG idea behind the transfer evaluation of t-ReX (Sariyildiz et al., ICLR 2023)
at any scale: pretrain on a set of "seen" classes, then measure how well the frozen features
separate "unseen" ones (e.g. Fashion-MNIST classes 0-4 vs 5-9 in ``make eval-demo``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch.utils.data import Dataset, TensorDataset

from protohead import _validation as check

__all__ = ["ClassSubset", "parse_classes"]


def parse_classes(spec: str) -> tuple[int, ...]:
    """Parse a class subset: ``"5-9"`` or ``"5,6,7"`` (also mixed, ``"0-2,7"``).

    Raises:
        ValueError: If the spec is empty, malformed, negative or repeats a class.

    Example:
        >>> parse_classes("5-9"), parse_classes("0-1,7")
        ((5, 6, 7, 8, 9), (0, 1, 7))
    """
    classes: list[int] = []
    try:
        for part in spec.split(","):
            lo, sep, hi = part.strip().partition("-")
            classes += list(range(int(lo), int(hi) + 1)) if sep else [int(lo)]
    except ValueError as err:
        raise ValueError(f"classes must look like '5-9' or '5,6,7', got {spec!r}") from err
    if not classes or len(set(classes)) != len(classes):
        raise ValueError(f"classes must be non-empty and distinct, got {spec!r}")
    return tuple(classes)


def _labels_of(dataset: Dataset[Any]) -> list[int]:
    targets = getattr(dataset, "targets", None)
    if targets is None:
        targets = getattr(dataset, "labels", None)
    if targets is not None:
        return [int(t) for t in targets]
    # No label list (e.g. FakeData): read every item once; slow for image files.
    return [int(dataset[i][1]) for i in range(len(dataset))]  # type: ignore[arg-type]


class ClassSubset(Dataset[tuple[Any, int]]):
    """The samples of some classes of a labelled dataset, relabelled ``0..k-1`` in order.

    Labels are read from ``dataset.targets`` (torchvision's CIFAR, ImageFolder, ...) or
    ``dataset.labels`` when present, else from every item once. ``dataset`` is not modified;
    items are ``(image, new_label)``.

    Args:
        dataset: A map-style dataset of ``(image, label)`` items.
        classes: Original class ids to keep, distinct ints >= 0; class ``classes[i]`` becomes
            label ``i``.

    Raises:
        TypeError: If ``classes`` holds something other than ints.
        ValueError: If ``classes`` is empty, repeats a class, or names a class that has no
            sample in ``dataset``.

    Example:
        >>> from torch.utils.data import TensorDataset
        >>> data = TensorDataset(torch.arange(6.0), torch.tensor([0, 1, 2, 0, 1, 2]))
        >>> subset = ClassSubset(data, classes=(2, 0))
        >>> len(subset), [subset[i] for i in range(len(subset))]
        (4, [(tensor(0.), 1), (tensor(2.), 0), (tensor(3.), 1), (tensor(5.), 0)])
    """

    def __init__(self, dataset: Dataset[Any], classes: Sequence[int]) -> None:
        if isinstance(classes, (str, bytes)) or not isinstance(classes, Sequence):
            raise TypeError(f"classes must be a sequence of ints, got {classes!r}")
        for i, c in enumerate(classes):
            check.integer(f"classes[{i}]", c)
        if not classes or len(set(classes)) != len(classes) or min(classes) < 0:
            raise ValueError(f"classes must be distinct ints >= 0, non-empty, got {classes!r}")
        if isinstance(dataset, TensorDataset) and len(dataset.tensors) >= 2:
            labels = dataset.tensors[1].tolist()
        else:
            labels = _labels_of(dataset)
        present = set(labels)
        missing = [c for c in classes if c not in present]
        if missing:
            raise ValueError(
                f"classes {missing} have no sample in the dataset (its labels: "
                f"{sorted(present)[:20]})"
            )
        self.dataset = dataset
        self.classes = tuple(classes)
        self._remap = {c: i for i, c in enumerate(classes)}
        self.indices = [i for i, label in enumerate(labels) if label in self._remap]
        self.targets = [self._remap[labels[i]] for i in self.indices]

    @property
    def num_classes(self) -> int:
        """Number of kept classes ``k``."""
        return len(self.classes)

    def with_dataset(self, dataset: Dataset[Any]) -> ClassSubset:
        """The same subset (same indices) over another view of the dataset, e.g. another
        transform; nothing is re-read."""
        clone = object.__new__(ClassSubset)
        clone.__dict__.update(self.__dict__)
        clone.dataset = dataset
        return clone

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        image, label = self.dataset[self.indices[index]]
        return image, self._remap[int(label)]
