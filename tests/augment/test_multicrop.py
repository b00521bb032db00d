"""Tests for protohead.augment.multicrop (multi-crop augmentation, eval transform)."""

from __future__ import annotations

import dataclasses
import inspect
import math
import pickle
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as F

from protohead.augment.config import MultiCropConfig
from protohead.augment.multicrop import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    MultiCropTransform,
    eval_transform,
)

# Every random op off, and normalisation that keeps values at x / 255, so crops decode exactly.
NO_AUG: dict[str, Any] = {
    "flip_p": 0.0,
    "color_jitter_p": 0.0,
    "grayscale_p": 0.0,
    "global_blur_p": 0.0,
    "local_blur_p": 0.0,
    "global_solarize_p": 0.0,
    "local_solarize_p": 0.0,
    "mean": (0.0, 0.0, 0.0),
    "std": (1.0, 1.0, 1.0),
}
# Crops that cover the whole (square) image and keep its size, i.e. the identity geometry.
FULL_CROP: dict[str, Any] = {
    "global_crop_scale": (1.0, 1.0),
    "local_crop_scale": (1.0, 1.0),
    "ratio": (1.0, 1.0),
}


pytestmark = pytest.mark.usefixtures("single_thread")  # see tests/conftest.py


def decode(crop: torch.Tensor) -> torch.Tensor:
    """Undoes the identity normalisation of NO_AUG: float in [0, 1] -> uint8."""
    # Truncating x + 0.5 rounds these non-negative values (and is much faster than round()).
    return (crop * 255 + 0.5).to(torch.uint8)


def two_tone(size: int = 16) -> torch.Tensor:
    """Colored image whose left and right halves differ in every channel."""
    image = torch.empty(3, size, size, dtype=torch.uint8)
    image[:, :, : size // 2] = torch.tensor([200, 30, 60], dtype=torch.uint8)[:, None, None]
    image[:, :, size // 2 :] = torch.tensor([20, 150, 90], dtype=torch.uint8)[:, None, None]
    return image


def as_input(image: torch.Tensor, path: str) -> Image.Image | torch.Tensor:
    return F.to_pil_image(image) if path == "pil" else image


def binomial_bounds(n: int, p: float, sigmas: float = 5.0) -> tuple[float, float]:
    spread = sigmas * math.sqrt(n * p * (1 - p))
    return n * p - spread, n * p + spread


# ---------------------------------------------------------------------------------------------
# Output structure


@settings(max_examples=30, deadline=None)
@given(
    num_global=st.integers(1, 3),
    num_local=st.integers(0, 3),
    global_size=st.integers(17, 28),
    local_size=st.integers(1, 16),
    height=st.integers(1, 40),
    width=st.integers(1, 40),
    kind=st.sampled_from(["RGB", "L", "RGBA", "P", "I;16", "tensor3", "tensor1"]),
    p=st.sampled_from([0.0, 0.5, 1.0]),
    seed=st.integers(0, 2**31 - 1),
)
def test_output_count_order_shape_dtype(
    num_global: int,
    num_local: int,
    global_size: int,
    local_size: int,
    height: int,
    width: int,
    kind: str,
    p: float,
    seed: int,
) -> None:
    gen = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (3, height, width), dtype=torch.uint8, generator=gen)
    image: Image.Image | torch.Tensor
    if kind == "tensor3":
        image = pixels
    elif kind == "tensor1":
        image = pixels[:1]
    else:
        image = F.to_pil_image(pixels).convert(kind)
    original = image.clone() if isinstance(image, torch.Tensor) else None
    probs = ("flip_p", "color_jitter_p", "grayscale_p", "global_blur_p", "local_blur_p")
    t = MultiCropTransform(
        num_global_crops=num_global,
        num_local_crops=num_local,
        global_crop_size=global_size,
        local_crop_size=local_size,
        global_solarize_p=p,
        local_solarize_p=p,
        **dict.fromkeys(probs, p),
    )
    torch.manual_seed(seed)
    crops = t(image)

    assert len(crops) == t.num_crops == num_global + num_local
    expected = [(3, global_size, global_size)] * num_global + [(3, local_size, local_size)] * (
        num_local
    )
    assert [tuple(c.shape) for c in crops] == expected
    assert all(type(c) is torch.Tensor and c.dtype == torch.float32 for c in crops)
    assert all(bool(torch.isfinite(c).all()) for c in crops)
    if original is not None:
        assert torch.equal(image, original)  # the caller's tensor is not modified


@pytest.mark.parametrize("path", ["pil", "tensor"])
def test_values_normalised_with_mean_and_std(path: str) -> None:
    image = torch.full((3, 8, 8), 51, dtype=torch.uint8)  # 0.2 after scaling
    t = MultiCropTransform(
        num_local_crops=1,
        global_crop_size=8,
        local_crop_size=4,
        **{**NO_AUG, "mean": IMAGENET_MEAN, "std": IMAGENET_STD},
    )
    mean = torch.tensor(IMAGENET_MEAN)[:, None, None]
    std = torch.tensor(IMAGENET_STD)[:, None, None]
    for crop in t(as_input(image, path)):
        torch.testing.assert_close(crop, ((0.2 - mean) / std).expand_as(crop))


def test_same_seed_gives_same_crops() -> None:
    image = torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8)
    t = MultiCropTransform(num_local_crops=2, global_crop_size=16, local_crop_size=8)
    outs = []
    for _ in range(2):
        torch.manual_seed(3)
        outs.append(t(image))
    assert all(torch.equal(a, b) for a, b in zip(outs[0], outs[1], strict=True))


