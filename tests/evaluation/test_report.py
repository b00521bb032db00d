"""Tests for protohead.evaluation.report."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from protohead.evaluation.report import (
    DatasetResult,
    TransferReport,
    format_table,
    read_json,
    write_json,
)
from protohead.evaluation.search import ProbeResult, SearchConfig, SeedResult, linear_probe


def sample_report() -> TransferReport:
    return TransferReport(
        model="resnet50 (t-ReX)",
        datasets=(
            DatasetResult("aircraft", accuracy=0.6, accuracy_std=0.01, log_odds=0.405,
                          seeds=(0, 1), seed_accuracies=(0.59, 0.61), best_c=(1.0, 2.0),
                          val_accuracies=(0.5, 0.5), num_trainval=10, num_test=5, num_classes=2),
            DatasetResult.missing("cars", "cars: files not found under 'data'"),
            DatasetResult("dtd", accuracy=0.8, accuracy_std=0.0, log_odds=1.386, best_c=(0.1,),
                          num_trainval=8, num_test=4, num_classes=2),
        ),
        train_top1=0.76,
        settings={"seeds": [0, 1]},
    )  # fmt: skip


def test_mean_is_over_datasets_that_ran_with_explicit_denominator() -> None:
    summary = sample_report().summary()
    assert summary["mean_accuracy"] == pytest.approx(0.7)
    assert summary["mean_log_odds"] == pytest.approx((0.405 + 1.386) / 2)
    assert summary["datasets_ran"] == "2 of 3"
    assert (summary["num_ran"], summary["num_requested"]) == (2, 3)
    assert summary["missing"] == ["cars"] and summary["complete"] is False


def test_nothing_ran() -> None:
    summary = TransferReport("m", (DatasetResult.missing("a", "gone"),)).summary()
    assert summary["mean_log_odds"] is None and summary["datasets_ran"] == "0 of 1"
    with pytest.raises(ValueError, match="reason must be a non-empty string"):
        DatasetResult.missing("a", "")


def test_table_lists_missing_and_mean_denominator() -> None:
    table = format_table(sample_report())
    lines = table.splitlines()
    assert lines[0] == "model: resnet50 (t-ReX)"
    assert "training-task top-1: 76.00%" in table
    assert any(line.startswith("cars") and "MISSING" in line and "files not found" in line
               for line in lines)  # fmt: skip
    assert any(
        line.startswith("aircraft") and "60.00" in line and "0.405" in line for line in lines
    )
    assert any(line.startswith("mean (2 of 3)") and "70.00" in line for line in lines)
    assert lines[-1] == "not in the mean (missing): cars"


def test_json_round_trip_and_atomic(tmp_path: Path) -> None:
    report = sample_report()
    path = write_json(report, tmp_path / "out" / "report.json")
    assert [p.name for p in path.parent.iterdir()] == ["report.json"]
    data = json.loads(path.read_text())
    assert data["summary"]["datasets_ran"] == "2 of 3"
    assert [d["status"] for d in data["datasets"]] == ["ok", "missing", "ok"]
    assert read_json(path) == report
    (tmp_path / "other.json").write_text('{"format": "something-else"}')
    with pytest.raises(ValueError, match="must be a 'protohead.transfer-report/1' report"):
        read_json(tmp_path / "other.json")


def assert_matches_probe(result: DatasetResult, probe: ProbeResult) -> None:
    assert result.ran and not result.failed and result.status == "ok"
    assert (result.accuracy, result.accuracy_std, result.log_odds) == (
        probe.accuracy,
        probe.accuracy_std,
        probe.log_odds,
    )
    assert result.seeds == tuple(s.seed for s in probe.seeds)
    assert result.seed_accuracies == tuple(s.test_accuracy for s in probe.seeds)
    assert result.val_accuracies == tuple(s.val_accuracy for s in probe.seeds)
    assert result.best_c == tuple(s.best_c for s in probe.seeds)
    assert result.stop_reasons == tuple(s.stop_reason for s in probe.seeds)
    assert result.converged is all(s.converged for s in probe.seeds)


def test_from_probe_copies_per_seed_values() -> None:
    # Every per-seed value distinct, so a swapped field or a repeated seed cannot pass.
    probe = ProbeResult(
        seeds=(
            SeedResult(7, best_c=0.5, val_accuracy=0.61, test_accuracy=0.71, trials=((0.5, 0.61),),
                       converged=True, stop_reason="gtol"),
            SeedResult(3, best_c=8.0, val_accuracy=0.62, test_accuracy=0.73, trials=((8.0, 0.62),),
                       converged=False, stop_reason="max_iter"),
        ),
        accuracy=0.72,
        accuracy_std=0.01,
        log_odds=0.944,
    )  # fmt: skip
    result = DatasetResult.from_probe("toy", probe, num_trainval=40, num_test=30, num_classes=2)
    assert result.name == "toy" and result.missing_reason is None
    assert (result.num_trainval, result.num_test, result.num_classes) == (40, 30, 2)
    assert result.seeds == (7, 3)
    assert result.seed_accuracies == (0.71, 0.73) and result.val_accuracies == (0.61, 0.62)
    assert result.best_c == (0.5, 8.0) and result.stop_reasons == ("gtol", "max_iter")
    assert result.converged is False  # one seed's final fit did not converge
    assert (result.accuracy, result.accuracy_std, result.log_odds) == (0.72, 0.01, 0.944)
    assert_matches_probe(result, probe)
    converged = dataclasses.replace(
        probe, seeds=tuple(dataclasses.replace(s, converged=True) for s in probe.seeds)
    )
    assert DatasetResult.from_probe("toy", converged, num_trainval=40, num_test=30,
                                    num_classes=2).converged is True  # fmt: skip


def test_from_probe_of_a_real_linear_probe() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.cat([torch.randn(20, 2, generator=g) - 3, torch.randn(20, 2, generator=g) + 3])
    y = torch.arange(2).repeat_interleave(20)
    cfg = SearchConfig(c_min=0.1, c_max=10.0, grid_points=3, refine_steps=0)
    probe = linear_probe(x, y, x, y, seeds=(4, 5), config=cfg)
    result = DatasetResult.from_probe("toy", probe, num_trainval=40, num_test=40, num_classes=2)
    assert result.seeds == (4, 5) and len(result.best_c) == 2
    assert_matches_probe(result, probe)


def test_failed_dataset_is_listed_apart_from_missing(tmp_path: Path) -> None:
    report = TransferReport(
        "m",
        (
            DatasetResult("dtd", accuracy=0.8, log_odds=1.386, best_c=(0.1,), converged=False,
                          stop_reasons=("max_iter",), num_trainval=8, num_test=4),
            DatasetResult.missing("cars", "cars: files not found"),
            DatasetResult.failure("pets", "pets: UnidentifiedImageError: cannot identify x.jpg"),
        ),
    )  # fmt: skip
    summary = report.summary()
    assert (summary["missing"], summary["failed"]) == (["cars"], ["pets"])
    assert summary["datasets_ran"] == "1 of 3" and summary["complete"] is False
    assert summary["not_converged"] == ["dtd"]
    lines = format_table(report).splitlines()
    assert any(
        line.startswith("pets") and "FAILED" in line and "cannot identify x.jpg" in line
        for line in lines
    )
    assert lines[-3:] == [
        "not in the mean (missing): cars",
        "not in the mean (failed): pets",
        "final fit did not converge (raise --max-iter): dtd",
    ]
    path = write_json(report, tmp_path / "r.json")
    entries = json.loads(path.read_text())["datasets"]
    assert [d["status"] for d in entries] == ["ok", "missing", "failed"]
    assert (entries[0]["converged"], entries[0]["stop_reasons"]) == (False, ["max_iter"])
    assert read_json(path) == report
    with pytest.raises(ValueError, match="reason must be a non-empty string"):
        DatasetResult.failure("pets", "")


def test_reports_without_the_new_fields_still_read(tmp_path: Path) -> None:
    data = TransferReport("m", (DatasetResult("a", accuracy=0.5, log_odds=0.0),)).to_dict()
    for entry in data["datasets"]:
        for key in ("failed", "converged", "stop_reasons"):
            del entry[key]
    (tmp_path / "old.json").write_text(json.dumps(data))
    (entry,) = read_json(tmp_path / "old.json").datasets
    assert entry.ran and entry.converged is None and entry.stop_reasons == ()


def test_read_json_names_the_file_it_cannot_read(tmp_path):
    for name, text, match in (
        ("bad.json", "{not json", r"bad.json is not a JSON transfer report"),
        ("list.json", "[1, 2]", r"list.json is not a transfer report \(a JSON list\)"),
        ("other.json", '{"format": "x"}', r"other.json: data must be a .* report, got format 'x'"),
    ):
        (tmp_path / name).write_text(text)
        with pytest.raises(ValueError, match=match):
            read_json(tmp_path / name)
