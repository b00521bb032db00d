"""Op-level parity of protohead.augment.functional with torchvision.transforms.v2.functional.

Tolerances, as mean absolute error (MAE) on the 0-255 scale, per sample:
- colour ops, blur, solarize, flip: <= 0.01 (float formulas identical up to rounding);
- crop + resize (roi_align: bilinear, box-filter antialias from 1.5x downscale) vs
  torchvision's antialiased bicubic ``resized_crop``: <= 2.0 on average and <= 2.5 per crop
  on textured images, from 3x downscales to 4x upscales (measured 1.0 mean, 1.5 max here;
  1.0-1.1 mean / 1.4 max for t-ReX crops of 256 px images, 0.7 / 1.5 for 512 px ones).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as F

from protohead.augment.functional import (
    adjust_brightness,
    adjust_contrast,
    adjust_hue,
    adjust_saturation,
    color_jitter,
    gaussian_blur,
    grayscale,
    horizontal_flip,
    resized_crops,
    solarize,
)

OP_MAE = 0.01  # levels on 0-255


pytestmark = pytest.mark.usefixtures("single_thread")  # see tests/conftest.py


def textured(n: int, h: int, w: int, seed: int = 0) -> Tensor:
    """Natural-looking uint8 images: smooth colour blobs, hard-edged boxes and noise."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    out = []
    for _ in range(n):
        img = torch.zeros(3, h, w)
        for _ in range(8):
            cx, cy, s = torch.rand(3, generator=g).tolist()
            blob = torch.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * (0.05 + 0.2 * s) ** 2))
            img += torch.rand(3, 1, 1, generator=g) * blob
        for _ in range(4):
            x0, y0 = (torch.rand(2, generator=g) * 0.8).tolist()
            box = ((xx > x0) & (xx < x0 + 0.2) & (yy > y0) & (yy < y0 + 0.15)).float()
            img = img * (1 - box) + torch.rand(3, 1, 1, generator=g) * box
        img = img / img.amax() * 230 + 8 * torch.randn(3, h, w, generator=g)
        out.append(img.clamp(0, 255).round().to(torch.uint8))
    return torch.stack(out)


@pytest.fixture(scope="module")
def images() -> Tensor:
    """Float images in [0, 1] with some exact channel ties and grey pixels (hue edge cases)."""
    x = textured(6, 20, 24).float() / 255
    x[1, 1] = x[1, 0]  # r == g everywhere
    x[2] = x[2, :1]  # grey
    return x


def mae255(a: Tensor, b: Tensor) -> float:
    return float((a - b).abs().mean()) * 255


def per_sample(x: Tensor, values: Tensor, reference: Callable[[Tensor, float], Tensor]) -> Tensor:
    return torch.stack([reference(x[i], float(values[i])) for i in range(x.shape[0])])


@pytest.mark.parametrize(
    ("ours", "reference", "low", "high"),
    [
        (adjust_brightness, F.adjust_brightness, 0.0, 2.0),
        (adjust_contrast, F.adjust_contrast, 0.0, 2.0),
        (adjust_saturation, F.adjust_saturation, 0.0, 2.0),
        (adjust_hue, F.adjust_hue, -0.5, 0.5),
    ],
)
def test_colour_ops_match_torchvision(
    images: Tensor,
    ours: Callable[[Tensor, Tensor], Tensor],
    reference: Callable[[Tensor, float], Tensor],
    low: float,
    high: float,
) -> None:
    factors = torch.linspace(low, high, images.shape[0])
    before = images.clone()
    out = ours(images, factors)
    expected = per_sample(images, factors, reference)
    for i in range(images.shape[0]):
        assert mae255(out[i], expected[i]) <= OP_MAE, f"sample {i}, factor {float(factors[i])}"
    assert torch.equal(images, before)  # inputs are never modified


def test_grayscale_solarize_flip_match_torchvision(images: Tensor) -> None:
    apply = torch.tensor([True, False, True, True, False, True])
    expected_gray = [
        F.rgb_to_grayscale(x, 3) if a else x for x, a in zip(images, apply, strict=True)
    ]
    expected_sol = [
        F.solarize(x, 128 / 255) if a else x for x, a in zip(images, apply, strict=True)
    ]
    expected_flip = [F.horizontal_flip(x) if a else x for x, a in zip(images, apply, strict=True)]
    assert mae255(grayscale(images, apply), torch.stack(expected_gray)) <= OP_MAE
    assert torch.equal(solarize(images, apply), torch.stack(expected_sol))
    assert torch.equal(horizontal_flip(images, apply), torch.stack(expected_flip))


def test_gaussian_blur_matches_torchvision(images: Tensor) -> None:
    sigma = torch.tensor([0.1, 0.5, 1.0, 1.5, 2.0, 0.7])
    apply = torch.tensor([True, True, True, True, True, False])
    out = gaussian_blur(images, sigma, 13, apply)
    for i in range(images.shape[0]):
        s = float(sigma[i])
        expected = F.gaussian_blur(images[i], [13, 13], [s, s]) if apply[i] else images[i]
        assert mae255(out[i], expected) <= OP_MAE, f"sigma {s}"


