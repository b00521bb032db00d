"""Tests for protohead.evaluation.splits."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from protohead.evaluation.splits import per_class_split, stratified_split


def check_partition(labels: torch.Tensor, train: torch.Tensor, val: torch.Tensor) -> None:
    assert torch.equal(torch.sort(torch.cat([train, val])).values, torch.arange(len(labels)))
    assert set(labels[train].tolist()) == set(labels.tolist())
    assert set(labels[val].tolist()) == set(labels.tolist())


def test_every_class_in_train_and_val_with_twenty_percent() -> None:
    labels = torch.arange(10).repeat_interleave(torch.arange(2, 12))  # 2..11 per class
    train, val = stratified_split(labels, val_fraction=0.2, seed=0)
    check_partition(labels, train, val)
    counts = torch.bincount(labels[val], minlength=10)
    sizes = torch.arange(2, 12)
    expected = torch.clamp(torch.floor(0.2 * sizes + 0.5), min=1).long()
    expected = torch.minimum(expected, sizes - 1)
    assert torch.equal(counts, expected)
    assert train.dtype == torch.int64 and torch.equal(train, torch.sort(train).values)


def test_deterministic_per_seed_and_different_across_seeds() -> None:
    labels = torch.arange(5).repeat(40)
    a = stratified_split(labels, seed=3)
    b = stratified_split(labels, seed=3)
    c = stratified_split(labels, seed=4)
    assert torch.equal(a[1], b[1]) and torch.equal(a[0], b[0])
    assert not torch.equal(a[1], c[1])


def test_non_contiguous_labels_and_input_not_modified() -> None:
    labels = torch.tensor([7, 3, 7, 3, 7, 3, 100, 100])
    copy = labels.clone()
    train, val = stratified_split(labels, val_fraction=0.5, seed=0)
    check_partition(labels, train, val)
    assert torch.equal(labels, copy)


@settings(max_examples=30, deadline=None)
@given(
    counts=st.lists(st.integers(min_value=2, max_value=30), min_size=1, max_size=8),
    fraction=st.floats(min_value=0.01, max_value=0.99),
    seed=st.integers(min_value=0, max_value=2**31),
)
def test_property_partition_with_every_class(counts: list[int], fraction: float, seed: int) -> None:
    labels = torch.arange(len(counts)).repeat_interleave(torch.tensor(counts))
    labels = labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))]
    train, val = stratified_split(labels, val_fraction=fraction, seed=seed)
    check_partition(labels, train, val)


def test_rejects_bad_inputs() -> None:
    with pytest.raises(ValueError, match=r"classes \[2\] with fewer"):
        stratified_split(torch.tensor([0, 0, 1, 1, 2]))
    with pytest.raises(
        ValueError, match=r"val_fraction must be a real number in \(0, 1\), got 1\.0"
    ):
        stratified_split(torch.tensor([0, 0]), val_fraction=1.0)
    with pytest.raises(TypeError, match="labels must be an integer tensor"):
        stratified_split(torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match=r"labels must have shape \(n,\)"):
        stratified_split(torch.zeros(2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="labels must hold at least 2 samples, got 0"):
        stratified_split(torch.zeros(0, dtype=torch.long))
    with pytest.raises(TypeError, match="seed must be an int, got float"):
        stratified_split(torch.tensor([0, 0]), seed=1.5)  # type: ignore[arg-type]


def test_per_class_split_takes_exactly_n_per_class_seeded_and_disjoint() -> None:
    # EuroSAT-like: uneven classes, a fixed number of validation images in each.
    labels = torch.tensor([2] * 9 + [0] * 12 + [5] * 7).roll(5)
    train, val = per_class_split(labels, per_class=4, seed=3)
    check_partition(labels, train, val)
    assert not set(train.tolist()) & set(val.tolist())
    assert torch.bincount(labels[val]).tolist() == [4, 0, 4, 0, 0, 4]
    assert torch.bincount(labels[train]).tolist() == [8, 0, 5, 0, 0, 3]
    again = per_class_split(labels, per_class=4, seed=3)
    assert torch.equal(again[0], train) and torch.equal(again[1], val)
    others = {tuple(per_class_split(labels, per_class=4, seed=s)[1].tolist()) for s in range(5)}
    assert len(others) > 1, "the seed must change the split"


def test_per_class_split_rejects_bad_arguments() -> None:
    labels = torch.tensor([0, 0, 0, 1, 1])
    with pytest.raises(
        ValueError, match=r"every class needs more than per_class=2 samples .* got classes \[1\]"
    ):
        per_class_split(labels, per_class=2)
    with pytest.raises(ValueError, match=r"per_class must be an int >= 1, got 0"):
        per_class_split(labels, per_class=0)
    with pytest.raises(TypeError, match="per_class must be an int, got float"):
        per_class_split(labels, per_class=1.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="labels must be an integer tensor"):
        per_class_split(labels.float(), per_class=1)
