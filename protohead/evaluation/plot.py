"""Training-task top-1 against mean transfer log-odds, one labelled point per model.

This is the headline figure of Sariyildiz et al., "No Reason for No Supervision" (ICLR 2023):
models that trade a little training-task accuracy for much better transfer sit up and to the
left. :func:`plot_transfer` draws it from transfer reports, :func:`plot_tradeoff` from points
that carry a spread (e.g. means and standard deviations over training seeds) as error bars.
Needs the optional dependency matplotlib (``pip install matplotlib``); only matplotlib's
object-oriented API is used, so no global pyplot state or backend is changed.
"""

from __future__ import annotations

import importlib
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from protohead.atomic_files import atomic_write
from protohead.evaluation.report import TransferReport

__all__ = ["TradeoffPoint", "plot_tradeoff", "plot_transfer"]


def plot_transfer(
    reports: Sequence[TransferReport], path: str | os.PathLike[str], *, title: str | None = None
) -> Path:
    """Scatter-plot ``train_top1`` (x, %) against the mean transfer log-odds (y) of each model.

    A point's label is the model name, followed by ``(k/n)`` when only ``k`` of its ``n``
    requested datasets ran, so partial means stay visible. The file is written atomically;
    its format follows the suffix (``.png``, ``.pdf``, ``.svg``).

    Args:
        reports: One report per model, each with ``train_top1`` and at least one dataset run.
        path: Output image file.
        title: Figure title.

    Returns:
        The path written.

    Raises:
        ImportError: If matplotlib is not installed.
        ValueError: If ``reports`` is empty, or a report lacks ``train_top1`` or has no
            dataset that ran.

    Example:
        >>> plot_transfer([], "transfer.png")
        Traceback (most recent call last):
        ...
        ValueError: reports must hold at least one TransferReport, got none
    """
    if not reports:
        raise ValueError("reports must hold at least one TransferReport, got none")
    points = []
    for report in reports:
        summary = report.summary()
        if report.train_top1 is None or summary["mean_log_odds"] is None:
            raise ValueError(
                f"every report needs train_top1 and a dataset that ran, got model "
                f"{report.model!r} with train_top1={report.train_top1} and "
                f"{summary['datasets_ran']} datasets run"
            )
        label = report.model
        if not summary["complete"]:
            label += f" ({summary['num_ran']}/{summary['num_requested']})"
        points.append((100 * report.train_top1, float(summary["mean_log_odds"]), label))
    figure, axes = _figure("plot_transfer")
    for x, y, label in points:
        axes.scatter([x], [y])
        axes.annotate(label, (x, y), textcoords="offset points", xytext=(5, 5))
    axes.set_xlabel("training-task top-1 (%)")
    axes.set_ylabel("mean transfer log-odds")
    return _save(figure, axes, path, title)


def _figure(caller: str) -> tuple[Any, Any]:
    """A matplotlib Figure with an Agg canvas and its one Axes (no pyplot)."""
    try:
        figure_module = importlib.import_module("matplotlib.figure")
        agg_module = importlib.import_module("matplotlib.backends.backend_agg")
    except ImportError as err:
        raise ImportError(
            f"{caller} needs the optional dependency matplotlib; "
            "install it with `pip install matplotlib`"
        ) from err
    figure = figure_module.Figure(figsize=(5.0, 4.0), layout="constrained")
    agg_module.FigureCanvasAgg(figure)
    return figure, figure.add_subplot()


def _save(
    figure: Any, axes: Any, path: str | os.PathLike[str], title: str | None, margin: float = 0.2
) -> Path:
    axes.grid(True, alpha=0.3)
    axes.margins(margin)  # room for the labels of the outermost points
    if title is not None:
        axes.set_title(title)
    target = Path(path)
    # A file object carries no name, so the format comes from the target's suffix (as it
    # would for a path); no suffix gives matplotlib's default format.
    with atomic_write(target, "wb") as handle:
        figure.savefig(handle, format=target.suffix.lstrip(".") or None)
    return target


@dataclass(frozen=True)
class TradeoffPoint:
    """One model (or preset) in :func:`plot_tradeoff`: a position and its spread.

    Attributes:
        label: Name next to the point.
        x: Training-task (seen-class) top-1, in percent.
        y: Transfer (unseen-class) log-odds.
        x_err: Spread of ``x`` (e.g. the standard deviation over training seeds), ``>= 0``.
        y_err: Spread of ``y``, ``>= 0``.
        runs: How many runs the point averages, shown in the label when more than one.

    Example:
        >>> TradeoffPoint("trex", 98.6, 1.31, 0.1, 0.05, runs=3).text
        'trex (n=3)'
    """

    label: str
    x: float
    y: float
    x_err: float = 0.0
    y_err: float = 0.0
    runs: int = 1

    def __post_init__(self) -> None:
        values = {"x": self.x, "y": self.y, "x_err": self.x_err, "y_err": self.y_err}
        bad = {k: v for k, v in values.items() if not math.isfinite(v)}
        if bad or self.x_err < 0 or self.y_err < 0:
            raise ValueError(
                f"point {self.label!r} needs finite x, y and spreads >= 0, got {values}"
            )

    @property
    def text(self) -> str:
        """The label drawn next to the point."""
        return self.label if self.runs <= 1 else f"{self.label} (n={self.runs})"


def plot_tradeoff(
    points: Sequence[TradeoffPoint],
    path: str | os.PathLike[str],
    *,
    xlabel: str = "seen-class top-1 (%)",
    ylabel: str = "unseen-class log-odds",
    title: str | None = None,
) -> Path:
    """Seen-task top-1 (x) against transfer log-odds (y), with error bars in both directions.

    The figure of the paper's Figure 1, for small studies: one point per preset, the error
    bars showing the spread over training seeds, so that a gap smaller than the spread is
    visibly not one. The file is written atomically, its format from the suffix.

    Args:
        points: One :class:`TradeoffPoint` per model.
        path: Output image file (``.png``, ``.pdf``, ``.svg``).
        xlabel: x-axis label.
        ylabel: y-axis label.
        title: Figure title.

    Returns:
        The path written.

    Raises:
        ImportError: If matplotlib is not installed.
        ValueError: If ``points`` is empty.

    Example:
        >>> plot_tradeoff([], "tradeoff.png")
        Traceback (most recent call last):
        ...
        ValueError: points must hold at least one TradeoffPoint, got none
    """
    if not points:
        raise ValueError("points must hold at least one TradeoffPoint, got none")
    figure, axes = _figure("plot_tradeoff")
    for point in points:
        axes.errorbar(
            [point.x], [point.y], xerr=[point.x_err], yerr=[point.y_err], fmt="o", capsize=3
        )
        axes.annotate(point.text, (point.x, point.y), textcoords="offset points", xytext=(5, 5))
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    return _save(figure, axes, path, title, margin=0.3)  # labels also clear the error bars
