"""Atomic file writes: a reader sees the old file or the new one, never a half-written one.

Every file protohead writes (training checkpoints, feature caches, transfer reports, plots)
goes through :func:`atomic_write`: the content goes to a temporary file in the target's
directory, which then replaces the target with ``os.replace`` (atomic on POSIX and Windows).

A process killed during a write (``SIGKILL``, out of memory, a lost node) cannot delete its
temporary file, so the next :func:`atomic_write` to the same path removes such leftovers, and
:func:`remove_stale_temp_files` cleans a whole directory (e.g. a run's output directory at the
start of training). A temporary file is recognised by its name,
``.<target name>.atomic-<pid>-<random>.tmp``, and judged stale by a lock: its writer holds an
exclusive ``flock`` on it from creation to rename, which the operating system releases when the
process dies, however it dies. The temporary file of a live writer, in this process or another,
is never removed.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any, Literal

try:  # POSIX; on Windows, where it is missing, stale files are judged by their age instead
    import fcntl
except ImportError:  # pragma: no cover - not on Linux
    fcntl = None  # type: ignore[assignment]

__all__ = ["atomic_write", "remove_stale_temp_files"]

_MARKER = ".atomic-"
# ".<target>.atomic-<pid>-<random>.tmp"; the random part is tempfile.mkstemp's.
_TEMP_NAME = re.compile(r"^\.(?P<target>.+)\.atomic-(?P<pid>\d+)-[a-z0-9_]+\.tmp$")
# Without file locks, a temporary file this old cannot belong to a write still in progress.
_STALE_AGE_WITHOUT_LOCKS_S = 24 * 3600.0

# Temporary files this process is writing now (absolute paths): never stale, whatever the lock
# semantics of the filesystem (NFS emulates flock with per-process POSIX locks).
_writing: set[str] = set()
_writing_lock = threading.Lock()


@contextlib.contextmanager
def atomic_write(
    path: str | os.PathLike[str], mode: Literal["w", "wb"] = "wb", *, durable: bool = False
) -> Iterator[IO[Any]]:
    """Open a temporary file that replaces ``path`` when the ``with`` block ends cleanly.

    The parent directory is created if needed. If the block raises, the previous file at
    ``path`` is untouched and the temporary file is removed. If the process dies during the
    block, the previous file is untouched too, but the temporary file stays until the next
    :func:`atomic_write` to ``path`` (or :func:`remove_stale_temp_files` on its directory)
    removes it. The new file gets the permissions of a plain ``open()`` (``0o666`` minus the
    umask), not the owner-only ones of :func:`tempfile.mkstemp`.

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
    remove_stale_temp_files(target.parent, target.name)
    fd, tmp_name = _create_locked_temp(target)
    try:
        handle = os.fdopen(fd, mode)
        try:
            yield handle
            handle.flush()
            if durable:
                os.fsync(handle.fileno())
            if hasattr(os, "fchmod"):
                os.fchmod(handle.fileno(), 0o666 & ~_umask())
            if fcntl is None:  # pragma: no cover - Windows cannot rename an open file
                handle.close()
            # Renamed while still open, so the lock is held until the temporary name is gone.
            os.replace(tmp_name, target)
        finally:
            handle.close()
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    finally:
        with _writing_lock:
            _writing.discard(tmp_name)
    if durable:
        _fsync_directory(target.parent)


def remove_stale_temp_files(
    directory: str | os.PathLike[str], name: str | None = None
) -> list[Path]:
    """Remove the temporary files that dead :func:`atomic_write` calls left in ``directory``.

    Only files named as :func:`atomic_write` names them are considered (for the target file
    ``name``, or for any target when ``name`` is ``None``), and of those only the ones that no
    live process is writing: see the module documentation. Other files, and temporary files
    of other tools or of older protohead versions, are left alone. Errors while removing are
    ignored: this is a clean-up, it never fails a save.

    Args:
        directory: Directory to clean; a missing directory has nothing to clean.
        name: Target file name whose temporary files to remove; ``None`` for all targets.

    Returns:
        The removed files.

    Example:
        >>> folder = Path(tempfile.mkdtemp())
        >>> _ = (folder / ".model.pth.atomic-4242-k2x8q0ab.tmp").write_bytes(b"half")
        >>> [p.name for p in remove_stale_temp_files(folder)], list(folder.iterdir())
        (['.model.pth.atomic-4242-k2x8q0ab.tmp'], [])
    """
    folder = Path(directory)
    try:
        entries = list(os.scandir(folder))
    except (FileNotFoundError, NotADirectoryError):
        return []
    removed = []
    for entry in entries:
        match = _TEMP_NAME.match(entry.name)
        if match is None or (name is not None and match.group("target") != name):
            continue
        path = folder / entry.name
        with _writing_lock:
            if os.path.abspath(path) in _writing:
                continue
        with contextlib.suppress(OSError):
            if entry.is_file(follow_symlinks=False) and _remove_if_stale(path):
                removed.append(path)
    return removed


def _create_locked_temp(target: Path) -> tuple[int, str]:
    """A new temporary file next to ``target``, registered and exclusively locked."""
    prefix = f".{target.name}{_MARKER}{os.getpid()}-"
    while True:
        fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=prefix, suffix=".tmp")
        tmp_name = os.path.abspath(tmp_name)
        with _writing_lock:
            _writing.add(tmp_name)
        if fcntl is None:  # pragma: no cover - Windows
            return fd, tmp_name
        fcntl.flock(fd, fcntl.LOCK_EX)
        # Another process's clean-up may have taken the file between its creation and the
        # lock (it had no lock yet, so it looked stale): then start over with a new one.
        with contextlib.suppress(FileNotFoundError):
            named, opened = os.stat(tmp_name), os.fstat(fd)
            if (named.st_dev, named.st_ino) == (opened.st_dev, opened.st_ino):
                return fd, tmp_name
        os.close(fd)
        with _writing_lock:
            _writing.discard(tmp_name)


def _remove_if_stale(path: Path) -> bool:
    """Remove ``path`` if no process holds its lock; whether it was removed."""
    if fcntl is None:  # pragma: no cover - Windows
        if time.time() - path.stat().st_mtime < _STALE_AGE_WITHOUT_LOCKS_S:
            return False
        path.unlink()
        return True
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False  # a live writer holds it
        # Unlinked by name while locked: if the writer renamed it in the meantime, the name is
        # gone and the (now complete) target is not touched.
        path.unlink()
        return True
    finally:
        os.close(fd)


def _umask() -> int:
    """The process's umask, read without changing it where the platform allows."""
    with contextlib.suppress(OSError, ValueError), open("/proc/self/status") as status:
        for line in status:
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)  # no other portable way to read it; restored at once
    os.umask(mask)
    return mask


def _fsync_directory(directory: Path) -> None:
    # Makes the rename itself durable; not supported on every platform/filesystem.
    with contextlib.suppress(OSError, AttributeError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
