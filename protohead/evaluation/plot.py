"""Training-task top-1 against mean transfer log-odds, one labelled point per model.

This is the headline figure of Sariyildiz et al., "No Reason for No Supervision" (ICLR 2023):
models that trade a little training-task accuracy for much better transfer sit up and to the
left. Needs the optional dependency matplotlib (``pip install matplotlib``); only matplotlib's
object-oriented API is used, so no global pyplot state or backend is changed.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Sequence
from pathlib import Path

from protohead.atomic_files import atomic_write
from protohead.evaluation.report import TransferReport

__all__ = ["plot_transfer"]


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
    try:
        figure_module = importlib.import_module("matplotlib.figure")
        agg_module = importlib.import_module("matplotlib.backends.backend_agg")
    except ImportError as err:
        raise ImportError(
            "plot_transfer needs the optional dependency matplotlib; "
            "install it with `pip install matplotlib`"
        ) from err

    figure = figure_module.Figure(figsize=(5.0, 4.0), layout="constrained")
    agg_module.FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for x, y, label in points:
        axes.scatter([x], [y])
        axes.annotate(label, (x, y), textcoords="offset points", xytext=(5, 5))
    axes.set_xlabel("training-task top-1 (%)")
    axes.set_ylabel("mean transfer log-odds")
    axes.grid(True, alpha=0.3)
    axes.margins(0.2)  # room for the labels of the outermost points
    if title is not None:
        axes.set_title(title)

    target = Path(path)
    # A file object carries no name, so the format comes from the target's suffix (as it
    # would for a path); no suffix gives matplotlib's default format.
    with atomic_write(target, "wb") as handle:
        figure.savefig(handle, format=target.suffix.lstrip(".") or None)
    return target
