"""Tests for protohead.data: built-in datasets, ImageFolder trees and unreadable images."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torchvision import datasets as tv_datasets

from protohead import multicrop_collate
from protohead.data import (
    DATASETS,
    CheckedImageFolder,
    SkipBadCollate,
    SkippedSample,
    UnreadableImageError,
    build_datasets,
    dataset_info,
    uint8_collate,
)
from protohead.data.errors import DatasetUnavailableError
from protohead.data.fashion_mnist import DEFAULT_FASHION_MNIST_DIR


def _image_folder(root: Path, classes=("cat", "dog"), per_class=2, corrupt: str | None = None):
    for split in ("train", "val"):
        for c, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(per_class):
                Image.new("RGB", (10 + i, 12), (40 * c, 10 * i, 0)).save(folder / f"{i}.png")
    if corrupt is not None:
        bad = root / "train" / classes[0] / corrupt
        bad.write_bytes(b"\x89PNG\r\n\x1a\n this is not really a png")
        return bad
    return None


def test_dataset_info_covers_the_builtin_names():
    assert set(DATASETS) == {"fashion-mnist", "cifar10", "cifar100", "fake"}
    assert dataset_info("fashion-mnist").image_size == 28
    assert dataset_info("cifar100").num_classes == 100
    assert dataset_info(None).num_classes is None
    with pytest.raises(ValueError, match="dataset must be one of .* got 'mnist'"):
        dataset_info("mnist")


def test_fake_datasets_have_distinct_train_and_val_images():
    data = build_datasets("fake", fake_sizes=(4, 3), fake_image_size=8)
    assert (len(data.train), len(data.val), data.num_classes) == (4, 3, 10)
    train_image, _ = data.train[0]
    val_image, _ = data.val[0]
    assert train_image.size == (8, 8)
    assert train_image.tobytes() != val_image.tobytes()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({}, "exactly one of name and data_dir must be given"),
        ({"name": "fake", "data_dir": "x"}, "exactly one of name and data_dir"),
        (
            {"name": "fake", "fake_sizes": (0, 2)},
            r"fake_sizes\[0\] must be an int >= 1, got 0",
        ),
        ({"name": "fake", "fake_image_size": 0}, "fake_image_size must be an int >= 1, got 0"),
        ({"name": "imagenet"}, "dataset must be one of"),
    ],
)
def test_build_datasets_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        build_datasets(**kwargs)


def test_image_folder_splits_and_transform(tmp_path):
    _image_folder(tmp_path)
    data = build_datasets(data_dir=tmp_path, train_transform=lambda im: im.size)
    assert data.num_classes == 2 and len(data.train) == 4 and len(data.val) == 4
    assert data.train[1] == ((11, 12), 0)


def test_missing_data_dir_split_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"train/ and val/.*'.*nowhere/train' does not"):
        build_datasets(data_dir=tmp_path / "nowhere")
    (tmp_path / "train" / "a").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r"'.*/val' does not exist"):
        build_datasets(data_dir=tmp_path)


def test_mismatched_class_folders_are_rejected(tmp_path):
    _image_folder(tmp_path)
    (tmp_path / "val" / "dog").rename(tmp_path / "val" / "wolf")
    with pytest.raises(ValueError, match="train/ and val/ must have the same class folders"):
        build_datasets(data_dir=tmp_path)


def test_corrupt_image_raises_an_error_naming_the_file(tmp_path):
    bad = _image_folder(tmp_path, corrupt="broken.png")
    folder = CheckedImageFolder(tmp_path / "train")
    index = [p for p, _ in folder.samples].index(str(bad))
    with pytest.raises(UnreadableImageError, match=r"cannot read image file '.*broken.png'") as err:
        folder[index]
    assert err.value.path == str(bad)
    assert "skip_bad_images=True" in str(err.value)


def test_corrupt_image_is_skipped_and_counted_in_a_loader(tmp_path):
    bad = _image_folder(tmp_path, corrupt="broken.png")
    folder = CheckedImageFolder(
        tmp_path / "train", lambda im: [torch.zeros(3, 4, 4)], skip_bad_images=True
    )
    index = [p for p, _ in folder.samples].index(str(bad))
    skipped = folder[index]
    assert isinstance(skipped, SkippedSample) and skipped.path == str(bad)
    loader = DataLoader(
        folder, batch_size=len(folder), collate_fn=SkipBadCollate(multicrop_collate)
    )
    crops, labels, num_skipped = next(iter(loader))
    assert num_skipped == 1
    assert crops[0].shape == (len(folder) - 1, 3, 4, 4) and labels.shape == (len(folder) - 1,)


def test_skip_bad_collate_rejects_an_all_bad_batch():
    collate = SkipBadCollate(multicrop_collate)
    with pytest.raises(UnreadableImageError, match=r"'a.jpg'.*all 2 images of a batch"):
        collate([SkippedSample("a.jpg", "x"), SkippedSample("b.jpg", "y")])
    with pytest.raises(TypeError, match="collate_fn must be callable"):
        SkipBadCollate("nope")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="batch must contain at least one sample, got an empty"):
        collate([])  # an IndexError before


def test_uint8_collate_stacks_equal_sizes_and_keeps_lists_otherwise():
    a = torch.zeros(3, 4, 5, dtype=torch.uint8)
    b = torch.ones(3, 6, 5, dtype=torch.uint8)
    images, labels = uint8_collate([(a, 1), (a, 2)])
    assert images.shape == (2, 3, 4, 5) and labels.tolist() == [1, 2]
    images, labels = uint8_collate([(a, 1), (b, 0)])
    assert isinstance(images, list) and images[1] is b and labels.dtype == torch.int64
    with pytest.raises(ValueError, match="batch must contain at least one sample"):
        uint8_collate([])


U8 = torch.zeros(3, 4, 4, dtype=torch.uint8)


@pytest.mark.parametrize(
    ("batch", "error", "match"),
    [
        ([(U8, 1), (Image.new("RGB", (4, 4)), 2)], TypeError, r"image of batch\[1\] must be a"),
        ([(U8.float(), 1)], TypeError, r"batch\[0\] must have dtype torch.uint8"),
        ([(U8[0], 1)], ValueError, r"image of batch\[0\] must have shape \(c, h, w\)"),
        ([(U8[:, :0], 1)], ValueError, r"h, w >= 1, got \(3, 0, 4\)"),
        ([(U8,)], ValueError, r"batch\[0\] must be a \(image, label\) pair, got length 1"),
        ([U8], ValueError, r"batch\[0\] must be a \(image, label\) pair, got Tensor"),
    ],
)
def test_uint8_collate_requires_uint8_chw_images(batch, error, match):
    with pytest.raises(error, match=match):
        uint8_collate(batch)


@pytest.mark.parametrize("label", [2.7, True, torch.tensor(1.0), torch.tensor([1, 2]), "3"])
@pytest.mark.parametrize("collate", [uint8_collate, multicrop_collate])
def test_collate_functions_reject_the_same_labels(collate, label):
    sample = (U8, 0) if collate is uint8_collate else ([U8.float()], 0)
    with pytest.raises(TypeError, match="label of sample 1 must be an int or a one-element"):
        collate([sample, (sample[0], label)])  # int(2.7) == 2 in uint8_collate before


@pytest.mark.parametrize("collate", [uint8_collate, multicrop_collate])
def test_collate_functions_accept_the_same_labels(collate):
    image = U8 if collate is uint8_collate else [U8.float()]
    labels = [3, torch.tensor(4), torch.tensor([5], dtype=torch.int32)]
    _, out = collate([(image, label) for label in labels])
    assert out.tolist() == [3, 4, 5] and out.dtype == torch.int64


def test_cifar_download_failure_says_how_to_get_the_data(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise RuntimeError("Dataset not found or corrupted")

    monkeypatch.setattr(tv_datasets, "CIFAR10", offline)
    with pytest.raises(DatasetUnavailableError, match=r"cifar10: could not load or download"):
        build_datasets("cifar10", root=tmp_path)


def test_fashion_mnist_missing_files_say_how_to_get_them(tmp_path):
    with pytest.raises(DatasetUnavailableError, match="apt-get install dataset-fashion-mnist"):
        build_datasets("fashion-mnist", root=tmp_path, download=False)


@pytest.mark.skipif(
    not Path(DEFAULT_FASHION_MNIST_DIR).is_dir(), reason="dataset-fashion-mnist not installed"
)
def test_fashion_mnist_from_the_debian_package():
    data = build_datasets("fashion-mnist", download=False, val_transform=lambda im: im.size)
    assert (len(data.train), len(data.val), data.num_classes) == (60000, 10000, 10)
    assert data.val[0][0] == (28, 28)
