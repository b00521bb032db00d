"""Tests for protohead.evaluation.plot."""

from __future__ import annotations

import sys
import types
from pathlib import Path
from typing import Any

import pytest

from protohead.evaluation.plot import TradeoffPoint, plot_tradeoff, plot_transfer
from protohead.evaluation.report import DatasetResult, TransferReport


def report(name: str, top1: float | None, odds: float, missing: bool = False) -> TransferReport:
    """Two datasets that ran, with mean log-odds ``odds`` (mean accuracy 0.5), and one missing."""
    results = [
        DatasetResult("a", accuracy=0.4, log_odds=odds - 0.3),
        DatasetResult("b", accuracy=0.6, log_odds=odds + 0.3),
    ]
    if missing:
        results.append(DatasetResult.missing("c", "gone"))
    return TransferReport(name, tuple(results), train_top1=top1)


REPORTS = [report("baseline", 0.78, 0.9), report("t-ReX", 0.76, 1.5, missing=True)]
POINTS = [(78.0, 0.9, "baseline"), (76.0, 1.5, "t-ReX (2/3)")]  # x in %, y mean log-odds


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
    nothing_ran = TransferReport("n", (DatasetResult.missing("a", "gone"),), train_top1=0.5)
    with pytest.raises(ValueError, match="model 'n' with train_top1=0.5 and 0 of 1 datasets run"):
        plot_transfer([nothing_ran], tmp_path / "f.png")
    assert list(tmp_path.iterdir()) == []


class _Recorder:
    """Stands in for a matplotlib Figure and its Axes: records every call made to it."""

    def __init__(self, calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]]) -> None:
        self.calls = calls

    def __getattr__(self, name: str) -> Any:
        def record(*args: Any, **kwargs: Any) -> Any:
            self.calls.append((name, args, kwargs))
            if name == "add_subplot":
                return self
            if name == "savefig":
                args[0].write(f"fake {kwargs['format']}".encode())
            return None

        return record


def test_plot_passes_points_labels_and_format_to_matplotlib(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Runs without matplotlib: a recording stand-in shows what would be drawn."""
    calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []
    figure_module = types.ModuleType("matplotlib.figure")
    figure_module.Figure = lambda **kwargs: _Recorder(calls)  # type: ignore[attr-defined]
    agg_module = types.ModuleType("matplotlib.backends.backend_agg")
    agg_module.FigureCanvasAgg = lambda figure: None  # type: ignore[attr-defined]
    for name in ("matplotlib", "matplotlib.backends"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, "matplotlib.figure", figure_module)
    monkeypatch.setitem(sys.modules, "matplotlib.backends.backend_agg", agg_module)

    path = plot_transfer(REPORTS, tmp_path / "transfer.svg", title="demo")
    assert path == tmp_path / "transfer.svg" and path.read_bytes() == b"fake svg"
    drawn = [(name, args) for name, args, _ in calls if name in ("scatter", "annotate")]
    expected: list[tuple[str, tuple[Any, ...]]] = []
    for x, y, label in POINTS:
        xy = (pytest.approx(x), pytest.approx(y))
        expected += [("scatter", ([xy[0]], [xy[1]])), ("annotate", (label, xy))]
    assert drawn == expected
    named = {name: args for name, args, _ in calls}
    assert named["set_xlabel"] == ("training-task top-1 (%)",)
    assert named["set_ylabel"] == ("mean transfer log-odds",)
    assert named["set_title"] == ("demo",)
    calls.clear()
    plot_transfer(REPORTS[:1], tmp_path / "untitled.pdf")
    assert "set_title" not in [name for name, _, _ in calls]
    assert (tmp_path / "untitled.pdf").read_bytes() == b"fake pdf"


def test_plot_writes_labelled_points(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    figure_module = pytest.importorskip("matplotlib.figure")
    figures: list[Any] = []

    class RecordedFigure(figure_module.Figure):  # type: ignore[misc,name-defined]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            figures.append(self)

    monkeypatch.setattr(figure_module, "Figure", RecordedFigure)
    path = plot_transfer(REPORTS, tmp_path / "plots" / "transfer.png", title="demo")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in path.parent.iterdir()] == ["transfer.png"]
    (figure,) = figures
    (axes,) = figure.axes
    offsets = [tuple(c.get_offsets()[0]) for c in axes.collections]
    assert offsets == [pytest.approx((x, y)) for x, y, _ in POINTS]
    texts = [(t.get_text(), tuple(t.xy)) for t in axes.texts]
    assert texts == [(label, pytest.approx((x, y))) for x, y, label in POINTS]
    assert axes.get_xlabel() == "training-task top-1 (%)"
    assert axes.get_ylabel() == "mean transfer log-odds"
    assert axes.get_title() == "demo"
    svg = plot_transfer(REPORTS, tmp_path / "plots" / "transfer.svg")
    assert b"<svg" in svg.read_bytes()[:1000]


def test_tradeoff_points_and_error_bars_reach_matplotlib(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    figure_module = pytest.importorskip("matplotlib.figure")
    figures: list[Any] = []

    class RecordedFigure(figure_module.Figure):  # type: ignore[misc,name-defined]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            figures.append(self)

    monkeypatch.setattr(figure_module, "Figure", RecordedFigure)
    points = [
        TradeoffPoint("baseline", 98.1, 1.10, x_err=0.2, y_err=0.05, runs=3),
        TradeoffPoint("trex", 98.6, 1.37, x_err=0.1, y_err=0.08, runs=3),
    ]
    path = plot_tradeoff(points, tmp_path / "tradeoff.png", title="Fashion-MNIST")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (figure,) = figures
    (axes,) = figure.axes
    assert [t.get_text() for t in axes.texts] == ["baseline (n=3)", "trex (n=3)"]
    assert [tuple(t.xy) for t in axes.texts] == [(98.1, 1.10), (98.6, 1.37)]
    # One errorbar container per point: the data point, then its x and y bars' extents.
    bars = [c for c in axes.containers if c.has_xerr and c.has_yerr]
    assert len(bars) == 2
    for bar, point in zip(bars, points, strict=True):
        line, _, (x_bars, y_bars) = bar.lines
        assert tuple(line.get_xydata()[0]) == pytest.approx((point.x, point.y))
        (x_segment,) = x_bars.get_segments()
        (y_segment,) = y_bars.get_segments()
        assert x_segment[:, 0].tolist() == pytest.approx(
            [point.x - point.x_err, point.x + point.x_err]
        )
        assert y_segment[:, 1].tolist() == pytest.approx(
            [point.y - point.y_err, point.y + point.y_err]
        )
    assert axes.get_xlabel() == "seen-class top-1 (%)" and axes.get_title() == "Fashion-MNIST"


def test_tradeoff_rejects_bad_points(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="points must hold at least one TradeoffPoint"):
        plot_tradeoff([], tmp_path / "f.png")
    with pytest.raises(ValueError, match="point 'p' needs finite x, y and spreads >= 0"):
        TradeoffPoint("p", 90.0, float("nan"))
    with pytest.raises(ValueError, match="point 'q' needs finite x, y and spreads >= 0"):
        TradeoffPoint("q", 90.0, 1.0, x_err=-0.1)
    assert list(tmp_path.iterdir()) == []
