"""Registry of the transfer datasets of the protocol, plus generic and demo datasets.

The eight transfer datasets of Sariyildiz et al., "No Reason for No Supervision" (ICLR 2023),
built through torchvision's dataset classes, with their trainval / test sizes checked against
:data:`EXPECTED_COUNTS`:

============  ==============================================================  ===============
name          torchvision class and setting                                   trainval / test
============  ==============================================================  ===============
aircraft      ``FGVCAircraft``, ``annotation_level="variant"``                6667 / 3333
cars          ``StanfordCars``                                                8144 / 8041
dtd           ``DTD`` partition 1, train + val                                3760 / 1880
eurosat       ``EuroSAT`` (RGB), seeded per class: 810 test, rest trainval    18900 / 8100
flowers       ``Flowers102`` train + val                                      2040 / 6149
pets          ``OxfordIIITPet`` trainval, categories                          3680 / 3669
food101       ``Food101``                                                     75750 / 25250
sun397        partition-1 lists supplied by the user (``Training_01.txt``...)  19850 / 19850
============  ==============================================================  ===============

EuroSAT's reference split also sets 540 validation images per class aside inside trainval; here
the penalty search draws its own stratified validation split from trainval (``val_fraction`` of
:class:`~protohead.evaluation.search.SearchConfig`), as for every other dataset.

Also registered: ``fake`` (torchvision ``FakeData``, random images, for smoke tests) and
``fashion-mnist`` (:class:`~protohead.evaluation.fashion_mnist.FashionMNIST`, optionally a class
subset). :func:`image_folder_pair` and :func:`image_list_pair` wrap any ``ImageFolder`` pair and
any pair of image lists (e.g. ImageNet-CoG levels).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import ConcatDataset, Dataset, Subset
from torchvision import datasets as tv_datasets

from protohead.evaluation.errors import DatasetUnavailableError
from protohead.evaluation.fashion_mnist import FashionMNIST
from protohead.evaluation.image_list import ImageListDataset

__all__ = [
    "DATASETS",
    "EXPECTED_COUNTS",
    "PAPER_DATASETS",
    "DatasetOptions",
    "TransferDataset",
    "build_dataset",
    "image_folder_pair",
    "image_list_pair",
]

Transform = Callable[[Any], Any]

PAPER_DATASETS = ("aircraft", "cars", "dtd", "eurosat", "flowers", "pets", "food101", "sun397")
"""The transfer datasets of the paper, in the order they are reported."""

EXPECTED_COUNTS: dict[str, tuple[int, int]] = {
    "aircraft": (6667, 3333),
    "cars": (8144, 8041),
    "dtd": (3760, 1880),
    "eurosat": (18900, 8100),
    "flowers": (2040, 6149),
    "pets": (3680, 3669),
    "food101": (75750, 25250),
    "sun397": (19850, 19850),
}
"""``(trainval, test)`` image counts each paper dataset must have."""

_NUM_CLASSES = {
    "aircraft": 100,
    "cars": 196,
    "dtd": 47,
    "eurosat": 10,
    "flowers": 102,
    "pets": 37,
    "food101": 101,
    "sun397": 397,
}
_EUROSAT_TEST_PER_CLASS = 810


@dataclass(frozen=True)
class DatasetOptions:
    """Where datasets live and the options of the individual datasets.

    Args:
        root: Directory handed to the torchvision classes (each uses its own sub-folder).
        download: Let torchvision download missing datasets (needs internet).
        split_seed: Seed of the EuroSAT test split.
        sun397_lists: ``(train_list, test_list)`` of a SUN397 partition, relative to
            ``root/SUN397``.
        fashion_mnist_root: IDX directory; ``None`` uses the Debian package location.
        fashion_mnist_classes: Fashion-MNIST class subset, relabelled ``0..n-1`` in order.
        max_per_class: Keep the first ``max_per_class`` images per class (Fashion-MNIST only).
        fake_trainval: ``FakeData`` trainval size.
        fake_test: ``FakeData`` test size.
        fake_classes: ``FakeData`` number of classes.
        fake_image_size: ``FakeData`` image side in pixels.

    Example:
        >>> DatasetOptions(root="data", fashion_mnist_classes=(5, 6, 7, 8, 9)).max_per_class is None
        True
    """

    root: str = "data"
    download: bool = False
    split_seed: int = 0
    sun397_lists: tuple[str, str] | None = None
    fashion_mnist_root: str | None = None
    fashion_mnist_classes: tuple[int, ...] | None = None
    max_per_class: int | None = None
    fake_trainval: int = 200
    fake_test: int = 100
    fake_classes: int = 10
    fake_image_size: int = 32


@dataclass(frozen=True)
class TransferDataset:
    """A trainval / test pair ready for feature extraction.

    Attributes:
        name: Display name (e.g. ``"fashion-mnist[5-9]"``).
        trainval: Dataset of ``(image tensor, label)`` with the evaluation transform applied.
        test: Same for the test split.
        num_classes: Labels are in ``[0, num_classes)``.
        config: Everything that determines the images and labels (part of the cache key).

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


