"""The error raised when a transfer dataset cannot be used as found on disk."""

from __future__ import annotations

__all__ = ["DatasetUnavailableError"]


class DatasetUnavailableError(FileNotFoundError):
    """A dataset's files are missing, incomplete or do not have the expected image counts.

    The evaluation CLI catches it, reports the dataset as *missing* with this message and keeps
    evaluating the other datasets (see :mod:`protohead.evaluation.report`).

    Example:
        >>> err = DatasetUnavailableError("dtd: no files under data/dtd")
        >>> isinstance(err, FileNotFoundError), str(err)
        (True, 'dtd: no files under data/dtd')
    """
