"""Training datasets: built-in small datasets by name, or an ImageFolder ``train/`` + ``val/``.

The t-ReX recipe (Sariyildiz et al., ICLR 2023) trains on ImageNet-1K in the ImageFolder layout;
the same code runs on Fashion-MNIST, CIFAR-10/100 or torchvision's ``FakeData`` for quick runs.
Unreadable image files either raise :class:`UnreadableImageError` naming the file, or, with
``skip_bad_images=True``, are dropped from their batch by :class:`SkipBadCollate`, which counts
them.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image
from torch.utils.data import Dataset
from torchvision import datasets as tv_datasets

from protohead import _validation as check
from protohead.augment.multicrop import IMAGENET_MEAN, IMAGENET_STD
from protohead.data.class_subset import ClassSubset
from protohead.data.collate import SkippedSample
from protohead.data.errors import DatasetUnavailableError, UnreadableImageError
from protohead.data.fashion_mnist import FashionMNIST

__all__ = [
    "DATASETS",
    "CheckedImageFolder",
    "DatasetInfo",
    "TrainValData",
    "build_datasets",
    "dataset_info",
    "with_transform",
]

Transform = Callable[[Any], Any]
# PIL reports undecodable files with these (UnidentifiedImageError and truncation are OSErrors,
# some broken PNG/GIF headers raise SyntaxError, huge images DecompressionBombError).
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


@dataclass(frozen=True)
class DatasetInfo:
    """Static facts about a dataset.

    Attributes:
        num_classes: Number of classes, or ``None`` when read from the folders.
        image_size: Native square image side in pixels, or ``None`` for variable sizes.
        mean: Per-channel normalisation mean (RGB).
        std: Per-channel normalisation std (RGB).

    Example:
        >>> info = dataset_info("cifar10")
        >>> info.num_classes, info.image_size
        (10, 32)
    """

    num_classes: int | None
    image_size: int | None
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


DATASETS: dict[str, DatasetInfo] = {
    "fashion-mnist": DatasetInfo(10, 28, (0.2860, 0.2860, 0.2860), (0.3530, 0.3530, 0.3530)),
    "cifar10": DatasetInfo(10, 32, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": DatasetInfo(100, 32, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "fake": DatasetInfo(10, None, IMAGENET_MEAN, IMAGENET_STD),
}
"""Built-in datasets by name."""

_FOLDER_INFO = DatasetInfo(None, None, IMAGENET_MEAN, IMAGENET_STD)


def dataset_info(name: str | None) -> DatasetInfo:
    """Facts about a built-in dataset, or ImageNet-style defaults for ``None`` (a folder).

    Raises:
        ValueError: If ``name`` is not a built-in dataset.

    Example:
        >>> dataset_info("cifar10").image_size, dataset_info(None).num_classes
        (32, None)
    """
    if name is None:
        return _FOLDER_INFO
    if name not in DATASETS:
        raise ValueError(f"dataset must be one of {sorted(DATASETS)}, got {name!r}")
    return DATASETS[name]


class CheckedImageFolder(tv_datasets.ImageFolder):  # type: ignore[misc]
    """``torchvision.datasets.ImageFolder`` that names the file when an image cannot be read.

    Decoding errors raise :class:`UnreadableImageError` or, with ``skip_bad_images=True``,
    return a :class:`SkippedSample` that :class:`SkipBadCollate` drops and counts. Errors raised
    by ``transform`` itself are not caught.

    Args:
        root: Directory with one sub-directory per class.
        transform: Applied to the decoded RGB ``PIL.Image``.
        skip_bad_images: Return :class:`SkippedSample` instead of raising.

    Raises:
        FileNotFoundError: If ``root`` is missing, holds no class folder, or a class folder
            holds no image (the message names ``root`` and the empty folders).

    Example:
        >>> import tempfile, pathlib
        >>> from PIL import Image
        >>> root = pathlib.Path(tempfile.mkdtemp())
        >>> (root / "cat").mkdir()
        >>> Image.new("RGB", (8, 8)).save(root / "cat" / "ok.png")
        >>> _ = (root / "cat" / "broken.jpg").write_bytes(b"not a jpeg")
        >>> folder = CheckedImageFolder(str(root), skip_bad_images=True)
        >>> sorted(type(folder[i]).__name__ for i in range(len(folder)))  # (image, label) or skip
        ['SkippedSample', 'tuple']
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        transform: Transform | None = None,
        *,
        skip_bad_images: bool = False,
    ) -> None:
        if not Path(root).is_dir():
            raise FileNotFoundError(f"image folder {str(root)!r} does not exist")
        try:
            super().__init__(str(root), transform=transform)
        except FileNotFoundError as err:
            # torchvision names the empty class folders ("Found no valid file for the classes
            # b. ..."), not the folder they are in: with train/ and val/ both matter.
            if str(root) in str(err):
                raise
            raise FileNotFoundError(f"image folder {str(root)!r}: {err}") from err
        self.skip_bad_images = bool(skip_bad_images)

    def __getitem__(self, index: int) -> Any:
        path, target = self.samples[index]
        try:
            image = self.loader(path)
        except _DECODE_ERRORS as err:
            if self.skip_bad_images:
                return SkippedSample(path, f"{type(err).__name__}: {err}")
            raise UnreadableImageError(path, f"{type(err).__name__}: {err}") from err
        sample = self.transform(image) if self.transform is not None else image
        return sample, target


