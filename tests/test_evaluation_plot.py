"""Tests for protohead.evaluation.plot."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from protohead.evaluation.plot import plot_transfer
from protohead.evaluation.report import DatasetResult, TransferReport


def report(name: str, top1: float | None, odds: float, missing: bool = False) -> TransferReport:
    results = [DatasetResult("a", accuracy=0.5, log_odds=odds)]
    if missing:
        results.append(DatasetResult.missing("b", "gone"))
    return TransferReport(name, tuple(results), train_top1=top1)


def test_plot_needs_matplotlib(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(ImportError, match="pip install matplotlib"):
        plot_transfer([report("m", 0.7, 1.0)], tmp_path / "f.png")
    assert not (tmp_path / "f.png").exists()


def test_plot_validates_reports(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="reports must hold at least one TransferReport"):
        plot_transfer([], tmp_path / "f.png")
    with pytest.raises(ValueError, match="every report needs train_top1 .* model 'm'"):
        plot_transfer([report("m", None, 1.0)], tmp_path / "f.png")


def test_plot_writes_labelled_points(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    reports = [report("baseline", 0.78, 0.9), report("t-ReX", 0.76, 1.3, missing=True)]
    path = plot_transfer(reports, tmp_path / "plots" / "transfer.png", title="demo")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in path.parent.iterdir()] == ["transfer.png"]
