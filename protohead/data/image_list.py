"""Dataset of images named in a text file: SUN397 partitions and ImageNet-CoG levels.

Some transfer splits of Sariyildiz et al. (ICLR 2023) are defined by lists of image paths rather
than by a directory layout: SUN397's partition 1 (``Training_01.txt`` / ``Testing_01.txt``) and
the ImageNet-CoG concept-generalisation levels. :class:`ImageListDataset` reads such a list.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from PIL import Image
from torch.utils.data import Dataset

from protohead.data.errors import DatasetUnavailableError

__all__ = ["ImageListDataset"]


def _sort_classes(names: set[str]) -> list[str]:
    # Integer class ids sort numerically ("2" before "10"); anything else sorts as text.
    if all(name.isdigit() for name in names):
        return sorted(names, key=int)
    return sorted(names)


class ImageListDataset(Dataset[tuple[Any, int]]):
    """Images listed one per line in a text file, relative to ``root``.

    Line format: ``PATH`` or ``PATH LABEL`` (whitespace separated). Without a label the class is
    the directory part of the path (``/a/abbey/sun_x.jpg`` has class ``a/abbey``, as in the
    SUN397 lists). A leading ``/`` in ``PATH`` is ignored, blank lines and lines starting with
    ``#`` are skipped. Classes are sorted (numerically when all are integers) and numbered from
    0, unless ``class_to_idx`` is given: pass the training list's mapping to the test list so
    both share the numbering.

    Args:
        root: Directory the paths are relative to.
        list_file: The text file.
        transform: Applied to the RGB ``PIL.Image``.
        class_to_idx: Fixed class numbering; every class in the list must be in it.

    Attributes:
        samples: ``(absolute path, label)`` pairs in list order.
        classes: Class names, index = label.
        class_to_idx: Name to label.

    Raises:
        DatasetUnavailableError: If the list file or any listed image does not exist, or the
            list is empty.
        ValueError: If a line has more than two fields or a class is not in ``class_to_idx``.

    Example:
        >>> import tempfile
        >>> d = Path(tempfile.mkdtemp())
        >>> for name in ("cat/1.png", "dog/2.png"):
        ...     (d / name).parent.mkdir(exist_ok=True)
        ...     Image.new("RGB", (4, 4)).save(d / name)
        >>> _ = (d / "train.txt").write_text("/cat/1.png\\n/dog/2.png\\n")
        >>> ds = ImageListDataset(d, d / "train.txt")
        >>> ds.classes, len(ds), ds[1][1]
        (['cat', 'dog'], 2, 1)
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        list_file: str | os.PathLike[str],
        *,
        transform: Callable[[Image.Image], Any] | None = None,
        class_to_idx: Mapping[str, int] | None = None,
    ) -> None:
        root_path, list_path = Path(root), Path(list_file)
        if not list_path.is_file():
            raise DatasetUnavailableError(f"image list {str(list_path)!r} does not exist")
        entries: list[tuple[str, str]] = []
        for number, raw in enumerate(list_path.read_text().splitlines(), start=1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            fields = line.split()
            if len(fields) > 2:
                raise ValueError(
                    f"{list_path}:{number}: a line must be 'PATH' or 'PATH LABEL', got {line!r}"
                )
            rel = fields[0].lstrip("/")
            label = fields[1] if len(fields) == 2 else os.path.dirname(rel)
            entries.append((rel, label))
        if not entries:
            raise DatasetUnavailableError(f"image list {str(list_path)!r} lists no images")

        if class_to_idx is None:
            classes = _sort_classes({label for _, label in entries})
            mapping = {name: index for index, name in enumerate(classes)}
        else:
            mapping = dict(class_to_idx)
            classes = sorted(mapping, key=mapping.__getitem__)
            unknown = sorted({label for _, label in entries} - set(mapping))
            if unknown:
                raise ValueError(
                    f"{list_path} has classes missing from class_to_idx, got {unknown[:5]}"
                )
        missing = [rel for rel, _ in entries if not (root_path / rel).is_file()]
        if missing:
            raise DatasetUnavailableError(
                f"{len(missing)} of {len(entries)} images listed in {str(list_path)!r} are "
                f"missing under {str(root_path)!r}, e.g. {missing[:3]}"
            )
        self.root = root_path
        self.transform = transform
        self.classes = classes
        self.class_to_idx = mapping
        self.samples = [(str(root_path / rel), mapping[label]) for rel, label in entries]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        path, label = self.samples[index]
        with Image.open(path) as img:
            image = img.convert("RGB")
        return (self.transform(image) if self.transform is not None else image), label