def _unavailable(name: str, root: str, err: Exception) -> DatasetUnavailableError:
    return DatasetUnavailableError(
        f"{name}: files not found or incomplete under {root!r} ({err}); place them where "
        "torchvision expects them, or pass download=True (--download) where internet exists"
    )


def _checked(name: str, trainval: Dataset[Any], test: Dataset[Any]) -> None:
    expected = EXPECTED_COUNTS[name]
    found = (len(trainval), len(test))  # type: ignore[arg-type]
    if found != expected:
        raise DatasetUnavailableError(
            f"{name}: expected {expected[0]} trainval / {expected[1]} test images, "
            f"found {found[0]} / {found[1]}; the files are incomplete or another version"
        )


def _paper(name: str, transform: Transform, opts: DatasetOptions) -> TransferDataset:
    root, dl = opts.root, opts.download
    config: dict[str, Any] = {"name": name}
    try:
        if name == "aircraft":
            trainval: Dataset[Any] = tv_datasets.FGVCAircraft(
                root, "trainval", "variant", transform=transform, download=dl
            )
            test: Dataset[Any] = tv_datasets.FGVCAircraft(
                root, "test", "variant", transform=transform, download=dl
            )
        elif name == "cars":
            trainval = tv_datasets.StanfordCars(root, "train", transform=transform, download=dl)
            test = tv_datasets.StanfordCars(root, "test", transform=transform, download=dl)
        elif name in ("dtd", "flowers"):
            cls: Any = tv_datasets.DTD if name == "dtd" else tv_datasets.Flowers102
            extra = {"partition": 1} if name == "dtd" else {}
            parts = [
                cls(root, s, transform=transform, download=dl, **extra) for s in ("train", "val")
            ]
            trainval = ConcatDataset(parts)
            test = cls(root, "test", transform=transform, download=dl, **extra)
        elif name == "eurosat":
            full = tv_datasets.EuroSAT(root, transform=transform, download=dl)
            trainval, test = _eurosat_split(full, opts.split_seed)
            config["split_seed"] = opts.split_seed
        elif name == "pets":
            trainval = tv_datasets.OxfordIIITPet(
                root, "trainval", "category", transform=transform, download=dl
            )
            test = tv_datasets.OxfordIIITPet(
                root, "test", "category", transform=transform, download=dl
            )
        elif name == "food101":
            trainval = tv_datasets.Food101(root, "train", transform=transform, download=dl)
            test = tv_datasets.Food101(root, "test", transform=transform, download=dl)
        else:
            if opts.sun397_lists is None:
                raise DatasetUnavailableError(
                    "sun397: torchvision has no SUN397 partitions; supply the partition-1 lists "
                    "(Training_01.txt, Testing_01.txt) with sun397_lists / --sun397-lists"
                )
            pair = image_list_pair(
                name, Path(root) / "SUN397", *opts.sun397_lists, transform=transform
            )
            trainval, test = pair.trainval, pair.test
            config["lists"] = [os.path.basename(p) for p in opts.sun397_lists]
    except DatasetUnavailableError:
        raise
    except (RuntimeError, OSError) as err:
        raise _unavailable(name, root, err) from err
    _checked(name, trainval, test)
    return TransferDataset(name, trainval, test, _NUM_CLASSES[name], config)


def _eurosat_split(full: Any, seed: int) -> tuple[Dataset[Any], Dataset[Any]]:
    targets = torch.as_tensor(full.targets)
    generator = torch.Generator().manual_seed(seed)
    test_parts, trainval_parts = [], []
    for label in range(int(targets.max()) + 1):
        members = torch.nonzero(targets == label).flatten()
        members = members[torch.randperm(members.numel(), generator=generator)]
        test_parts.append(members[:_EUROSAT_TEST_PER_CLASS])
        trainval_parts.append(members[_EUROSAT_TEST_PER_CLASS:])
    trainval_idx = torch.sort(torch.cat(trainval_parts)).values.tolist()
    test_idx = torch.sort(torch.cat(test_parts)).values.tolist()
    return Subset(full, trainval_idx), Subset(full, test_idx)


