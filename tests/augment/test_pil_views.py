"""Tests for protohead.augment._pil_views: the PIL path equals the v2 chain exactly."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image, ImageEnhance, ImageFilter
from torchvision.transforms import InterpolationMode, v2
from torchvision.transforms.v2 import functional as F

from protohead.augment import _pil_views
from protohead.augment.multicrop import MultiCropTransform

pytestmark = pytest.mark.usefixtures("single_thread")  # see tests/conftest.py


def v2_chain(t: MultiCropTransform, kind: str) -> Any:
    """The chain MultiCropTransform documents, from public torchvision v2 transforms.

    The blur is the transform's own: "skip?" then sigma from torch's generator, then PIL's
    ``GaussianBlur(radius=sigma)`` (PIL's radius is the standard deviation).
    """
    blur_p, solarize_p = getattr(t, f"{kind}_blur_p"), getattr(t, f"{kind}_solarize_p")

    def blur(image: Image.Image) -> Image.Image:
        if float(torch.rand(())) >= blur_p:
            return image
        lo, hi = t.blur_sigma
        sigma = lo + (hi - lo) * float(torch.rand(()))
        return image.filter(ImageFilter.GaussianBlur(radius=sigma))

    ops: list[Any] = [
        v2.RandomResizedCrop(
            getattr(t, f"{kind}_crop_size"),
            getattr(t, f"{kind}_crop_scale"),
            t.ratio,
            interpolation=t.interpolation,
            antialias=True,
        )
    ]
    if t.flip_p > 0:
        ops.append(v2.RandomHorizontalFlip(t.flip_p))
    if t.color_jitter_p > 0 and max(t.color_jitter) > 0:
        ops.append(v2.RandomApply([v2.ColorJitter(*t.color_jitter)], p=t.color_jitter_p))
    if t.grayscale_p > 0:
        ops.append(v2.RandomGrayscale(t.grayscale_p))
    if blur_p > 0:
        ops.append(blur)
    if solarize_p > 0:
        ops.append(v2.RandomSolarize(128, p=solarize_p))
    ops += [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(t.mean, t.std)]
    return v2.Compose(ops)


CONFIGS: list[dict[str, Any]] = [
    {},
    {"color_jitter": (0.4, 0.0, 0.0, 0.0), "color_jitter_p": 1.0},
    {"color_jitter": (0.0, 0.0, 0.0, 0.5), "color_jitter_p": 1.0},
    {"color_jitter": (0.9, 0.9, 0.9, 0.5), "color_jitter_p": 1.0, "grayscale_p": 0.5},
    {"global_solarize_p": 1.0, "local_solarize_p": 0.5, "local_blur_p": 1.0, "flip_p": 1.0},
    {"ratio": (0.2, 5.0), "interpolation": InterpolationMode.BILINEAR},  # fallback crops
    {"interpolation": InterpolationMode.NEAREST, "global_crop_scale": (1.0, 1.0)},
    {"interpolation": InterpolationMode.NEAREST_EXACT, "local_crop_scale": (0.5, 0.9)},
    {"flip_p": 0.0, "color_jitter_p": 0.0, "grayscale_p": 0.0, "global_blur_p": 0.0},
]


def assert_same_as_v2_chain(config: dict[str, Any], height: int, width: int, seed: int) -> None:
    t = MultiCropTransform(num_local_crops=3, global_crop_size=24, local_crop_size=10, **config)
    g = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (height, width, 3), dtype=torch.uint8, generator=g)
    image = Image.fromarray(pixels.numpy())
    torch.manual_seed(seed)
    crops = t(image)
    after = torch.rand(4)
    torch.manual_seed(seed)
    chains = {kind: v2_chain(t, kind) for kind in ("global", "local")}
    expected = [chains["global"](image)] + [chains["local"](image) for _ in range(3)]
    assert torch.equal(torch.rand(4), after)
    for crop, ref in zip(crops, expected, strict=True):
        assert type(crop) is torch.Tensor
        assert torch.equal(crop, ref.as_subclass(torch.Tensor))


@settings(max_examples=40, deadline=None)
@given(
    config=st.sampled_from(CONFIGS),
    height=st.integers(1, 60),
    width=st.integers(1, 60),
    seed=st.integers(0, 2**31 - 1),
)
def test_pil_path_is_bit_identical_to_the_v2_chain(
    config: dict[str, Any], height: int, width: int, seed: int
) -> None:
    # Same draws in the same order and the same PIL kernels: a seed gives the same crops as
    # the v2 pipeline did, and the generator ends in the same state.
    assert_same_as_v2_chain(config, height, width, seed)


@pytest.mark.parametrize(("height", "width"), [(50, 2), (2, 50), (41, 3), (5, 37), (1, 1)])
def test_thin_images_take_the_same_central_fallback_crop(height: int, width: int) -> None:
    # Ten rejected boxes, then the central crop of the closest ratio (rounded as torchvision).
    for seed in range(5):
        assert_same_as_v2_chain({}, height, width, seed)


@pytest.mark.parametrize("factor", [0.0, 0.37, 0.6, 1.0, 1.4, 2.5])
def test_lookup_table_enhancers_equal_imageenhance(factor: float) -> None:
    g = torch.Generator().manual_seed(1)
    image = Image.fromarray(
        torch.randint(0, 256, (9, 11, 3), dtype=torch.uint8, generator=g).numpy()
    )
    pairs = [
        (_pil_views._brightness, ImageEnhance.Brightness),
        (_pil_views._contrast, ImageEnhance.Contrast),
        (_pil_views._saturation, ImageEnhance.Color),
    ]
    for ours, theirs in pairs:
        assert ours(image, factor).tobytes() == theirs(image).enhance(factor).tobytes(), ours


@pytest.mark.parametrize("factor", [-0.5, -0.1, -0.003, 0.0, 0.004, 0.25, 0.5])
def test_hue_shift_equals_torchvision(factor: float) -> None:
    g = torch.Generator().manual_seed(2)
    image = Image.fromarray(
        torch.randint(0, 256, (9, 11, 3), dtype=torch.uint8, generator=g).numpy()
    )
    assert _pil_views._hue(image, factor).tobytes() == F.adjust_hue(image, factor).tobytes()


def test_brightness_factor_is_uniform_on_the_pil_path() -> None:
    # Grey 100 scaled by a factor uniform in [0.6, 1.4] (strength 0.4): PIL truncates, so the
    # output is floor(100 f) and its distribution reflects the factor's.
    n = 2000
    t = MultiCropTransform(
        num_local_crops=0,
        global_crop_size=4,
        flip_p=0.0,
        color_jitter=(0.4, 0.0, 0.0, 0.0),
        color_jitter_p=1.0,
        grayscale_p=0.0,
        global_blur_p=0.0,
        global_solarize_p=0.0,
        mean=(0.0, 0.0, 0.0),
        std=(1.0, 1.0, 1.0),
    )
    image = Image.new("RGB", (4, 4), (100, 100, 100))
    torch.manual_seed(0)
    values = torch.tensor([float(t(image)[0][0, 0, 0]) * 255 for _ in range(n)])
    assert 59.5 <= float(values.min()) <= 62 and 138 <= float(values.max()) <= 140.5
    std_err = 80 / math.sqrt(12 * n)
    assert abs(float(values.mean()) - 99.5) < 5 * std_err
    quarters = torch.histc(values, bins=4, min=60, max=140)
    assert bool((quarters - n / 4).abs().max() < 5 * math.sqrt(n * 3 / 16))
