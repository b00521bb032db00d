"""Smoke tests of benchmarks/bench_peers.py, so the peer comparison cannot rot.

Numbers are never asserted (timings have no place in tests): one tiny row runs as a script,
the rest checks the row list and the command line.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "bench_peers.py"


@pytest.fixture
def bench(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """The script imported as a module (its sibling helpers importable, as when run)."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import bench_peers

    return bench_peers


def test_tiny_row_runs_as_a_script_and_prints_the_table() -> None:
    row = "memory/M2048-C10-B64-raise/authors"
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--only", row, "--rounds", "1", "--threads", "1"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("Machine: ") and " torch " in lines[0]
    assert lines[1].startswith("Threads: 1 torch threads")
    table = [line for line in lines if line.startswith("| ")]
    assert table[0] == "| work | protohead | peer | peer's time | peer / protohead |"
    (body,) = table[1:]  # exactly the one selected row
    cells = [cell.strip() for cell in body.strip("|").split("|")]
    assert cells[0].startswith("memory step (prototypes + update), M=2048 C=10 B=64")
    assert cells[2] == "authors' re-reduce every step"
    assert cells[1].endswith(" ms") and cells[3].endswith(" ms")
    assert cells[4].strip("*").endswith("×")  # bold when protohead is ahead


def test_rows_cover_every_comparison_with_unique_ids(bench: ModuleType) -> None:
    for quick in (True, False):
        rows = bench.all_rows(quick, threads=1)
        ids = [row.id for row in rows]
        assert len(ids) == len(set(ids))
        sections = {i.split("/")[0] for i in ids}
        assert sections == {"memory", "ema", "multicrop", "logreg", "step"}
        assert {row.needs for row in rows} == {None, "lightly", "timm", "sklearn"}
    full = [row.id for row in bench.all_rows(False, threads=1)]
    for size in (2048, 8192, 65536, 262144):
        assert any(f"/M{size}-" in i for i in full), size
    for part in ("C10-", "C10000-", "B64-", "B4096-", "-skip/", "resnet101", "500x375"):
        assert any(part in i for i in full), part


def test_list_and_only_select_rows(bench: ModuleType, capsys: pytest.CaptureFixture[str]) -> None:
    assert bench.main(["--quick", "--list", "--only", "ema/,logreg/2"]) == 0
    listed = capsys.readouterr().out.split()
    assert listed == ["ema/resnet18/authors", "ema/resnet18/timm", "logreg/2-thread/sklearn"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--only", "no-such-row"], "--only 'no-such-row' matches no row id (see --list)"),
        (["--threads", "0"], "--threads and --rounds must be >= 1, got 0, None"),
        (["--rounds", "x"], "argument --rounds: invalid int value: 'x'"),
    ],
)
def test_usage_errors_print_one_line_and_exit_2(
    bench: ModuleType, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        bench.main(["--quick", *argv])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == f"bench_peers.py: error: {message}\n"


def test_rows_of_a_missing_peer_are_skipped_with_a_note(
    bench: ModuleType, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bench, "_version", lambda key: None)  # no peer package installed
    assert bench.main(["--quick", "--only", "ema/resnet18/timm,logreg/1"]) == 0
    out = capsys.readouterr().out
    assert "Peers: none installed" in out
    assert [line for line in out.splitlines() if line.startswith("| ")][2:] == []
    assert 'note: skipped 1 row(s): timm is not installed (pip install "protohead[bench]")' in out
    assert "note: skipped 1 row(s): scikit-learn is not installed" in out
