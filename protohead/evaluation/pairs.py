"""Trainval / test pairs: :class:`TransferDataset`, ``ImageFolder`` pairs and image-list pairs.

The registered datasets of :mod:`~protohead.evaluation.datasets` and any user-supplied
``ImageFolder`` pair or pair of image lists (e.g. the ImageNet-CoG levels of Sariyildiz et al.,
ICLR 2023) all become a :class:`TransferDataset`. Its ``config`` is the dataset's part of the
feature-cache key, so the generic pairs record the resolved absolute directories and list files
and a fingerprint of every image (:func:`~protohead.evaluation.fingerprint.files_fingerprint`):
a relative path run from another directory, or images rewritten in place, get new features.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from torch.utils.data import Dataset
from torchvision import datasets as tv_datasets

from protohead.data.errors import DatasetUnavailableError
from protohead.data.image_list import ImageListDataset
from protohead.evaluation.fingerprint import files_fingerprint, resolved

__all__ = ["TransferDataset", "image_folder_pair", "image_list_pair"]

Transform = Callable[[Any], Any]


@dataclass(frozen=True)
class TransferDataset:
    """A trainval / test pair ready for feature extraction.

    Attributes:
        name: Display name (e.g. ``"fashion-mnist[5-9]"``).
        trainval: Dataset of ``(image tensor, label)`` with the evaluation transform applied.
        test: Same for the test split.
        num_classes: Labels are in ``[0, num_classes)``.
        config: Everything that determines the images and labels (part of the cache key):
            resolved roots and, for file-backed datasets, fingerprints of the files.
        val_per_class: Validation images per class of the penalty search, drawn from trainval
            (EuroSAT: 540); ``None`` holds out a fraction per class instead.

    Example:
        >>> pair = TransferDataset("toy", trainval=[(0, 0)] * 4, test=[(0, 0)] * 2, num_classes=1)
        >>> len(pair.trainval), pair.config
        (4, {})
    """

    name: str
    trainval: Dataset[Any]
    test: Dataset[Any]
    num_classes: int
    config: Mapping[str, Any] = field(default_factory=dict)
    val_per_class: int | None = None


def image_folder_pair(
    name: str,
    train_dir: str | os.PathLike[str],
    test_dir: str | os.PathLike[str],
    *,
    transform: Transform,
) -> TransferDataset:
    """Any pair of ``torchvision.datasets.ImageFolder`` directories (``class/image`` layout).

    Args:
        name: Display name.
        train_dir: Trainval directory (relative to the working directory, or absolute).
        test_dir: Test directory; its classes must all be in ``train_dir``.
        transform: Image transform.

    Returns:
        The :class:`TransferDataset`; its ``config`` holds the resolved directories and a
        fingerprint of every image (relative path, label, size, modification time).

    Raises:
        DatasetUnavailableError: If a directory is missing or holds no images.
        ValueError: If the test classes are not a subset of the training classes.

    Example:
        >>> image_folder_pair("mine", "missing/train", "missing/test", transform=lambda im: im)
        Traceback (most recent call last):
        ...
        protohead.data.errors.DatasetUnavailableError: mine: ...
    """
    try:
        trainval = tv_datasets.ImageFolder(str(train_dir), transform=transform)
        test = tv_datasets.ImageFolder(str(test_dir), transform=transform)
    except (FileNotFoundError, OSError) as err:
        raise DatasetUnavailableError(f"{name}: {err}") from err
    unknown = sorted(set(test.classes) - set(trainval.classes))
    if unknown:
        raise ValueError(f"{name}: test classes must all be in train, got extra {unknown[:5]}")
    # Number the test classes as in train, even when the test directory lacks some classes.
    test.samples = [(p, trainval.class_to_idx[test.classes[t]]) for p, t in test.samples]
    test.targets = [t for _, t in test.samples]
    test.imgs = test.samples
    config: dict[str, Any] = {
        "name": name,
        "train": resolved(train_dir),
        "test": resolved(test_dir),
    }
    return _fingerprinted(name, trainval, test, config, (train_dir, test_dir))


def image_list_pair(
    name: str,
    root: str | os.PathLike[str],
    train_list: str | os.PathLike[str],
    test_list: str | os.PathLike[str],
    *,
    transform: Transform,
) -> TransferDataset:
    """A pair of image lists (see :class:`~protohead.data.image_list.ImageListDataset`).

    Used for SUN397 partitions and ImageNet-CoG levels; the test list is numbered with the
    train list's classes.

    Args:
        name: Display name.
        root: Directory the listed image paths are relative to.
        train_list: Trainval list file (relative to the working directory, or absolute).
        test_list: Test list file.
        transform: Image transform.

    Returns:
        The :class:`TransferDataset`; its ``config`` holds the resolved root and list files
        and a fingerprint of every listed image (relative path, label, size, modification time).

    Raises:
        DatasetUnavailableError: If a list or a listed image is missing.
        ValueError: If the test list has classes that the train list lacks.

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> from PIL import Image
        >>> root = Path(tempfile.mkdtemp())
        >>> for name in ("n01/a.png", "n02/b.png", "n02/c.png"):
        ...     (root / name).parent.mkdir(exist_ok=True)
        ...     Image.new("RGB", (4, 4)).save(root / name)
        >>> _ = (root / "train.txt").write_text("n01/a.png\\nn02/b.png\\n")
        >>> _ = (root / "test.txt").write_text("n02/c.png\\n")
        >>> level = image_list_pair("cog-l1", root, root / "train.txt", root / "test.txt",
        ...                         transform=lambda im: im)
        >>> level.num_classes, level.test[0][1]
        (2, 1)
    """
    trainval = ImageListDataset(root, train_list, transform=transform)
    test = ImageListDataset(
        root, test_list, transform=transform, class_to_idx=trainval.class_to_idx
    )
    config: dict[str, Any] = {
        "name": name,
        "root": resolved(root),
        "train": resolved(train_list),
        "test": resolved(test_list),
    }
    return _fingerprinted(name, trainval, test, config, (root, root))


def _fingerprinted(
    name: str, trainval: Any, test: Any, config: dict[str, Any], roots: tuple[Any, Any]
) -> TransferDataset:
    """The pair, its cache key holding a fingerprint of every file of both splits."""
    try:
        config["files"] = {
            "trainval": files_fingerprint(trainval.samples, roots[0]),
            "test": files_fingerprint(test.samples, roots[1]),
        }
    except OSError as err:  # an image vanished between listing and stat
        raise DatasetUnavailableError(f"{name}: {err}") from err
    return TransferDataset(name, trainval, test, len(trainval.classes), config)
