"""Fashion-MNIST read from IDX files, with class subsets for concept-generalisation demos.

The small-scale analogue of ImageNet-CoG (used by Sariyildiz et al., ICLR 2023, to measure
transfer to unseen concepts): pretrain on some Fashion-MNIST classes (e.g. 0-4) and evaluate the
frozen features on the others (5-9, relabelled 0-4). Images are returned as RGB ``PIL.Image`` so
that the standard 3-channel evaluation transform applies.

Where the files come from, in order: the ``root`` given; the Debian package
``dataset-fashion-mnist`` (:data:`DEFAULT_FASHION_MNIST_DIR`) when no root is given;
``torchvision.datasets.FashionMNIST(download=True)`` into ``root`` when ``download=True``.
"""

from __future__ import annotations

import gzip
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch.utils.data import Dataset

from protohead import _validation as check
from protohead.data.errors import DatasetUnavailableError

__all__ = ["DEFAULT_FASHION_MNIST_DIR", "FASHION_MNIST_CLASSES", "FashionMNIST", "read_idx"]

DEFAULT_FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
"""Where the Debian package ``dataset-fashion-mnist`` installs the gzipped IDX files."""

FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
"""Class names of Fashion-MNIST, indexed by label."""

_FILES = {
    True: ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    False: ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_IDX_DTYPES = {0x08: torch.uint8}


def read_idx(path: str | os.PathLike[str]) -> torch.Tensor:
    """Read an unsigned-byte IDX file (optionally gzipped) into a uint8 tensor.

    Args:
        path: ``*-idx{1,3}-ubyte`` or the same with ``.gz``.

    Returns:
        The array, shape as stored (``(n,)`` labels, ``(n, 28, 28)`` images).

    Raises:
        ValueError: If the header is not an unsigned-byte IDX header or the size mismatches.

    Example:
        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp()) / "labels-idx1-ubyte"
        >>> _ = path.write_bytes(bytes([0, 0, 8, 1, 0, 0, 0, 3, 7, 2, 9]))
        >>> read_idx(path).tolist()
        [7, 2, 9]
    """
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as handle:
        data = handle.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise ValueError(f"{path} is not an unsigned-byte IDX file, got header {data[:4]!r}")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    offset = 4 + 4 * ndim
    expected = 1
    for dim in dims:
        expected *= dim
    if len(data) - offset != expected:
        raise ValueError(
            f"{path} must hold {expected} values for shape {dims}, got {len(data) - offset}"
        )
    flat = torch.frombuffer(bytearray(data[offset:]), dtype=torch.uint8)
    return flat.reshape(dims)


def _find(directory: Path, stem: str) -> Path | None:
    for candidate in (
        directory / f"{stem}.gz",
        directory / stem,
        directory / "FashionMNIST" / "raw" / stem,
        directory / "FashionMNIST" / "raw" / f"{stem}.gz",
    ):
        if candidate.is_file():
            return candidate
    return None


def _locate(root: Path | None, train: bool, download: bool) -> tuple[Path, Path]:
    image_stem, label_stem = _FILES[train]
    directory = Path(DEFAULT_FASHION_MNIST_DIR) if root is None else root
    images, labels = _find(directory, image_stem), _find(directory, label_stem)
    if images is not None and labels is not None:
        return images, labels
    if download:
        from torchvision.datasets import FashionMNIST as TorchvisionFashionMNIST

        target = Path("data") if root is None else root
        try:
            TorchvisionFashionMNIST(str(target), train=train, download=True)
        except (OSError, RuntimeError) as err:
            raise DatasetUnavailableError(
                f"fashion-mnist: download into {str(target)!r} failed ({err}); "
                "install the files with `apt-get install dataset-fashion-mnist`"
            ) from err
        images, labels = _find(target, image_stem), _find(target, label_stem)
        if images is not None and labels is not None:
            return images, labels
    raise DatasetUnavailableError(
        f"fashion-mnist: {image_stem}[.gz] and {label_stem}[.gz] not found in "
        f"{str(directory)!r}; install them with `apt-get install dataset-fashion-mnist` "
        f"(files go to {DEFAULT_FASHION_MNIST_DIR}), point root at a directory holding them, "
        "or allow download=True where internet is available"
    )


class FashionMNIST(Dataset[tuple[Any, int]]):
    """Fashion-MNIST (60,000 train / 10,000 test, 10 classes), optionally a class subset.

    Args:
        root: Directory with the four IDX files (gzipped or not, or torchvision's
            ``FashionMNIST/raw`` layout); ``None`` uses :data:`DEFAULT_FASHION_MNIST_DIR`.
        train: Training split (60,000) or test split (10,000).
        classes: Original class ids to keep, distinct, each in ``[0, 10)``; they are relabelled
            ``0..len(classes)-1`` in the given order. ``None`` keeps all ten.
        max_per_class: Keep only the first ``max_per_class`` images of each class (file order,
            deterministic), ``>= 1``; ``None`` keeps all.
        transform: Applied to the RGB ``PIL.Image`` (28 x 28).
        download: Fall back to torchvision's downloader (needs internet).

    Attributes:
        files: ``(images, labels)`` IDX paths read (part of the feature-cache key).

    Raises:
        DatasetUnavailableError: If the files are not found (the message says how to install
            them).
        ValueError: If ``classes`` or ``max_per_class`` is out of range.

    Example:
        >>> ds = FashionMNIST(train=False, classes=(5, 6, 7, 8, 9), max_per_class=3)
        >>> len(ds), sorted(set(ds.labels.tolist()))
        (15, [0, 1, 2, 3, 4])
        >>> image, label = ds[0]
        >>> image.size, image.mode
        ((28, 28), 'RGB')
    """

    def __init__(
        self,
        root: str | os.PathLike[str] | None = None,
        *,
        train: bool = True,
        classes: Sequence[int] | None = None,
        max_per_class: int | None = None,
        transform: Callable[[Image.Image], Any] | None = None,
        download: bool = False,
    ) -> None:
        keep = tuple(range(10)) if classes is None else tuple(classes)
        for i, c in enumerate(keep):
            check.integer(f"classes[{i}]", c, minimum=0, maximum=9)
        if not keep or len(set(keep)) != len(keep):
            raise ValueError(f"classes must be distinct ints in [0, 10), got {classes!r}")
        if max_per_class is not None:
            max_per_class = check.integer("max_per_class", max_per_class, minimum=1)
        image_path, label_path = _locate(None if root is None else Path(root), train, download)
        images, labels = read_idx(image_path), read_idx(label_path).long()
        if images.ndim != 3 or labels.shape[0] != images.shape[0]:
            raise ValueError(
                f"fashion-mnist: {image_path} and {label_path} disagree, got image shape "
                f"{tuple(images.shape)} and label shape {tuple(labels.shape)}"
            )
        remap = torch.full((10,), -1, dtype=torch.long)
        remap[torch.tensor(keep)] = torch.arange(len(keep))
        selected: list[torch.Tensor] = []
        for original in keep:
            members = torch.nonzero(labels == original).flatten()
            selected.append(members if max_per_class is None else members[:max_per_class])
        index = torch.sort(torch.cat(selected)).values
        self.images = images[index]
        self.labels = remap[labels[index]]
        self.classes = [FASHION_MNIST_CLASSES[c] for c in keep]
        self.source_classes = keep
        self.files = (image_path, label_path)
        self.transform = transform

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __getitem__(self, index: int) -> tuple[Any, int]:
        image = Image.fromarray(self.images[index].numpy()).convert("RGB")
        label = int(self.labels[index])
        return (self.transform(image) if self.transform is not None else image), label