# ---------------------------------------------------------------------------------------------
# Statistics of the random ops


@pytest.mark.parametrize("path", ["pil", "tensor"])
def test_crop_area_within_configured_scale(path: str) -> None:
    # Pixel values encode coordinates (x in channel 0, y in channel 1), and a nearest-neighbour
    # upsampling to the full size samples every source pixel, so min/max decode the crop box.
    side, n = 64, 1000
    coords = torch.arange(side, dtype=torch.uint8) * 4
    image = torch.stack([coords.expand(side, side), coords[:, None].expand(side, side)])
    image = as_input(torch.cat([image, torch.zeros(1, side, side, dtype=torch.uint8)]), path)
    scales = {"global": (0.25, 0.75), "local": (0.05, 0.25)}
    t = MultiCropTransform(
        num_local_crops=1,
        global_crop_size=side,
        local_crop_size=side,
        global_crop_scale=scales["global"],
        local_crop_scale=scales["local"],
        interpolation=InterpolationMode.NEAREST,
        **NO_AUG,
    )
    torch.manual_seed(0)
    areas: dict[str, list[float]] = {"global": [], "local": []}
    for _ in range(n):
        for kind, crop in zip(("global", "local"), t(image), strict=True):
            xs, ys = decode(crop[0]).long() // 4, decode(crop[1]).long() // 4
            w = int(xs.max() - xs.min()) + 1
            h = int(ys.max() - ys.min()) + 1
            lo, hi = scales[kind]
            # RandomResizedCrop rounds w and h to ints, so the true area lies in this band.
            assert (w - 0.5) * (h - 0.5) <= hi * side**2
            assert (w + 0.5) * (h + 0.5) >= lo * side**2
            assert 3 / 4 - 0.1 <= w / h <= 4 / 3 + 0.1
            areas[kind].append(w * h / side**2)
    for kind, (lo, hi) in scales.items():
        # Neither crop can overflow the image at these scales, so areas are uniform in range.
        values = torch.tensor(areas[kind])
        std_err = (hi - lo) / math.sqrt(12 * n)
        assert abs(float(values.mean()) - (lo + hi) / 2) < 5 * std_err + 0.01
        below_mid = int((values < (lo + hi) / 2).sum())
        low, high = binomial_bounds(n, 0.5)
        assert low <= below_mid <= high


OP_SETTINGS: dict[str, dict[str, Any]] = {
    "flip": {"flip_p": 0.3},
    "grayscale": {"grayscale_p": 0.3},
    "color_jitter": {"color_jitter": (0.4, 0.0, 0.0, 0.0), "color_jitter_p": 0.3},
    "blur": {"global_blur_p": 0.3, "blur_sigma": (1.0, 1.0)},
    "solarize": {"global_solarize_p": 0.3},
}


@pytest.mark.parametrize("path", ["pil", "tensor"])
@pytest.mark.parametrize("op", list(OP_SETTINGS))
def test_op_happens_at_configured_rate(op: str, path: str) -> None:
    n, p = 1000, 0.3
    base = two_tone()
    t = MultiCropTransform(
        num_local_crops=0, global_crop_size=16, **FULL_CROP, **{**NO_AUG, **OP_SETTINGS[op]}
    )
    image = as_input(base, path)
    torch.manual_seed(1)
    outs = [decode(t(image)[0]) for _ in range(n)]
    # On this image, each op (when applied) always changes the output, and nothing else does.
    changed = sum(not torch.equal(out, base) for out in outs)
    low, high = binomial_bounds(n, p)
    assert low <= changed <= high
    for out in outs:
        if op == "flip":
            assert torch.equal(out, base) or torch.equal(out, base.flip(-1))
        if op == "grayscale":
            assert torch.equal(out, base) or bool((out == out[:1]).all())


