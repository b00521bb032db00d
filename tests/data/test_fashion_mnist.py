"""Tests for protohead.data.fashion_mnist."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from protohead.data import fashion_mnist
from protohead.data.errors import DatasetUnavailableError
from protohead.data.fashion_mnist import FashionMNIST, read_idx


def idx_bytes(array: torch.Tensor) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim])
    header += b"".join(int(s).to_bytes(4, "big") for s in array.shape)
    return header + array.to(torch.uint8).numpy().tobytes()


def write_split(root: Path, prefix: str, labels: list[int], gz: bool) -> torch.Tensor:
    images = torch.arange(len(labels) * 28 * 28).reshape(len(labels), 28, 28) % 256
    for stem, array in ((f"{prefix}-images-idx3-ubyte", images), (f"{prefix}-labels-idx1-ubyte",
                        torch.tensor(labels))):  # fmt: skip
        data = idx_bytes(array)
        if gz:
            (root / f"{stem}.gz").write_bytes(gzip.compress(data))
        else:
            (root / stem).write_bytes(data)
    return images.to(torch.uint8)


@pytest.fixture
def fake_root(tmp_path: Path) -> Path:
    write_split(tmp_path, "train", [0, 5, 6, 5, 9, 1, 5, 6], gz=True)
    write_split(tmp_path, "t10k", [5, 6, 7, 8, 9, 0], gz=False)
    return tmp_path


def test_read_idx_gz_and_raw(tmp_path: Path) -> None:
    labels = torch.tensor([3, 1, 4], dtype=torch.uint8)
    (tmp_path / "l").write_bytes(idx_bytes(labels))
    (tmp_path / "l.gz").write_bytes(gzip.compress(idx_bytes(labels)))
    assert torch.equal(read_idx(tmp_path / "l"), labels)
    assert torch.equal(read_idx(tmp_path / "l.gz"), labels)
    (tmp_path / "bad").write_bytes(b"\x00\x00\x0d\x01\x00\x00\x00\x01abcd")
    with pytest.raises(ValueError, match="is not an unsigned-byte IDX file"):
        read_idx(tmp_path / "bad")
    (tmp_path / "short").write_bytes(idx_bytes(labels)[:-1])
    with pytest.raises(ValueError, match=r"must hold 3 values for shape \[3\], got 2"):
        read_idx(tmp_path / "short")


def test_class_subset_is_relabelled_in_given_order(fake_root: Path) -> None:
    train = FashionMNIST(fake_root, train=True, classes=(5, 6))
    assert train.labels.tolist() == [0, 1, 0, 0, 1]
    assert train.classes == ["Sandal", "Shirt"]
    capped = FashionMNIST(fake_root, train=True, classes=(6, 5), max_per_class=1)
    assert capped.labels.tolist() == [1, 0]  # first 5 (index 1) and first 6 (index 2)
    image, label = capped[0]
    assert image.mode == "RGB" and image.size == (28, 28) and label == 1
    images = written(fake_root, "train-images-idx3-ubyte")
    assert torch.equal(train.images, images[[1, 2, 3, 6, 7]])
    assert torch.equal(rgb_pixels(image), images[1].expand(3, 28, 28))
    assert torch.equal(rgb_pixels(capped[1][0]), images[2].expand(3, 28, 28))
    test = FashionMNIST(fake_root, train=False, transform=lambda im: im.size)
    assert len(test) == 6 and test[0] == ((28, 28), 5)


def rgb_pixels(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1)


def written(root: Path, stem: str) -> torch.Tensor:
    """An IDX array as the fixture wrote it, decoded here rather than by ``read_idx``."""
    data = gzip.decompress((root / f"{stem}.gz").read_bytes())
    ndim = data[3]
    shape = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return torch.frombuffer(bytearray(data[4 + 4 * ndim :]), dtype=torch.uint8).reshape(shape)


@pytest.mark.parametrize("max_per_class", [None, 3])
def test_class_subset_returns_the_written_pixels(
    fake_fashion_mnist: Path, max_per_class: int | None
) -> None:
    images = written(fake_fashion_mnist, "t10k-images-idx3-ubyte")
    labels = written(fake_fashion_mnist, "t10k-labels-idx1-ubyte").long()
    keep = (7, 2, 9)
    expected: list[tuple[int, int]] = []  # (file index, new label), in file order
    taken = dict.fromkeys(keep, 0)
    for i, original in enumerate(labels.tolist()):
        if original in taken and (max_per_class is None or taken[original] < max_per_class):
            taken[original] += 1
            expected.append((i, keep.index(original)))
    ds = FashionMNIST(fake_fashion_mnist, train=False, classes=keep, max_per_class=max_per_class)
    assert len(ds) == len(expected) == 3 * (max_per_class or 20)
    assert ds.labels.tolist() == [label for _, label in expected]
    for position, (i, label) in enumerate(expected):
        image, got = ds[position]
        assert got == label
        assert torch.equal(rgb_pixels(image), images[i].expand(3, 28, 28)), position


def test_missing_files_say_how_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(DatasetUnavailableError, match="apt-get install dataset-fashion-mnist"):
        FashionMNIST(tmp_path)
    monkeypatch.setattr(fashion_mnist, "DEFAULT_FASHION_MNIST_DIR", str(tmp_path / "none"))
    with pytest.raises(DatasetUnavailableError, match="not found in"):
        FashionMNIST()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"classes": (5, 5)}, r"classes must be distinct ints in \[0, 10\), got \(5, 5\)"),
        ({"classes": (10,)}, r"classes\[0\] must be an int in \[0, 9\], got 10"),
        ({"classes": ()}, "classes must be distinct ints"),
        ({"max_per_class": 0}, r"max_per_class must be an int >= 1, got 0"),
    ],
)
def test_rejects_bad_subsets(fake_root: Path, kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        FashionMNIST(fake_root, **kwargs)  # type: ignore[arg-type]


@pytest.mark.skipif(
    not Path(fashion_mnist.DEFAULT_FASHION_MNIST_DIR).is_dir(),
    reason="Debian package dataset-fashion-mnist not installed",
)
def test_system_package_has_the_real_dataset() -> None:
    test = FashionMNIST(train=False)
    assert len(test) == 10_000
    assert torch.bincount(test.labels).tolist() == [1000] * 10
