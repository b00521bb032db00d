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

from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "CropTaps",
    "crop_resize_separable",
    "crop_taps",
    "gaussian_blur_bags",
    "render_crops",
    "rows_filter",
]


def rows_filter(table: Tensor, index: Tensor, weights: Tensor) -> Tensor:
    """``out[i] = sum_k weights[i, k] * table[index[i, k]]``: ``(r, w), (m, k), (m, k) -> (m, w)``.

    Example:
        >>> rows_filter(torch.eye(3), torch.tensor([[0, 2]]), torch.tensor([[0.5, 2.0]]))
        tensor([[0.5000, 0.0000, 2.0000]])
    """
    return F.embedding_bag(index, table, per_sample_weights=weights, mode="sum")


def _bags(table: Tensor, index: Tensor, offsets: Tensor, weights: Tensor) -> Tensor:
    """:func:`rows_filter` with flat bags: ``(r, w), (m * k,), (m,), (m * k,) -> (m, w)``.

    Calls the op directly: ``F.embedding_bag``'s Python checks cost about 5 us per call, and
    the CPU renderer makes two calls per crop.
    """
    return torch.embedding_bag(table, index, offsets, per_sample_weights=weights)[0]


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


def gaussian_blur_bags(x: Tensor, weights: Tensor, samples: Tensor | None = None) -> Tensor:
    """Separable blur with per-sample taps ``(m, k)`` and reflect padding (as torchvision).

    Shapes: ``(n, c, h, w), (m, k) -> (m, c, h, w)`` (a transposed view); ``k`` odd and
    ``< 2 * min(h, w)``. ``samples`` ``(m,)`` int picks the samples to blur (``None``: all,
    ``m = n``): the first pass reads their rows straight from ``x``, with no gathered copy.

    Example:
        >>> x = torch.zeros(1, 1, 5, 5); x[0, 0, 2, 2] = 1.0
        >>> out = gaussian_blur_bags(x, torch.tensor([[0.25, 0.5, 0.25]]))
        >>> out[0, 0, 1:4, 2]
        tensor([0.1250, 0.2500, 0.1250])
    """
    n, c, h, w = x.shape
    m, k = weights.shape
    offsets = torch.arange(k) - k // 2
    taps = weights.repeat_interleave(c, dim=0)[:, None, :]  # (m * c, 1, k)
    planes = torch.arange(m * c)[:, None, None]
    sources = planes if samples is None else (samples[:, None] * c + torch.arange(c))[..., None]

    def bags(length: int, planes: Tensor) -> tuple[Tensor, Tensor]:
        source = _reflect(torch.arange(length)[:, None] + offsets, length)  # (length, k)
        index = (planes.reshape(-1, 1, 1) * length + source).view(-1, k)
        return index, taps.expand(-1, length, -1).reshape(-1, k)

    rows = rows_filter(x.reshape(n * c * h, w), *bags(h, sources)).view(m * c, h, w)
    return _transposed_filter(rows, *bags(w, planes)).view(m, c, h, w)