@pytest.mark.parametrize("path", ["pil", "tensor"])
@pytest.mark.parametrize(("name", "p"), [("flip_p", 0.5), ("grayscale_p", 0.2)])
def test_flip_and_grayscale_rates_2000_draws(name: str, p: float, path: str) -> None:
    n = 2000
    base = two_tone(8)
    t = MultiCropTransform(
        num_local_crops=0, global_crop_size=8, **FULL_CROP, **{**NO_AUG, name: p}
    )
    image = as_input(base, path)
    torch.manual_seed(2)
    hits = 0
    for _ in range(n):
        out = decode(t(image)[0])
        hits += bool((out == out[:1]).all()) if name == "grayscale_p" else bool(out[0, 0, 0] == 20)
    low, high = binomial_bounds(n, p)
    assert low <= hits <= high


@pytest.mark.parametrize("path", ["pil", "tensor"])
def test_zero_probabilities_disable_every_op(path: str) -> None:
    base = torch.randint(
        0, 256, (3, 12, 12), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )
    t = MultiCropTransform(
        num_global_crops=2,
        num_local_crops=2,
        global_crop_size=12,
        local_crop_size=12,
        color_jitter=(0.4, 0.4, 0.4, 0.1),  # strengths set, but probability 0
        **FULL_CROP,
        **NO_AUG,
    )
    image = as_input(base, path)
    torch.manual_seed(0)
    for _ in range(100):
        assert all(torch.equal(decode(crop), base) for crop in t(image))


@pytest.mark.parametrize("path", ["pil", "tensor"])
def test_solarize_global_only_inverts_pixels_at_or_above_128(path: str) -> None:
    values = torch.tensor([0, 50, 127, 128, 200, 255], dtype=torch.uint8)
    base = values.repeat(3, 6, 1)  # (3, 6, 6), every row is `values`
    t = MultiCropTransform(
        num_local_crops=1,
        global_crop_size=6,
        local_crop_size=6,
        **FULL_CROP,
        **{**NO_AUG, "global_solarize_p": 1.0},  # local_solarize_p stays 0
    )
    global_crop, local_crop = (decode(c) for c in t(as_input(base, path)))
    expected = torch.tensor([0, 50, 127, 127, 55, 0], dtype=torch.uint8).repeat(3, 6, 1)
    assert torch.equal(global_crop, expected)
    assert torch.equal(local_crop, base)


def test_blur_pil_and_tensor_paths_agree() -> None:
    # PIL's GaussianBlur radius is sigma, so both paths blur by the same amount.
    base = torch.zeros(3, 32, 32, dtype=torch.uint8)
    base[:, ::4] = 255
    t = MultiCropTransform(
        num_local_crops=0,
        global_crop_size=32,
        **FULL_CROP,
        **{**NO_AUG, "global_blur_p": 1.0, "blur_sigma": (1.5, 1.5)},
    )
    from_pil = t(F.to_pil_image(base))[0]
    from_tensor = t(base)[0]
    blur_amount = float((from_tensor - base / 255).abs().mean())
    assert blur_amount > 0.2
    assert float((from_pil - from_tensor).abs().mean()) < 0.1 * blur_amount


# ---------------------------------------------------------------------------------------------
# Input handling and object behaviour


