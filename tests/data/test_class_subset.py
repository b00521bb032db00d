"""Tests of protohead/class_subset.py (class subsets and their parser)."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import Dataset, TensorDataset

from protohead.data import build_datasets, with_transform
from protohead.data.class_subset import ClassSubset, parse_classes


class NoTargets(Dataset[tuple[int, int]]):
    """Labels only reachable through the items (like FakeData)."""

    def __len__(self) -> int:
        return 9

    def __getitem__(self, index: int) -> tuple[int, int]:
        return index, index % 3


def test_keeps_only_the_classes_and_relabels_in_the_given_order() -> None:
    data = TensorDataset(torch.arange(12.0), torch.arange(12) % 4)
    subset = ClassSubset(data, (3, 1))
    items = [subset[i] for i in range(len(subset))]
    assert [float(x) for x, _ in items] == [1, 3, 5, 7, 9, 11]
    assert [y for _, y in items] == [1, 0, 1, 0, 1, 0]
    assert subset.targets == [1, 0, 1, 0, 1, 0] and subset.num_classes == 2


def test_labels_read_from_items_when_no_targets() -> None:
    subset = ClassSubset(NoTargets(), [2])
    assert [subset[i] for i in range(len(subset))] == [(2, 0), (5, 0), (8, 0)]


def test_bad_classes_are_rejected() -> None:
    data = TensorDataset(torch.zeros(4), torch.tensor([0, 1, 0, 1]))
    with pytest.raises(ValueError, match=r"classes \[5\] have no sample"):
        ClassSubset(data, (1, 5))
    with pytest.raises(ValueError, match="distinct ints >= 0"):
        ClassSubset(data, (1, 1))
    with pytest.raises(ValueError, match="distinct ints >= 0"):
        ClassSubset(data, ())
    with pytest.raises(TypeError, match="classes must be a sequence of ints, got '01'"):
        ClassSubset(data, "01")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"classes\[0\] must be an int, got float 0\.0"):
        ClassSubset(data, (0.0, 1.0))  # type: ignore[arg-type]


def test_build_datasets_subsets_both_splits_and_with_transform_keeps_the_subset() -> None:
    data = build_datasets("fake", fake_sizes=(60, 60), fake_image_size=8, classes=(4, 7))
    assert data.num_classes == 2
    labels = {data.train[i][1] for i in range(len(data.train))}
    assert labels == {0, 1} and len(data.val) < 60
    sized = with_transform(data.train, lambda image: image.size)
    assert len(sized) == len(data.train) and sized[0][0] == (8, 8)
    assert data.train.dataset.transform is None  # type: ignore[attr-defined]


def test_parse_classes() -> None:
    assert parse_classes("5-9") == (5, 6, 7, 8, 9)
    assert parse_classes("0-1,7") == (0, 1, 7)
    with pytest.raises(ValueError, match="look like"):
        parse_classes("a")
    with pytest.raises(ValueError, match="distinct"):
        parse_classes("1,1")
