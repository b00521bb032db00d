"""Tests for protohead.data.collate.multicrop_collate (crop-wise stacking and its checks)."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader

from protohead.augment.multicrop import MultiCropTransform
from protohead.data.collate import multicrop_collate


def test_collate_groups_crops_by_index() -> None:
    batch = [
        ([torch.full((3, 8, 8), 10.0 * j + i) for i in range(2)] + [torch.full((3, 4, 4), j)], lbl)
        for j, lbl in enumerate([3, torch.tensor(5), torch.tensor([7], dtype=torch.int32)])
    ]
    crops, labels = multicrop_collate(batch)
    assert [tuple(c.shape) for c in crops] == [(3, 3, 8, 8), (3, 3, 8, 8), (3, 3, 4, 4)]
    for j in range(3):
        for i in range(2):
            assert bool((crops[i][j] == 10.0 * j + i).all())
        assert bool((crops[2][j] == j).all())
    assert labels.dtype == torch.int64
    assert labels.tolist() == [3, 5, 7]


def test_collate_with_dataloader_and_transform() -> None:
    t = MultiCropTransform(
        num_global_crops=2, num_local_crops=3, global_crop_size=16, local_crop_size=8
    )
    images = [torch.randint(0, 256, (3, 20, 24), dtype=torch.uint8) for _ in range(5)]
    data = [(t(img), k) for k, img in enumerate(images)]
    loader = DataLoader(data, batch_size=4, collate_fn=multicrop_collate)  # type: ignore[arg-type]
    crops, labels = next(iter(loader))
    assert [tuple(c.shape) for c in crops] == [(4, 3, 16, 16)] * 2 + [(4, 3, 8, 8)] * 3
    assert labels.tolist() == [0, 1, 2, 3]


def _crops(*sides: int) -> list[torch.Tensor]:
    return [torch.zeros(3, s, s) for s in sides]


@pytest.mark.parametrize(
    ("batch", "error", "match"),
    [
        ([], ValueError, "batch must contain at least one sample"),
        ([(_crops(8, 4), 0), (_crops(8), 1)], ValueError, "sample 0 has 2, sample 1 has 1"),
        (
            [(_crops(8, 8), 0), (_crops(8, 8), 1), (_crops(8, 4), 2)],
            ValueError,
            r"crop 1 of sample 2 has shape \(3, 4, 4\) but crop 1 of sample 0 has shape "
            r"\(3, 8, 8\)",
        ),
        ([(_crops(8),)], ValueError, r"batch\[0\] must be a \(crops, label\) pair"),
        ([(_crops(8), 0), ([], 1)], ValueError, r"batch\[1\] must be a \(crops, label\) pair"),
        ([(["x"], 0)], TypeError, "crop 0 of sample 0 must be a tensor"),
        ([(None, 1)], TypeError, r"the crops of batch\[0\] must be a list of tensors, got None"),
        ([(_crops(8), 0), (torch.zeros(3, 8, 8), 1)], TypeError, r"crops of batch\[1\] must"),
        ([(_crops(8), 0), 5], ValueError, r"batch\[1\] must be a \(crops, label\) pair, got int"),
        ([(_crops(8), 0), (_crops(8), 1.5)], TypeError, "label of sample 1 must be an int"),
        ([(_crops(8), torch.tensor(1.0))], TypeError, r"torch.float32 tensor of shape \(\)"),
        ([(_crops(8), torch.tensor([1, 2]))], TypeError, r"tensor of shape \(2,\)"),
        ([(_crops(8), True)], TypeError, "label of sample 0 must be an int"),
    ],
)
def test_collate_rejects_bad_batches(batch: Any, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        multicrop_collate(batch)