def _axis_taps(
    start: Tensor, length: Tensor, out: int, limit: Tensor, grid: Tensor
) -> tuple[Tensor, Tensor]:
    """Row (or column) taps of ``n`` boxes along one axis: ``(n,) -> (n, out, 2 g), (n, out, 2 g)``.

    ``start``/``length`` are the box's float32 start and extent, ``limit`` the valid extent of
    its image (taps past it read the last valid row, as roi_align's clamp at the border) and
    ``grid`` the number of samples per output pixel, all in the working float dtype.
    Positions follow roi_align's arithmetic, in its order and precision, so sample positions
    agree with it to the last bit or so. Source indices come back as (exact) floats, so the
    caller's window arithmetic runs on 4-byte values before one conversion to integers.
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
    return torch.stack([low, high], dim=-1).flatten(2), weights


class CropTaps(NamedTuple):
    """Separable taps of ``n`` boxes (:func:`crop_taps`), rendered by :func:`render_crops`.

    Each box reads the window ``image, y0:y1, x0:x1`` (``bounds[i]``) as a ``(c * rows, width)``
    table. Its row pass is ``c * s_h`` bags of ``t_h`` taps (``rows[i]``, flattened, bags
    starting at ``row_offsets``), its column pass ``c * s_w`` bags of ``t_w`` taps over the
    transposed rows: the flat form ``embedding_bag`` takes, so a render makes no index tensors.
    """

    bounds: list[list[int]]  # (n, 5): image, y0, y1, x0, x1
    rows: Tensor  # (n, c * s_h * t_h) int64
    row_weights: Tensor  # (n, c * s_h * t_h), 1/255 folded in for uint8 sources
    row_offsets: Tensor  # (c * s_h,) int64
    cols: Tensor  # (n, c * s_w * t_w) int64
    col_weights: Tensor  # (n, c * s_w * t_w)
    col_offsets: Tensor  # (c * s_w,) int64
    size: tuple[int, int]


def _window_bags(taps: Tensor, channels: int) -> tuple[Tensor, Tensor, Tensor]:
    """Window-relative bags of float taps ``(n, s, t)`` for ``channels`` stacked planes.

    Returns the flat int64 indices ``(n, channels * s * t)`` (channel ``ch`` of a window is rows
    ``[ch * extent, (ch + 1) * extent)`` of its table) and the window's start and stop ``(n,)``.
    """
    n = taps.shape[0]
    # Positions grow along both output pixels and grid slots (rounding is monotonic), so the
    # first low tap and the last high tap bound the window.
    lo, hi = taps[:, 0, 0], taps[:, -1, -1] + 1.0
    # float32 is exact here (indices < 2**24) and half the bytes of int64 in the broadcast add.
    plane = (
        torch.arange(channels, dtype=taps.dtype)[None, :, None, None]
        * (hi - lo)[:, None, None, None]
    )
    index = (taps - lo[:, None, None])[:, None] + plane
    return index.view(n, -1).to(torch.int32), lo, hi


def crop_taps(
    images: Tensor, index: Tensor, boxes: Tensor, size: tuple[int, int], valid: Tensor | None = None
) -> CropTaps:
    """Taps of box ``i`` of image ``index[i]`` (see :func:`crop_resize_separable`).

    Only the images' shape and dtype are read, so one call can serve several renders (e.g. all
    the chunks of a batch: elementwise arithmetic, so the taps do not depend on the grouping).
    """
    work = torch.float32 if not images.is_floating_point() else images.dtype
    c, (sh, sw) = images.shape[1], size
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
    row_index, r0, r1 = _window_bags(rows, c)
    col_index, c0, c1 = _window_bags(cols, c)
    # Every channel's rows are their own bags, with the same weights.
    th, tw = row_w.shape[2], col_w.shape[2]
    bounds = torch.stack([index.to(work), r0, r1, c0, c1], 1).to(torch.int64).tolist()
    return CropTaps(
        bounds,
        row_index,
        row_w[:, None].expand(-1, c, -1, -1).reshape(len(bounds), -1),
        torch.arange(0, c * sh * th, th, dtype=torch.int32),
        col_index,
        col_w[:, None].expand(-1, c, -1, -1).reshape(len(bounds), -1),
        torch.arange(0, c * sw * tw, tw, dtype=torch.int32),
        (sh, sw),
    )


def render_crops(images: Tensor, taps: CropTaps, boxes: Sequence[int] | None = None) -> Tensor:
    """The crops of ``taps``' boxes numbered ``boxes`` (all: ``None``), in that order.

    Shapes: images ``(b, c, h, w)`` as given to :func:`crop_taps` -> ``(m, c, s_h, s_w)``.
    """
    work = torch.float32 if not images.is_floating_point() else images.dtype
    c, (sh, sw) = images.shape[1], taps.size
    ids = range(len(taps.bounds)) if boxes is None else boxes
    out = torch.empty((len(ids), c, sh, sw), dtype=work)
    # Windows and transposed rows go to buffers reused by every crop: they stay in cache, where a
    # fresh (large) allocation per crop costs page faults and cold writes.
    spans = [
        (taps.bounds[i][2] - taps.bounds[i][1], taps.bounds[i][4] - taps.bounds[i][3]) for i in ids
    ]
    window_buf = torch.empty(c * max((h * w for h, w in spans), default=0), dtype=work)
    table_buf = torch.empty(c * sh * max((w for _, w in spans), default=0), dtype=work)
    for k, i in enumerate(ids):
        img, y0, y1, x0, x1 = taps.bounds[i]
        h, w = y1 - y0, x1 - x0
        window = window_buf[: c * h * w].view(c, h, w)
        window.copy_(images[img, :, y0:y1, x0:x1])
        # Rows: (c * s_h) weighted sums of window rows -> (c, s_h, box w); then the columns
        # of the transposed result -> (c, s_w, s_h), transposed while written out.
        tall = _bags(window.view(c * h, w), taps.rows[i], taps.row_offsets, taps.row_weights[i])
        table = table_buf[: c * w * sh].view(c, w, sh)
        table.copy_(tall.view(c, sh, w).transpose(1, 2))
        wide = _bags(table.view(c * w, sh), taps.cols[i], taps.col_offsets, taps.col_weights[i])
        out[k].copy_(wide.view(c, sw, sh).transpose(1, 2))
    return out


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
    if boxes.shape[0] == 0:
        work = torch.float32 if not images.is_floating_point() else images.dtype
        return torch.empty((0, images.shape[1], *size), dtype=work)
    return render_crops(images, crop_taps(images, index, boxes, size, valid))