def _fake(name: str, transform: Transform, opts: DatasetOptions) -> TransferDataset:
    size = (3, opts.fake_image_size, opts.fake_image_size)
    trainval = tv_datasets.FakeData(
        opts.fake_trainval, size, opts.fake_classes, transform=transform, random_offset=0
    )
    # A disjoint seed range, so test images are never copies of trainval images.
    test = tv_datasets.FakeData(
        opts.fake_test, size, opts.fake_classes, transform=transform, random_offset=10**6
    )
    config = {
        "name": name,
        "trainval": opts.fake_trainval,
        "test": opts.fake_test,
        "classes": opts.fake_classes,
        "image_size": opts.fake_image_size,
    }
    return TransferDataset(name, trainval, test, opts.fake_classes, config)


def _fashion_mnist(name: str, transform: Transform, opts: DatasetOptions) -> TransferDataset:
    classes = opts.fashion_mnist_classes
    kwargs: dict[str, Any] = {
        "classes": classes,
        "max_per_class": opts.max_per_class,
        "transform": transform,
        "download": opts.download,
    }
    trainval = FashionMNIST(opts.fashion_mnist_root, train=True, **kwargs)
    test = FashionMNIST(opts.fashion_mnist_root, train=False, **kwargs)
    label = name
    if classes is not None:
        contiguous = list(classes) == list(range(classes[0], classes[0] + len(classes)))
        shown = f"{classes[0]}-{classes[-1]}" if contiguous else ",".join(map(str, classes))
        label = f"{name}[{shown}]"
    config = {"name": name, "classes": classes, "max_per_class": opts.max_per_class}
    return TransferDataset(label, trainval, test, len(trainval.classes), config)


DATASETS: dict[str, Callable[[str, Transform, DatasetOptions], TransferDataset]] = {
    **dict.fromkeys(PAPER_DATASETS, _paper),
    "fake": _fake,
    "fashion-mnist": _fashion_mnist,
}
"""Registered dataset names and their builders."""


def build_dataset(
    name: str, transform: Transform, options: DatasetOptions | None = None
) -> TransferDataset:
    """Build a registered dataset's trainval / test pair.

    Args:
        name: One of :data:`DATASETS` (the paper's eight, ``"fake"``, ``"fashion-mnist"``).
        transform: Image transform (see :func:`~protohead.evaluation.features.eval_transform`).
        options: Roots and per-dataset options; defaults to :class:`DatasetOptions()`.

    Returns:
        The :class:`TransferDataset`.

    Raises:
        ValueError: If ``name`` is not registered.
        DatasetUnavailableError: If files are missing or the image counts differ from
            :data:`EXPECTED_COUNTS`.

    Example:
        >>> opts = DatasetOptions(fake_trainval=20, fake_test=10, fake_classes=2)
        >>> data = build_dataset("fake", lambda image: image, opts)
        >>> len(data.trainval), len(data.test), data.num_classes
        (20, 10, 2)
    """
    if name not in DATASETS:
        raise ValueError(f"dataset must be one of {sorted(DATASETS)}, got {name!r}")
    return DATASETS[name](name, transform, DatasetOptions() if options is None else options)


def image_folder_pair(
    name: str,
    train_dir: str | os.PathLike[str],
    test_dir: str | os.PathLike[str],
    *,
    transform: Transform,
) -> TransferDataset:
    """Any pair of ``torchvision.datasets.ImageFolder`` directories (``class/image`` layout).

    Raises:
        DatasetUnavailableError: If a directory is missing or holds no images.
        ValueError: If the test classes are not a subset of the training classes.

    Example:
        >>> image_folder_pair("mine", "missing/train", "missing/test", transform=lambda im: im)
        Traceback (most recent call last):
        ...
        protohead.evaluation.errors.DatasetUnavailableError: mine: ...
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
    config = {"name": name, "train": str(train_dir), "test": str(test_dir)}
    return TransferDataset(name, trainval, test, len(trainval.classes), config)


def image_list_pair(
    name: str,
    root: str | os.PathLike[str],
    train_list: str | os.PathLike[str],
    test_list: str | os.PathLike[str],
    *,
    transform: Transform,
) -> TransferDataset:
    """A pair of image lists (see :class:`~protohead.evaluation.image_list.ImageListDataset`).

    Used for SUN397 partitions and ImageNet-CoG levels; the test list is numbered with the
    train list's classes.

    Raises:
        DatasetUnavailableError: If a list or a listed image is missing.
        ValueError: If the test list has classes that the train list lacks.

    Example:
        >>> import tempfile
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
    config = {"name": name, "root": str(root), "train": str(train_list), "test": str(test_list)}
    return TransferDataset(name, trainval, test, len(trainval.classes), config)
