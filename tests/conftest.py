"""Shared fixtures of the test suite."""

from __future__ import annotations

import gzip
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch


@pytest.fixture
def fake_fashion_mnist(tmp_path: Path) -> Path:
    """A directory with a small Fashion-MNIST in the real IDX format (gzipped).

    200 train and 200 test images of 28 x 28 px whose brightness encodes the class. The labels
    are a seeded shuffle of ``i % 10``: every class has 20 images per split, in no periodic
    order, so an image paired with the wrong index (or label) shows.
    """
    root = tmp_path / "fashion-mnist"
    root.mkdir()
    g = torch.Generator().manual_seed(0)
    for prefix, n in (("train", 200), ("t10k", 200)):
        labels = (torch.arange(n) % 10)[torch.randperm(n, generator=g)]
        images = (torch.rand(n, 28, 28, generator=g) * 60 + labels[:, None, None] * 19).byte()
        for stem, array in ((f"{prefix}-images-idx3-ubyte", images),
                            (f"{prefix}-labels-idx1-ubyte", labels.byte())):  # fmt: skip
            header = bytes([0, 0, 8, array.ndim]) + b"".join(
                int(s).to_bytes(4, "big") for s in array.shape
            )
            (root / f"{stem}.gz").write_bytes(gzip.compress(header + array.numpy().tobytes()))
    return root


@pytest.fixture
def single_thread() -> Iterator[None]:
    """One intra-op thread for the test, restored afterwards.

    Tiny tensors gain nothing from threads and lose to contention on a busy 2-core box (uint8
    ``round()`` inside the blur was 10x slower with 2 threads).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
