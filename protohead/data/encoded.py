"""Datasets of encoded image files: DataLoader workers read bytes, the training device decodes.

Decoding JPEGs with PIL costs a CPU core about 5-10 ms per ImageNet image, which caps the input
pipeline of a multi-crop run at a few hundred images per second per core. The datasets here
only read each file's bytes, so workers stay cheap; :mod:`protohead.data.batched_decode` then
decodes a whole batch at once on the training device and the batched multi-crop augmenter
(:class:`~protohead.augment.batched.BatchedMultiCrop`) crops it there.

Items are ``(EncodedImage, label)``: the bytes travel with their file name, so a file that
cannot be decoded later, in the training process, is still named in the error (or in the
skipped count's log). Files that cannot even be read follow the same policy as
:class:`~protohead.data.CheckedImageFolder`: they raise
:class:`~protohead.data.UnreadableImageError`, or with ``skip_bad_images=True`` become a
:class:`~protohead.data.SkippedSample` that :class:`~protohead.data.SkipBadCollate` drops and
counts.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, overload

import torch
from torch import Tensor
from torch.utils.data import Dataset

from protohead.data.class_subset import ClassSubset
from protohead.data.collate import SkippedSample, check_batch, label_tensor, sample_pair
from protohead.data.datasets import CheckedImageFolder
from protohead.data.errors import UnreadableImageError
from protohead.data.image_list import ImageListDataset

__all__ = [
    "EncodedBatch",
    "EncodedImage",
    "EncodedImageDataset",
    "EncodedImageFolder",
    "EncodedImageList",
    "as_encoded",
    "encoded_collate",
    "read_encoded",
]


@dataclass(frozen=True)
class EncodedImage:
    """The bytes of one image file and the file's name (used in error messages).

    Attributes:
        data: The file's bytes, a non-empty 1-D ``torch.uint8`` CPU tensor.
        path: Where the bytes came from.

    Example:
        >>> image = EncodedImage(torch.tensor([255, 216, 255], dtype=torch.uint8), "a/b.jpg")
        >>> image.path, image.data.numel()
        ('a/b.jpg', 3)
    """

    data: Tensor
    path: str


@dataclass(frozen=True)
class EncodedBatch(Sequence[EncodedImage]):
    """The encoded files of a batch, back to back in one buffer; a sequence of EncodedImage.

    A DataLoader worker hands every tensor of a batch to the training process through its own
    shared-memory file descriptor: a list of a few hundred per-image byte tensors, times the
    batches in flight, exhausts the usual limit of 1024 open files ("Too many open files").
    One buffer per batch takes one descriptor. Items are views into it (no copy).

    Attributes:
        data: All files' bytes, concatenated: a 1-D uint8 tensor.
        ends: End offset of each file in ``data``.
        paths: Each file's name.

    Raises:
        TypeError: If ``data`` is not a uint8 tensor.
        ValueError: If ``ends`` and ``paths`` differ in length, ``ends`` does not increase
            strictly, or ``data`` is not 1-D of length ``ends[-1]``.

    Example:
        >>> batch = EncodedBatch(torch.arange(5, dtype=torch.uint8), (2, 5), ("a.jpg", "b.png"))
        >>> len(batch), batch[1].path, batch[1].data.tolist()
        (2, 'b.png', [2, 3, 4])
    """

    data: Tensor
    ends: tuple[int, ...]
    paths: tuple[str, ...]

    def __post_init__(self) -> None:
        if not isinstance(self.data, Tensor) or self.data.dtype != torch.uint8:
            got = self.data.dtype if isinstance(self.data, Tensor) else type(self.data).__name__
            raise TypeError(f"data must be a uint8 tensor, got {got}")
        if len(self.ends) != len(self.paths):
            raise ValueError(
                f"ends and paths must have one entry per file, got {len(self.ends)} ends and "
                f"{len(self.paths)} paths"
            )
        if any(a >= b for a, b in itertools.pairwise((0, *self.ends))):
            raise ValueError(f"ends must increase strictly (no empty file), got {self.ends[:8]}")
        if self.data.ndim != 1 or (self.ends and self.ends[-1] != self.data.numel()):
            raise ValueError(
                f"data must be 1-D and end where the last file ends ({self.ends[-1:]}), got "
                f"shape {tuple(self.data.shape)}"
            )

    def __len__(self) -> int:
        return len(self.ends)

    @overload
    def __getitem__(self, index: int) -> EncodedImage: ...

    @overload
    def __getitem__(self, index: slice) -> list[EncodedImage]: ...

    def __getitem__(self, index: int | slice) -> EncodedImage | list[EncodedImage]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        i = range(len(self))[index]  # IndexError when out of range, negative indices allowed
        start = self.ends[i - 1] if i > 0 else 0
        return EncodedImage(self.data[start : self.ends[i]], self.paths[i])


def read_encoded(path: str | os.PathLike[str]) -> EncodedImage:
    """Reads a whole file into a uint8 tensor, without an intermediate ``bytes`` copy.

    Raises:
        OSError: If the file cannot be opened or read.
        ValueError: If it is empty.

    Example:
        >>> import tempfile, pathlib
        >>> file = pathlib.Path(tempfile.mkdtemp()) / "x.bin"
        >>> _ = file.write_bytes(b"\\xff\\xd8\\xff\\xd9")
        >>> read_encoded(file).data.tolist()
        [255, 216, 255, 217]
    """
    with open(path, "rb") as file:
        size = os.fstat(file.fileno()).st_size
        if size == 0:
            raise ValueError("the file is empty")
        data = torch.empty(size, dtype=torch.uint8)
        count = file.readinto(data.numpy().data)
    if count == 0:
        raise ValueError("the file is empty")
    # A file truncated while being read keeps what was there; the decoder judges it.
    return EncodedImage(data[:count] if count < size else data, os.fspath(path))


class EncodedImageDataset(Dataset[Any]):
    """Labelled image files read as bytes: items are ``(EncodedImage, label)``.

    Args:
        samples: ``(path, label)`` pairs, e.g. an ``ImageFolder``'s ``samples``.
        classes: Class names, index = label (informative; default: none).
        skip_bad_images: Return a :class:`~protohead.data.SkippedSample` for a file that cannot
            be read (or is empty) instead of raising.

    Attributes:
        samples: The ``(path, label)`` pairs, in order.
        targets: The labels, in order (what :class:`~protohead.data.ClassSubset` reads).
        classes: Class names.

    Raises:
        TypeError: If a sample is not a ``(path, int label)`` pair.
        UnreadableImageError: From ``dataset[i]``, if the file cannot be read and
            ``skip_bad_images`` is False.

    Example:
        >>> import tempfile, pathlib
        >>> file = pathlib.Path(tempfile.mkdtemp()) / "a.jpg"
        >>> _ = file.write_bytes(b"\\xff\\xd8 not really a jpeg")
        >>> data = EncodedImageDataset([(str(file), 3), (str(file) + ".gone", 0)],
        ...                            skip_bad_images=True)
        >>> image, label = data[0]
        >>> image.data.numel(), label, type(data[1]).__name__
        (20, 3, 'SkippedSample')
    """

    def __init__(
        self,
        samples: Sequence[tuple[str, int]],
        *,
        classes: Sequence[str] = (),
        skip_bad_images: bool = False,
    ) -> None:
        checked: list[tuple[str, int]] = []
        for j, sample in enumerate(samples):
            path, label = sample_pair(j, sample, "path")
            if not isinstance(path, (str, os.PathLike)):
                raise TypeError(f"samples[{j}] path must be a str, got {type(path).__name__}")
            checked.append((os.fspath(path), int(label_tensor(j, label))))
        self.samples = checked
        self.targets = [label for _, label in checked]
        self.classes = list(classes)
        self.skip_bad_images = bool(skip_bad_images)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> Any:
        path, label = self.samples[index]
        try:
            image = read_encoded(path)
        except (OSError, ValueError) as err:
            if self.skip_bad_images:
                return SkippedSample(path, f"{type(err).__name__}: {err}")
            raise UnreadableImageError(path, f"{type(err).__name__}: {err}") from err
        return image, label


class EncodedImageFolder(EncodedImageDataset):
    """An ImageFolder tree (one sub-directory per class) read as bytes.

    Same files, classes and labels as :class:`~protohead.data.CheckedImageFolder` (and
    ``torchvision.datasets.ImageFolder``) for the same ``root``.

    Args:
        root: Directory with one sub-directory per class.
        skip_bad_images: As :class:`EncodedImageDataset`.

    Raises:
        FileNotFoundError: If ``root`` is missing or holds no class folder with images.

    Example:
        >>> import tempfile, pathlib
        >>> from PIL import Image
        >>> root = pathlib.Path(tempfile.mkdtemp())
        >>> for name in ("cat", "dog"):
        ...     (root / name).mkdir()
        ...     Image.new("RGB", (8, 8)).save(root / name / "1.jpg")
        >>> folder = EncodedImageFolder(root)
        >>> folder.classes, folder[1][0].data[:2].tolist(), folder[1][1]
        (['cat', 'dog'], [255, 216], 1)
    """

    def __init__(self, root: str | os.PathLike[str], *, skip_bad_images: bool = False) -> None:
        # The PIL dataset scans the tree: both modes see exactly the same files.
        folder = CheckedImageFolder(root)
        super().__init__(folder.samples, classes=folder.classes, skip_bad_images=skip_bad_images)
        self.root = os.fspath(root)
        self.class_to_idx = dict(folder.class_to_idx)


class EncodedImageList(EncodedImageDataset):
    """Images listed in a text file (SUN397 partitions, ImageNet-CoG levels) read as bytes.

    The list format, class numbering and errors are those of
    :class:`~protohead.data.image_list.ImageListDataset`.

    Args:
        root: Directory the listed paths are relative to.
        list_file: The text file, one ``PATH`` or ``PATH LABEL`` per line.
        class_to_idx: Fixed class numbering (pass the training list's to the test list).
        skip_bad_images: As :class:`EncodedImageDataset`.

    Example:
        >>> import tempfile, pathlib
        >>> from PIL import Image
        >>> d = pathlib.Path(tempfile.mkdtemp())
        >>> (d / "cat").mkdir()
        >>> Image.new("RGB", (4, 4)).save(d / "cat" / "1.png")
        >>> _ = (d / "train.txt").write_text("/cat/1.png\\n")
        >>> data = EncodedImageList(d, d / "train.txt")
        >>> data.classes, data[0][0].data[1:4].tolist()  # the PNG signature
        (['cat'], [80, 78, 71])
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        list_file: str | os.PathLike[str],
        *,
        class_to_idx: dict[str, int] | None = None,
        skip_bad_images: bool = False,
    ) -> None:
        listing = ImageListDataset(root, list_file, class_to_idx=class_to_idx)
        super().__init__(listing.samples, classes=listing.classes, skip_bad_images=skip_bad_images)
        self.root = os.fspath(root)
        self.class_to_idx = dict(listing.class_to_idx)


