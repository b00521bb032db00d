"""How :class:`~protohead.augment.batched.BatchedMultiCrop` orders and writes a CPU chunk.

On the CPU a chunk's crops are rendered one by one from their taps, so their order is free.
Two passes of the op-by-op chain disappear by choosing it and the write-out well:

- The colour jitter groups samples by where hue sits in their op order
  (:func:`~protohead.augment._color.hue_positions`). Rendered in that order
  (:func:`jitter_rows`), the jitter runs in place, with no gather and no scatter.
- The flip comes last in the chain and the normalisation is elementwise, so mirroring a crop
  while it is normalised into its output (:func:`write_crops`) gives the same bits as the
  chain's select, flip and write-back passes, in one small copy per mirrored crop.

The bits of every crop are those of the chunk rendered in crop-major order: every op is per
sample, and the jitter's reductions see the same groups (it sorts by the same key either way).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from protohead.augment._color import hue_positions
from protohead.augment._separable_filters import CropTaps, crop_taps
from protohead.augment.params import CropParams

__all__ = ["batch_taps", "chunk_boxes", "jitter_rows", "normaliser", "write_crops"]


def jitter_rows(chunk: CropParams, jitter: bool) -> Tensor | None:
    """The chunk's flat (crop-major) samples in the jitter's order ``(n * m,)``; None: as is."""
    if not jitter:
        return None
    return torch.argsort(hue_positions(chunk.flat("order"), chunk.flat("jitter")), stable=True)


def batch_taps(images: Tensor, p: CropParams, size: int, sizes: Tensor | None) -> CropTaps | None:
    """Resampling taps of every crop of ``p`` from ``(b, 3, h, w)`` uint8 ``images`` (None if none).

    Box ``k * b + i`` is crop k of image i. The CPU resampler reads each box's window straight
    from the uint8 images (clamped to the valid ``sizes``), so a crop's cost does not grow with
    its source; taps are computed once for the batch (a few dozen small ops, not per chunk).
    """
    if p.num_crops == 0:
        return None
    image = torch.arange(p.batch_size).repeat(p.num_crops)
    boxes = torch.stack([p.flat("top"), p.flat("left"), p.flat("height"), p.flat("width")], 1)
    return crop_taps(images, image, boxes, (size, size), sizes)


def chunk_boxes(chunk: CropParams, batch: int, start: int, rows: Tensor | None) -> list[int]:
    """Box ids of :func:`batch_taps` (``batch`` images) for the ``chunk`` of images from
    ``start``, crop-major or in the order ``rows`` picks."""
    stop = start + chunk.batch_size
    ids = [k * batch + i for k in range(chunk.num_crops) for i in range(start, stop)]
    return ids if rows is None else [ids[r] for r in rows.tolist()]


def normaliser(mean: Tensor, std: Tensor, size: int) -> tuple[Tensor, Tensor]:
    """Shift ``(3, 1, 1)`` and scale ``(3, size, size)`` for :func:`write_crops` from the
    ``(1, 3, 1, 1)`` mean and std: the normalisation as one multiply-add while writing, one
    pass instead of subtract, divide and copy.

    The scale is full size: it keeps addcmul on its vectorised loop (two broadcast operands
    take the scalar one, 1.5-4x slower) with the same bits (one rounding either way).
    """
    scale, shift = (1.0 / std)[0], (-mean / std)[0]
    return shift, scale.expand(3, size, size).contiguous()


def write_crops(
    crops: Tensor,
    outs: Sequence[Tensor],
    start: int,
    rows: Tensor | None,
    flip: Tensor,
    shift: Tensor,
    scale: Tensor,
) -> None:
    """Normalises ``crops`` ``(n * m, 3, s, s)`` in ``[0, 1]`` into ``outs[k][start + i]``.

    Row ``r`` of ``crops`` is flat sample ``rows[r]`` (``k * m + i``: crop k of chunk image
    i; ``None``: row r itself); ``flip`` ``(n * m,)`` bool, in flat order, mirrors it
    left-right. ``outs`` are the ``n`` outputs ``(b, 3, s, s)``, ``shift`` ``(3, 1, 1)``
    and ``scale`` ``(3, s, s)`` from :func:`normaliser`.
    """
    m = crops.shape[0] // len(outs)
    flat = range(crops.shape[0]) if rows is None else rows.tolist()
    mirrored = flip.tolist()
    # One call per crop: a batched write would need a scatter pass (the rows are out of order),
    # and a (3, s, s) addcmul is as fast per crop as a batch's (whose scale broadcasts).
    for crop, f in zip(crops.unbind(0), flat, strict=True):
        k, i = divmod(f, m)
        # One rounding per value either way, so normalising the mirrored copy is exact.
        source = crop.flip(-1) if mirrored[f] else crop
        torch.addcmul(shift, source, scale, out=outs[k][start + i])
