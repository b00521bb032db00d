"""Tests for protohead.data.encoded: datasets that yield file bytes, and their collate."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torchvision.datasets import FakeData

from protohead.data import CheckedImageFolder, SkipBadCollate, SkippedSample, UnreadableImageError
from protohead.data.class_subset import ClassSubset
from protohead.data.encoded import (
    EncodedBatch,
    EncodedImage,
    EncodedImageDataset,
    EncodedImageFolder,
    EncodedImageList,
    as_encoded,
    encoded_collate,
    read_encoded,
)
from protohead.data.image_list import ImageListDataset


def make_folder(root: Path, classes: int = 3, per_class: int = 2) -> Path:
    """A tiny ImageFolder of JPEGs (and one PNG per class), each of its own size."""
    for c in range(classes):
        folder = root / f"class{c}"
        folder.mkdir(parents=True)
        for i in range(per_class):
            size = (20 + 3 * i, 16 + 2 * c)
            Image.new("RGB", size, (80 * c, 30 * i, 60)).save(folder / f"{i}.jpg", quality=90)
        Image.new("RGB", (9, 7), (10, 20, 30 * c)).save(folder / "p.png")
    return root


def test_folder_yields_the_bytes_of_the_files_the_pil_folder_lists(tmp_path):
    root = make_folder(tmp_path / "train")
    encoded, pil = EncodedImageFolder(root), CheckedImageFolder(root)
    assert encoded.samples == pil.samples and encoded.targets == pil.targets
    assert encoded.classes == pil.classes and encoded.class_to_idx == pil.class_to_idx
    assert len(encoded) == len(pil) == 9
    for index in range(len(encoded)):
        image, label = encoded[index]
        path, expected = pil.samples[index]
        assert isinstance(image, EncodedImage) and image.path == path and label == expected
        assert image.data.dtype == torch.uint8 and image.data.ndim == 1
        assert bytes(image.data.numpy()) == Path(path).read_bytes()


def test_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"image folder '.*nowhere' does not exist"):
        EncodedImageFolder(tmp_path / "nowhere")


@pytest.mark.parametrize("damage", ["removed", "emptied"])
def test_unreadable_file_raises_with_its_path_or_is_skipped(tmp_path, damage):
    root = make_folder(tmp_path / "train")
    folder = EncodedImageFolder(root)
    skipping = EncodedImageFolder(root, skip_bad_images=True)  # scanned before the damage
    path = Path(folder.samples[1][0])
    if damage == "removed":
        path.unlink()
    else:
        path.write_bytes(b"")
    with pytest.raises(UnreadableImageError, match=rf"cannot read image file '{path}'") as info:
        folder[1]
    assert info.value.path == str(path)
    skipped = skipping[1]
    assert isinstance(skipped, SkippedSample) and skipped.path == str(path)
    assert ("the file is empty" in skipped.reason) == (damage == "emptied")
    assert isinstance(skipping[0][0], EncodedImage)  # the others still load


def test_skipped_reads_are_dropped_and_counted_by_the_loader(tmp_path):
    root = make_folder(tmp_path / "train", classes=2, per_class=2)
    folder = EncodedImageFolder(root, skip_bad_images=True)
    Path(folder.samples[0][0]).unlink()
    loader = DataLoader(folder, batch_size=6, collate_fn=SkipBadCollate(encoded_collate))
    (images, labels, skipped), = list(loader)  # fmt: skip
    assert skipped == 1 and len(images) == 5
    assert labels.tolist() == folder.targets[1:]
    assert [image.path for image in images] == [path for path, _ in folder.samples[1:]]


def test_image_list_reads_the_listed_files_with_its_numbering(tmp_path):
    root = make_folder(tmp_path / "data", classes=2)
    list_file = tmp_path / "list.txt"
    list_file.write_text("/class1/0.jpg\n# comment\nclass0/p.png\n")
    encoded = EncodedImageList(root, list_file)
    reference = ImageListDataset(root, list_file)
    assert encoded.samples == reference.samples and encoded.classes == ["class0", "class1"]
    assert [encoded[i][1] for i in range(2)] == [1, 0]
    assert bytes(encoded[1][0].data.numpy()) == (root / "class0" / "p.png").read_bytes()
    fixed = EncodedImageList(root, list_file, class_to_idx={"class1": 0, "class0": 1})
    assert fixed.targets == [0, 1]


def test_as_encoded_keeps_files_subset_and_skip_policy(tmp_path):
    root = make_folder(tmp_path / "train")
    pil = CheckedImageFolder(root, skip_bad_images=True)
    encoded = as_encoded(pil)
    assert isinstance(encoded, EncodedImageDataset) and encoded.skip_bad_images
    assert encoded.samples == pil.samples and encoded.classes == pil.classes
    assert not as_encoded(pil, skip_bad_images=False).skip_bad_images  # explicit wins

    subset = ClassSubset(pil, classes=(2, 0))
    sub = as_encoded(subset)
    assert isinstance(sub, ClassSubset) and len(sub) == len(subset) == 6
    for i in range(len(sub)):
        image, label = sub[i]
        assert (image.path, label) == (pil.samples[subset.indices[i]][0], subset.targets[i])


def test_as_encoded_rejects_datasets_without_files():
    with pytest.raises(TypeError, match="samples attribute .* got FakeData"):
        as_encoded(FakeData(2, (3, 4, 4)))


def test_samples_are_checked():
    with pytest.raises(TypeError, match=r"samples\[0\] path must be a str, got int"):
        EncodedImageDataset([(3, 1)])
    with pytest.raises(TypeError, match="label of sample 1 must be an int"):
        EncodedImageDataset([("a.jpg", 1), ("b.jpg", 1.5)])
    with pytest.raises(ValueError, match=r"batch\[0\] must be a \(path, label\) pair"):
        EncodedImageDataset([("a.jpg",)])


def test_collate_packs_one_buffer_that_reads_as_the_list_of_images():
    a = EncodedImage(torch.arange(5, dtype=torch.uint8), "a.jpg")
    b = torch.arange(7, dtype=torch.uint8)
    images, labels = encoded_collate([(a, 2), (b, torch.tensor([4]))])
    assert isinstance(images, EncodedBatch) and len(images) == 2
    assert images[0].path == "a.jpg" and torch.equal(images[0].data, a.data)
    assert images[1].path == "<batch[1]>" and torch.equal(images[1].data, b)
    assert images[-1].path == "<batch[1]>" and [i.path for i in images[:1]] == ["a.jpg"]
    # One storage for the batch: one shared-memory handle per batch from a worker process.
    assert all(i.data.untyped_storage().data_ptr() == images.data.data_ptr() for i in images)
    assert labels.dtype == torch.int64 and labels.tolist() == [2, 4]
    with pytest.raises(IndexError):
        images[2]


@pytest.mark.parametrize(
    ("args", "error", "match"),
    [
        (
            (torch.zeros(3), (3,), ("a",)),
            TypeError,
            "data must be a uint8 tensor, got torch.float32",
        ),
        ((torch.zeros(3, dtype=torch.uint8), (3,), ()), ValueError, "got 1 ends and 0 paths"),
        ((torch.zeros(3, dtype=torch.uint8), (2, 2), ("a", "b")), ValueError, "increase strictly"),
        ((torch.zeros(3, dtype=torch.uint8), (0, 3), ("a", "b")), ValueError, "increase strictly"),
        ((torch.zeros(3, dtype=torch.uint8), (2,), ("a",)), ValueError, r"end where .* \(3,\)"),
    ],
)
def test_encoded_batch_checks_its_layout(args, error, match):
    with pytest.raises(error, match=match):
        EncodedBatch(*args)


def test_batches_cross_worker_processes_intact(tmp_path):
    root = make_folder(tmp_path / "train", classes=2, per_class=2)
    folder = EncodedImageFolder(root)
    loader = DataLoader(folder, batch_size=3, num_workers=1, collate_fn=encoded_collate)
    seen = [(image.path, bytes(image.data.numpy())) for images, _ in loader for image in images]
    assert seen == [(path, Path(path).read_bytes()) for path, _ in folder.samples]


@pytest.mark.parametrize(
    ("batch", "error", "match"),
    [
        ([], ValueError, "at least one sample"),
        ([(torch.zeros(3), 1)], TypeError, r"batch\[0\] must be an EncodedImage .*float32"),
        ([(b"\xff\xd8", 1)], TypeError, r"batch\[0\] .* got bytes"),
        ([(torch.zeros(2, 2, dtype=torch.uint8), 1)], ValueError, r"1-D .* got shape \(2, 2\)"),
        ([(torch.zeros(0, dtype=torch.uint8), 1)], ValueError, r"non-empty .* \(0,\)"),
        ([(torch.zeros(3, dtype=torch.uint8), 1.0)], TypeError, "label of sample 0"),
        ([(torch.zeros(3, dtype=torch.uint8),)], ValueError, "pair"),
    ],
)
def test_collate_rejects_bad_samples(batch, error, match):
    with pytest.raises(error, match=match):
        encoded_collate(batch)


def test_datasets_and_items_pickle_for_worker_processes(tmp_path):
    root = make_folder(tmp_path / "train", classes=1)
    folder = pickle.loads(pickle.dumps(EncodedImageFolder(root, skip_bad_images=True)))
    image, _ = folder[0]
    clone = pickle.loads(pickle.dumps(image))
    assert clone.path == image.path and torch.equal(clone.data, image.data)
    assert folder.skip_bad_images


def test_read_encoded_reads_whole_files(tmp_path):
    path = tmp_path / "big.bin"
    payload = bytes(range(256)) * 1000
    path.write_bytes(payload)
    image = read_encoded(path)
    assert image.path == str(path) and bytes(image.data.numpy()) == payload
    (tmp_path / "empty.bin").write_bytes(b"")
    with pytest.raises(ValueError, match="empty"):
        read_encoded(tmp_path / "empty.bin")