def as_encoded(dataset: Dataset[Any], *, skip_bad_images: bool | None = None) -> Dataset[Any]:
    """The same labelled files as ``dataset``, read as bytes (no re-scan of the files).

    Works for datasets with a ``samples`` list of ``(path, label)`` pairs (``ImageFolder``,
    :class:`~protohead.data.CheckedImageFolder`, ``ImageListDataset``) and for a
    :class:`~protohead.data.class_subset.ClassSubset` of one (same indices, same relabelling).

    Args:
        dataset: The decoded-image dataset.
        skip_bad_images: Skip policy; ``None`` takes ``dataset.skip_bad_images`` (False when
            it has none).

    Raises:
        TypeError: If ``dataset`` has no ``samples`` list (e.g. CIFAR or FakeData, which hold
            pixels, not files).

    Example:
        >>> import tempfile, pathlib
        >>> from PIL import Image
        >>> root = pathlib.Path(tempfile.mkdtemp())
        >>> for name in ("a", "b"):
        ...     (root / name).mkdir()
        ...     Image.new("RGB", (4, 4)).save(root / name / "1.png")
        >>> subset = ClassSubset(CheckedImageFolder(str(root)), classes=[1])
        >>> encoded = as_encoded(subset)
        >>> len(encoded), encoded[0][0].path.endswith("b/1.png"), encoded[0][1]
        (1, True, 0)
    """
    if isinstance(dataset, ClassSubset):
        return dataset.with_dataset(as_encoded(dataset.dataset, skip_bad_images=skip_bad_images))
    samples = getattr(dataset, "samples", None)
    if not isinstance(samples, Sequence):
        raise TypeError(
            "dataset must list its image files in a samples attribute of (path, label) pairs "
            f"(an ImageFolder or an image list), got {type(dataset).__name__}"
        )
    if skip_bad_images is None:
        skip_bad_images = bool(getattr(dataset, "skip_bad_images", False))
    return EncodedImageDataset(
        samples, classes=getattr(dataset, "classes", ()), skip_bad_images=skip_bad_images
    )


