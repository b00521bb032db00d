"""Tests for protohead.evaluation.loading."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch
import torchvision

from protohead.evaluation.loading import (
    TrainingRecord,
    UnreadableCheckpointError,
    checkpoint_task_top1,
    load_backbone,
    load_checkpoint_backbone,
    read_training_record,
)
from protohead.model import TReX


def stock_resnet18(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torchvision.models.resnet18(num_classes=1000).eval()


def penultimate(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    head = model.fc
    model.fc = torch.nn.Identity()
    try:
        with torch.no_grad():
            return model(x)
    finally:
        model.fc = head


def test_backbone_pth_with_and_without_classifier_keys(tmp_path: Path) -> None:
    stock = stock_resnet18()
    x = torch.randn(2, 3, 32, 32)
    expected = penultimate(stock, x)
    full, no_fc = tmp_path / "full.pth", tmp_path / "no_fc.pth"
    state = stock.state_dict()
    torch.save(state, full)
    torch.save({k: v for k, v in state.items() if not k.startswith("fc.")}, no_fc)
    for path in (full, no_fc):
        backbone = load_backbone("resnet18", path).eval()
        assert backbone.feature_dim == 512
        with torch.no_grad():
            torch.testing.assert_close(backbone(x), expected)
    ddp = tmp_path / "ddp.pth"
    torch.save({f"module.{k}": v for k, v in state.items()}, ddp)
    with torch.no_grad():
        torch.testing.assert_close(load_backbone("resnet18", ddp).eval()(x), expected)


def test_backbone_pth_errors(tmp_path: Path) -> None:
    state = stock_resnet18().state_dict()
    extra = tmp_path / "extra.pth"
    torch.save({**state, "projector.weight": torch.zeros(1)}, extra)
    with pytest.raises(ValueError, match=r"1 unexpected keys \['projector.weight'\]"):
        load_backbone("resnet18", extra)
    missing = tmp_path / "missing.pth"
    torch.save({k: v for k, v in state.items() if k != "conv1.weight"}, missing)
    with pytest.raises(ValueError, match=r"1 missing keys \['conv1.weight'\]"):
        load_backbone("resnet18", missing)
    shape = tmp_path / "shape.pth"
    torch.save({**state, "conv1.weight": torch.zeros(64, 3, 3, 3)}, shape)
    with pytest.raises(ValueError, match="weights do not fit the 'resnet18' backbone"):
        load_backbone("resnet18", shape)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_backbone("resnet18", tmp_path / "nope.pth")
    with pytest.raises(ValueError, match="arch must be a torchvision classification model name"):
        load_backbone("not_a_model")
    not_dict = tmp_path / "list.pth"
    torch.save([1, 2], not_dict)
    with pytest.raises(ValueError, match="weights must hold a state_dict, got list"):
        load_backbone("resnet18", not_dict)


def fabricate_checkpoint(path: Path, *, namespace: bool = False, prefix: str | None = None) -> TReX:
    torch.manual_seed(1)
    model = TReX(
        "resnet18",
        num_classes=5,
        projector_hidden_dim=32,
        projector_out_dim=16,
        memory_size=16,
        small_input_stem=True,
    ).eval()
    with torch.no_grad():  # the EMA teacher differs from the student; only the student counts
        model.teacher.module.backbone.model.conv1.weight.add_(1.0)  # type: ignore[union-attr]
    state = model.state_dict()
    assert any(k.startswith("teacher.module.backbone.model.") for k in state)
    if prefix is not None:  # the layout "backbone.model.*" of a plain backbone attribute
        state = {
            prefix + k[len("student.backbone.model.") :]: v
            for k, v in state.items()
            if k.startswith("student.backbone.model.")
        }
    args = {"arch": "resnet18", "small_input_stem": True, "epochs": 1}
    torch.save({"model": state, "args": argparse.Namespace(**args) if namespace else args}, path)
    return model


@pytest.mark.parametrize(
    ("namespace", "prefix"), [(False, None), (True, None), (False, "backbone.model.")]
)
def test_protohead_checkpoint_loads_student_backbone(
    tmp_path: Path, namespace: bool, prefix: str | None
) -> None:
    path = tmp_path / "ckpt.pth"
    model = fabricate_checkpoint(path, namespace=namespace, prefix=prefix)
    backbone, args = load_checkpoint_backbone(path)
    assert args["arch"] == "resnet18" and args["epochs"] == 1
    x = torch.randn(2, 3, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(backbone.eval()(x), model.extract_features(x))


def test_checkpoint_errors(tmp_path: Path) -> None:
    path = tmp_path / "c.pth"
    torch.save({"state_dict": {}}, path)
    with pytest.raises(ValueError, match=r"checkpoint must be a dict with a 'model' state_dict"):
        load_checkpoint_backbone(path)
    torch.save({"model": {}, "args": {"lr": 0.1}}, path)
    with pytest.raises(ValueError, match="checkpoint must have 'args' with a string 'arch'"):
        load_checkpoint_backbone(path)
    torch.save({"model": {"head.weight": torch.zeros(1)}, "args": {"arch": "resnet18"}}, path)
    with pytest.raises(
        ValueError, match=r"has no backbone weights under .* \(top-level keys \['head'\]\)"
    ):
        load_checkpoint_backbone(path)
    state = {f"student.backbone.model.{k}": v for k, v in stock_resnet18().state_dict().items()}
    torch.save({"model": state, "args": {"arch": "resnet18", "small_input_stem": True}}, path)
    with pytest.raises(ValueError, match="weights do not fit the 'resnet18' backbone"):
        load_checkpoint_backbone(path)
    torch.save({"model": state, "args": {"arch": "resnet18", "small_input_stem": "yes"}}, path)
    with pytest.raises(ValueError, match="'small_input_stem' must be a bool, got 'yes'"):
        load_checkpoint_backbone(path)


@pytest.mark.parametrize(
    ("checkpoint", "expected"),
    [
        # metrics["val_top1"] (percent) wins over args["train_top1"] (fraction)
        ({"metrics": {"val_top1": 91.5}, "args": {"train_top1": 0.3}}, 0.915),
        ({"metrics": {"val_top1": 90}, "args": {}}, 0.9),  # an int percent
        # fallback to args["train_top1"], a dict or an argparse.Namespace
        ({"metrics": {"loss": 1.2}, "args": {"train_top1": 0.8}}, 0.8),
        ({"args": argparse.Namespace(arch="resnet18", train_top1=0.7)}, 0.7),
        ({"metrics": None, "args": {"train_top1": 1}}, 1.0),
        # a non-numeric val_top1 falls back, a non-numeric train_top1 gives None
        ({"metrics": {"val_top1": "n/a"}, "args": {"train_top1": 0.6}}, 0.6),
        ({"metrics": {"val_top1": None}, "args": argparse.Namespace(train_top1=0.5)}, 0.5),
        ({"metrics": [91.5], "args": {"train_top1": 0.4}}, 0.4),
        ({"metrics": {"val_top1": "n/a"}, "args": {"train_top1": "high"}}, None),
        ({"metrics": {"val_top1": True}, "args": {"train_top1": False}}, None),  # bools are not
        # nothing recorded
        ({"model": {}, "args": argparse.Namespace(arch="resnet18")}, None),
        ({"model": {}}, None),
        ({"args": ["train_top1", 0.9]}, None),
        ([0.9], None),
    ],
)
def test_checkpoint_task_top1(tmp_path: Path, checkpoint: object, expected: float | None) -> None:
    path = tmp_path / "c.pth"
    torch.save(checkpoint, path)
    top1 = checkpoint_task_top1(path)
    if expected is None:
        assert top1 is None
    else:
        assert isinstance(top1, float) and top1 == pytest.approx(expected)


def test_checkpoint_task_top1_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        checkpoint_task_top1(tmp_path / "missing.pth")


def test_training_record_reads_how_the_model_was_trained(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.pth"
    model = TReX("resnet18", num_classes=2, projector_hidden_dim=8, projector_out_dim=4,
                 memory_size=4)  # fmt: skip
    args = argparse.Namespace(arch="resnet18", small_input_stem=False, small_images=True,
                              dataset="cifar10")  # fmt: skip
    preset = {"name": "trex", "global_crop_size": 32, "local_crop_size": 18}
    torch.save({"model": model.state_dict(), "args": args, "preset": preset,
                "metrics": {"val_top1": 94.0}}, path)  # fmt: skip
    record = read_training_record(path)
    assert record == TrainingRecord(
        arch="resnet18",
        small_input_stem=False,
        preset=preset,
        global_crop_size=32,
        task_top1=0.94,
        dataset="cifar10",
        dataset_recorded=True,
        small_images=True,
    )
    assert record.preset_name == "trex"
    # An image-folder run records dataset=None; a hand-made checkpoint records nothing.
    torch.save({"model": {}, "args": {"arch": "resnet50", "dataset": None}}, path)
    record = read_training_record(path)
    assert (record.dataset, record.dataset_recorded, record.preset, record.global_crop_size) == (
        None, True, None, None
    )  # fmt: skip
    torch.save({"model": {}, "args": {"arch": "resnet50"}}, path)
    assert read_training_record(path).dataset_recorded is False
    torch.save({"model": {}, "args": {"arch": "resnet50"}, "preset": {"global_crop_size": 0}}, path)
    with pytest.raises(ValueError, match="preset 'global_crop_size' must be an int >= 1, got 0"):
        read_training_record(path)


def test_unreadable_files_raise_one_line_naming_the_file(tmp_path: Path) -> None:
    good = tmp_path / "good.pth"
    torch.save({"model": {"w": torch.zeros(1000)}, "args": {"arch": "resnet18"}}, good)
    data = good.read_bytes()
    truncated, empty, text = tmp_path / "cut.pth", tmp_path / "empty.pth", tmp_path / "a.pth"
    truncated.write_bytes(data[: len(data) // 2])
    empty.write_bytes(b"")
    text.write_text("hello")
    legacy = tmp_path / "legacy.pth"  # the pre-zip format: read without memory-mapping
    torch.save({"model": {}, "args": {"arch": "resnet18"}}, legacy,
               _use_new_zipfile_serialization=False)  # fmt: skip
    assert read_training_record(legacy).arch == "resnet18"
    for reader in (read_training_record, checkpoint_task_top1, load_checkpoint_backbone):
        with pytest.raises(UnreadableCheckpointError, match=r"'.*empty.pth' is empty \(0 bytes\)"):
            reader(empty)
        with pytest.raises(
            UnreadableCheckpointError,
            match=r"checkpoint '.*cut.pth' cannot be loaded \(truncated, still being written, or "
            r"not a PyTorch file\): RuntimeError: PytorchStreamReader failed reading zip archive",
        ):
            reader(truncated)
        with pytest.raises(UnreadableCheckpointError, match=r"checkpoint '.*a.pth' cannot be"):
            reader(text)
    with pytest.raises(UnreadableCheckpointError, match=r"^weights '.*cut.pth' cannot be loaded"):
        load_backbone("resnet18", truncated)
    assert issubclass(UnreadableCheckpointError, ValueError)  # a CLI usage error: exit 2
    message = ""
    try:
        read_training_record(truncated)
    except UnreadableCheckpointError as err:
        message = str(err)
    assert "\n" not in message and len(message) < 400


def test_training_checkpoint_as_weights_points_to_the_checkpoint_loader(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.pth"
    fabricate_checkpoint(path)
    with pytest.raises(ValueError, match="is a training checkpoint .* load_checkpoint_backbone"):
        load_backbone("resnet18", path)