@pytest.mark.parametrize(
    ("image", "error", "match"),
    [
        (torch.zeros(3, 8, 8), TypeError, r"image tensor must have dtype torch.uint8"),
        (torch.zeros(1, 3, 8, 8, dtype=torch.uint8), ValueError, r"image tensor .*\(1, 3, 8, 8\)"),
        (torch.zeros(2, 8, 8, dtype=torch.uint8), ValueError, r"image tensor .*\(2, 8, 8\)"),
        (torch.zeros(3, 0, 8, dtype=torch.uint8), ValueError, r"image tensor .*\(3, 0, 8\)"),
        ([[0, 1]], TypeError, r"image must be a PIL.Image.Image .*got list"),
        (Image.new("RGB", (0, 4)), ValueError, r"image must be at least 1x1 pixels"),
    ],
)
def test_bad_image_raises(image: object, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        MultiCropTransform(num_local_crops=0, global_crop_size=4)(image)  # type: ignore[arg-type]
    with pytest.raises(error, match=match):
        eval_transform(4)(image)  # type: ignore[arg-type]


def test_attributes_repr_pickle_and_immutability() -> None:
    t = MultiCropTransform(num_local_crops=0, local_solarize_p=0.25, mean=[0.5, 0.5, 0.5])
    for field in dataclasses.fields(MultiCropConfig):
        value = getattr(t, field.name)
        assert f"{field.name}={value!r}" in repr(t)
        if field.name not in ("num_local_crops", "local_solarize_p", "mean"):
            assert value == field.default, field.name
    assert t.mean == (0.5, 0.5, 0.5)
    assert t.local_solarize_p == 0.25
    with pytest.raises(AttributeError, match=r"immutable.*'flip_p'"):
        t.flip_p = 0.0
    clone = pickle.loads(pickle.dumps(t))  # DataLoader workers pickle the transform
    assert repr(clone) == repr(t)
    assert [c.shape for c in clone(torch.zeros(3, 8, 8, dtype=torch.uint8))] == [(3, 224, 224)]


def test_caller_sequences_are_copied() -> None:
    mean = [0.1, 0.2, 0.3]
    t = MultiCropTransform(mean=mean)
    mean[0] = 9.0
    assert t.mean == (0.1, 0.2, 0.3)


# ---------------------------------------------------------------------------------------------
# eval_transform


@pytest.mark.parametrize(
    ("crop_size", "resize_size", "image", "expected_resize"),
    [
        (224, None, Image.new("RGB", (300, 260)), 256),
        (28, None, Image.new("L", (28, 28)), 32),
        (28, 28, torch.zeros(1, 28, 40, dtype=torch.uint8), 28),
        (16, 20, Image.new("RGBA", (40, 17)), 20),
        (8, None, torch.zeros(3, 5, 9, dtype=torch.uint8), 9),
    ],
)
def test_eval_transform_shapes(
    crop_size: int, resize_size: int | None, image: Image.Image | torch.Tensor, expected_resize: int
) -> None:
    t = eval_transform(crop_size, resize_size)
    assert f"resize_size={expected_resize}," in repr(t)
    out = t(image)
    assert type(out) is torch.Tensor
    assert out.shape == (3, crop_size, crop_size)
    assert out.dtype == torch.float32
    expected = ((0.0 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD))[:, None, None]
    torch.testing.assert_close(out, expected.expand_as(out))  # black image stays black
    assert pickle.loads(pickle.dumps(t))(image).shape == out.shape


def test_eval_transform_center_crops_after_resize() -> None:
    # 8 columns, only the central 4 white: resize keeps 8x8, center crop 4 keeps only white.
    image = torch.zeros(3, 8, 8, dtype=torch.uint8)
    image[:, :, 2:6] = 255
    out = eval_transform(4, 8, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))(image)
    assert out.shape == (3, 4, 4)
    assert bool((out == 1.0).all())


# ---------------------------------------------------------------------------------------------
# Argument validation

