"""Tests of protohead/atomic_files.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from protohead.atomic_files import atomic_write


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
