"""Cheap fingerprints of the image files behind a dataset, for the feature-cache key.

Cached features (:mod:`~protohead.evaluation.cache`) must not outlive the files they were
computed from. Hashing every image would cost as much as extracting its features, so a dataset's
fingerprint hashes what ``os.stat`` says about each file instead: its path relative to the
dataset root, its label, its size and its modification time in nanoseconds. Replacing, adding,
removing, relabelling or rewriting an image changes the fingerprint; only an edit that keeps the
size and restores the modification time would go unnoticed.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from torch.utils.data import ConcatDataset, Subset

__all__ = ["dataset_files", "files_fingerprint", "resolved"]


def resolved(path: str | os.PathLike[str]) -> str:
    """Absolute form of ``path`` with symlinks resolved (the working directory is applied).

    Example:
        >>> import tempfile
        >>> base = tempfile.mkdtemp()
        >>> resolved(os.path.join(base, "a", "..", "b")) == str(Path(base).resolve() / "b")
        True
    """
    return str(Path(path).resolve())


def files_fingerprint(
    samples: Iterable[tuple[str | os.PathLike[str], Any]],
    root: str | os.PathLike[str] | None = None,
) -> str:
    """SHA-256 over the sorted ``(relative path, label, size, mtime_ns)`` of every sample.

    Args:
        samples: ``(path, label)`` pairs, e.g. ``ImageFolder.samples``; the order does not
            matter.
        root: Paths are hashed relative to it (so the hash does not repeat the root, which the
            cache key holds on its own); ``None`` hashes the absolute paths.

    Returns:
        64 hex digits.

    Raises:
        OSError: If a file cannot be ``stat``-ed (e.g. it was deleted).

    Example:
        >>> import tempfile
        >>> d = Path(tempfile.mkdtemp())
        >>> _ = (d / "a.png").write_bytes(b"12")
        >>> before = files_fingerprint([(d / "a.png", 0)], d)
        >>> _ = (d / "a.png").write_bytes(b"123")  # same name, other content
        >>> files_fingerprint([(d / "a.png", 0)], d) == before
        False
    """
    # abspath, not resolve(): no symlink walk per file (Food-101 has 101,000 of them).
    prefix = None if root is None else os.path.join(os.path.abspath(root), "")
    rows = []
    for path, label in samples:
        full = os.path.abspath(path)
        if prefix is None:
            name = full
        elif full.startswith(prefix):
            name = full[len(prefix) :]
        else:
            name = os.path.relpath(full, prefix)
        info = os.stat(full)
        rows.append(f"{name}\0{label}\0{info.st_size}\0{info.st_mtime_ns}")
    digest = hashlib.sha256()
    for row in sorted(rows):
        digest.update(row.encode("utf-8", "surrogateescape") + b"\n")
    return digest.hexdigest()


def dataset_files(dataset: Any) -> list[tuple[str, Any]] | None:
    """The ``(path, label)`` pairs behind a file-backed dataset, or ``None`` if unknown.

    Understands ``ImageFolder``-style ``samples``, the torchvision classes that keep their
    file list in ``_samples`` or ``_image_files`` / ``_images`` with ``_labels`` (those are
    private attributes, hence the ``None`` fallback), :class:`~torch.utils.data.Subset` and
    :class:`~torch.utils.data.ConcatDataset`.

    Example:
        >>> from torch.utils.data import TensorDataset
        >>> class Listed:
        ...     samples = [("x/1.png", 0), ("y/2.png", 1)]
        >>> dataset_files(Subset(Listed(), [1]))
        [('y/2.png', 1)]
        >>> dataset_files(TensorDataset()) is None
        True
    """
    if isinstance(dataset, Subset):
        inner = dataset_files(dataset.dataset)
        return None if inner is None else [inner[i] for i in dataset.indices]
    if isinstance(dataset, ConcatDataset):
        parts = [dataset_files(part) for part in dataset.datasets]
        if any(part is None for part in parts):
            return None
        return [pair for part in parts if part is not None for pair in part]
    for name in ("samples", "_samples"):
        pairs = getattr(dataset, name, None)
        if isinstance(pairs, list):
            return [(str(path), label) for path, label in pairs]
    files = getattr(dataset, "_image_files", getattr(dataset, "_images", None))
    labels = getattr(dataset, "_labels", None)
    if isinstance(files, list) and isinstance(labels, list) and len(files) == len(labels):
        return [(str(path), label) for path, label in zip(files, labels, strict=True)]
    return None
