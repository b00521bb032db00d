"""Separable filters of the batched augmenter on the CPU, as weighted row gathers.

A separable filter is a weighted sum of a few rows, then of a few columns. ``embedding_bag``
computes exactly such sums (``mode="sum"`` with ``per_sample_weights``) in one vectorised
kernel that reads each needed row once from cache, where shift-and-add makes one image-sized
pass per tap. :func:`rows_filter` is that step; the column pass is the same on the transposed
image. Two filters of :class:`~protohead.augment.batched.BatchedMultiCrop` use it on the CPU:

**Crop and resize** (:func:`crop_resize_separable`). ``torchvision.ops.roi_align``
(``aligned=True``) averages a ``g_h x g_w`` grid of bilinear samples per output pixel.
Bilinear weights are a row weight times a column weight, each clamped at the image edge on its
own axis, so the grid average factors into a row filter and a column filter: the output is
``Wy @ crop @ Wx^T`` with ``2 g`` taps per row of ``Wy`` and ``Wx``. That costs
``O(size * (box + size) * g)`` instead of roi_align's ``O(size^2 * g^2)`` scalar samples and
reads only the box's window. Sources may be uint8: only the window is converted (the ``1/255``
scale is folded into the row taps), so a crop's cost does not grow with its source image, and
per-image valid sizes clamp the taps as roi_align clamps them at the border (which is what
edge-padding the valid region did). Results equal roi_align's up to float rounding (max
difference ~2e-7 on [0, 1] values).

**Gaussian blur** (:func:`gaussian_blur_bags`): per-sample taps with reflect padding, the same
sums as the shift-and-add form at a fraction of its memory traffic.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["crop_resize_separable", "gaussian_blur_bags", "rows_filter"]


def rows_filter(table: Tensor, index: Tensor, weights: Tensor) -> Tensor:
    """``out[i] = sum_k weights[i, k] * table[index[i, k]]``: ``(r, w), (m, k), (m, k) -> (m, w)``.

    Example:
        >>> rows_filter(torch.eye(3), torch.tensor([[0, 2]]), torch.tensor([[0.5, 2.0]]))
        tensor([[0.5000, 0.0000, 2.0000]])
    """
    return F.embedding_bag(index, table, per_sample_weights=weights, mode="sum")


def _transposed_filter(x: Tensor, index: Tensor, weights: Tensor) -> Tensor:
    """Filters the last axis of ``(p, h, w)`` with ``(p * w_out, k)`` taps -> ``(p, h, w_out)``.

    Runs :func:`rows_filter` on the transposed planes; the result is a transposed view.
    """
    p, h, w = x.shape
    table = x.transpose(1, 2).contiguous().view(p * w, h)
    return rows_filter(table, index, weights).view(p, -1, h).transpose(1, 2)


def _reflect(i: Tensor, n: int) -> Tensor:
    """Reflect-padding source index of positions ``i`` in ``[-(n - 1), 2 (n - 1)]``."""
    i = i.abs()
    return torch.where(i > n - 1, 2 * (n - 1) - i, i)


def gaussian_blur_bags(x: Tensor, weights: Tensor) -> Tensor:
    """Separable blur with per-sample taps ``(n, k)`` and reflect padding (as torchvision).

    Shapes: ``(n, c, h, w), (n, k) -> (n, c, h, w)`` (a transposed view); ``k`` odd and
    ``< 2 * min(h, w)``.

    Example:
        >>> x = torch.zeros(1, 1, 5, 5); x[0, 0, 2, 2] = 1.0
        >>> out = gaussian_blur_bags(x, torch.tensor([[0.25, 0.5, 0.25]]))
        >>> out[0, 0, 1:4, 2]
        tensor([0.1250, 0.2500, 0.1250])
    """
    n, c, h, w = x.shape
    k = weights.shape[1]
    offsets = torch.arange(k) - k // 2
    taps = weights.repeat_interleave(c, dim=0)[:, None, :]  # (n * c, 1, k)
    planes = torch.arange(n * c)[:, None, None]

    def bags(length: int) -> tuple[Tensor, Tensor]:
        source = _reflect(torch.arange(length)[:, None] + offsets, length)  # (length, k)
        index = (planes * length + source).view(-1, k)
        return index, taps.expand(-1, length, -1).reshape(-1, k)

    rows = rows_filter(x.reshape(n * c * h, w), *bags(h)).view(n * c, h, w)
    return _transposed_filter(rows, *bags(w)).view(n, c, h, w)


def _axis_taps(
    start: Tensor, length: Tensor, out: int, limit: Tensor, grid: Tensor
) -> tuple[Tensor, Tensor]:
    """Row (or column) taps of ``n`` boxes along one axis: ``(n,) -> (n, out, 2 g), (n, out, 2 g)``.

    ``start``/``length`` are the box's float32 start and extent, ``limit`` the valid extent of
    its image (taps past it read the last valid row, as roi_align's clamp at the border) and
    ``grid`` the number of samples per output pixel, all in the working float dtype.
    Positions follow roi_align's arithmetic, in its order and precision, so sample positions
    agree with it to the last bit or so.
    """
    dtype = start.dtype
    first = start - 0.5  # aligned=True: pixel centres at +0.5
    extent = (start + length - 0.5) - first
    bin_size = extent / out
    g = int(grid.max())
    o = torch.arange(out, dtype=dtype)[None, :, None]
    i = torch.arange(g, dtype=dtype)[None, None, :]
    bin3, grid3 = bin_size[:, None, None], grid[:, None, None]
    pos = (first[:, None, None] + o * bin3) + (i + 0.5) * bin3 / grid3
    pos = pos.clamp_min(0.0)
    low = pos.floor()
    last = (limit - 1).to(dtype)[:, None, None]
    at_edge = low >= last
    low = torch.where(at_edge, last, low)
    frac = torch.where(at_edge, 0.0, pos - low)
    high = torch.where(at_edge, last, low + 1.0)
    # Grid slots past a box's own grid size carry no weight (padding to the largest grid).
    share = (i < grid3).to(dtype) / grid3
    weights = torch.stack([(1.0 - frac) * share, frac * share], dim=-1).flatten(2)
    index = torch.stack([low, high], dim=-1).flatten(2).to(torch.int64)
    return index, weights


def crop_resize_separable(
    images: Tensor,
    index: Tensor,
    boxes: Tensor,
    size: tuple[int, int],
    valid: Tensor | None = None,
) -> Tensor:
    """Box ``i`` of image ``index[i]`` resampled to ``size`` as roi_align would, on the CPU.

    Shapes: images ``(b, c, h, w)`` float or uint8 (uint8 values are scaled to [0, 1]),
    index ``(n,)`` int, boxes ``(n, 4)`` ``(top, left, height, width)`` inside the valid
    region, valid ``(b, 2)`` int valid ``(h, w)`` per image (``None``: whole images) ->
    ``(n, c, size_h, size_w)``, float32 for uint8 input, else in the images' dtype. Boxes
    whose larger side is under 1.5x the output take one bilinear sample per pixel, larger ones
    roi_align's adaptive ``ceil(box / size)`` grid (see
    :func:`protohead.augment.kernels.crop_resize`). Arguments are not checked.

    Example:
        >>> img = torch.arange(16, dtype=torch.uint8).view(1, 1, 4, 4)
        >>> box = torch.tensor([[0, 2, 2, 2]])  # top, left, height, width
        >>> (crop_resize_separable(img, torch.tensor([0]), box, (2, 2)) * 255).round()
        tensor([[[[2., 3.],
                  [6., 7.]]]])
    """
    work = torch.float32 if not images.is_floating_point() else images.dtype
    n, c = boxes.shape[0], images.shape[1]
    sh, sw = size
    out = torch.empty((n, c, sh, sw), dtype=work)
    if n == 0:
        return out
    top, left, height, width = boxes.to(work).unbind(1)
    if valid is None:
        valid = torch.tensor([images.shape[2:]], dtype=torch.int64).expand(images.shape[0], 2)
    limits = valid[index]
    # roi_align's rule (ANTIALIAS_FROM): one sample per pixel below 1.5x, else ceil(bin).
    plain = torch.maximum(height / sh, width / sw) < 1.5
    grid_h = torch.where(plain, 1.0, torch.ceil((top + height - 0.5 - (top - 0.5)) / sh))
    grid_w = torch.where(plain, 1.0, torch.ceil((left + width - 0.5 - (left - 0.5)) / sw))
    rows, row_w = _axis_taps(top, height, sh, limits[:, 0], grid_h)
    cols, col_w = _axis_taps(left, width, sw, limits[:, 1], grid_w)
    if not images.is_floating_point():
        row_w = row_w / 255.0  # as torchvision's to_dtype(scale=True), folded into the taps
    r0, r1 = rows.flatten(1).amin(1), rows.flatten(1).amax(1) + 1
    c0, c1 = cols.flatten(1).amin(1), cols.flatten(1).amax(1) + 1
    # Channel ch of a window is rows [ch * extent, (ch + 1) * extent) of its 2-d table.
    channel = torch.arange(c)[None, :, None, None]
    rows = (rows - r0[:, None, None])[:, None] + channel * (r1 - r0)[:, None, None, None]
    cols = (cols - c0[:, None, None])[:, None] + channel * (c1 - c0)[:, None, None, None]
    # One (c * size, taps) bag matrix per crop: each channel's rows are their own bags.
    row_index, col_index = rows.flatten(1, 2), cols.flatten(1, 2)
    row_w = row_w[:, None].expand(-1, c, -1, -1).flatten(1, 2).contiguous()
    col_w = col_w[:, None].expand(-1, c, -1, -1).flatten(1, 2).contiguous()
    bounds = torch.stack([index.to(torch.int64), r0, r1, c0, c1], 1).tolist()
    for k, (img, y0, y1, x0, x1) in enumerate(bounds):
        window = images[img, :, y0:y1, x0:x1].to(work).contiguous()
        # Rows: (c * s_h) weighted sums of window rows -> (c, s_h, box w); then the columns.
        tall = rows_filter(window.view(c * (y1 - y0), x1 - x0), row_index[k], row_w[k])
        out[k].copy_(_transposed_filter(tall.view(c, sh, x1 - x0), col_index[k], col_w[k]))
    return out
