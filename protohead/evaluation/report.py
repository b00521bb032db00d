"""Transfer report: per-dataset top-1 and log-odds, their mean, a table and a JSON file.

Sariyildiz et al. (ICLR 2023) summarise transfer by the mean log-odds of the linear-probe test
top-1 over the transfer datasets. The mean here is over the datasets that ran; a dataset that
could not be evaluated is kept in the report with its reason, as *missing* (its files are not
there) or *failed* (it raised an error while being evaluated), and the mean always states its
denominator ("mean over 6 of 8 datasets"), so a partial mean is never mistaken for the full one.
Each dataset that ran records whether the final fit of every seed converged.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import statistics
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from protohead.atomic_files import atomic_write
from protohead.evaluation.search import ProbeResult

__all__ = ["DatasetResult", "TransferReport", "format_table", "read_json", "write_json"]

_FORMAT = "protohead.transfer-report/1"


@dataclass(frozen=True)
class DatasetResult:
    """One dataset's outcome; ``missing_reason`` is set exactly when it did not run.

    Attributes:
        name: Dataset name.
        accuracy: Mean test top-1 over seeds (fraction), ``None`` when missing.
        accuracy_std: Population std of the per-seed top-1.
        log_odds: Log-odds of ``accuracy``.
        seeds: Seeds run.
        seed_accuracies: Test top-1 per seed.
        best_c: Selected ``C`` per seed.
        val_accuracies: Validation accuracy at ``best_c`` per seed.
        num_trainval: Trainval size.
        num_test: Test size.
        num_classes: Number of classes.
        missing_reason: Why the dataset did not run (for a failed one, the error message).
        failed: The dataset raised an error while being evaluated (rather than being missing).
        converged: Whether the final trainval fit of every seed converged; ``None`` when the
            dataset did not run (or for reports written before this field existed).
        stop_reasons: Why each seed's final fit stopped (``"gtol"``, ``"ftol"``,
            ``"max_iter"`` or ``"line_search"``).

    Example:
        >>> DatasetResult("dtd", accuracy=0.7, log_odds=0.847).ran
        True
        >>> DatasetResult.missing("cars", "no files").ran
        False
        >>> DatasetResult.failure("pets", "pets: OSError: cannot identify image file").failed
        True
    """

    name: str
    accuracy: float | None = None
    accuracy_std: float | None = None
    log_odds: float | None = None
    seeds: tuple[int, ...] = ()
    seed_accuracies: tuple[float, ...] = ()
    best_c: tuple[float, ...] = ()
    val_accuracies: tuple[float, ...] = ()
    num_trainval: int | None = None
    num_test: int | None = None
    num_classes: int | None = None
    missing_reason: str | None = None
    failed: bool = False
    converged: bool | None = None
    stop_reasons: tuple[str, ...] = ()

    @property
    def ran(self) -> bool:
        """Whether the dataset was evaluated."""
        return self.missing_reason is None

    @classmethod
    def from_probe(
        cls, name: str, probe: ProbeResult, *, num_trainval: int, num_test: int, num_classes: int
    ) -> DatasetResult:
        """Result of a :func:`~protohead.evaluation.search.linear_probe` run."""
        return cls(
            name=name,
            accuracy=probe.accuracy,
            accuracy_std=probe.accuracy_std,
            log_odds=probe.log_odds,
            seeds=tuple(s.seed for s in probe.seeds),
            seed_accuracies=tuple(s.test_accuracy for s in probe.seeds),
            best_c=tuple(s.best_c for s in probe.seeds),
            val_accuracies=tuple(s.val_accuracy for s in probe.seeds),
            num_trainval=num_trainval,
            num_test=num_test,
            num_classes=num_classes,
            converged=all(s.converged for s in probe.seeds),
            stop_reasons=tuple(s.stop_reason for s in probe.seeds),
        )

    @classmethod
    def missing(cls, name: str, reason: str) -> DatasetResult:
        """A dataset that could not be evaluated.

        Raises:
            ValueError: If ``reason`` is empty.
        """
        if not reason:
            raise ValueError(f"reason must be a non-empty string, got {reason!r}")
        return cls(name=name, missing_reason=reason)

    @classmethod
    def failure(cls, name: str, reason: str) -> DatasetResult:
        """A dataset whose evaluation raised an error; ``reason`` is the error message.

        Raises:
            ValueError: If ``reason`` is empty.
        """
        return dataclasses.replace(cls.missing(name, reason), failed=True)

    @property
    def status(self) -> str:
        """``"ok"``, ``"missing"`` or ``"failed"``."""
        if self.ran:
            return "ok"
        return "failed" if self.failed else "missing"


@dataclass(frozen=True)
class TransferReport:
    """All datasets of one model.

    Args:
        model: Label of the model (shown in tables and plots).
        datasets: Results in the order requested, missing ones included.
        train_top1: Top-1 on the model's training task (fraction), for the plot.
        settings: Free-form run settings stored in the JSON (seeds, search grid, ...).

    Example:
        >>> report = TransferReport("demo", (
        ...     DatasetResult("a", accuracy=0.5, log_odds=0.0),
        ...     DatasetResult.missing("b", "no files")))
        >>> report.summary()["mean_log_odds"], report.summary()["datasets_ran"]
        (0.0, '1 of 2')
    """

    model: str
    datasets: tuple[DatasetResult, ...]
    train_top1: float | None = None
    settings: Mapping[str, Any] = field(default_factory=dict)

    @property
    def ran(self) -> tuple[DatasetResult, ...]:
        """Datasets that were evaluated."""
        return tuple(d for d in self.datasets if d.ran)

    @property
    def missing(self) -> tuple[DatasetResult, ...]:
        """Datasets that were requested but not found (failed ones excluded)."""
        return tuple(d for d in self.datasets if d.status == "missing")

    @property
    def failed(self) -> tuple[DatasetResult, ...]:
        """Datasets whose evaluation raised an error."""
        return tuple(d for d in self.datasets if d.failed)

    def summary(self) -> dict[str, Any]:
        """Means over the datasets that ran, with the denominator spelled out.

        Returns:
            ``mean_accuracy`` and ``mean_log_odds`` (``None`` if nothing ran), ``num_ran``,
            ``num_requested``, ``datasets_ran`` (``"k of n"``), ``missing`` and ``failed``
            (names), ``not_converged`` (names of datasets with an unconverged final fit) and
            ``complete`` (every dataset ran).
        """
        ran = self.ran
        accuracies = [d.accuracy for d in ran if d.accuracy is not None]
        odds = [d.log_odds for d in ran if d.log_odds is not None]
        return {
            "mean_accuracy": statistics.fmean(accuracies) if accuracies else None,
            "mean_log_odds": statistics.fmean(odds) if odds else None,
            "num_ran": len(ran),
            "num_requested": len(self.datasets),
            "datasets_ran": f"{len(ran)} of {len(self.datasets)}",
            "missing": [d.name for d in self.missing],
            "failed": [d.name for d in self.failed],
            "not_converged": [d.name for d in ran if d.converged is False],
            "complete": len(ran) == len(self.datasets),
        }

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary (see :func:`write_json`)."""
        return {
            "format": _FORMAT,
            "model": self.model,
            "train_top1": self.train_top1,
            "settings": dict(self.settings),
            "summary": self.summary(),
            "datasets": [{"status": d.status, **asdict(d)} for d in self.datasets],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TransferReport:
        """Inverse of :meth:`to_dict`.

        Raises:
            ValueError: If ``data`` is not a protohead transfer report.
        """
        if data.get("format") != _FORMAT:
            raise ValueError(
                f"data must be a {_FORMAT!r} report, got format {data.get('format')!r}"
            )
        results = []
        for entry in data["datasets"]:
            values = {k: v for k, v in entry.items() if k != "status"}
            for key in ("seeds", "seed_accuracies", "best_c", "val_accuracies", "stop_reasons"):
                values[key] = tuple(values.get(key, ()))
            results.append(DatasetResult(**values))
        return cls(data["model"], tuple(results), data.get("train_top1"), data.get("settings", {}))


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}"


