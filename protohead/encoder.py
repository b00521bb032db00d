"""Multi-resolution encoder: one backbone pass per run of same-size crops, one head pass."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from einops import repeat
from torch import Tensor, nn

from protohead import _validation as check

__all__ = ["MultiCropEncoder", "group_by_resolution", "repeat_per_crop"]

Runs = Sequence[tuple[int, int]]
"""``(start, end)`` index pairs of same-size crops, as :func:`group_by_resolution` returns."""


def group_by_resolution(crops: Sequence[Tensor]) -> list[tuple[int, int]]:
    """Split a crop list into runs of consecutive crops with the same spatial size.

    Crops are not reordered: a list ``[224, 96, 96, 224]`` gives three runs, so the output
    order always equals the input order.

    Args:
        crops: Non-empty sequence of ``(b, c, h, w)`` tensors sharing ``b`` and ``c``.

    Returns:
        ``(start, end)`` index pairs, one per run.

    Raises:
        TypeError: If an element is not a tensor.
        ValueError: If ``crops`` is empty, or a crop is not 4-D or differs from the first crop
            in batch size or channels.

    Example:
        >>> crops = [torch.zeros(2, 3, 8, 8), torch.zeros(2, 3, 4, 4), torch.zeros(2, 3, 4, 4)]
        >>> group_by_resolution(crops)
        [(0, 1), (1, 3)]
    """
    if len(crops) == 0:
        raise ValueError("crops must hold at least one tensor, got an empty sequence")
    for i, crop in enumerate(crops):
        if not isinstance(crop, Tensor):
            raise TypeError(f"crops[{i}] must be a Tensor, got {type(crop).__name__}")
        if crop.ndim != 4:
            raise ValueError(f"crops[{i}] must have shape (b, c, h, w), got {tuple(crop.shape)}")
        if crop.shape[:2] != crops[0].shape[:2]:
            raise ValueError(
                f"crops[{i}] must have the batch size and channels of crops[0] "
                f"{tuple(crops[0].shape[:2])}, got {tuple(crop.shape[:2])}"
            )
    runs: list[tuple[int, int]] = []
    start = 0
    for i in range(1, len(crops) + 1):
        if i == len(crops) or crops[i].shape[-2:] != crops[start].shape[-2:]:
            runs.append((start, i))
            start = i
    return runs


def repeat_per_crop(values: Tensor, num_crops: int) -> Tensor:
    """Repeat per-image values (e.g. labels) for ``num_crops`` crops, in crop-major order.

    Matches the output order of :class:`MultiCropEncoder` (all images of crop 0 first), so the
    ``i``-th row of the result belongs to the ``i``-th row of the encoded crops.

    Shapes: ``(b, ...) -> (n b, ...)``.

    Args:
        values: Tensor with at least one dimension; dim 0 indexes the images.
        num_crops: Number of crops ``n`` per image, >= 1.

    Raises:
        TypeError: If ``values`` is not a tensor or ``num_crops`` not an int.
        ValueError: If ``values`` is 0-d or ``num_crops`` < 1.

    Example:
        >>> repeat_per_crop(torch.tensor([7, 8]), 3).tolist()
        [7, 8, 7, 8, 7, 8]
    """
    if not isinstance(values, Tensor):
        raise TypeError(f"values must be a Tensor, got {type(values).__name__}")
    if values.ndim == 0:
        raise ValueError("values must have shape (b, ...), got a 0-d tensor")
    num_crops = check.integer("num_crops", num_crops, 1)
    return repeat(values, "b ... -> (n b) ...", n=num_crops)


class MultiCropEncoder(nn.Module):
    """Encode a list of crops at several resolutions with a single head call.

    The backbone runs once per run of consecutive same-resolution crops (e.g. once for the
    global crops and once for all local crops), which batches far better than one call per
    crop; the head then runs once on all pooled features, so BatchNorm in the projector sees
    every crop. Both modules are held by reference and never modified.

    Shapes: ``[(b, c, h_i, w_i)] * n -> (n b, d_out)`` in crop-major order (all images of
    crop 0 first); a single tensor ``(b, c, h, w) -> (b, d_out)``.

    Args:
        backbone: Module mapping ``(b, c, h, w) -> (b, d)`` pooled features.
        head: Optional module applied to the concatenated features, e.g. a
            :class:`~protohead.Projector`; ``None`` returns the backbone features.

    Example:
        >>> backbone = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        >>> encoder = MultiCropEncoder(backbone, nn.Linear(4, 2))
        >>> crops = [torch.randn(5, 3, 16, 16)] + [torch.randn(5, 3, 8, 8)] * 3
        >>> encoder(crops).shape
        torch.Size([20, 2])
    """

    def __init__(self, backbone: nn.Module, head: nn.Module | None = None) -> None:
        super().__init__()
        if not isinstance(backbone, nn.Module):
            raise TypeError(f"backbone must be an nn.Module, got {type(backbone).__name__}")
        if head is not None and not isinstance(head, nn.Module):
            raise TypeError(f"head must be an nn.Module or None, got {type(head).__name__}")
        self.backbone = backbone
        self.head = head if head is not None else nn.Identity()

    def forward_features(
        self, crops: Tensor | Sequence[Tensor], *, runs: Runs | None = None
    ) -> Tensor:
        """Backbone features only: ``[(b, c, h_i, w_i)] * n -> (n b, d)``.

        Args:
            crops: One ``(b, c, h, w)`` tensor or a sequence of crops.
            runs: ``group_by_resolution(crops)`` when the caller already computed it (and so
                validated ``crops``); the crops are then not checked again. ``None`` (default)
                checks and groups them here.

        Raises:
            TypeError: If a crop is not a tensor (only when ``runs`` is ``None``).
            ValueError: See :func:`group_by_resolution` (only when ``runs`` is ``None``).
        """
        if isinstance(crops, Tensor):
            crops = [crops]
        if runs is None:
            runs = group_by_resolution(crops)
        outputs = [
            self.backbone(crops[start] if end - start == 1 else torch.cat(list(crops[start:end])))
            for start, end in runs
        ]
        return outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=0)

    def forward(self, crops: Tensor | Sequence[Tensor], *, runs: Runs | None = None) -> Tensor:
        """Backbone per resolution run, then the head once on all features.

        ``runs`` skips the crop checks of a caller that already ran :func:`group_by_resolution`
        (e.g. :class:`~protohead.TReX`, which checks a step once for the student and the
        teacher), see :meth:`forward_features`.
        """
        out: Tensor = self.head(self.forward_features(crops, runs=runs))
        return out
