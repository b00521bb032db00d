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

and, at larger scale, iNaturalist 2018 and 2019 (:mod:`~protohead.evaluation.inaturalist`):

============  ==============================================================  ===============
name          layout under ``root/<name>`` (or ``inat2018_root``...)          trainval / test
============  ==============================================================  ===============
inat2018      ``train2018.json`` / ``val2018.json`` + images, 8,142 classes   437513 / 24426
inat2019      ``train2019.json`` / ``val2019.json`` + images, 1,010 classes   265213 / 3030
============  ==============================================================  ===============

:data:`DATASET_GROUPS` names sets of them: ``paper`` (the eight above, the default of the
command line) and ``inaturalist`` (both years). The paper's mean over fifteen datasets adds the
five ImageNet-CoG levels, given as image lists (:func:`image_list_pair`).

EuroSAT's reference split also sets 540 validation images per class aside inside trainval: its
:attr:`TransferDataset.val_per_class` is 540, so the penalty search validates on exactly 540
images per class (seeded, the rest of trainval trains). Every other dataset leaves it ``None``
and the search holds out ``val_fraction`` of each class
(:class:`~protohead.evaluation.search.SearchConfig`).

:attr:`TransferDataset.config` is the dataset's part of the feature-cache key. It holds the
resolved absolute roots and list files, and for file-backed datasets a fingerprint of every
image's relative path, label, size and modification time
(:func:`~protohead.evaluation.fingerprint.files_fingerprint`), so replaced images or the same
relative path run from another directory never reuse stale features.

Also registered: ``fake`` (torchvision ``FakeData``, random images, for smoke tests) and
``fashion-mnist`` (:class:`~protohead.data.fashion_mnist.FashionMNIST`, optionally a class
subset). :func:`image_folder_pair` and :func:`image_list_pair` wrap any ``ImageFolder`` pair and
any pair of image lists (e.g. ImageNet-CoG levels); they and :class:`TransferDataset` live in
:mod:`~protohead.evaluation.pairs` and are re-exported here.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import ConcatDataset, Dataset, Subset
from torchvision import datasets as tv_datasets

from protohead.data.errors import DatasetUnavailableError
from protohead.data.fashion_mnist import FashionMNIST
from protohead.evaluation.fingerprint import dataset_files, files_fingerprint, resolved
from protohead.evaluation.inaturalist import inaturalist_pair
from protohead.evaluation.pairs import TransferDataset, image_folder_pair, image_list_pair

__all__ = [
    "DATASETS",
    "DATASET_GROUPS",
    "EXPECTED_COUNTS",
    "INATURALIST_DATASETS",
    "PAPER_DATASETS",
    "DatasetOptions",
    "TransferDataset",
    "build_dataset",
    "image_folder_pair",
    "image_list_pair",
]

Transform = Callable[[Any], Any]

PAPER_DATASETS = ("aircraft", "cars", "dtd", "eurosat", "flowers", "pets", "food101", "sun397")
"""The paper's eight smaller transfer datasets, in the order they are reported."""

INATURALIST_DATASETS = ("inat2018", "inat2019")
"""iNaturalist 2018 and 2019, the paper's two large-scale transfer datasets."""

DATASET_GROUPS: dict[str, tuple[str, ...]] = {
    "paper": PAPER_DATASETS,
    "inaturalist": INATURALIST_DATASETS,
}
"""Names that stand for several registered datasets (``--dataset paper``)."""

EXPECTED_COUNTS: dict[str, tuple[int, int]] = {
    "aircraft": (6667, 3333),
    "cars": (8144, 8041),
    "dtd": (3760, 1880),
    "eurosat": (18900, 8100),
    "flowers": (2040, 6149),
    "pets": (3680, 3669),
    "food101": (75750, 25250),
    "sun397": (19850, 19850),
    "inat2018": (437513, 24426),
    "inat2019": (265213, 3030),
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
    "inat2018": 8142,
    "inat2019": 1010,
}
_EUROSAT_TEST_PER_CLASS = 810
_EUROSAT_VAL_PER_CLASS = 540