def _input_lines(settings: Mapping[str, Any]) -> list[str]:
    """``input: Resize(r) -> CenterCrop(c) (<where c came from>)``, when the settings say."""
    transform, origin = settings.get("transform"), settings.get("transform_origin")
    if not isinstance(transform, Mapping) or not {"resize", "crop"} <= set(transform):
        return []
    line = f"input: Resize({transform['resize']}) -> CenterCrop({transform['crop']})"
    if isinstance(origin, Mapping) and "crop" in origin:
        line += f", crop from {origin['crop']}"
    if isinstance(origin, Mapping) and "stats" in origin:
        line += f"; normalisation from {origin['stats']}"
    return [line]


def format_table(report: TransferReport) -> str:
    """Plain-text table: one row per dataset (missing and failed ones with their reason), the mean.

    Example:
        >>> report = TransferReport("demo", (DatasetResult("a", accuracy=0.9, log_odds=2.1972,
        ...     accuracy_std=0.0, best_c=(1.0,), num_trainval=10, num_test=5),))
        >>> print(format_table(report).splitlines()[-1])
        mean (1 of 1)                90.00             2.197
    """
    lines = [f"model: {report.model}"]
    if report.train_top1 is not None:
        lines.append(f"training-task top-1: {_pct(report.train_top1)}%")
    lines += _input_lines(report.settings)
    header = f"{'dataset':<24}{'top-1 %':>10}{'± std':>8}{'log-odds':>10}{'best C':>11}  sizes"
    lines += [header, "-" * len(header)]
    for d in report.datasets:
        if not d.ran:
            lines.append(f"{d.name:<24}{d.status.upper():>10}  {d.missing_reason}")
            continue
        c = f"{statistics.median(d.best_c):.2g}" if d.best_c else "-"
        odds = "-" if d.log_odds is None else f"{d.log_odds:.3f}"
        sizes = f"{d.num_trainval}/{d.num_test}"
        lines.append(
            f"{d.name:<24}{_pct(d.accuracy):>10}{_pct(d.accuracy_std):>8}{odds:>10}{c:>11}  {sizes}"
        )
    lines.append("-" * len(header))
    s = report.summary()
    mean_odds = "-" if s["mean_log_odds"] is None else f"{s['mean_log_odds']:.3f}"
    label = f"mean ({s['datasets_ran']})"
    lines.append(f"{label:<24}{_pct(s['mean_accuracy']):>10}{'':>8}{mean_odds:>10}")
    if s["missing"]:
        lines.append(f"not in the mean (missing): {', '.join(s['missing'])}")
    if s["failed"]:
        lines.append(f"not in the mean (failed): {', '.join(s['failed'])}")
    if s["not_converged"]:
        lines.append(
            f"final fit did not converge (raise --max-iter): {', '.join(s['not_converged'])}"
        )
    return "\n".join(line.rstrip() for line in lines)


