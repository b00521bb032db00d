"""Tests for protohead.augment.kernels: CPU and accelerator strategies agree, resampling rule."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor
from torchvision.ops import roi_align

import protohead.augment.kernels as kernels

pytestmark = pytest.mark.usefixtures("single_thread")  # see tests/conftest.py


def random_jitter(n: int, seed: int) -> tuple[Tensor, Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    order = torch.argsort(torch.rand(n, 4, generator=g), dim=1)
    factors = torch.rand(n, 4, generator=g) * 0.8 + 0.6
    factors[:, 3] = torch.rand(n, generator=g) * 0.2 - 0.1
    apply = torch.rand(n, generator=g) < 0.8
    return order, factors, apply


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), use_hue=st.booleans())
def test_grouped_and_slot_jitter_agree(seed: int, use_hue: bool) -> None:
    x = torch.rand(12, 3, 6, 7, generator=torch.Generator().manual_seed(seed))
    order, factors, apply = random_jitter(12, seed)
    if not use_hue:
        factors[:, 3] = 0.0
    grouped = kernels._jitter_grouped_(x.clone(), order, factors, apply, use_hue)
    slots = kernels._jitter_slots_(x.clone(), order, factors, apply, use_hue)
    assert torch.allclose(grouped, slots, atol=1e-5)
    assert torch.equal(grouped[~apply], x[~apply])  # samples without jitter are untouched


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_grouped_jitter_in_hue_order_runs_in_place_with_the_same_bits(seed: int) -> None:
    from protohead.augment._color import hue_positions

    x = torch.rand(12, 3, 6, 7, generator=torch.Generator().manual_seed(seed))
    order, factors, apply = random_jitter(12, seed)
    rows = torch.argsort(hue_positions(order, apply), stable=True)
    shuffled = kernels._jitter_grouped_(x.clone(), order, factors, apply, True)
    y = x[rows].clone()
    presorted = kernels._jitter_grouped_(y, order[rows], factors[rows], apply[rows], True)
    assert presorted.data_ptr() == y.data_ptr()
    assert torch.equal(presorted, shuffled[rows])


def test_blur_strategies_agree() -> None:
    x = torch.rand(5, 3, 20, 17)
    taps = kernels.blur_taps(
        torch.tensor([0.1, 0.6, 1.0, 2.0, 1.5]), torch.ones(5, dtype=torch.bool), 13
    )
    assert torch.allclose(kernels._blur_shift(x, taps), kernels._blur_conv(x, taps), atol=1e-6)


def test_selective_ops_agree_with_masked_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    x = torch.rand(9, 3, 8, 8)
    mask = torch.tensor([True, False, True, True, False, False, True, False, True])
    taps = kernels.blur_taps(torch.rand(9) + 0.5, mask, 5)
    ops = {
        "gray": lambda y: kernels.grayscale_some(y, mask),
        "solarize": lambda y: kernels.solarize_some(y, mask, 0.5),
        "flip": lambda y: kernels.flip_some(y, mask),
        "blur": lambda y: kernels.blur_some(y, taps, mask),
    }
    compacted = {name: op(x.clone()) for name, op in ops.items()}
    monkeypatch.setattr(kernels, "compacts", lambda device: False)
    for name, op in ops.items():
        masked = op(x.clone())
        assert torch.allclose(compacted[name], masked, atol=1e-6), name
        assert torch.equal(masked[~mask], x[~mask]), name


def test_resampling_antialiases_from_one_and_a_half_times_downscale(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    images = torch.rand(2, 3, 64, 64)
    # 12 -> 1x (upscale), 17 -> 1.42x, 18 -> 1.5x, 40 -> 3.3x the output side of 12.
    boxes = torch.tensor([[3, 4, 10, 12], [0, 0, 17, 9], [5, 5, 18, 18], [10, 2, 40, 30]])
    index = torch.tensor([0, 1, 1, 0])
    rois = torch.stack(
        [
            index.float(),
            boxes[:, 1].float(),
            boxes[:, 0].float(),
            (boxes[:, 1] + boxes[:, 3]).float(),
            (boxes[:, 0] + boxes[:, 2]).float(),
        ],
        1,
    )
    plain = roi_align(images, rois, (12, 12), 1.0, 1, True)
    adaptive = roi_align(images, rois, (12, 12), 1.0, -1, True)
    expected = torch.cat([plain[:2], adaptive[2:]])
    assert not torch.allclose(plain[1], adaptive[1])  # the rule matters for box 1
    assert torch.allclose(kernels.crop_resize(images, index, boxes, (12, 12)), expected)
    monkeypatch.setattr(kernels, "compacts", lambda device: False)
    assert torch.allclose(kernels.crop_resize(images, index, boxes, (12, 12)), expected)


def test_hue_rotate_writes_into_out() -> None:
    x = torch.rand(3, 3, 4, 4)
    expected = kernels.hue_rotate(x, torch.full((3,), 0.2))
    out = x.clone()
    assert kernels.hue_rotate(out, torch.full((3,), 0.2), out=out) is out
    assert torch.allclose(out, expected)
