"""Tests for protohead.data.image_list."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from protohead.data.errors import DatasetUnavailableError
from protohead.data.image_list import ImageListDataset


def make_images(root: Path, names: list[str]) -> None:
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (6, 4), color=(10, 20, 30)).save(root / name)


def test_class_from_directory_like_sun397(tmp_path: Path) -> None:
    make_images(tmp_path, ["a/abbey/1.jpg", "a/abbey/2.jpg", "b/beach/3.jpg"])
    (tmp_path / "train.txt").write_text("# comment\n/a/abbey/1.jpg\n\n/b/beach/3.jpg\n")
    (tmp_path / "test.txt").write_text("/a/abbey/2.jpg\n")
    train = ImageListDataset(tmp_path, tmp_path / "train.txt", transform=lambda im: im.size)
    assert train.classes == ["a/abbey", "b/beach"]
    assert [label for _, label in train.samples] == [0, 1]
    assert train[1] == ((6, 4), 1)
    test = ImageListDataset(tmp_path, tmp_path / "test.txt", class_to_idx=train.class_to_idx)
    assert test[0][1] == 0 and test[0][0].mode == "RGB"


def test_explicit_labels_sort_numerically(tmp_path: Path) -> None:
    make_images(tmp_path, ["x.png", "y.png", "z.png"])
    (tmp_path / "l.txt").write_text("x.png 10\ny.png 2\nz.png 2\n")
    ds = ImageListDataset(tmp_path, tmp_path / "l.txt")
    assert ds.classes == ["2", "10"]
    assert [label for _, label in ds.samples] == [1, 0, 0]


def test_errors(tmp_path: Path) -> None:
    make_images(tmp_path, ["x.png"])
    with pytest.raises(DatasetUnavailableError, match="does not exist"):
        ImageListDataset(tmp_path, tmp_path / "missing.txt")
    (tmp_path / "empty.txt").write_text("\n# nothing\n")
    with pytest.raises(DatasetUnavailableError, match="lists no images"):
        ImageListDataset(tmp_path, tmp_path / "empty.txt")
    (tmp_path / "gone.txt").write_text("x.png a\nnot_there.png a\n")
    with pytest.raises(DatasetUnavailableError, match=r"1 of 2 images listed .* are missing"):
        ImageListDataset(tmp_path, tmp_path / "gone.txt")
    (tmp_path / "wide.txt").write_text("x.png a b\n")
    with pytest.raises(ValueError, match=r"wide.txt:1: a line must be 'PATH' or 'PATH LABEL'"):
        ImageListDataset(tmp_path, tmp_path / "wide.txt")
    (tmp_path / "ok.txt").write_text("x.png cat\n")
    with pytest.raises(ValueError, match=r"classes missing from class_to_idx, got \['cat'\]"):
        ImageListDataset(tmp_path, tmp_path / "ok.txt", class_to_idx={"dog": 0})
