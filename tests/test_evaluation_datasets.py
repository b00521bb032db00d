"""Tests for protohead.evaluation.datasets."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image
from torch.utils.data import Dataset

from protohead.evaluation import datasets as ds_module
from protohead.evaluation.datasets import (
    EXPECTED_COUNTS,
    PAPER_DATASETS,
    DatasetOptions,
    build_dataset,
    image_folder_pair,
    image_list_pair,
)
from protohead.evaluation.errors import DatasetUnavailableError


def identity(image: Any) -> Any:
    return image


def test_expected_counts_match_the_issue_table() -> None:
    assert set(EXPECTED_COUNTS) == set(PAPER_DATASETS)
    assert EXPECTED_COUNTS["eurosat"] == (18900, 8100)
    assert EXPECTED_COUNTS["aircraft"] == (6667, 3333)
    assert EXPECTED_COUNTS["sun397"] == (19850, 19850)


@pytest.mark.parametrize("name", [n for n in PAPER_DATASETS if n != "sun397"])
def test_missing_paper_dataset_raises_clear_error(name: str, tmp_path: Path) -> None:
    with pytest.raises(DatasetUnavailableError, match=rf"^{name}: files not found .*--download"):
        build_dataset(name, identity, DatasetOptions(root=str(tmp_path)))


def test_sun397_needs_user_lists(tmp_path: Path) -> None:
    with pytest.raises(DatasetUnavailableError, match="supply the partition-1 lists"):
        build_dataset("sun397", identity, DatasetOptions(root=str(tmp_path)))
    opts = DatasetOptions(root=str(tmp_path), sun397_lists=("Training_01.txt", "Testing_01.txt"))
    with pytest.raises(DatasetUnavailableError, match="Training_01.txt' does not exist"):
        build_dataset("sun397", identity, opts)


class TinyDataset(Dataset[tuple[int, int]]):
    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[int, int]:
        return i, 0


def test_wrong_counts_are_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ds_module.tv_datasets, "DTD", lambda *a, **k: TinyDataset(10))
    with pytest.raises(
        DatasetUnavailableError,
        match=r"dtd: expected 3760 trainval / 1880 test images, found 20 / 10",
    ):
        build_dataset("dtd", identity)


def test_counts_pass_and_train_val_are_concatenated(monkeypatch: pytest.MonkeyPatch) -> None:
    sizes = {"train": 1020, "val": 1020, "test": 6149}
    monkeypatch.setattr(
        ds_module.tv_datasets, "Flowers102", lambda root, split, **k: TinyDataset(sizes[split])
    )
    data = build_dataset("flowers", identity)
    assert (len(data.trainval), len(data.test), data.num_classes) == (2040, 6149, 102)  # type: ignore[arg-type]


class FakeEuroSAT(TinyDataset):
    def __init__(self, *args: object, **kwargs: object) -> None:
        per_class = [3000, 2500, 2000, 3000, 2500, 2500, 2000, 2500, 3000, 4000]  # 27000
        self.targets = [c for c, n in enumerate(per_class) for _ in range(n)]
        super().__init__(len(self.targets))


def test_eurosat_seeded_per_class_split(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ds_module.tv_datasets, "EuroSAT", FakeEuroSAT)
    data = build_dataset("eurosat", identity, DatasetOptions(split_seed=0))
    assert (len(data.trainval), len(data.test)) == (18900, 8100)  # type: ignore[arg-type]
    targets = torch.tensor(FakeEuroSAT().targets)
    test_idx = torch.tensor(data.test.indices)  # type: ignore[attr-defined]
    assert torch.bincount(targets[test_idx]).tolist() == [810] * 10
    assert not set(test_idx.tolist()) & set(data.trainval.indices)  # type: ignore[attr-defined]
    again = build_dataset("eurosat", identity, DatasetOptions(split_seed=0))
    other = build_dataset("eurosat", identity, DatasetOptions(split_seed=1))
    assert again.test.indices == data.test.indices  # type: ignore[attr-defined]
    assert other.test.indices != data.test.indices  # type: ignore[attr-defined]
    assert data.config["split_seed"] == 0


def test_fake_and_unknown() -> None:
    opts = DatasetOptions(fake_trainval=12, fake_test=6, fake_classes=3, fake_image_size=8)
    data = build_dataset("fake", identity, opts)
    assert (len(data.trainval), len(data.test), data.num_classes) == (12, 6, 3)  # type: ignore[arg-type]
    image, label = data.test[0]
    assert image.size == (8, 8) and 0 <= int(label) < 3
    assert data.config["trainval"] == 12
    with pytest.raises(ValueError, match="dataset must be one of .* got 'imagenet'"):
        build_dataset("imagenet", identity)


def test_fashion_mnist_subset_name(monkeypatch: pytest.MonkeyPatch) -> None:
    class Fake:
        def __init__(self, root: object, *, train: bool, classes: Any, **kwargs: object) -> None:
            self.classes = ["x"] * (10 if classes is None else len(classes))

    monkeypatch.setattr(ds_module, "FashionMNIST", Fake)
    subset = build_dataset(
        "fashion-mnist", identity, DatasetOptions(fashion_mnist_classes=(5, 6, 7, 8, 9))
    )
    assert subset.name == "fashion-mnist[5-9]" and subset.num_classes == 5
    odd = build_dataset("fashion-mnist", identity, DatasetOptions(fashion_mnist_classes=(1, 3)))
    assert odd.name == "fashion-mnist[1,3]"
    assert build_dataset("fashion-mnist", identity).name == "fashion-mnist"


def make_images(root: Path, names: list[str]) -> None:
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (4, 4)).save(root / name)


def test_image_folder_pair_shares_class_numbering(tmp_path: Path) -> None:
    make_images(tmp_path, ["train/a/1.png", "train/b/2.png", "train/c/3.png", "test/c/4.png"])
    data = image_folder_pair("folders", tmp_path / "train", tmp_path / "test", transform=identity)
    assert data.num_classes == 3
    assert data.test[0][1] == 2  # class "c" keeps its train index
    make_images(tmp_path, ["test/z/5.png"])
    with pytest.raises(ValueError, match=r"test classes must all be in train, got extra \['z'\]"):
        image_folder_pair("folders", tmp_path / "train", tmp_path / "test", transform=identity)
    with pytest.raises(DatasetUnavailableError, match="folders:"):
        image_folder_pair("folders", tmp_path / "nope", tmp_path / "test", transform=identity)


def test_image_list_pair(tmp_path: Path) -> None:
    make_images(tmp_path, ["n1/a.png", "n2/b.png", "n2/c.png"])
    (tmp_path / "train.txt").write_text("n1/a.png\nn2/b.png\n")
    (tmp_path / "test.txt").write_text("n2/c.png\n")
    data = image_list_pair(
        "cog-l1", tmp_path, tmp_path / "train.txt", tmp_path / "test.txt", transform=identity
    )
    assert data.num_classes == 2 and data.test[0][1] == 1 and data.name == "cog-l1"
