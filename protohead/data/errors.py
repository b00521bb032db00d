"""Data errors: a dataset unusable as found on disk, an image file that cannot be read."""

from __future__ import annotations

__all__ = ["DatasetUnavailableError", "UnreadableImageError"]


class DatasetUnavailableError(FileNotFoundError):
    """A dataset's files are missing, incomplete or do not have the expected image counts.

    The evaluation CLI catches it, reports the dataset as *missing* with this message and keeps
    evaluating the other datasets (see :mod:`protohead.evaluation.report`).

    Example:
        >>> err = DatasetUnavailableError("dtd: no files under data/dtd")
        >>> isinstance(err, FileNotFoundError), str(err)
        (True, 'dtd: no files under data/dtd')
    """


class UnreadableImageError(OSError):
    """An image file could not be decoded; ``path`` names it.

    Example:
        >>> UnreadableImageError("a/b.jpg", "truncated").path
        'a/b.jpg'
    """

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(
            f"cannot read image file {path!r}: {reason}; remove or replace the file, or skip "
            "unreadable images (skip_bad_images=True, --skip-bad-images in the training script)"
        )
        self.path = path
        self.reason = reason
