"""Data wing: datasets, class subsets, collate functions and data errors.

- training datasets by name or as an ImageFolder ``train/`` + ``val/``
  (:mod:`~protohead.data.datasets`), with unreadable files raised or skipped;
- the Fashion-MNIST reader (:mod:`~protohead.data.fashion_mnist`) and image lists
  (:mod:`~protohead.data.image_list`), shared with the transfer evaluation;
- datasets of encoded file bytes and their batched decode on the training device
  (:mod:`~protohead.data.encoded`, :mod:`~protohead.data.batched_decode`);
- class subsets (:mod:`~protohead.data.class_subset`);
- collate functions for multi-crop samples, uint8 images and skipped files
  (:mod:`~protohead.data.collate`);
- :class:`DatasetUnavailableError` and :class:`UnreadableImageError`
  (:mod:`~protohead.data.errors`).

Imports: the core package and :mod:`protohead.augment`; never ``train`` or ``evaluation``.
"""

from protohead.data.batched_decode import BatchedDecoder, decode_images
from protohead.data.class_subset import ClassSubset, parse_classes
from protohead.data.collate import (
    SkipBadCollate,
    SkippedSample,
    multicrop_collate,
    uint8_collate,
)
from protohead.data.datasets import (
    DATASETS,
    CheckedImageFolder,
    DatasetInfo,
    TrainValData,
    build_datasets,
    dataset_info,
    with_transform,
)
from protohead.data.encoded import (
    EncodedImageFolder,
    EncodedImageList,
    as_encoded,
    encoded_collate,
)
from protohead.data.errors import DatasetUnavailableError, UnreadableImageError
from protohead.data.fashion_mnist import FashionMNIST
from protohead.data.image_list import ImageListDataset

__all__ = [
    "DATASETS",
    "BatchedDecoder",
    "CheckedImageFolder",
    "ClassSubset",
    "DatasetInfo",
    "DatasetUnavailableError",
    "EncodedImageFolder",
    "EncodedImageList",
    "FashionMNIST",
    "ImageListDataset",
    "SkipBadCollate",
    "SkippedSample",
    "TrainValData",
    "UnreadableImageError",
    "as_encoded",
    "build_datasets",
    "dataset_info",
    "decode_images",
    "encoded_collate",
    "multicrop_collate",
    "parse_classes",
    "uint8_collate",
    "with_transform",
]
