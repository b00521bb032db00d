"""Tests for protohead.augment.image_batch (padded uint8 batches for the batched augmenter)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from protohead.augment.image_batch import (
    as_image_batch,
    check_image,
    check_sizes,
    pad_images,
    valid_region_float,
)


@settings(max_examples=25, deadline=None)
@given(
    shapes=st.lists(
        st.tuples(st.sampled_from([1, 3]), st.integers(1, 12), st.integers(1, 12)),
        min_size=1,
        max_size=4,
    )
)
def test_pad_images_places_each_image_top_left(shapes: list[tuple[int, int, int]]) -> None:
    images = [torch.randint(1, 256, s, dtype=torch.uint8) for s in shapes]
    batch, sizes = pad_images(images)
    channels = 3 if any(c == 3 for c, _, _ in shapes) else 1
    assert batch.shape == (
        len(shapes),
        channels,
        max(h for _, h, _ in shapes),
        max(w for _, _, w in shapes),
    )
    assert sizes.tolist() == [[h, w] for _, h, w in shapes]
    for i, img in enumerate(images):
        h, w = img.shape[1:]
        assert torch.equal(batch[i, :, :h, :w], img.expand(channels, h, w))
        assert int(batch[i].sum()) == int(img.expand(channels, h, w).sum())  # zeros elsewhere


def test_as_image_batch_passes_batches_through_and_checks_sizes() -> None:
    batch = torch.zeros(2, 3, 5, 6, dtype=torch.uint8)
    same, sizes = as_image_batch(batch)
    assert same is batch and sizes is None
    _, sizes = as_image_batch(batch, torch.tensor([[5, 6], [2, 3]], dtype=torch.int32))
    assert sizes is not None and sizes.dtype == torch.int64
    assert sizes.tolist() == [[5, 6], [2, 3]]


def test_valid_region_float_scales_and_repeats_the_edges() -> None:
    batch = torch.zeros(2, 1, 4, 5, dtype=torch.uint8)
    batch[0, 0, :2, :3] = torch.tensor([[10, 20, 30], [40, 50, 60]], dtype=torch.uint8)
    x = valid_region_float(batch, torch.tensor([[2, 3], [4, 5]]))
    assert x.shape == (2, 3, 4, 5) and x.dtype == torch.float32
    assert torch.allclose(x[0, :, 2, :3] * 255, torch.tensor([40.0, 50.0, 60.0]))  # row below
    assert torch.allclose(x[0, :, :2, 3] * 255, torch.tensor([30.0, 60.0]))  # column right
    assert float(x[0, 0, 2, 3]) * 255 == pytest.approx(60.0)  # corner
    assert float(x[0, 0, 3, 4]) == 0.0  # further padding untouched
    assert torch.equal(x[1], torch.zeros(3, 4, 5))


def test_bad_inputs_are_rejected() -> None:
    good = torch.zeros(2, 3, 5, 6, dtype=torch.uint8)
    with pytest.raises(TypeError, match=r"images must have dtype torch.uint8, got torch.float32"):
        as_image_batch(good.float())
    with pytest.raises(ValueError, match=r"images must have shape \(b, c, h, w\)"):
        as_image_batch(good[0])
    with pytest.raises(ValueError, match=r"c in \{1, 3\}.*\(2, 2, 5, 6\)"):
        as_image_batch(good[:, :2])
    with pytest.raises(ValueError, match="at least one image"):
        as_image_batch(good[:0])
    with pytest.raises(TypeError, match="images must be a uint8 tensor or a list"):
        as_image_batch("img")
    with pytest.raises(ValueError, match="empty list"):
        as_image_batch([])
    with pytest.raises(TypeError, match=r"images\[1\] must have dtype torch.uint8"):
        as_image_batch([good[0], good[1].int()])
    with pytest.raises(ValueError, match="sizes must be None when images is a list"):
        as_image_batch([good[0]], torch.tensor([[5, 6]]))
    with pytest.raises(TypeError, match="sizes must have an integer dtype, got torch.float32"):
        as_image_batch(good, torch.ones(2, 2))
    with pytest.raises(TypeError, match="sizes must be an integer tensor"):
        as_image_batch(good, [[5, 6], [5, 6]])
    with pytest.raises(ValueError, match=r"sizes must have shape \(2, 2\), got \(2, 3\)"):
        as_image_batch(good, torch.ones(2, 3, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"sizes must lie in \[1, 5\] x \[1, 6\].*sizes\[1\]"):
        as_image_batch(good, torch.tensor([[5, 6], [6, 6]]))
    with pytest.raises(ValueError, match=r"sizes must have shape \(b, 2\)"):
        check_sizes(torch.ones(3, dtype=torch.int64), None)


def test_sizes_without_a_batch_must_be_positive() -> None:
    with pytest.raises(ValueError, match=r"sizes must be >= 1, got sizes\[1\] = \[3, 0\]"):
        check_sizes(torch.tensor([[5, 6], [3, 0]]), None)
    assert check_sizes(torch.tensor([[5, 6]], dtype=torch.int16), None).dtype == torch.int64


def test_check_image_names_the_image() -> None:
    image = torch.zeros(3, 2, 2, dtype=torch.uint8)
    assert check_image(image, "image", 3) is image
    with pytest.raises(TypeError, match="the image of batch 4 must be a uint8 tensor, got list"):
        check_image([], "the image of batch 4", 3)
