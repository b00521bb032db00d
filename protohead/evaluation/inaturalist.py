"""iNaturalist 2018 and 2019, two of the fifteen transfer datasets of the paper.

Sariyildiz et al., "No Reason for No Supervision" (ICLR 2023) evaluate on the competition
releases of iNaturalist 2018 (8,142 species) and 2019 (1,010): the training images are the
trainval split and the official validation images the test split. The layout is the one the
competition archives unpack to, and the one the authors' loader reads: a folder holding
``train{year}.json`` and ``val{year}.json`` and the images they name.

The JSON files are COCO-style: ``"images"`` (``id``, ``file_name`` relative to the folder),
``"annotations"`` (``image_id``, ``category_id``, one per image) and ``"categories"``
(``id``). Labels number the training file's category ids in increasing order, and the test
split uses the same numbering.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from PIL import Image
from torch.utils.data import Dataset

from protohead.data.errors import DatasetUnavailableError
from protohead.evaluation.fingerprint import files_fingerprint, resolved
from protohead.evaluation.pairs import TransferDataset

__all__ = ["CocoJsonImages", "inaturalist_pair"]

_SPLIT_FILES = {"trainval": "train{year}.json", "test": "val{year}.json"}


def _load(path: Path) -> Mapping[str, Any]:
    with open(path, encoding="utf-8") as handle:
        try:
            data = json.load(handle)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: not valid JSON ({err}); a truncated download?") from err
    if not isinstance(data, Mapping):
        raise ValueError(f"{path}: must hold a JSON object (COCO style), got {type(data).__name__}")
    return data


def _entries(
    data: Mapping[str, Any], path: Path, key: str, fields: tuple[str, ...]
) -> list[Mapping[str, Any]]:
    """``data[key]``, each entry checked to hold ``fields``."""
    entries = data.get(key)
    if not isinstance(entries, list):
        raise ValueError(
            f"{path}: must hold a list {key!r} (COCO style), got {type(entries).__name__}"
        )
    for entry in entries:
        if not isinstance(entry, Mapping) or any(f not in entry for f in fields):
            raise ValueError(f"{path}: every {key!r} entry needs {list(fields)}, got {entry!r}")
    return entries


class CocoJsonImages(Dataset[tuple[Any, int]]):
    """The images and labels of a COCO-style annotation file with one annotation per image.

    Args:
        root: Folder the ``file_name`` entries are relative to.
        annotation_file: The JSON file.
        transform: Applied to the RGB ``PIL.Image``.
        class_to_idx: Category id to label; defaults to the file's ``"categories"`` ids (else
            those of its annotations) in increasing order. Pass the training split's mapping to
            the test split so both share the numbering.

    Attributes:
        samples: ``(absolute path, label)`` in the file's image order.
        targets: The labels.
        classes: Category ids, index = label.
        class_to_idx: Category id to label.

    Raises:
        DatasetUnavailableError: If the JSON file or a listed image does not exist.
        ValueError: If the JSON is malformed, an image has no or several annotations, or a
            category is not in ``class_to_idx``.

    Example:
        >>> import tempfile
        >>> d = Path(tempfile.mkdtemp())
        >>> for name in ("a/1.jpg", "b/2.jpg"):
        ...     (d / name).parent.mkdir(exist_ok=True)
        ...     Image.new("RGB", (4, 4)).save(d / name)
        >>> coco = {"images": [{"id": 7, "file_name": "a/1.jpg"},
        ...                    {"id": 9, "file_name": "b/2.jpg"}],
        ...         "annotations": [{"image_id": 9, "category_id": 40},
        ...                         {"image_id": 7, "category_id": 3}],
        ...         "categories": [{"id": 3}, {"id": 40}]}
        >>> _ = (d / "train.json").write_text(json.dumps(coco))
        >>> ds = CocoJsonImages(d, d / "train.json")
        >>> ds.classes, ds.targets, len(ds)
        ([3, 40], [0, 1], 2)
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        annotation_file: str | os.PathLike[str],
        *,
        transform: Callable[[Image.Image], Any] | None = None,
        class_to_idx: Mapping[int, int] | None = None,
    ) -> None:
        root_path, ann_path = Path(root), Path(annotation_file)
        if not ann_path.is_file():
            raise DatasetUnavailableError(f"annotation file {str(ann_path)!r} does not exist")
        data = _load(ann_path)
        images = _entries(data, ann_path, "images", ("id", "file_name"))
        annotations = _entries(data, ann_path, "annotations", ("image_id", "category_id"))
        category_of: dict[Any, int] = {}
        for ann in annotations:
            if ann["image_id"] in category_of:
                raise ValueError(
                    f"{ann_path}: image id {ann['image_id']!r} has several annotations"
                )
            category_of[ann["image_id"]] = int(ann["category_id"])
        unlabelled = [im["id"] for im in images if im["id"] not in category_of]
        if unlabelled or len(images) != len(annotations):
            raise ValueError(
                f"{ann_path}: every image needs exactly one annotation, got {len(images)} images, "
                f"{len(annotations)} annotations, unannotated ids {unlabelled[:5]}"
            )
        if class_to_idx is None:
            ids = (
                {int(c["id"]) for c in _entries(data, ann_path, "categories", ("id",))}
                if data.get("categories")
                else set(category_of.values())
            )
            class_to_idx = {category: label for label, category in enumerate(sorted(ids))}
        mapping = dict(class_to_idx)
        unknown = sorted(set(category_of.values()) - set(mapping))
        if unknown:
            raise ValueError(f"{ann_path}: categories {unknown[:5]} are not in the class numbering")
        samples = [
            (str(root_path / im["file_name"]), mapping[category_of[im["id"]]]) for im in images
        ]
        missing = [path for path, _ in samples if not os.path.isfile(path)]
        if missing:
            raise DatasetUnavailableError(
                f"{len(missing)} of {len(samples)} images named in {str(ann_path)!r} are missing "
                f"under {str(root_path)!r}, e.g. {missing[:3]}"
            )
        self.root = root_path
        self.transform = transform
        self.class_to_idx = mapping
        self.classes = sorted(mapping, key=mapping.__getitem__)
        self.samples = samples
        self.targets = [label for _, label in samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        path, label = self.samples[index]
        with Image.open(path) as img:
            image = img.convert("RGB")
        return (self.transform(image) if self.transform is not None else image), label


def inaturalist_pair(
    name: str, year: str, root: str | os.PathLike[str], *, transform: Callable[[Any], Any]
) -> TransferDataset:
    """iNaturalist ``year``: ``train{year}.json`` as trainval, ``val{year}.json`` as test.

    Sizes are not checked here (the registered ``inat2018`` / ``inat2019`` datasets of
    :mod:`~protohead.evaluation.datasets` check them).

    Args:
        name: Display name.
        year: ``"2018"`` or ``"2019"``.
        root: The folder holding both JSON files; image paths are relative to it.
        transform: Image transform.

    Returns:
        The :class:`~protohead.evaluation.pairs.TransferDataset`; its ``num_classes`` is the
        number of training categories and its ``config`` holds the resolved root, and a
        fingerprint of the JSON files and of every image (relative path, label, size, time).

    Raises:
        ValueError: If ``year`` is not 2018 or 2019, or a JSON file is malformed.
        DatasetUnavailableError: If a file is missing.

    Example:
        >>> import tempfile
        >>> root = Path(tempfile.mkdtemp())
        >>> for split, first in (("train", 0), ("val", 10)):
        ...     images = [{"id": first + i, "file_name": f"{split}{i}.png"} for i in range(4)]
        ...     labels = [{"image_id": first + i, "category_id": i % 2} for i in range(4)]
        ...     for image in images:
        ...         Image.new("RGB", (4, 4)).save(root / image["file_name"])
        ...     categories = [{"id": 0}, {"id": 1}]
        ...     coco = {"images": images, "annotations": labels, "categories": categories}
        ...     _ = (root / f"{split}2019.json").write_text(json.dumps(coco))
        >>> pair = inaturalist_pair("inat2019", "2019", root, transform=lambda im: im)
        >>> len(pair.trainval), len(pair.test), pair.num_classes
        (4, 4, 2)
    """
    if year not in ("2018", "2019"):
        raise ValueError(f"year must be '2018' or '2019', got {year!r}")
    base = Path(root)
    files = {split: base / pattern.format(year=year) for split, pattern in _SPLIT_FILES.items()}
    try:
        trainval = CocoJsonImages(base, files["trainval"], transform=transform)
        test = CocoJsonImages(
            base, files["test"], transform=transform, class_to_idx=trainval.class_to_idx
        )
        config: dict[str, Any] = {
            "name": name,
            "root": resolved(base),
            "annotations": files_fingerprint([(path, "") for path in files.values()], base),
            "files": {
                "trainval": files_fingerprint(trainval.samples, base),
                "test": files_fingerprint(test.samples, base),
            },
        }
    except OSError as err:  # a missing file, or one that vanished between listing and stat
        raise DatasetUnavailableError(f"{name}: {err}") from err
    return TransferDataset(name, trainval, test, len(trainval.classes), config)
