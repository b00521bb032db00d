"""Padded uint8 image batches: the input format of the batched multi-crop augmenter.

DataLoader workers decode images of different sizes; :func:`pad_images` stacks them top-left
aligned into one zero-padded ``(b, c, h_max, w_max)`` uint8 batch plus the valid ``(h, w)`` of
each image, which is what :class:`protohead.augment.batched.BatchedMultiCrop` consumes (e.g. as the
``collate_fn`` step, so one host-to-device copy moves the whole batch).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["as_image_batch", "check_image", "check_sizes", "pad_images", "valid_region_float"]


def check_image(image: object, name: str, rank: int) -> Tensor:
    """Checks a uint8 image (``rank=3``, ``(c, h, w)``) or batch (``rank=4``), c in {1, 3}.

    Raises:
        TypeError: If ``image`` (called ``name`` in messages) is not a uint8 tensor.
        ValueError: If its rank or channel count is wrong, or ``h`` or ``w`` is 0.

    Example:
        >>> check_image(torch.zeros(1, 2, 2, dtype=torch.uint8), "image", 3).shape
        torch.Size([1, 2, 2])
    """
    if not isinstance(image, Tensor):
        raise TypeError(f"{name} must be a uint8 tensor, got {type(image).__name__}")
    if image.dtype != torch.uint8:
        raise TypeError(f"{name} must have dtype torch.uint8, got {image.dtype}")
    shape = "(b, c, h, w)" if rank == 4 else "(c, h, w)"
    if image.ndim != rank or image.shape[-3] not in (1, 3) or min(image.shape[-2:]) < 1:
        raise ValueError(
            f"{name} must have shape {shape} with c in {{1, 3}} and h, w >= 1, "
            f"got {tuple(image.shape)}"
        )
    return image


def check_sizes(sizes: object, batch: Tensor | None) -> Tensor:
    """Checks integer ``(b, 2)`` sizes; returns them as int64 clamped into ``batch``'s extent.

    Values are only checked on the CPU (on an accelerator a check would sync the host), else
    clamped into ``[1, h] x [1, w]``. With ``batch=None`` there is no upper bound: values must
    be >= 1 (checked on the CPU, clamped to >= 1 elsewhere).

    Raises:
        TypeError: If ``sizes`` is not an integer tensor.
        ValueError: If its shape is not ``(b, 2)``, it is on another device than ``batch``, or
            (on the CPU) a value lies outside the batch's extent (is < 1 with ``batch=None``).

    Example:
        >>> batch = torch.zeros(2, 3, 5, 6, dtype=torch.uint8)
        >>> check_sizes(torch.tensor([[5, 6], [2, 3]], dtype=torch.int32), batch).tolist()
        [[5, 6], [2, 3]]
    """
    if not isinstance(sizes, Tensor):
        raise TypeError(f"sizes must be an integer tensor (b, 2), got {type(sizes).__name__}")
    if sizes.is_floating_point() or sizes.is_complex() or sizes.dtype == torch.bool:
        raise TypeError(f"sizes must have an integer dtype, got {sizes.dtype}")
    b = "b" if batch is None else str(batch.shape[0])
    if sizes.ndim != 2 or sizes.shape[1] != 2 or (batch is not None and sizes.shape[0] != int(b)):
        raise ValueError(f"sizes must have shape ({b}, 2), got {tuple(sizes.shape)}")
    if batch is None:
        if sizes.device.type == "cpu" and bool((sizes < 1).any()):
            i = int((sizes < 1).any(dim=1).nonzero()[0, 0])
            raise ValueError(f"sizes must be >= 1, got sizes[{i}] = {sizes[i].tolist()}")
        return sizes.to(torch.int64).clamp_min(1)
    if sizes.device != batch.device:
        raise ValueError(f"sizes must be on the images' device {batch.device}, got {sizes.device}")
    h, w = batch.shape[2], batch.shape[3]
    if sizes.device.type == "cpu":
        bad = (sizes[:, 0] < 1) | (sizes[:, 0] > h) | (sizes[:, 1] < 1) | (sizes[:, 1] > w)
        if bool(bad.any()):
            i = int(bad.nonzero()[0, 0])
            raise ValueError(
                f"sizes must lie in [1, {h}] x [1, {w}] for images of shape {tuple(batch.shape)}, "
                f"got sizes[{i}] = {sizes[i].tolist()}"
            )
    sizes = sizes.to(torch.int64)
    return torch.stack([sizes[:, 0].clamp(1, h), sizes[:, 1].clamp(1, w)], dim=1)


def pad_images(images: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
    """Stacks uint8 images of different sizes into a zero-padded batch, top-left aligned.

    Shapes: ``b * [(c_i, h_i, w_i)] -> (b, c, max h_i, max w_i), (b, 2)`` where ``c`` is 3 if
    any image has 3 channels (1-channel images are then repeated), else 1; the second tensor
    holds each ``(h_i, w_i)`` as int64, on the images' device.

    Args:
        images: Non-empty sequence of uint8 ``(c, h, w)`` tensors, c in {1, 3}, on one device.

    Returns:
        ``(batch, sizes)``.

    Raises:
        TypeError: If ``images`` is not a sequence of uint8 tensors.
        ValueError: If it is empty, an image has a bad shape, or devices differ.

    Example:
        >>> batch, sizes = pad_images([torch.ones(3, 2, 4, dtype=torch.uint8),
        ...                            torch.ones(1, 3, 1, dtype=torch.uint8)])
        >>> tuple(batch.shape), sizes.tolist(), int(batch[1].sum())
        ((2, 3, 3, 4), [[2, 4], [3, 1]], 9)
    """
    if not isinstance(images, Sequence) or isinstance(images, (str, bytes)):
        raise TypeError(
            f"images must be a uint8 tensor or a list of them, got {type(images).__name__}"
        )
    if len(images) == 0:
        raise ValueError("images must hold at least one image, got an empty list")
    checked = [check_image(img, f"images[{i}]", 3) for i, img in enumerate(images)]
    device = checked[0].device
    if any(img.device != device for img in checked):
        raise ValueError(f"all images must be on one device, got {[i.device for i in checked]}")
    channels = max(img.shape[0] for img in checked)
    h, w = max(img.shape[1] for img in checked), max(img.shape[2] for img in checked)
    batch = torch.zeros((len(checked), channels, h, w), dtype=torch.uint8, device=device)
    for i, img in enumerate(checked):  # one copy per image is unavoidable for ragged input
        batch[i, :, : img.shape[1], : img.shape[2]] = img
    sizes = torch.tensor([list(img.shape[1:]) for img in checked], dtype=torch.int64)
    return batch, sizes.to(device, non_blocking=True)


def as_image_batch(images: object, sizes: object = None) -> tuple[Tensor, Tensor | None]:
    """Checks a uint8 batch (or pads a list); returns ``(batch, sizes or None for whole images)``.

    Raises:
        TypeError: If images are not uint8 tensors or sizes not an integer tensor.
        ValueError: On a bad rank, channel count, shape, size value or device, or if ``sizes``
            is given with a list (whose sizes are known).

    Example:
        >>> batch, sizes = as_image_batch(torch.zeros(2, 1, 5, 6, dtype=torch.uint8))
        >>> tuple(batch.shape), sizes
        ((2, 1, 5, 6), None)
    """
    if isinstance(images, Tensor):
        batch = check_image(images, "images", 4)
        if batch.shape[0] < 1:
            raise ValueError(f"images must hold at least one image, got {tuple(batch.shape)}")
        return batch, None if sizes is None else check_sizes(sizes, batch)
    if sizes is not None:
        raise ValueError("sizes must be None when images is a list (sizes come from the list)")
    return pad_images(images)  # type: ignore[arg-type]


def valid_region_float(batch: Tensor, sizes: Tensor | None) -> Tensor:
    """uint8 ``(b, c, h, w)`` -> float32 ``(b, 3, h, w)`` in [0, 1], edges repeated into padding.

    Bilinear taps at a crop's far edge reach up to half a pixel past the valid region, so the
    row and column just outside it repeat the last valid ones: resampling then matches the
    unpadded image. ``sizes`` must already be checked (:func:`check_sizes`).

    Example:
        >>> x = valid_region_float(torch.tensor([[[[255, 0], [0, 0]]]], dtype=torch.uint8),
        ...                        torch.tensor([[1, 1]]))
        >>> x[0, 0]
        tensor([[1., 1.],
                [1., 1.]])
    """
    x = batch.expand(-1, 3, -1, -1).to(torch.float32, memory_format=torch.contiguous_format)
    x.mul_(1.0 / 255.0)  # as torchvision's to_dtype(scale=True)
    if sizes is not None:
        b, _, h, w = x.shape
        rows = torch.arange(b, device=x.device)
        last_h, last_w = sizes[:, 0] - 1, sizes[:, 1] - 1
        x[rows, :, (last_h + 1).clamp(max=h - 1), :] = x[rows, :, last_h, :]
        x[rows, :, :, (last_w + 1).clamp(max=w - 1)] = x[rows, :, :, last_w]
    return x