@dataclass(frozen=True)
class DatasetOptions:
    """Where datasets live and the options of the individual datasets.

    Args:
        root: Directory handed to the torchvision classes (each uses its own sub-folder).
        download: Let torchvision download missing datasets (needs internet).
        split_seed: Seed of the EuroSAT test split.
        sun397_lists: ``(train_list, test_list)`` of a SUN397 partition; relative paths are
            relative to ``root/SUN397`` (not the working directory), absolute ones are kept.
        inat2018_root: Folder with ``train2018.json``, ``val2018.json`` and the images; ``None``
            uses ``root/inat2018``.
        inat2019_root: Same for 2019; ``None`` uses ``root/inat2019``.
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
    inat2018_root: str | None = None
    inat2019_root: str | None = None
    fashion_mnist_root: str | None = None
    fashion_mnist_classes: tuple[int, ...] | None = None
    max_per_class: int | None = None
    fake_trainval: int = 200
    fake_test: int = 100
    fake_classes: int = 10
    fake_image_size: int = 32


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


def _files_config(
    trainval: Dataset[Any], test: Dataset[Any], root: str | os.PathLike[str]
) -> dict[str, Any]:
    """Fingerprints of both splits' files; empty when the dataset does not list its files."""
    found = {}
    for split, data in (("trainval", trainval), ("test", test)):
        files = dataset_files(data)
        if files is not None:
            found[split] = files_fingerprint(files, root)
    return {"files": found} if found else {}


def _paper(name: str, transform: Transform, opts: DatasetOptions) -> TransferDataset:
    root, dl = opts.root, opts.download
    # The resolved root: "data" run from two directories is two datasets.
    config: dict[str, Any] = {"name": name, "root": resolved(root)}
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
            base = Path(root) / "SUN397"
            # As documented: list paths are relative to root/SUN397, not to the working directory.
            lists = [base / path for path in opts.sun397_lists]  # an absolute path stays itself
            pair = image_list_pair(name, base, *lists, transform=transform)
            trainval, test = pair.trainval, pair.test
            config.update(pair.config, name=name)
    except DatasetUnavailableError:
        raise
    except (RuntimeError, OSError) as err:
        raise _unavailable(name, root, err) from err
    _checked(name, trainval, test)
    if "files" not in config:
        try:
            config.update(_files_config(trainval, test, root))
        except OSError as err:
            raise _unavailable(name, root, err) from err
    val_per_class = _EUROSAT_VAL_PER_CLASS if name == "eurosat" else None
    return TransferDataset(name, trainval, test, _NUM_CLASSES[name], config, val_per_class)


def _inaturalist(name: str, transform: Transform, opts: DatasetOptions) -> TransferDataset:
    year = name[len("inat") :]
    given = opts.inat2018_root if year == "2018" else opts.inat2019_root
    root = Path(opts.root) / name if given is None else Path(given)
    pair = inaturalist_pair(name, year, root, transform=transform)
    _checked(name, pair.trainval, pair.test)
    if pair.num_classes != _NUM_CLASSES[name]:
        raise DatasetUnavailableError(
            f"{name}: expected {_NUM_CLASSES[name]} classes in train{year}.json, found "
            f"{pair.num_classes}; the files are another version"
        )
    return pair


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
    # The IDX files found (their absolute paths, sizes and times), not the root as given.
    files = [(path, "") for path in (*trainval.files, *test.files)]
    config = {
        "name": name,
        "classes": classes,
        "max_per_class": opts.max_per_class,
        "files": files_fingerprint(files),
    }
    return TransferDataset(label, trainval, test, len(trainval.classes), config)


DATASETS: dict[str, Callable[[str, Transform, DatasetOptions], TransferDataset]] = {
    **dict.fromkeys(PAPER_DATASETS, _paper),
    **dict.fromkeys(INATURALIST_DATASETS, _inaturalist),
    "fake": _fake,
    "fashion-mnist": _fashion_mnist,
}
"""Registered dataset names and their builders."""


def build_dataset(
    name: str, transform: Transform, options: DatasetOptions | None = None
) -> TransferDataset:
    """Build a registered dataset's trainval / test pair.

    Args:
        name: One of :data:`DATASETS` (the paper's eight, ``"inat2018"``, ``"inat2019"``,
            ``"fake"``, ``"fashion-mnist"``).
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
