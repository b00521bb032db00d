"""End-to-end tests for protohead.evaluation.cli (``python -m protohead.evaluation``)."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torchvision

from protohead.evaluation import fashion_mnist
from protohead.evaluation.cli import main
from protohead.model import TReX

FAST = ["--resize", "32", "--crop", "32", "--seeds", "0", "1", "--grid-points", "5",
        "--refine-steps", "1", "--c-min", "1e-4", "--c-max", "1e2", "--no-progress"]  # fmt: skip
FAKE = ["--dataset", "fake", "--fake-trainval", "40", "--fake-test", "20", "--fake-classes", "4",
        "--fake-image-size", "16"]  # fmt: skip


def test_fakedata_end_to_end_then_cache_hit(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    out, cache, weights = tmp_path / "report.json", tmp_path / "cache", tmp_path / "r18.pth"
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18().state_dict(), weights)
    argv = ["--arch", "resnet18", "--weights", str(weights), *FAKE, *FAST,
            "--cache-dir", str(cache), "--output", str(out)]  # fmt: skip
    run = subprocess.run(
        [sys.executable, "-m", "protohead.evaluation", *argv],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    assert "mean (1 of 1)" in run.stdout
    assert run.stdout.splitlines()[0] == "model: resnet18 (r18)"
    report = json.loads(out.read_text())
    (entry,) = report["datasets"]
    assert entry["name"] == "fake" and entry["status"] == "ok"
    assert (entry["num_trainval"], entry["num_test"], entry["num_classes"]) == (40, 20, 4)
    assert entry["seeds"] == [0, 1] and 0.0 <= entry["accuracy"] <= 1.0
    assert report["summary"]["complete"] is True
    assert len(list(cache.glob("*.pt"))) == 2

    with caplog.at_level(logging.INFO, logger="protohead.evaluation"):
        assert main([*argv, "-q"]) == 0
    assert caplog.text.count("feature cache hit") == 2
    assert json.loads(out.read_text())["datasets"][0]["accuracy"] == entry["accuracy"]


def test_fashion_mnist_unseen_classes_end_to_end(tmp_path: Path, fake_fashion_mnist: Path) -> None:
    out = tmp_path / "fm.json"
    argv = ["--arch", "resnet18", "--small-input-stem", "--dataset", "fashion-mnist",
            "--fashion-mnist-classes", "5-9", "--max-per-class", "12",
            *FAST, "--no-cache", "--output", str(out), "--train-top1", "0.9", "-q"]  # fmt: skip
    if not Path(fashion_mnist.DEFAULT_FASHION_MNIST_DIR).is_dir():  # real data when installed
        argv += ["--fashion-mnist-root", str(fake_fashion_mnist)]
    assert main(argv) == 0
    report = json.loads(out.read_text())
    (entry,) = report["datasets"]
    assert entry["name"] == "fashion-mnist[5-9]" and entry["num_classes"] == 5
    assert (entry["num_trainval"], entry["num_test"]) == (60, 60)
    assert entry["accuracy"] > 0.4  # chance is 0.2
    assert report["train_top1"] == 0.9


def test_missing_dataset_is_reported_and_exit_code_3(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "r.json"
    argv = ["--arch", "resnet18", *FAKE, "--dataset", "dtd", "--data-root", str(tmp_path),
            *FAST, "--no-cache", "--output", str(out), "-q"]  # fmt: skip
    assert main(argv) == 3
    stdout = capsys.readouterr().out
    assert "mean (1 of 2)" in stdout and "not in the mean (missing): dtd" in stdout
    summary = json.loads(out.read_text())["summary"]
    assert summary["missing"] == ["dtd"] and summary["datasets_ran"] == "1 of 2"


def test_protohead_checkpoint(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = TReX("resnet18", num_classes=3, projector_hidden_dim=16, projector_out_dim=8,
                 memory_size=8, small_input_stem=True)  # fmt: skip
    ckpt = tmp_path / "trex_fmnist.pth"
    args = {"arch": "resnet18", "small_input_stem": True, "train_top1": 0.8}
    torch.save({"model": model.state_dict(), "args": args}, ckpt)
    out = tmp_path / "c.json"
    argv = ["--checkpoint", str(ckpt), *FAKE, *FAST, "--no-cache", "--output", str(out), "-q"]
    assert main(argv) == 0
    report = json.loads(out.read_text())
    assert report["model"] == "trex_fmnist" and report["train_top1"] == 0.8


def test_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--arch", "resnet18", "--checkpoint", "x.pth"])
    assert exit_info.value.code == 2
    with pytest.raises(SystemExit):
        main(["--arch", "resnet18", *FAKE, "--train-top1", "76.5", "--output", str(tmp_path / "r")])
    assert "--train-top1 must be a fraction in [0, 1], got 76.5" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--checkpoint", str(tmp_path / "missing.pth"), *FAKE])
    assert "does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["plot", str(tmp_path / "missing.json"), "--out", str(tmp_path / "f.png")])
