"""Tests for protohead.evaluation.datasets."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image
from torch.utils.data import ConcatDataset, Dataset, Subset

from protohead.data.errors import DatasetUnavailableError
from protohead.evaluation import datasets as ds_module
from protohead.evaluation.datasets import (
    DATASET_GROUPS,
    EXPECTED_COUNTS,
    INATURALIST_DATASETS,
    PAPER_DATASETS,
    DatasetOptions,
    build_dataset,
    image_folder_pair,
    image_list_pair,
)
from protohead.evaluation.fingerprint import dataset_files


def identity(image: Any) -> Any:
    return image


def test_expected_counts_match_the_issue_table() -> None:
    assert set(EXPECTED_COUNTS) == set(PAPER_DATASETS) | set(INATURALIST_DATASETS)
    # The iNaturalist sizes and class counts of the authors' evaluation (their loader's checks).
    assert EXPECTED_COUNTS["inat2018"] == (437513, 24426)
    assert EXPECTED_COUNTS["inat2019"] == (265213, 3030)
    assert DATASET_GROUPS == {"paper": PAPER_DATASETS, "inaturalist": ("inat2018", "inat2019")}
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
    assert data.val_per_class == 540  # the reference validation split, used by the search
    assert build_dataset("fake", identity).val_per_class is None


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
            self.files = ()

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


class FileFlowers(Dataset[tuple[int, int]]):
    """Flowers102 stand-in that lists real files as torchvision does (``_image_files``)."""

    def __init__(self, root: str, split: str, **kwargs: object) -> None:
        size = {"train": 1020, "val": 1020, "test": 6149}[split]
        self._image_files = [Path(root) / "flowers" / "img.png"] * size
        self._labels = [i % 102 for i in range(size)]

    def __len__(self) -> int:
        return len(self._image_files)

    def __getitem__(self, i: int) -> tuple[int, int]:
        return i, self._labels[i]


def test_paper_dataset_key_has_resolved_root_and_file_fingerprint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ds_module.tv_datasets, "Flowers102", FileFlowers)
    for where in ("one", "two"):
        make_images(tmp_path / where, ["data/flowers/img.png"])
    monkeypatch.chdir(tmp_path / "one")
    config = build_dataset("flowers", identity, DatasetOptions(root="data")).config
    assert config["root"] == str((tmp_path / "one" / "data").resolve())
    assert set(config["files"]) == {"trainval", "test"}
    Image.new("RGB", (9, 9)).save(tmp_path / "one" / "data" / "flowers" / "img.png")
    rewritten = build_dataset("flowers", identity, DatasetOptions(root="data")).config
    assert rewritten["files"] != config["files"] and rewritten["root"] == config["root"]
    monkeypatch.chdir(tmp_path / "two")  # the same relative root, other files
    assert build_dataset("flowers", identity, DatasetOptions(root="data")).config != rewritten


def test_image_list_key_resolves_paths_and_fingerprints_the_list(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_images(tmp_path, ["n1/a.png", "n2/b.png", "n2/c.png"])
    (tmp_path / "train.txt").write_text("n1/a.png\nn2/b.png\n")
    (tmp_path / "test.txt").write_text("n2/c.png\n")
    monkeypatch.chdir(tmp_path)
    config = image_list_pair("cog", ".", "train.txt", "test.txt", transform=identity).config
    assert config["root"] == str(tmp_path.resolve())
    assert config["train"] == str((tmp_path / "train.txt").resolve())
    (tmp_path / "test.txt").write_text("n2/b.png\n")  # another image, same count
    changed = image_list_pair("cog", ".", "train.txt", "test.txt", transform=identity).config
    assert changed["files"]["test"] != config["files"]["test"]
    assert changed["files"]["trainval"] == config["files"]["trainval"]


def test_fashion_mnist_key_names_the_files_read(tmp_path: Path, fake_fashion_mnist: Path) -> None:
    copy = tmp_path / "copy"
    copy.mkdir()
    for path in fake_fashion_mnist.iterdir():
        (copy / path.name).write_bytes(path.read_bytes())
    configs = [
        build_dataset("fashion-mnist", identity, DatasetOptions(fashion_mnist_root=str(root)))
        for root in (fake_fashion_mnist, copy)
    ]
    assert configs[0].config["files"] != configs[1].config["files"]


def test_sun397_lists_are_relative_to_root_sun397(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sun = tmp_path / "data" / "SUN397"
    make_images(sun, ["a/abbey/1.jpg", "a/abbey/2.jpg", "b/beach/3.jpg"])
    (sun / "Training_01.txt").write_text("/a/abbey/1.jpg\n/b/beach/3.jpg\n")
    (sun / "Testing_01.txt").write_text("/a/abbey/2.jpg\n")
    monkeypatch.setitem(EXPECTED_COUNTS, "sun397", (2, 1))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # the lists are not relative to the working directory
    root = str(tmp_path / "data")
    lists = ("Training_01.txt", "Testing_01.txt")
    data = build_dataset("sun397", identity, DatasetOptions(root=root, sun397_lists=lists))
    assert (len(data.trainval), len(data.test)) == (2, 1)  # type: ignore[arg-type]
    assert data.config["root"] == str(sun.resolve()) and data.config["name"] == "sun397"
    assert data.config["train"] == str((sun / "Training_01.txt").resolve())
    (elsewhere / "mine.txt").write_text("/a/abbey/1.jpg\n/b/beach/3.jpg\n")
    absolute = (str(elsewhere / "mine.txt"), "Testing_01.txt")  # absolute paths stay as given
    data = build_dataset("sun397", identity, DatasetOptions(root=root, sun397_lists=absolute))
    assert data.config["train"] == str((elsewhere / "mine.txt").resolve())
    with pytest.raises(DatasetUnavailableError, match=r"SUN397/Nope.txt' does not exist"):
        build_dataset("sun397", identity, DatasetOptions(root=root, sun397_lists=("Nope.txt", "x")))


def test_dataset_files_unwraps_subsets_and_concatenations() -> None:
    cars, pets = TinyDataset(2), TinyDataset(2)
    cars._samples = [("c/1.jpg", 3), ("c/2.jpg", 4)]  # type: ignore[attr-defined]  # StanfordCars
    pets._images = ["p/1.jpg", "p/2.jpg"]  # type: ignore[attr-defined]  # OxfordIIITPet
    pets._labels = [0, 1]  # type: ignore[attr-defined]
    joined = ConcatDataset([Subset(cars, [1]), pets])
    assert dataset_files(joined) == [("c/2.jpg", 4), ("p/1.jpg", 0), ("p/2.jpg", 1)]
    assert dataset_files(ConcatDataset([pets, TinyDataset(2)])) is None
