"""Tests for protohead.train.small_images: presets rescaled for 28-32 px images."""

from __future__ import annotations

import pytest

from protohead import MultiCropTransform, get_preset
from protohead.train.small_images import SMALL_IMAGE_OVERRIDES, small_image_preset


@pytest.mark.parametrize("name", ["trex", "trex-star"])
def test_ocm_presets_get_small_crops_memory_and_momentum(name):
    original = get_preset(name)
    small = small_image_preset(name, 28)
    assert (small.global_crop_size, small.local_crop_size) == (28, 16)
    assert small.memory_size == SMALL_IMAGE_OVERRIDES["memory_size"]
    assert small.ema_momentum == SMALL_IMAGE_OVERRIDES["ema_momentum"]
    assert small.projector_hidden_layers == original.projector_hidden_layers
    assert small.temperature == original.temperature
    assert get_preset(name) == original  # the registry entry is untouched
    t = MultiCropTransform(**small.transform_kwargs())
    assert t.num_crops == 1 + SMALL_IMAGE_OVERRIDES["num_local_crops"]


def test_presets_without_memory_or_projector_keep_them_off():
    plain = small_image_preset("trex-plain-3", 32)
    assert plain.memory_size == 0 and plain.local_crop_size == 18
    base = small_image_preset("baseline", 32)
    assert base.projector_hidden_layers is None and base.num_local_crops == 0
    assert base.global_crop_size == 32
    assert base.global_crop_scale == SMALL_IMAGE_OVERRIDES["global_crop_scale"]
    assert base.color_jitter_p == 0.0  # the baseline keeps its light augmentation


def test_accepts_a_preset_object_without_modifying_it():
    preset = get_preset("trex", memory_size=100)
    small = small_image_preset(preset, 28)
    assert preset.memory_size == 100 and preset.global_crop_size == 224
    assert small.memory_size == SMALL_IMAGE_OVERRIDES["memory_size"]


@pytest.mark.parametrize(
    ("args", "error", "match"),
    [
        (("trex", 7), ValueError, r"image_size must be an int in \[8, 96\], got 7"),
        (("trex", 28.0), TypeError, "image_size must be an int"),
        (("nope", 28), ValueError, "name must be one of"),
        ((3, 28), TypeError, "preset must be a TReXPreset or a name, got int"),
    ],
)
def test_rejects_bad_arguments(args, error, match):
    with pytest.raises(error, match=match):
        small_image_preset(*args)
