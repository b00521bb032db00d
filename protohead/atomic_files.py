"""Atomic file writes: a reader sees the old file or the new one, never a half-written one.

Every file protohead writes (training checkpoints, feature caches, transfer reports, plots)
goes through :func:`atomic_write`: the content goes to a temporary file in the target's
directory, which then replaces the target with ``os.replace`` (atomic on POSIX and Windows).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any, Literal

__all__ = ["atomic_write"]


@contextlib.contextmanager
def atomic_write(
    path: str | os.PathLike[str], mode: Literal["w", "wb"] = "wb", *, durable: bool = False
) -> Iterator[IO[Any]]:
    """Open a temporary file that replaces ``path`` when the ``with`` block ends cleanly.

    The parent directory is created if needed. If the block raises (or the process dies), the
    previous file at ``path`` is untouched and the temporary file is removed.

    Args:
        path: Destination file.
        mode: ``"wb"`` (bytes) or ``"w"`` (text).
        durable: Also ``fsync`` the file before the rename and the directory after it, so the
            new content survives a power loss (slower; for checkpoints).

    Yields:
        The open temporary file.

    Raises:
        ValueError: If ``mode`` is not ``"w"`` or ``"wb"``.
        OSError: If the file cannot be written (the previous file is kept).

    Example:
        >>> target = Path(tempfile.mkdtemp()) / "sub" / "note.txt"
        >>> with atomic_write(target, "w") as handle:
        ...     _ = handle.write("done")
        >>> target.read_text(), sorted(p.name for p in target.parent.iterdir())
        ('done', ['note.txt'])
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"mode must be 'w' or 'wb', got {mode!r}")
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as handle:
            yield handle
            if durable:
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(tmp_name, target)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    if durable:
        _fsync_directory(target.parent)


def _fsync_directory(directory: Path) -> None:
    # Makes the rename itself durable; not supported on every platform/filesystem.
    with contextlib.suppress(OSError, AttributeError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
