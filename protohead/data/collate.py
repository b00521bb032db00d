"""Collate functions: multi-crop samples, uint8 images for a batched augmenter, skipped files.

A DataLoader batch is a sequence of ``(input, label)`` samples. Every collate function here
accepts the same samples and labels, and names the offending sample when one is malformed,
instead of failing deep inside ``torch.stack`` or silently truncating a float label with
``int()``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from numbers import Integral
from typing import Any

import torch
from torch import Tensor

from protohead.augment.image_batch import check_image
from protohead.data.errors import UnreadableImageError

__all__ = [
    "SkipBadCollate",
    "SkippedSample",
    "check_batch",
    "label_tensor",
    "multicrop_collate",
    "sample_pair",
    "uint8_collate",
]


def check_batch(batch: object) -> Sequence[Any]:
    """Checks that ``batch`` is a non-empty sequence of samples.

    Raises:
        TypeError: If ``batch`` is not a sequence.
        ValueError: If it is empty.

    Example:
        >>> len(check_batch([(0, 1)]))
        1
    """
    if not isinstance(batch, Sequence) or isinstance(batch, (str, bytes)):
        raise TypeError(f"batch must be a sequence of samples, got {type(batch).__name__}")
    if len(batch) == 0:
        raise ValueError("batch must contain at least one sample, got an empty batch")
    return batch


def sample_pair(j: int, sample: object, what: str) -> tuple[Any, Any]:
    """Sample ``j`` of a batch as its ``(input, label)`` pair; ``what`` describes the input.

    Raises:
        ValueError: If the sample is not a pair.

    Example:
        >>> sample_pair(3, [1, 2], "crops")
        (1, 2)
    """
    if isinstance(sample, (str, bytes)) or not isinstance(sample, Sequence) or len(sample) != 2:
        got = f"length {len(sample)}" if isinstance(sample, Sequence) else type(sample).__name__
        raise ValueError(f"batch[{j}] must be a ({what}, label) pair, got {got}")
    return sample[0], sample[1]


def label_tensor(j: int, label: object) -> torch.Tensor:
    """Label of sample ``j`` as an int64 scalar: an int or a one-element integer tensor.

    Bools and floats are rejected rather than truncated (``int(2.7) == 2``).

    Raises:
        TypeError: If ``label`` is not an int or a one-element integer tensor.

    Example:
        >>> label_tensor(0, 7), label_tensor(1, torch.tensor([3], dtype=torch.int32))
        (tensor(7), tensor(3))
    """
    if isinstance(label, Integral) and not isinstance(label, bool):
        return torch.tensor(int(label), dtype=torch.int64)
    if isinstance(label, torch.Tensor):
        kind = label.dtype
        if label.numel() == 1 and not (
            kind.is_floating_point or kind.is_complex or kind == torch.bool
        ):
            return label.reshape(()).to(torch.int64)
        got = f"a {kind} tensor of shape {tuple(label.shape)}"
    else:
        got = f"{label!r} ({type(label).__name__})"
    raise TypeError(
        f"label of sample {j} must be an int or a one-element integer tensor, got {got}"
    )


def multicrop_collate(
    batch: Sequence[tuple[Sequence[torch.Tensor], int | torch.Tensor]],
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Stacks ``(crops, label)`` samples crop-wise, for ``DataLoader(collate_fn=...)``.

    Shapes: ``b * ([(c, h_i, w_i)] * n, label) -> ([(b, c, h_i, w_i)] * n, (b,))``; crop order
    is kept (global crops first, as :class:`MultiCropTransform` produces them).

    Args:
        batch: Non-empty sequence of ``(crops, label)``; every sample has the same number of
            crops and crop ``i`` has the same shape in every sample. Labels are ints or
            one-element integer tensors.

    Returns:
        ``(crops, labels)`` where ``crops[i]`` stacks crop ``i`` over the batch and ``labels``
        is an int64 tensor ``(b,)``.

    Raises:
        ValueError: If the batch is empty, a sample is not a ``(crops, label)`` pair, the crop
            counts differ, or crop ``i`` has different shapes across samples.
        TypeError: If the crops of a sample are not a list of tensors or a label is not an int
            or a one-element integer tensor (bools and floats are rejected).

    Example:
        >>> sample = ([torch.zeros(3, 8, 8), torch.zeros(3, 4, 4)], 7)
        >>> crops, labels = multicrop_collate([sample, sample])
        >>> [tuple(c.shape) for c in crops], labels
        ([(2, 3, 8, 8), (2, 3, 4, 4)], tensor([7, 7]))
    """
    pairs = [sample_pair(j, sample, "crops") for j, sample in enumerate(check_batch(batch))]
    first: Sequence[Any] = ()
    for j, (crops, _) in enumerate(pairs):
        if not isinstance(crops, Sequence) or isinstance(crops, (str, bytes)):
            raise TypeError(
                f"the crops of batch[{j}] must be a list of tensors, got {type(crops).__name__}"
            )
        if len(crops) == 0:
            raise ValueError(f"batch[{j}] must be a (crops, label) pair with >= 1 crop")
        first = first or crops
        if len(crops) != len(first):
            raise ValueError(
                f"all samples must have the same number of crops: sample 0 has {len(first)}, "
                f"sample {j} has {len(crops)}"
            )
        for i, crop in enumerate(crops):
            if not isinstance(crop, torch.Tensor):
                raise TypeError(f"crop {i} of sample {j} must be a tensor, got {type(crop)}")
            if crop.shape != first[i].shape:
                raise ValueError(
                    f"crop {i} of sample {j} has shape {tuple(crop.shape)} but crop {i} of "
                    f"sample 0 has shape {tuple(first[i].shape)}"
                )
    labels = torch.stack([label_tensor(j, label) for j, (_, label) in enumerate(pairs)])
    return [torch.stack([crops[i] for crops, _ in pairs]) for i in range(len(first))], labels