def with_transform(dataset: Dataset[Any], transform: Transform | None) -> Dataset[Any]:
    """A shallow copy of a torchvision-style dataset that applies ``transform`` instead.

    Works for datasets that apply ``self.transform`` in ``__getitem__`` (ImageFolder, CIFAR,
    FakeData, :class:`~protohead.evaluation.FashionMNIST`); the file list or image array is
    shared, not copied, and ``dataset`` itself is not modified.

    Raises:
        TypeError: If ``dataset`` has no ``transform`` attribute.

    Example:
        >>> data = build_datasets("fake", fake_sizes=(2, 1), fake_image_size=4)
        >>> sized = with_transform(data.train, lambda image: image.size)
        >>> sized[0][0], data.train.transform is None
        ((4, 4), True)
    """
    if isinstance(dataset, ClassSubset):
        return dataset.with_dataset(with_transform(dataset.dataset, transform))
    if not hasattr(dataset, "transform"):
        raise TypeError(f"dataset must have a transform attribute, got {type(dataset).__name__}")
    clone = copy.copy(dataset)
    clone.transform = transform  # type: ignore[attr-defined]
    if hasattr(clone, "transforms") and getattr(clone, "target_transform", None) is None:
        # torchvision's VisionDataset keeps a combined StandardTransform as well.
        clone.transforms = tv_datasets.vision.StandardTransform(transform, None)
    return clone


@dataclass(frozen=True)
class TrainValData:
    """The datasets of one run.

    Attributes:
        train: Training set; items are ``(transformed image, label)``.
        val: Validation set (the test split for built-in datasets).
        num_classes: Number of classes.

    Example:
        >>> from torch.utils.data import TensorDataset
        >>> train, val = TensorDataset(torch.zeros(4, 1)), TensorDataset(torch.zeros(2, 1))
        >>> data = TrainValData(train, val, num_classes=3)
        >>> len(data.train), len(data.val), data.num_classes
        (4, 2, 3)
    """

    train: Dataset[Any]
    val: Dataset[Any]
    num_classes: int


def _download_error(name: str, root: str, err: Exception) -> DatasetUnavailableError:
    return DatasetUnavailableError(
        f"{name}: could not load or download the data into {root!r} ({err}); download it "
        "where internet is available and pass its directory as the root (--data-root)"
    )


