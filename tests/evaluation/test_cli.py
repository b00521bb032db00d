"""End-to-end tests for protohead.evaluation.cli (``python -m protohead.evaluation``)."""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import torchvision
from PIL import Image

from protohead.data import fashion_mnist
from protohead.evaluation import cli, plot, sources
from protohead.evaluation.cli import main
from protohead.evaluation.datasets import TransferDataset
from protohead.evaluation.features import IMAGENET_MEAN
from protohead.evaluation.metrics import log_odds
from protohead.evaluation.report import DatasetResult, TransferReport, read_json, write_json
from protohead.evaluation.search import SearchConfig, linear_probe
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
    assert run.stdout.splitlines()[0] == "model: resnet18 (r18.pth)"
    # The resolution and normalisation used, and where they came from, are in the report.
    assert "input: Resize(32) -> CenterCrop(32), crop from --crop" in run.stdout
    report = json.loads(out.read_text())
    (entry,) = report["datasets"]
    assert entry["name"] == "fake" and entry["status"] == "ok"
    assert (entry["num_trainval"], entry["num_test"], entry["num_classes"]) == (40, 20, 4)
    assert entry["seeds"] == [0, 1] and report["summary"]["complete"] is True
    assert len(list(cache.glob("*.pt"))) == 2
    # FakeData has random labels, so no accuracy level can be asserted; instead the reported
    # values must be the probe's own on the cached features with the stated settings.
    (trainval,) = [torch.load(f, weights_only=True) for f in cache.glob("fake-trainval-*.pt")]
    (test,) = [torch.load(f, weights_only=True) for f in cache.glob("fake-test-*.pt")]
    assert trainval["features"].shape == (40, 512) and test["features"].shape == (20, 512)
    fake_test = torchvision.datasets.FakeData(20, (3, 16, 16), 4, random_offset=10**6)
    assert test["labels"].tolist() == [fake_test[i][1] for i in range(20)]
    search = report["settings"]["search"]
    assert search["dtype"] == "torch.float32" and search["val_per_class"] == {}
    config = SearchConfig(**{k: search[k] for k in ("c_min", "c_max", "grid_points",
                             "refine_steps", "val_fraction", "max_iter", "tol")})  # fmt: skip
    probe = linear_probe(trainval["features"], trainval["labels"], test["features"],
                         test["labels"], seeds=(0, 1), config=config, num_classes=4)  # fmt: skip
    assert entry["seed_accuracies"] == [s.test_accuracy for s in probe.seeds]
    assert entry["val_accuracies"] == [s.val_accuracy for s in probe.seeds]
    assert entry["best_c"] == [s.best_c for s in probe.seeds]
    assert entry["accuracy"] == pytest.approx(statistics.mean(entry["seed_accuracies"]))
    assert entry["log_odds"] == pytest.approx(log_odds(entry["accuracy"]))

    assert report["settings"]["transform"]["crop"] == 32
    assert report["settings"]["transform_origin"]["stats"].startswith("protocol default, ImageNet")
    assert report["settings"]["model"] == {
        "kind": "arch", "arch": "resnet18", "weights": str(weights), "small_input_stem": False
    }  # fmt: skip

    with caplog.at_level(logging.INFO, logger="protohead.evaluation"):
        assert main([*argv, "-q", "--overwrite"]) == 0
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


def small_images_checkpoint(path: Path, *, crop: int = 16) -> TReX:
    """A checkpoint laid out as protohead-train writes it, of a --small-images run."""
    torch.manual_seed(0)
    model = TReX("resnet18", num_classes=3, projector_hidden_dim=16, projector_out_dim=8,
                 memory_size=8, small_input_stem=True)  # fmt: skip
    args = {"arch": "resnet18", "small_input_stem": True, "small_images": True,
            "dataset": "fashion-mnist", "preset": "trex"}  # fmt: skip
    preset = {"name": "trex", "global_crop_size": crop, "local_crop_size": 9}
    metrics = {"epoch": 1, "val_top1": 80.0}
    torch.save({"model": model.state_dict(), "args": args, "preset": preset, "metrics": metrics},
               path)  # fmt: skip
    return model