def encoded_collate(
    batch: Sequence[tuple[EncodedImage | Tensor, Any]],
) -> tuple[EncodedBatch, Tensor]:
    """Collate ``(encoded image, label)`` samples into an :class:`EncodedBatch` and int64 labels.

    The images stay a sequence (of views into one buffer, see :class:`EncodedBatch` for why).
    Images are :class:`EncodedImage` or bare non-empty 1-D uint8 tensors, named
    ``<batch[j]>`` in decoding errors. Compose with :class:`~protohead.data.SkipBadCollate` to
    drop unreadable files, and decode with :class:`~protohead.data.batched_decode.BatchedDecoder`.

    Raises:
        TypeError: If an image is neither an ``EncodedImage`` nor a uint8 tensor, or a label is
            not an integer.
        ValueError: If the batch is empty, a sample is not a pair or an image is not a
            non-empty 1-D tensor.

    Example:
        >>> raw = torch.tensor([255, 216, 255], dtype=torch.uint8)
        >>> images, labels = encoded_collate([(EncodedImage(raw, "a.jpg"), 1), (raw, 0)])
        >>> len(images), images[0].path, images[1].path, labels.tolist()
        (2, 'a.jpg', '<batch[1]>', [1, 0])
    """
    pairs = [sample_pair(j, sample, "encoded image") for j, sample in enumerate(check_batch(batch))]
    datas: list[Tensor] = []
    for j, (image, _) in enumerate(pairs):
        data = image.data if isinstance(image, EncodedImage) else image
        if not isinstance(data, Tensor) or data.dtype != torch.uint8:
            got = f"dtype {data.dtype}" if isinstance(data, Tensor) else type(data).__name__
            raise TypeError(
                f"the image of batch[{j}] must be an EncodedImage or a uint8 tensor of file "
                f"bytes, got {got}"
            )
        if data.ndim != 1 or data.numel() == 0:
            raise ValueError(
                f"the image of batch[{j}] must be a non-empty 1-D tensor of file bytes, got "
                f"shape {tuple(data.shape)}"
            )
        datas.append(data)
    labels = torch.stack([label_tensor(j, label) for j, (_, label) in enumerate(pairs)])
    paths = tuple(
        image.path if isinstance(image, EncodedImage) else f"<batch[{j}]>"
        for j, (image, _) in enumerate(pairs)
    )
    ends = tuple(int(end) for end in torch.tensor([d.numel() for d in datas]).cumsum(0))
    return EncodedBatch(torch.cat(datas), ends, paths), labels
