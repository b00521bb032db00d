"""Tests for protohead.augment._separable_filters: CPU crop-resize and blur = references."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor
from torchvision.ops import roi_align

import protohead.augment.kernels as kernels
from protohead.augment._separable_filters import (
    crop_resize_separable,
    gaussian_blur_bags,
    rows_filter,
)
from protohead.augment.image_batch import valid_region_float

pytestmark = pytest.mark.usefixtures("single_thread")  # see tests/conftest.py


def roi_align_reference(
    images: Tensor, index: Tensor, boxes: Tensor, size: tuple[int, int]
) -> Tensor:
    """What the accelerator path computes: roi_align, one sample below 1.5x, else adaptive."""
    top, left, height, width = boxes.to(images.dtype).unbind(1)
    rois = torch.stack([index.to(images.dtype), left, top, left + width, top + height], 1)
    plain = torch.maximum(height / size[0], width / size[1]) < kernels.ANTIALIAS_FROM
    one = roi_align(images, rois, size, 1.0, 1, True)
    adaptive = roi_align(images, rois, size, 1.0, -1, True)
    return torch.where(plain[:, None, None, None], one, adaptive)


def random_boxes(g: torch.Generator, sizes: Tensor, index: Tensor, integer: bool) -> Tensor:
    """Boxes inside each indexed image's valid ``(h, w)``; integer or fractional corners."""
    h, w = sizes[index, 0].double(), sizes[index, 1].double()
    n = index.shape[0]
    bh = (torch.rand(n, generator=g, dtype=torch.float64) * (h - 0.1) + 0.1).clamp(max=h)
    bw = (torch.rand(n, generator=g, dtype=torch.float64) * (w - 0.1) + 0.1).clamp(max=w)
    if integer:
        bh, bw = bh.ceil().clamp(max=h), bw.ceil().clamp(max=w)
    top = torch.rand(n, generator=g, dtype=torch.float64) * (h - bh)
    left = torch.rand(n, generator=g, dtype=torch.float64) * (w - bw)
    if integer:
        top, left = top.floor(), left.floor()
    return torch.stack([top, left, bh, bw], 1).float()


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    integer=st.booleans(),
    out_h=st.integers(1, 24),
    out_w=st.integers(1, 24),
)
def test_crop_resize_equals_roi_align(seed: int, integer: bool, out_h: int, out_w: int) -> None:
    # Upscales, mild and strong downscales (the grid grows to ceil(box / size)), edge boxes.
    g = torch.Generator().manual_seed(seed)
    h, w = torch.randint(1, 70, (2,), generator=g).tolist()
    images = torch.rand(3, 3, h, w, generator=g)
    index = torch.randint(0, 3, (6,), generator=g)
    boxes = random_boxes(g, torch.tensor([[h, w]] * 3), index, integer)
    expected = roi_align_reference(images, index, boxes, (out_h, out_w))
    out = crop_resize_separable(images, index, boxes, (out_h, out_w))
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=0.0)
    exact = roi_align_reference(images.double(), index, boxes.double(), (out_h, out_w))
    out64 = crop_resize_separable(images.double(), index, boxes, (out_h, out_w))
    assert out64.dtype == torch.float64
    torch.testing.assert_close(out64, exact, atol=1e-6, rtol=0.0)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), size=st.integers(1, 20))
def test_uint8_with_valid_sizes_equals_the_padded_float_source(seed: int, size: int) -> None:
    # What BatchedMultiCrop runs on the CPU: uint8 windows, taps clamped to each valid region,
    # against what accelerators run: roi_align on the edge-padded float batch.
    g = torch.Generator().manual_seed(seed)
    batch = torch.randint(0, 256, (4, 3, 40, 50), dtype=torch.uint8, generator=g)
    sizes = torch.stack(
        [torch.randint(1, 41, (4,), generator=g), torch.randint(1, 51, (4,), generator=g)], 1
    )
    index = torch.randint(0, 4, (8,), generator=g)
    boxes = random_boxes(g, sizes, index, integer=True)
    expected = roi_align_reference(valid_region_float(batch, sizes), index, boxes, (size, size))
    out = crop_resize_separable(batch, index, boxes, (size, size), sizes)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=0.0)


def test_crop_resize_reads_nothing_outside_the_valid_region() -> None:
    # Garbage in the padding must not leak into crops touching the valid region's edge.
    batch = torch.full((1, 3, 20, 20), 7, dtype=torch.uint8)
    batch[:, :, 12:, :] = 255
    batch[:, :, :, 9:] = 255
    boxes = torch.tensor([[4.0, 3.0, 8.0, 6.0], [0.0, 0.0, 12.0, 9.0]])  # both end at the edge
    out = crop_resize_separable(batch, torch.tensor([0, 0]), boxes, (5, 3), torch.tensor([[12, 9]]))
    torch.testing.assert_close(out, torch.full_like(out, 7 / 255), atol=1e-7, rtol=0.0)


def test_crop_resize_of_no_boxes_is_empty() -> None:
    out = crop_resize_separable(
        torch.rand(2, 3, 8, 8), torch.zeros(0, dtype=torch.int64), torch.zeros(0, 4), (4, 5)
    )
    assert out.shape == (0, 3, 4, 5)


@pytest.mark.parametrize(
    ("n", "c", "h", "w", "k"), [(5, 3, 20, 17, 13), (2, 1, 7, 30, 13), (3, 3, 4, 4, 7)]
)
def test_blur_bags_equal_shift_and_convolution(n: int, c: int, h: int, w: int, k: int) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, c, h, w, generator=g)
    taps = kernels.blur_taps(
        torch.rand(n, generator=g) * 1.9 + 0.1, torch.ones(n, dtype=torch.bool), k
    )
    bags = gaussian_blur_bags(x, taps)
    torch.testing.assert_close(bags, kernels._blur_shift(x, taps), atol=1e-6, rtol=0.0)
    torch.testing.assert_close(bags, kernels._blur_conv(x, taps), atol=1e-6, rtol=0.0)


def test_rows_filter_sums_weighted_rows() -> None:
    table = torch.arange(12.0).view(4, 3)
    out = rows_filter(
        table, torch.tensor([[0, 3], [2, 2]]), torch.tensor([[1.0, -1.0], [0.5, 0.25]])
    )
    torch.testing.assert_close(out, torch.stack([table[0] - table[3], 0.75 * table[2]]))