@settings(max_examples=25, deadline=None)
@given(
    order=st.lists(st.permutations([0, 1, 2, 3]), min_size=4, max_size=4),
    seed=st.integers(0, 2**31 - 1),
)
def test_color_jitter_applies_the_ops_in_each_samples_order(
    images: Tensor, order: list[list[int]], seed: int
) -> None:
    x = images[:4]
    g = torch.Generator().manual_seed(seed)
    factors = torch.stack(
        [
            torch.empty(4).uniform_(0.6, 1.4, generator=g),
            torch.empty(4).uniform_(0.6, 1.4, generator=g),
            torch.empty(4).uniform_(0.8, 1.2, generator=g),
            torch.empty(4).uniform_(-0.1, 0.1, generator=g),
        ],
        dim=1,
    )
    ops = [F.adjust_brightness, F.adjust_contrast, F.adjust_saturation, F.adjust_hue]
    out = color_jitter(x, torch.tensor(order), factors)
    for i in range(4):
        expected = x[i]
        for op in order[i]:
            expected = ops[op](expected, float(factors[i, op]))
        assert mae255(out[i], expected) <= OP_MAE, f"order {order[i]}"


@settings(max_examples=30, deadline=None)
@given(shift=st.floats(-0.5, 0.5), seed=st.integers(0, 1000))
def test_hue_rotation_is_invertible(shift: float, seed: int) -> None:
    x = torch.rand(2, 3, 5, 5, generator=torch.Generator().manual_seed(seed))
    there = adjust_hue(x, torch.full((2,), shift))
    back = adjust_hue(there, torch.full((2,), -shift))
    assert torch.allclose(back, x, atol=1e-5)


def test_saturation_zero_is_grayscale(images: Tensor) -> None:
    n = images.shape[0]
    gray = grayscale(images, torch.ones(n, dtype=torch.bool))
    assert torch.allclose(adjust_saturation(images, torch.zeros(n)), gray, atol=1e-7)


def test_resized_crops_are_close_to_torchvision_bicubic_antialias() -> None:
    src8 = textured(4, 64, 80, seed=1)
    src = src8.float() / 255
    g = torch.Generator().manual_seed(0)
    boxes, index = [], []
    for i in range(24):  # upscales and downscales up to 3x
        h, w = torch.randint(12, 60, (2,), generator=g).tolist()
        top = int(torch.randint(0, 64 - h + 1, (1,), generator=g))
        left = int(torch.randint(0, 80 - w + 1, (1,), generator=g))
        boxes.append([top, left, h, w])
        index.append(i % 4)
    out = resized_crops(src, torch.tensor(index), torch.tensor(boxes), 20)
    errors = []
    for i, (top, left, h, w) in enumerate(boxes):
        ref = F.resized_crop(
            src[index[i]], top, left, h, w, [20, 20], InterpolationMode.BICUBIC, antialias=True
        )
        errors.append(mae255(out[i], ref))
    assert max(errors) <= 2.5, errors
    assert sum(errors) / len(errors) <= 2.0, errors


def test_resized_crops_whole_image_at_same_size_is_exact() -> None:
    src = torch.rand(2, 3, 9, 7)
    boxes = torch.tensor([[0, 0, 9, 7], [0, 0, 9, 7]])
    out = resized_crops(src, torch.tensor([1, 0]), boxes, (9, 7))
    assert torch.allclose(out, src.flip(0), atol=1e-6)


def test_bad_inputs_are_rejected(images: Tensor) -> None:
    with pytest.raises(TypeError, match="floating point"):
        adjust_brightness((images * 255).to(torch.uint8), torch.ones(6))
    with pytest.raises(ValueError, match=r"shape \(n, 3, h, w\)"):
        adjust_hue(images[:, :2], torch.zeros(6))
    with pytest.raises(ValueError, match=r"factor must be a tensor of shape \(6,\)"):
        adjust_contrast(images, torch.ones(5))
    with pytest.raises(ValueError, match="kernel_size must be odd"):
        gaussian_blur(images, torch.ones(6), 4)
    with pytest.raises(ValueError, match=r"order must be a tensor of shape \(6, 4\)"):
        color_jitter(images, torch.zeros(6, 3, dtype=torch.int64), torch.ones(6, 4))
    with pytest.raises(ValueError, match=r"boxes must be a tensor of shape \(n, 4\)"):
        resized_crops(images, torch.tensor([0]), torch.tensor([[0, 0, 4]]), 4)
    with pytest.raises(ValueError, match="size must be"):
        resized_crops(images, torch.tensor([0]), torch.tensor([[0, 0, 4, 4]]), 0)