def build_datasets(
    name: str | None = None,
    *,
    data_dir: str | os.PathLike[str] | None = None,
    root: str | os.PathLike[str] | None = None,
    train_transform: Transform | None = None,
    val_transform: Transform | None = None,
    skip_bad_images: bool = False,
    download: bool = True,
    fake_sizes: tuple[int, int] = (256, 64),
    fake_image_size: int = 32,
    classes: Sequence[int] | None = None,
) -> TrainValData:
    """Build the training and validation sets of a built-in dataset or an ImageFolder tree.

    Args:
        name: ``"fashion-mnist"`` (the Debian package ``dataset-fashion-mnist`` if installed,
            else a torchvision download), ``"cifar10"``, ``"cifar100"`` (torchvision download)
            or ``"fake"`` (``torchvision.datasets.FakeData``); ``None`` reads ``data_dir``.
        data_dir: With ``name=None``: a directory with ImageFolder ``train/`` and ``val/``
            (the ImageNet layout).
        root: Where built-in datasets are looked for / downloaded; default: Fashion-MNIST's
            Debian directory, then ``./data``.
        train_transform: Applied to each training image (e.g. a multi-crop transform).
        val_transform: Applied to each validation image.
        skip_bad_images: For folders: unreadable files become :class:`SkippedSample`.
        download: Allow torchvision downloads.
        fake_sizes: ``(train, val)`` sizes of ``"fake"``, each >= 1.
        fake_image_size: Side of the ``"fake"`` images, >= 1.
        classes: Optional class ids to keep in both sets, relabelled ``0..k-1`` in the given
            order (:class:`~protohead.data.class_subset.ClassSubset`), e.g. ``(0, 1, 2, 3, 4)`` to
            pretrain on the seen half of a concept-generalisation split.

    Returns:
        The two datasets and the number of classes.

    Raises:
        ValueError: If both or neither of ``name`` and ``data_dir`` are given, or a size is bad.
        FileNotFoundError: If ``data_dir`` lacks ``train/`` or ``val/``; as
            :class:`~protohead.evaluation.DatasetUnavailableError` if a built-in dataset is
            neither on disk nor downloadable (the message says how to get it).

    Example:
        >>> data = build_datasets("fake", fake_sizes=(8, 4), fake_image_size=16)
        >>> len(data.train), len(data.val), data.num_classes
        (8, 4, 10)
    """
    if (name is None) == (data_dir is None):
        raise ValueError(
            f"exactly one of name and data_dir must be given, got name={name!r}, "
            f"data_dir={data_dir!r}"
        )
    if data_dir is not None:
        data = _folder_datasets(Path(data_dir), train_transform, val_transform, skip_bad_images)
    elif name == "fake":
        data = _fake_datasets(fake_sizes, fake_image_size, train_transform, val_transform)
    elif name == "fashion-mnist":
        # Subsets natively (no pass over the items); relabelled like ClassSubset.
        kw: dict[str, Any] = {"download": download, "classes": classes}
        train = FashionMNIST(root, train=True, transform=train_transform, **kw)
        val = FashionMNIST(root, train=False, transform=val_transform, **kw)
        return TrainValData(train, val, 10 if classes is None else len(classes))
    else:
        info = dataset_info(name)
        target = str(root) if root is not None else "data"
        cls = tv_datasets.CIFAR10 if name == "cifar10" else tv_datasets.CIFAR100
        try:
            train = cls(target, train=True, transform=train_transform, download=download)
            val = cls(target, train=False, transform=val_transform, download=download)
        except (OSError, RuntimeError) as err:
            raise _download_error(str(name), target, err) from err
        data = TrainValData(train, val, int(info.num_classes or 0))
    if classes is None:
        return data
    subset = ClassSubset(data.train, classes)
    return TrainValData(subset, ClassSubset(data.val, classes), subset.num_classes)


def _folder_datasets(
    data_dir: Path,
    train_transform: Transform | None,
    val_transform: Transform | None,
    skip_bad_images: bool,
) -> TrainValData:
    for split in ("train", "val"):
        if not (data_dir / split).is_dir():
            raise FileNotFoundError(
                f"data_dir must hold ImageFolder directories train/ and val/ (one sub-folder per "
                f"class), got {str(data_dir)!r}, where {str(data_dir / split)!r} does not exist"
            )
    train = CheckedImageFolder(data_dir / "train", train_transform, skip_bad_images=skip_bad_images)
    val = CheckedImageFolder(data_dir / "val", val_transform, skip_bad_images=skip_bad_images)
    if val.classes != train.classes:
        raise ValueError(
            f"data_dir train/ and val/ must have the same class folders, got {len(train.classes)} "
            f"and {len(val.classes)} classes ({sorted(set(train.classes) ^ set(val.classes))[:5]} "
            "differ)"
        )
    return TrainValData(train, val, len(train.classes))


def _fake_datasets(
    sizes: tuple[int, int],
    image_size: int,
    train_transform: Transform | None,
    val_transform: Transform | None,
) -> TrainValData:
    if len(sizes) != 2:
        raise ValueError(f"fake_sizes must be two ints >= 1, got {sizes!r}")
    for i, s in enumerate(sizes):
        check.integer(f"fake_sizes[{i}]", s, minimum=1)
    check.integer("fake_image_size", image_size, minimum=1)
    shape = (3, image_size, image_size)
    train = tv_datasets.FakeData(sizes[0], shape, 10, transform=train_transform)
    # A different offset gives the validation set different images.
    val = tv_datasets.FakeData(sizes[1], shape, 10, transform=val_transform, random_offset=sizes[0])
    return TrainValData(train, val, 10)
