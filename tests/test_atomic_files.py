"""Tests of protohead/atomic_files.py."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from protohead.atomic_files import atomic_write, remove_stale_temp_files


def test_replaces_the_target_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    target = tmp_path / "a" / "out.bin"
    with atomic_write(target) as handle:
        handle.write(b"first")
    with atomic_write(target, durable=True) as handle:
        handle.write(b"second")
    assert target.read_bytes() == b"second"
    assert [p.name for p in target.parent.iterdir()] == ["out.bin"]


def test_a_failing_write_keeps_the_previous_file(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    target.write_text("old")

    def write_half_then_fail() -> None:
        with atomic_write(target, "w") as handle:
            handle.write("half of the new")
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        write_half_then_fail()
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_bad_mode_is_rejected(tmp_path: Path) -> None:
    with (
        pytest.raises(ValueError, match="mode must be 'w' or 'wb', got 'a'"),
        atomic_write(tmp_path / "x", "a"),  # type: ignore[arg-type]
    ):
        pass
    assert list(tmp_path.iterdir()) == []


# --- temporary files of dead writers ---------------------------------------------------------

_WRITER = """
import os, signal, sys
from protohead.atomic_files import atomic_write

with atomic_write(sys.argv[1]) as handle:
    handle.write(b"half of a checkpoint")
    handle.flush()
    if sys.argv[2] == "exit":
        os._exit(1)
    if sys.argv[2] == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    print("writing", flush=True)
    sys.stdin.readline()  # a live writer: waits until the test lets it finish
    handle.write(b", rest")
"""


def _writer(target: Path, how: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    return subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(target), how],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.mark.parametrize("how", ["exit", "kill"])
def test_the_next_save_removes_the_temporary_file_of_a_killed_writer(tmp_path, how) -> None:
    target = tmp_path / "checkpoint.pth"
    target.write_bytes(b"old")
    writer = _writer(target, how)
    assert writer.wait(timeout=120) != 0
    leftovers = [n for n in _names(tmp_path) if n != "checkpoint.pth"]
    assert leftovers == [f".checkpoint.pth.atomic-{writer.pid}-{leftovers[0].split('-')[-1]}"]
    assert target.read_bytes() == b"old"  # the dead write never replaced the target
    with atomic_write(target) as handle:
        handle.write(b"new")
    assert _names(tmp_path) == ["checkpoint.pth"]
    assert target.read_bytes() == b"new"


def test_the_temporary_file_of_a_live_writer_is_kept(tmp_path) -> None:
    target = tmp_path / "checkpoint.pth"
    writer = _writer(target, "wait")
    try:
        assert writer.stdout is not None and writer.stdout.readline() == "writing\n"
        (live,) = [n for n in _names(tmp_path)]
        with atomic_write(target) as handle:  # a concurrent save to the same path
            handle.write(b"other")
        assert remove_stale_temp_files(tmp_path) == []
        assert _names(tmp_path) == sorted([live, "checkpoint.pth"])
        assert writer.stdin is not None
        writer.stdin.write("\n")
        writer.stdin.flush()
        assert writer.wait(timeout=120) == 0
    finally:
        writer.kill()
    assert _names(tmp_path) == ["checkpoint.pth"]
    assert target.read_bytes() == b"half of a checkpoint, rest"


def test_a_nested_save_to_the_same_path_keeps_the_outer_temporary_file(tmp_path) -> None:
    target = tmp_path / "out.bin"
    with atomic_write(target) as outer:
        outer.write(b"outer")
        with atomic_write(target) as inner:
            inner.write(b"inner")
        assert len(_names(tmp_path)) == 2  # the outer write's file survived the inner save
    assert target.read_bytes() == b"outer"
    assert _names(tmp_path) == ["out.bin"]


def test_clean_up_removes_only_stale_files_of_its_own_pattern(tmp_path) -> None:
    ours = [
        ".checkpoint.pth.atomic-123-abcdefgh.tmp",
        ".checkpoint.pth.atomic-99999999-x_1.tmp",
        ".features.pt.atomic-7-zzzzzzzz.tmp",
    ]
    others = [
        "checkpoint.pth",
        ".checkpoint.pth.abcdefgh.tmp",  # an older protohead's naming: unknown, kept
        ".checkpoint.pth.atomic-123-abcdefgh.tmp.bak",
        ".checkpoint.pth.atomic-x-abcdefgh.tmp",
        "checkpoint.pth.atomic-123-abcdefgh.tmp",
        "notes.tmp",
    ]
    for name in ours + others:
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / ".d.atomic-1-abcdefgh.tmp").mkdir()  # not a file: kept
    with atomic_write(tmp_path / "checkpoint.pth") as handle:  # cleans its own target only
        handle.write(b"new")
    assert _names(tmp_path) == sorted([ours[2], *others, ".d.atomic-1-abcdefgh.tmp"])
    assert remove_stale_temp_files(tmp_path) == [tmp_path / ours[2]]
    assert _names(tmp_path) == sorted([*others, ".d.atomic-1-abcdefgh.tmp"])
    assert remove_stale_temp_files(tmp_path / "missing") == []


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o077], ids=["022", "027", "077"])
def test_the_new_file_has_the_permissions_of_a_plain_open(tmp_path, umask) -> None:
    old = os.umask(umask)
    try:
        with atomic_write(tmp_path / "atomic.bin") as handle:
            handle.write(b"x")
        (tmp_path / "plain.bin").write_bytes(b"x")
    finally:
        os.umask(old)
    mode = stat.S_IMODE((tmp_path / "atomic.bin").stat().st_mode)
    assert mode == stat.S_IMODE((tmp_path / "plain.bin").stat().st_mode) == 0o666 & ~umask