class SkipBadCollate:
    """Collate function that drops :class:`SkippedSample` entries and counts them.

    Returns ``(inputs, labels, num_skipped)``, where ``(inputs, labels)`` is what ``collate_fn``
    makes of the readable samples. Picklable, so it works in DataLoader workers.

    Args:
        collate_fn: Collate function for the readable samples, e.g.
            :func:`~protohead.multicrop_collate`.

    Raises:
        UnreadableImageError: From ``__call__``, if every sample of a batch was unreadable.
        ValueError: From ``__call__``, if the batch is empty.

    Example:
        >>> from protohead import multicrop_collate
        >>> collate = SkipBadCollate(multicrop_collate)
        >>> batch = [([torch.zeros(3, 4, 4)], 1), SkippedSample("x.jpg", "broken")]
        >>> crops, labels, skipped = collate(batch)
        >>> tuple(crops[0].shape), labels.tolist(), skipped
        ((1, 3, 4, 4), [1], 1)
    """

    def __init__(self, collate_fn: Callable[[Sequence[Any]], Any]) -> None:
        if not callable(collate_fn):
            raise TypeError(f"collate_fn must be callable, got {type(collate_fn).__name__}")
        self.collate_fn = collate_fn

    def __call__(self, batch: Sequence[Any]) -> tuple[Any, Any, int]:
        good = [s for s in check_batch(batch) if not isinstance(s, SkippedSample)]
        skipped = len(batch) - len(good)
        if not good:
            first = batch[0]
            path = first.path if isinstance(first, SkippedSample) else "?"
            raise UnreadableImageError(path, f"all {len(batch)} images of a batch are unreadable")
        inputs, labels = self.collate_fn(good)
        return inputs, labels, skipped


def uint8_collate(batch: Sequence[tuple[Tensor, int]]) -> tuple[Tensor | list[Tensor], Tensor]:
    """Collate uint8 ``(c, h, w)`` images, c in {1, 3}, for a batched augmenter (BatchedMultiCrop).

    Same-size images are stacked into ``(b, c, h, w)``; otherwise the list is kept (the
    augmenter pads it). Labels (ints or one-element integer tensors, as for
    :func:`~protohead.multicrop_collate`) become an int64 ``(b,)`` tensor.

    Raises:
        TypeError: If an image is not a uint8 tensor or a label not an integer.
        ValueError: If the batch is empty, a sample is not an ``(image, label)`` pair or an
            image is not ``(c, h, w)`` with c in {1, 3} and h, w >= 1.

    Example:
        >>> images, labels = uint8_collate([(torch.zeros(3, 2, 2, dtype=torch.uint8), 4)] * 2)
        >>> tuple(images.shape), labels.tolist()
        ((2, 3, 2, 2), [4, 4])
    """
    pairs = [sample_pair(j, sample, "image") for j, sample in enumerate(check_batch(batch))]
    images = [
        check_image(image, f"the image of batch[{j}]", 3) for j, (image, _) in enumerate(pairs)
    ]
    labels = torch.stack([label_tensor(j, label) for j, (_, label) in enumerate(pairs)])
    if all(image.shape == images[0].shape for image in images):
        return torch.stack(images), labels
    return images, labels


@dataclass(frozen=True)
class SkippedSample:
    """Placeholder returned for an unreadable image when skipping; dropped when collating.

    Example:
        >>> SkippedSample("train/cat/broken.jpg", "cannot identify image file").path
        'train/cat/broken.jpg'
    """

    path: str
    reason: str
