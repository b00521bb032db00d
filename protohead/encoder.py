"""Multi-resolution encoder: one backbone pass per run of same-size crops, one head pass."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

__all__ = ["MultiCropEncoder", "group_by_resolution"]


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

    def forward_features(self, crops: Tensor | Sequence[Tensor]) -> Tensor:
        """Backbone features only: ``[(b, c, h_i, w_i)] * n -> (n b, d)``."""
        if isinstance(crops, Tensor):
            crops = [crops]
        outputs = [
            self.backbone(crops[start] if end - start == 1 else torch.cat(list(crops[start:end])))
            for start, end in group_by_resolution(crops)
        ]
        return outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=0)

    def forward(self, crops: Tensor | Sequence[Tensor]) -> Tensor:
        """Backbone per resolution run, then the head once on all features."""
        out: Tensor = self.head(self.forward_features(crops))
        return out