@pytest.mark.parametrize(
    ("index", "match"),
    [
        ([0, 2], r"index must lie in \[0, 2\), got index\[1\] = 2"),
        ([-1, 0], r"index must lie in \[0, 2\), got index\[0\] = -1"),
        ([100000, 0], r"index must lie in \[0, 2\), got index\[0\] = 100000"),
    ],
)
def test_resized_crops_rejects_indices_outside_the_batch(index: list[int], match: str) -> None:
    boxes = torch.tensor([[0, 0, 4, 4]] * 2)
    with pytest.raises(ValueError, match=match):
        resized_crops(torch.rand(2, 3, 8, 8), torch.tensor(index), boxes, 4)


@pytest.mark.parametrize(
    "box",
    [
        [0.0, 0.0, -4.0, 4.0],  # negative height: a C++ vector-size error before
        [0.0, 0.0, 4.0, 0.0],  # empty: roi_align's antialias path returns zeros
        [0.0, float("nan"), 4.0, 4.0],
        [0.0, 0.0, float("inf"), 4.0],
        [-1.0, 0.0, 4.0, 4.0],
        [5.0, 0.0, 4.0, 4.0],  # past the bottom of the 8x8 image
        [0.0, 2.0, 4.0, 6.5],  # past the right edge
    ],
)
def test_resized_crops_rejects_boxes_that_are_not_inside_the_image(box: list[float]) -> None:
    with pytest.raises(ValueError, match=r"boxes must be finite .* inside the 8x8 images, got"):
        resized_crops(torch.rand(2, 3, 8, 8), torch.tensor([1]), torch.tensor([box]), 4)


def test_resized_crops_accepts_boxes_touching_the_border() -> None:
    src = torch.rand(1, 1, 8, 8)
    out = resized_crops(src, torch.tensor([0]), torch.tensor([[4.0, 6.0, 4.0, 2.0]]), (4, 2))
    assert torch.allclose(out[0], src[0, :, 4:, 6:], atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64])
def test_resized_crops_supports_every_floating_dtype(dtype: torch.dtype) -> None:
    src = torch.rand(2, 3, 16, 16)
    index, boxes = torch.tensor([1, 0]), torch.tensor([[1, 2, 12, 9], [0, 0, 16, 16]])
    out = resized_crops(src.to(dtype), index, boxes, 6)
    assert out.dtype == dtype
    expected = resized_crops(src.to(dtype).float(), index, boxes, 6)
    assert torch.allclose(out.float(), expected, atol=1e-2)


def test_parameters_must_be_tensors_of_the_right_dtype(images: Tensor) -> None:
    with pytest.raises(TypeError, match=r"factor must be a tensor of shape \(6,\), got list"):
        adjust_brightness(images, [1.0] * 6)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="factor must have a real dtype, got torch.bool"):
        adjust_saturation(images, torch.ones(6, dtype=torch.bool))
    for op in (grayscale, solarize, horizontal_flip):
        with pytest.raises(TypeError, match="apply must have a bool dtype, got torch.float32"):
            op(images, torch.tensor([0.3, 0.0, 0.0, 0.0, 0.0, 0.0]))
    with pytest.raises(TypeError, match="apply must have a bool dtype, got torch.int64"):
        gaussian_blur(images, torch.ones(6), 3, torch.ones(6, dtype=torch.int64))
    with pytest.raises(TypeError, match="order must have an integer dtype, got torch.float32"):
        color_jitter(images, torch.zeros(6, 4), torch.ones(6, 4))
    with pytest.raises(TypeError, match="index must have an integer dtype, got torch.float32"):
        resized_crops(images, torch.tensor([0.0]), torch.tensor([[0, 0, 4, 4]]), 4)
    with pytest.raises(TypeError, match=r"boxes must be a tensor of shape \(n, 4\), got list"):
        resized_crops(images, torch.tensor([0]), [[0, 0, 4, 4]], 4)  # type: ignore[arg-type]


@pytest.mark.parametrize("size", [True, 2.5, (4, 4.0), "4"])
def test_resized_crops_size_must_be_ints(images: Tensor, size: object) -> None:
    with pytest.raises(TypeError, match="size must be an int or a pair of ints"):
        resized_crops(images, torch.tensor([0]), torch.tensor([[0, 0, 4, 4]]), size)  # type: ignore[arg-type]


@pytest.mark.parametrize("kernel_size", [3.0, True])
def test_gaussian_blur_kernel_size_must_be_an_int(images: Tensor, kernel_size: object) -> None:
    with pytest.raises(TypeError, match=f"kernel_size must be an int, got {kernel_size}"):
        gaussian_blur(images, torch.ones(6), kernel_size)  # type: ignore[arg-type]


def test_color_jitter_order_rows_must_be_permutations(images: Tensor) -> None:
    order = torch.tensor([[0, 1, 2, 3]] * 6)
    order[4] = torch.tensor([0, 1, 1, 3])
    with pytest.raises(ValueError, match=r"order\[4\] = \[0, 1, 1, 3\]"):
        color_jitter(images, order, torch.ones(6, 4))
    order[4] = torch.tensor([0, 1, 2, 4])
    with pytest.raises(ValueError, match="order rows must be permutations of 0..3"):
        color_jitter(images, order, torch.ones(6, 4))
