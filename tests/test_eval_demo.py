"""End-to-end test of examples/eval_demo.py on a fabricated Fashion-MNIST (tiny CPU runs)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from protohead.evaluation.metrics import log_odds

ROOT = Path(__file__).resolve().parents[1]


def _load_demo():
    spec = importlib.util.spec_from_file_location("eval_demo", ROOT / "examples" / "eval_demo.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_demo_trains_both_presets_on_seen_classes_and_probes_unseen_ones(
    tmp_path: Path, fake_fashion_mnist: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    demo = _load_demo()
    data = fake_fashion_mnist
    argv = ["--data-root", str(data), "--output-dir", str(tmp_path / "out"), "--epochs", "1",
            "--batch-size", "8", "--max-steps-per-epoch", "2", "--max-per-class", "10",
            "--seeds", "0", "1", "--threads", "1"]  # fmt: skip
    args = demo.get_args_parser().parse_args(argv)
    rows = demo.main(args)
    assert [r["preset"] for r in rows] == ["baseline", "trex"]
    for row in rows:
        # Seen-class accuracy comes from the checkpoint; the probe saw only unseen classes.
        assert 0.0 <= row["seen_top1"] <= 1.0
        # The fake images' brightness encodes the class, so even a barely trained backbone's
        # features separate the unseen classes (100% and 92% here; chance is 20%).
        assert row["unseen_top1"] > 0.6
        report = json.loads((tmp_path / "out" / row["preset"] / "transfer.json").read_text())
        (entry,) = report["datasets"]
        assert entry["name"] == "fashion-mnist[5-9]" and entry["num_classes"] == 5
        assert (entry["num_trainval"], entry["num_test"]) == (50, 50)
        assert entry["seeds"] == [0, 1]
        assert row["unseen_top1"] == entry["accuracy"]
        assert entry["accuracy"] == pytest.approx(sum(entry["seed_accuracies"]) / 2)
        assert row["unseen_top1_std"] == entry["accuracy_std"]
        assert (
            row["unseen_log_odds"]
            == entry["log_odds"]
            == pytest.approx(log_odds(entry["accuracy"]))
        )
        assert row["seen_top1"] == report["train_top1"]
        ckpt = torch.load(row["checkpoint"], map_location="cpu", weights_only=False)
        assert list(ckpt["args"]["classes"]) == [0, 1, 2, 3, 4]
        assert report["train_top1"] == pytest.approx(ckpt["metrics"]["val_top1"] / 100)
    saved = json.loads((tmp_path / "out" / "eval_demo.json").read_text())
    assert saved["rows"] == rows
    table = capsys.readouterr().out
    assert "| baseline |" in table and "| trex |" in table and "log-odds" in table
