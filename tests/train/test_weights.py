"""Tests for protohead.train.weights: --init-from sources and how saved weights fit a model."""

from __future__ import annotations

import pytest
import torch
import torchvision

from protohead import BackboneAdapter, TReX
from protohead.train import weights as weights_module
from protohead.train.checkpoint import save_checkpoint
from protohead.train.usage import UsageError
from protohead.train.weights import describe_mismatch, init_backbone, resolve_init_from


def _model(arch: str = "resnet18", **kwargs) -> TReX:
    return TReX(arch, 3, projector_hidden_dim=16, memory_size=8, **kwargs)


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_describe_mismatch_counts_each_kind_with_an_example():
    expected = {"a": torch.zeros(2), "b": torch.zeros(3, 4), "c": torch.zeros(1)}
    assert describe_mismatch(expected, dict(expected)) is None
    given = {"b": torch.zeros(4, 4), "c": torch.zeros(1), "x": torch.zeros(1), "y": 1}
    assert describe_mismatch(expected, given) == (
        "1 missing key (e.g. 'a'), 2 unexpected keys (e.g. 'x'), 1 tensor of another shape "
        "(e.g. 'b': (4, 4) in the file, (3, 4) in this model)"
    )
    assert describe_mismatch(expected, given, ignore=lambda k: k in "xy").count("unexpected") == 0


@pytest.mark.filterwarnings("ignore:The default weight initialization of GoogleNet")
@pytest.mark.parametrize("arch", ["resnet18", "googlenet", "mobilenet_v3_small"])
def test_a_stock_state_dict_with_its_classifier_loads(arch):
    # Heads: fc (ResNet), fc and auxiliary heads (GoogLeNet), a Sequential (MobileNetV3).
    kwargs = {"init_weights": False} if arch == "googlenet" else {}
    stock = torchvision.models.get_model(arch, weights=None, **kwargs)
    model = _model(arch)
    init_backbone(model, stock.state_dict(), "stock.pth")
    expected = {k: v for k, v in stock.state_dict().items() if k in model.backbone_state_dict()}
    assert _same(model.backbone_state_dict(), expected)
    teacher = model.teacher.module.backbone.model.state_dict()
    assert _same(dict(teacher), model.backbone_state_dict())  # the teacher starts as the student


def test_wrong_layouts_are_rejected_before_anything_is_loaded():
    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items() if torch.is_tensor(v)}
    weights = BackboneAdapter("resnet18").export_state_dict()
    with pytest.raises(UsageError, match=r"1 unexpected key \(e.g. 'layer9.weight'\)"):
        init_backbone(model, {**weights, "layer9.weight": torch.zeros(1)}, "x.pth")
    small = _model(small_input_stem=True)
    with pytest.raises(
        UsageError,
        match=r"--init-from x.pth does not fit --arch resnet18: 1 tensor of another shape "
        r"\(e.g. 'conv1.weight': \(64, 3, 7, 7\) in the file, \(64, 3, 3, 3\) in this model\)",
    ):
        init_backbone(small, weights, "x.pth")
    with pytest.raises(UsageError, match=r"1 missing key \(e.g. 'conv1.weight'\)"):
        init_backbone(model, {k: v for k, v in weights.items() if k != "conv1.weight"}, "x.pth")
    after = {k: v for k, v in model.state_dict().items() if torch.is_tensor(v)}
    assert _same(after, before)


def test_a_data_parallel_prefix_is_stripped():
    weights = BackboneAdapter("resnet18").export_state_dict()
    model = _model()
    init_backbone(model, {f"module.{k}": v for k, v in weights.items()}, "ddp.pth")
    assert _same(model.backbone_state_dict(), weights)


def test_resolve_reads_a_backbone_file_or_a_training_checkpoint(tmp_path):
    weights = BackboneAdapter("resnet18").export_state_dict()
    save_checkpoint(weights, tmp_path / "backbone.pth")
    state, source = resolve_init_from(str(tmp_path / "backbone.pth"))
    assert _same(state, weights) and source == str(tmp_path / "backbone.pth")
    model = _model()
    ckpt = {"model": model.state_dict(), "args": {"arch": "resnet18"}}
    save_checkpoint(ckpt, tmp_path / "checkpoint.pth")
    state, _ = resolve_init_from(str(tmp_path / "checkpoint.pth"))
    assert _same(state, model.backbone_state_dict())  # the student's, not the teacher's copy
    (tmp_path / "broken.pth").write_bytes(b"\x00" * 10)
    with pytest.raises(UsageError, match=r"--init-from .*broken.pth: checkpoint .* not readable"):
        resolve_init_from(str(tmp_path / "broken.pth"))


def test_resolve_looks_up_other_values_as_pretrained_names(monkeypatch):
    unknown = r"--init-from 'trex-r50': no such file or pretrained name \(names: trex_resnet50, "
    with pytest.raises(UsageError, match=unknown):
        resolve_init_from("trex-r50")
    stock = torchvision.models.resnet18()
    calls = []

    def load_pretrained(name):
        calls.append(name)
        return stock

    monkeypatch.setattr(weights_module, "load_pretrained", load_pretrained)
    state, source = resolve_init_from("trex_resnet50")
    assert calls == ["trex_resnet50"] and source == "'trex_resnet50'"
    assert _same(state, stock.state_dict())

    def offline(name):
        raise FileNotFoundError(f"cannot download {name}; pass source=")

    monkeypatch.setattr(weights_module, "load_pretrained", offline)
    with pytest.raises(UsageError, match=r"--init-from 'trex_resnet50': cannot download"):
        resolve_init_from("trex_resnet50")