def test_checkpoint_input_follows_its_training_crop_and_statistics(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    ckpt = tmp_path / "trex_fmnist.pth"
    small_images_checkpoint(ckpt, crop=16)
    shapes: list[tuple[int, ...]] = []
    real_features = cli.cached_features

    def spy(model: Any, dataset: Any, **kwargs: Any) -> Any:
        shapes.append(tuple(dataset[0][0].shape))  # the image the backbone will see
        return real_features(model, dataset, **kwargs)

    monkeypatch.setattr(cli, "cached_features", spy)
    probe = ["--seeds", "0", "--grid-points", "3", "--refine-steps", "0", "--no-progress"]
    out = tmp_path / "c.json"
    argv = ["--checkpoint", str(ckpt), *FAKE, *probe, "--no-cache", "--output", str(out), "-q"]
    assert main(argv) == 0
    # No --resize/--crop/--mean/--std: the checkpoint's 16 px crop and Fashion-MNIST statistics,
    # not the 224 px ImageNet default that silently cost 6.7 points on such a model.
    assert shapes == [(3, 16, 16), (3, 16, 16)]
    report = json.loads(out.read_text())
    assert report["model"] == "resnet18 trex (trex_fmnist.pth)" and report["train_top1"] == 0.8
    transform, origin = report["settings"]["transform"], report["settings"]["transform_origin"]
    assert (transform["resize"], transform["crop"]) == (16, 16)
    assert transform["mean"] == [0.286] * 3 and transform["std"] == [0.353] * 3
    assert origin["crop"] == "checkpoint: preset global_crop_size"
    assert origin["stats"] == "checkpoint: statistics of its dataset 'fashion-mnist'"
    assert report["settings"]["model"]["global_crop_size"] == 16
    table = capsys.readouterr().out
    assert table.splitlines()[:3] == [
        "model: resnet18 trex (trex_fmnist.pth)",
        "training-task top-1: 80.00%",
        "input: Resize(16) -> CenterCrop(16), crop from checkpoint: preset global_crop_size; "
        "normalisation from checkpoint: statistics of its dataset 'fashion-mnist'",
    ]
    # Explicit values still win, each recorded as given.
    shapes.clear()
    argv += ["--crop", "12", "--mean", "0.5", "0.5", "0.5", "--std", "0.2", "0.2", "0.2",
             "--overwrite", "--name", "mine"]  # fmt: skip
    assert main(argv) == 0
    assert shapes == [(3, 12, 12), (3, 12, 12)]
    report = json.loads(out.read_text())
    assert report["model"] == "mine"
    assert report["settings"]["transform_origin"] == {
        "crop": "--crop",
        "resize": "= crop (protocol: Resize(s) -> CenterCrop(s))",
        "stats": "--mean/--std",
    }


def test_checkpoint_without_a_recorded_crop_uses_the_protocol_size(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = TReX("resnet18", num_classes=3, projector_hidden_dim=16, projector_out_dim=8,
                 memory_size=8, small_input_stem=True)  # fmt: skip
    ckpt = tmp_path / "hand_made.pth"
    args = {"arch": "resnet18", "small_input_stem": True, "train_top1": 0.8}
    torch.save({"model": model.state_dict(), "args": args}, ckpt)
    source = sources.checkpoint_source(str(ckpt))
    assert source.label == "resnet18 (hand_made.pth)" and source.task_top1 == 0.8
    config, origin = sources.resolve_transform(source)
    assert (config.resize, config.crop, config.mean) == (224, 224, IMAGENET_MEAN)
    assert origin["crop"] == "protocol default (not recorded in the checkpoint)"


def test_plot_subcommand(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    ok = DatasetResult("a", accuracy=0.5, log_odds=0.0)
    with_top1 = write_json(TransferReport("m", (ok,), train_top1=0.7), tmp_path / "m.json")
    without = write_json(TransferReport("n", (ok,)), tmp_path / "n.json")
    (tmp_path / "other.json").write_text('{"format": "x"}')
    out = str(tmp_path / "f.png")
    prefix = "python -m protohead.evaluation plot: error: "
    cases = [
        ([str(tmp_path / "missing.json"), "--out", out],
         re.escape(f"{prefix}[Errno 2] No such file or directory: '{tmp_path / 'missing.json'}'")),
        ([str(with_top1), str(without), "--out", out],
         re.escape(prefix) + "every report needs train_top1 .* model 'n' with train_top1=None"),
        ([str(tmp_path / "other.json"), "--out", out],
         re.escape(f"{prefix}{tmp_path / 'other.json'}: data must be a "
                   "'protohead.transfer-report/1' report, got format 'x'")),
        ([str(with_top1)], re.escape(prefix) + "the following arguments are required: --out"),
    ]  # fmt: skip
    for argv, message in cases:
        with pytest.raises(SystemExit) as exit_info:
            main(["plot", *argv])
        assert exit_info.value.code == 2
        assert re.search(message, capsys.readouterr().err), argv
    assert not (tmp_path / "f.png").exists()

    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(SystemExit):
        main(["plot", str(with_top1), "--out", out])
    assert prefix + "plot_transfer needs the optional dependency matplotlib" in (
        capsys.readouterr().err
    )

    seen: list[tuple[list[TransferReport], str, str | None]] = []

    def fake_plot(reports: list[TransferReport], path: str, *, title: str | None) -> Path:
        seen.append((reports, path, title))
        return Path(path)

    monkeypatch.setattr(plot, "plot_transfer", fake_plot)
    assert main(["plot", str(with_top1), str(with_top1), "--out", out, "--title", "T"]) == 0
    assert capsys.readouterr().out == f"wrote {out}\n"
    assert seen == [([read_json(with_top1)] * 2, out, "T")]


def image_folder(root: Path, names: list[str], *, corrupt: str | None = None) -> list[str]:
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (16, 16), color=(len(name) * 20 % 255, 0, 0)).save(root / name)
    if corrupt is not None:
        (root / corrupt).write_bytes(b"not an image")  # a .png that PIL cannot open
    return [str(root / "train"), str(root / "test")]


def test_failing_datasets_are_recorded_and_the_others_still_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    names = [f"{split}/{c}/{i}.png" for split in ("train", "test") for c in "ab" for i in range(3)]
    corrupt = image_folder(tmp_path / "corrupt", names, corrupt="train/a/1.png")
    tiny = image_folder(tmp_path / "tiny", ["train/a/0.png", *names[3:]])  # class a: 1 image
    out = tmp_path / "r.json"
    argv = ["--arch", "resnet18", *FAKE, "--dataset", "dtd", "--data-root", str(tmp_path),
            "--image-folder", "corrupt", *corrupt, "--image-folder", "tiny", *tiny,
            *FAST, "--no-cache", "--output", str(out), "-q"]  # fmt: skip
    with caplog.at_level(logging.ERROR, logger="protohead.evaluation"):
        assert main(argv) == 1  # failed beats missing (3)
    stdout = capsys.readouterr().out
    assert "mean (1 of 4)" in stdout
    assert "not in the mean (missing): dtd" in stdout
    assert "not in the mean (failed): corrupt, tiny" in stdout
    report = json.loads(out.read_text())
    entries = {d["name"]: d for d in report["datasets"]}
    assert [entries[n]["status"] for n in ("fake", "dtd", "corrupt", "tiny")] == [
        "ok", "missing", "failed", "failed"
    ]  # fmt: skip
    assert isinstance(entries["fake"]["converged"], bool)
    assert len(entries["fake"]["stop_reasons"]) == 2  # one final fit per seed
    assert entries["corrupt"]["missing_reason"].startswith("corrupt: UnidentifiedImageError: ")
    assert entries["tiny"]["missing_reason"].startswith(
        "tiny: ValueError: every class needs at least 2 samples"
    )
    assert report["summary"]["failed"] == ["corrupt", "tiny"]
    assert report["summary"]["mean_log_odds"] == entries["fake"]["log_odds"]
    assert "corrupt failed, continuing with the other datasets" in caplog.text


def test_dataset_validation_split_reaches_the_search(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[int | None] = []
    real_build, real_probe = cli.build_dataset, cli.linear_probe

    def build(*args: Any, **kwargs: Any) -> TransferDataset:
        return dataclasses.replace(real_build(*args, **kwargs), val_per_class=3)

    def probe(*args: Any, **kwargs: Any) -> Any:
        seen.append(kwargs["val_per_class"])
        return real_probe(*args, **kwargs)

    monkeypatch.setattr(cli, "build_dataset", build)
    monkeypatch.setattr(cli, "linear_probe", probe)
    out = tmp_path / "r.json"
    assert main(["--arch", "resnet18", *FAKE, *FAST, "--no-cache", "--output", str(out), "-q"]) == 0
    assert seen == [3]
    assert json.loads(out.read_text())["settings"]["search"]["val_per_class"] == {"fake": 3}