BAD_MULTICROP_ARGS: list[tuple[str, object, type[Exception], str]] = [
    ("num_global_crops", 0, ValueError, r"num_global_crops must be an int >= 1, got 0"),
    ("num_global_crops", 1.0, TypeError, r"num_global_crops must be an int, got float"),
    ("num_local_crops", -1, ValueError, r"num_local_crops must be an int >= 0, got -1"),
    ("num_local_crops", True, TypeError, r"num_local_crops must be an int, got bool"),
    ("global_crop_size", 0, ValueError, r"global_crop_size must be an int >= 1, got 0"),
    ("local_crop_size", "96", TypeError, r"local_crop_size must be an int, got str"),
    ("global_crop_scale", (0.0, 1.0), ValueError, r"global_crop_scale .*0 < lo <= hi <= 1"),
    ("global_crop_scale", (0.5, 1.2), ValueError, r"global_crop_scale .*got \(0.5, 1.2\)"),
    ("local_crop_scale", (0.3, 0.2), ValueError, r"local_crop_scale .*got \(0.3, 0.2\)"),
    ("local_crop_scale", (0.1,), ValueError, r"local_crop_scale must have length 2, got 1"),
    ("local_crop_scale", 0.1, TypeError, r"local_crop_scale must be a sequence of 2 numbers"),
    ("ratio", (0.0, 1.0), ValueError, r"ratio must be a \(lo, hi\) pair with 0 < lo <= hi, got"),
    ("ratio", (1.0, math.inf), ValueError, r"ratio\[1\] must be finite, got inf"),
    ("mean", (0.5, 0.5), ValueError, r"mean must have length 3, got 2"),
    ("mean", (0.5, "a", 0.5), TypeError, r"mean\[1\] must be a real number, got str"),
    ("std", (0.2, 0.0, 0.2), ValueError, r"std must be > 0 per channel, got \(0.2, 0.0, 0.2\)"),
    ("std", "abc", TypeError, r"std must be a sequence of 3 numbers"),
    ("flip_p", 1.5, ValueError, r"flip_p must be a probability in \[0, 1\], got 1.5"),
    ("flip_p", None, TypeError, r"flip_p must be a real number, got NoneType"),
    ("color_jitter", (0.4, 0.4, 0.2), ValueError, r"color_jitter must have length 4, got 3"),
    ("color_jitter", (0.4, -0.1, 0.2, 0.1), ValueError, r"color_jitter .*first three >= 0"),
    ("color_jitter", (0.4, 0.4, 0.2, 0.6), ValueError, r"hue in \[0, 0.5\], got .*0.6"),
    ("color_jitter_p", -0.1, ValueError, r"color_jitter_p must be a probability .*-0.1"),
    ("grayscale_p", math.nan, ValueError, r"grayscale_p must be finite, got nan"),
    ("global_blur_p", 2, ValueError, r"global_blur_p must be a probability .*got 2.0"),
    ("local_blur_p", -1.0, ValueError, r"local_blur_p must be a probability .*got -1.0"),
    ("blur_sigma", (0.0, 2.0), ValueError, r"blur_sigma must be a \(lo, hi\) pair .*\(0.0, 2.0\)"),
    ("blur_sigma", (2.0, 1.0), ValueError, r"blur_sigma must be a \(lo, hi\) pair .*\(2.0, 1.0\)"),
    ("global_solarize_p", 1.01, ValueError, r"global_solarize_p must be a probability"),
    ("local_solarize_p", "0.5", TypeError, r"local_solarize_p must be a real number, got str"),
    ("interpolation", "bicubic", TypeError, r"interpolation must be an InterpolationMode"),
    ("interpolation", InterpolationMode.LANCZOS, ValueError, r"interpolation .*BICUBIC.*LANCZOS"),
]


@pytest.mark.parametrize(("name", "value", "error", "match"), BAD_MULTICROP_ARGS)
def test_multicrop_rejects_bad_argument(
    name: str, value: object, error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        MultiCropTransform(**{name: value})


def test_every_multicrop_argument_is_validated() -> None:
    tested = {name for name, *_ in BAD_MULTICROP_ARGS}
    assert tested == set(MultiCropConfig.field_names())


def test_unknown_setting_and_wrong_config_type_are_rejected() -> None:
    with pytest.raises(TypeError, match=r"unknown settings \['num_crops'\]; allowed: "):
        MultiCropTransform(num_crops=3)
    with pytest.raises(TypeError, match="config must be a MultiCropConfig, got dict"):
        MultiCropTransform({"num_local_crops": 2})  # type: ignore[arg-type]


def test_config_and_overrides_compose() -> None:
    config = MultiCropConfig(num_local_crops=2, local_crop_size=16)
    t = MultiCropTransform(config, global_crop_size=32)
    assert t.config == config.replace(global_crop_size=32)
    assert MultiCropTransform(config).config is config  # no copy without overrides
    assert [c.shape[-1] for c in t(torch.zeros(3, 40, 40, dtype=torch.uint8))] == [32, 16, 16]


BAD_EVAL_ARGS: list[tuple[dict[str, Any], type[Exception], str]] = [
    ({"crop_size": 0}, ValueError, r"crop_size must be an int >= 1, got 0"),
    ({"crop_size": 22.4}, TypeError, r"crop_size must be an int, got float"),
    ({"crop_size": 32, "resize_size": 16}, ValueError, r"resize_size must be an int >= 32, got 16"),
    ({"resize_size": "256"}, TypeError, r"resize_size must be an int, got str"),
    ({"mean": (0.5,)}, ValueError, r"mean must have length 3, got 1"),
    ({"std": (1.0, -1.0, 1.0)}, ValueError, r"std must be > 0 per channel"),
    ({"interpolation": 3}, TypeError, r"interpolation must be an InterpolationMode .*got 3"),
]


@pytest.mark.parametrize(("kwargs", "error", "match"), BAD_EVAL_ARGS)
def test_eval_transform_rejects_bad_argument(
    kwargs: dict[str, Any], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        eval_transform(**kwargs)


def test_every_eval_argument_is_validated() -> None:
    tested = {name for kwargs, *_ in BAD_EVAL_ARGS for name in kwargs}
    assert tested == set(inspect.signature(eval_transform).parameters)