def _json_default(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return str(value)


def write_json(report: TransferReport, path: str | os.PathLike[str]) -> Path:
    """Write :meth:`TransferReport.to_dict` as JSON, atomically (temp file + ``os.replace``).

    Returns:
        The path written.

    Example:
        >>> import tempfile
        >>> report = TransferReport("demo", (DatasetResult("dtd", accuracy=0.7, log_odds=0.847),))
        >>> path = write_json(report, Path(tempfile.mkdtemp()) / "report.json")
        >>> read_json(path) == report
        True
    """
    target = Path(path)
    with atomic_write(target, "w") as handle:
        json.dump(report.to_dict(), handle, indent=2, default=_json_default)
        handle.write("\n")
    return target


def read_json(path: str | os.PathLike[str]) -> TransferReport:
    """Read a report written by :func:`write_json`.

    Raises:
        FileNotFoundError: If ``path`` does not exist.
        ValueError: If the file is not a protohead transfer report.

    Example:
        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp()) / "r.json"
        >>> _ = write_json(TransferReport("m", (DatasetResult.missing("a", "gone"),)), path)
        >>> read_json(path).summary()["datasets_ran"]
        '0 of 1'
    """
    with open(path) as handle:
        try:
            data = json.load(handle)
        except json.JSONDecodeError as err:
            raise ValueError(f"{os.fspath(path)} is not a JSON transfer report: {err}") from err
    if not isinstance(data, Mapping):
        kind = type(data).__name__
        raise ValueError(f"{os.fspath(path)} is not a transfer report (a JSON {kind})")
    try:
        return TransferReport.from_dict(data)
    except ValueError as err:
        raise ValueError(f"{os.fspath(path)}: {err}") from err
