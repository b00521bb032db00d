"""Augmentation wing: the t-ReX multi-crop, per image (PIL) or batched on any device.

- :class:`MultiCropTransform` (module :mod:`~protohead.augment.multicrop`): per-image views
  in DataLoader workers, plus :func:`eval_transform`;
- :class:`BatchedMultiCrop` (module :mod:`~protohead.augment.batched`): the same views for a
  whole uint8 batch at once, on the GPU or a CPU core; its random parameters are drawn by
  :mod:`~protohead.augment.params` and rendered by the batched ops of
  :mod:`~protohead.augment.functional` (kernels in :mod:`~protohead.augment.kernels`, padded
  image batches in :mod:`~protohead.augment.image_batch`).

Imports: only the core package (never :mod:`protohead.data`, ``train`` or ``evaluation``).
"""

from protohead.augment.batched import BatchedMultiCrop
from protohead.augment.image_batch import pad_images
from protohead.augment.multicrop import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    MultiCropTransform,
    eval_transform,
)
from protohead.augment.params import CropParams, MultiCropParams, sample_crop_params

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "BatchedMultiCrop",
    "CropParams",
    "MultiCropParams",
    "MultiCropTransform",
    "eval_transform",
    "pad_images",
    "sample_crop_params",
]
