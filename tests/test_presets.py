"""Tests for protohead.presets and the package metadata."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

import protohead
from protohead import PRESETS, TReXPreset, get_preset

FIELDS = sorted(f.name for f in dataclasses.fields(TReXPreset))


def test_get_preset_applies_overrides_without_touching_the_registry():
    preset = get_preset("trex", global_crop_size=28, local_crop_size=12)
    assert (preset.global_crop_size, preset.local_crop_size) == (28, 12)
    assert preset.name == "trex" and preset.memory_size == PRESETS["trex"].memory_size
    assert PRESETS["trex"].global_crop_size == 224
    assert get_preset("trex") is PRESETS["trex"]


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_replace_rejects_unknown_fields_naming_them_and_the_allowed_ones(name):
    preset = get_preset(name)
    with pytest.raises(ValueError, match=r"got \['crop_size'\]") as info:
        preset.replace(crop_size=28, global_crop_size=28)
    message = str(info.value)
    assert all(repr(field) in message for field in FIELDS), message
    with pytest.raises(ValueError, match=r"got \['memory', 'tau'\]"):
        get_preset(name, tau=0.2, memory=16)
    assert get_preset(name) == PRESETS[name]  # a rejected override changes nothing


def test_get_preset_rejects_unknown_names():
    with pytest.raises(ValueError, match=r"name must be one of \['baseline', .*got 'trex_star'"):
        get_preset("trex_star")


def test_version_matches_pyproject():
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
    version = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]["version"]
    assert protohead.__version__ == version
