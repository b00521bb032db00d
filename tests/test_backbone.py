"""Tests for protohead.backbone.BackboneAdapter."""

from __future__ import annotations

import sys
from collections.abc import Iterator

import pytest
import torch
import torchvision
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

from protohead.backbone import BackboneAdapter

# arch, smallest input side it accepts, path of the classifier Linear in the stock model,
# whether that Linear has a bias, its in_features.
MATRIX = [
    ("resnet18", 32, "fc", True, 512),
    ("resnet50", 32, "fc", True, 2048),
    ("wide_resnet50_2", 32, "fc", True, 2048),
    ("resnext50_32x4d", 32, "fc", True, 2048),
    ("convnext_tiny", 32, "classifier.2", True, 768),
    ("efficientnet_b0", 32, "classifier.1", True, 1280),
    ("mobilenet_v3_large", 32, "classifier.3", True, 1280),
    ("regnet_y_400mf", 32, "fc", True, 440),
    ("densenet121", 32, "classifier", True, 1024),
    ("vit_b_16", 224, "heads.head", True, 768),
    ("swin_t", 32, "head", True, 768),
    ("maxvit_t", 224, "classifier.5", False, 512),
]
ARCH_IDS = [row[0] for row in MATRIX]


def _images(side: int, batch: int = 2, seed: int = 0) -> Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, side, side, generator=generator)


class _Built:
    """An adapter together with a fixed batch and its features, computed once per module."""

    def __init__(self, arch: str, side: int) -> None:
        torch.manual_seed(0)
        self.adapter = BackboneAdapter(arch).eval()
        self.x = _images(side)
        with torch.no_grad():
            self.out = self.adapter(self.x)


@pytest.fixture(scope="module")
def built_cache() -> dict[str, _Built]:
    # vit_b_16 and maxvit_t are costly on CPU: build and run each model once for both tests.
    return {}


def _built(cache: dict[str, _Built], arch: str, side: int) -> _Built:
    if arch not in cache:
        cache[arch] = _Built(arch, side)
    return cache[arch]


@pytest.fixture(autouse=True)
def _no_grad() -> Iterator[None]:
    # Tests that train switch grad back on locally.
    with torch.no_grad():
        yield


@pytest.mark.parametrize(("arch", "side", "head", "bias", "in_features"), MATRIX, ids=ARCH_IDS)
def test_feature_shape_and_dim(
    built_cache: dict[str, _Built],
    arch: str,
    side: int,
    head: str,
    bias: bool,
    in_features: int,
) -> None:
    built = _built(built_cache, arch, side)
    adapter = built.adapter
    assert adapter.arch == arch
    assert adapter.feature_dim == in_features
    assert built.out.shape == (2, in_features)
    assert torch.isfinite(built.out).all()
    # No 1000-way ImageNet classifier survives anywhere in the wrapped network.
    assert not any(
        isinstance(m, nn.Linear) and m.out_features == 1000 for m in adapter.model.modules()
    )


@pytest.mark.parametrize(("arch", "side", "head", "bias", "in_features"), MATRIX, ids=ARCH_IDS)
def test_export_loads_into_stock_model(
    built_cache: dict[str, _Built],
    arch: str,
    side: int,
    head: str,
    bias: bool,
    in_features: int,
) -> None:
    built = _built(built_cache, arch, side)
    exported = built.adapter.export_state_dict()
    torch.manual_seed(1)
    stock = torchvision.models.get_model(arch, weights=None).eval()
    stock_linear = stock.get_submodule(head)
    assert isinstance(stock_linear, nn.Linear)
    assert stock_linear.in_features == built.adapter.feature_dim
    # Different seeds: the comparison below only passes if loading really copied weights.
    stock_state = stock.state_dict()
    assert any(
        v.is_floating_point() and not torch.equal(v, stock_state[k]) for k, v in exported.items()
    )

    result = stock.load_state_dict(exported, strict=False)
    expected_missing = {f"{head}.weight"} | ({f"{head}.bias"} if bias else set())
    assert set(result.missing_keys) == expected_missing
    assert result.unexpected_keys == []

    captured: list[Tensor] = []
    stock_linear.register_forward_pre_hook(lambda _m, args: captured.append(args[0]))
    stock(built.x)
    # Freshly initialised nets can give tiny features (efficientnet: ~1e-10), so compare
    # relative to their scale rather than with a fixed atol.
    scale = built.out.abs().max()
    torch.testing.assert_close(captured[0] / scale, built.out / scale, rtol=1e-4, atol=1e-5)


def test_sequential_head_keeps_indices_and_drops_dropout() -> None:
    torch.manual_seed(0)
    adapter = BackboneAdapter("mobilenet_v3_small").train()
    classifier = adapter.model.classifier
    assert isinstance(classifier[0], nn.Linear)
    assert isinstance(classifier[1], nn.Hardswish)
    assert isinstance(classifier[2], nn.Identity)  # Dropout
    assert isinstance(classifier[3], nn.Identity)  # Linear
    assert adapter.feature_dim == 1024
    assert {"classifier.0.weight", "classifier.0.bias"} <= set(adapter.export_state_dict())
    # Without dropout, train mode is deterministic for a fixed batch (BN uses batch stats).
    x = _images(32, batch=4)
    torch.testing.assert_close(adapter(x), adapter(x))


def test_instance_not_mutated_and_shares_parameters() -> None:
    model = torchvision.models.resnet18().eval()
    fc, conv1 = model.fc, model.conv1
    children = dict(model.named_children())
    keys = list(model.state_dict())
    x = _images(32)
    before = model(x)

    adapter = BackboneAdapter(model).eval()

    assert model.fc is fc
    assert isinstance(model.fc, nn.Linear)
    assert dict(model.named_children()) == children
    assert list(model.state_dict()) == keys
    torch.testing.assert_close(model(x), before, rtol=0, atol=0)
    assert adapter.model is not model
    assert isinstance(adapter.model.fc, nn.Identity)
    assert adapter.arch == "ResNet"
    assert adapter.model.conv1 is conv1
    assert adapter.model.conv1.weight is model.conv1.weight
    assert (
        adapter.model.layer4[1].conv2.weight.data_ptr() == model.layer4[1].conv2.weight.data_ptr()
    )
    backbone_params = {id(p) for n, p in model.named_parameters() if not n.startswith("fc.")}
    assert {id(p) for p in adapter.parameters()} == backbone_params


def test_instance_with_sequential_head_not_mutated() -> None:
    model = torchvision.models.mobilenet_v3_small()
    head = model.classifier
    entries = list(head)
    adapter = BackboneAdapter(model)
    assert model.classifier is head
    assert list(model.classifier) == entries
    assert isinstance(model.classifier[2], nn.Dropout)
    assert isinstance(model.classifier[3], nn.Linear)
    assert adapter.model.classifier is not head
    assert adapter.model.classifier[0] is head[0]
    assert model.eval()(_images(32)).shape == (2, 1000)


def test_gradient_step_through_adapter_trains_callers_backbone() -> None:
    torch.manual_seed(0)
    model = torchvision.models.resnet18()
    adapter = BackboneAdapter(model).train()
    conv1_before = model.conv1.weight.detach().clone()
    fc_before = model.fc.weight.detach().clone()
    optimizer = torch.optim.SGD(adapter.parameters(), lr=0.1)
    with torch.enable_grad():
        loss = adapter(_images(32, batch=4)).pow(2).mean()
        loss.backward()
    optimizer.step()
    assert not torch.equal(model.conv1.weight, conv1_before)
    assert torch.equal(model.fc.weight, fc_before)
    assert model.fc.weight.grad is None


def test_instance_rejects_weights_and_kwargs() -> None:
    model = torchvision.models.resnet18()
    with pytest.raises(ValueError, match=r"weights must be None .* got 'DEFAULT'"):
        BackboneAdapter(model, weights="DEFAULT")
    with pytest.raises(TypeError, match=r"model_kwargs .* \['num_classes'\]"):
        BackboneAdapter(model, num_classes=10)


def test_aux_heads_removed_without_mutating_caller() -> None:
    model = torchvision.models.googlenet(init_weights=False)
    adapter = BackboneAdapter(model).train()
    assert model.aux_logits is True
    assert model.aux1 is not None
    out = adapter(_images(64))
    assert isinstance(out, Tensor)
    assert out.shape == (2, adapter.feature_dim) == (2, 1024)
    stock = torchvision.models.googlenet(init_weights=False)
    result = stock.load_state_dict(adapter.export_state_dict(), strict=False)
    assert result.unexpected_keys == []
    assert {k.split(".")[0] for k in result.missing_keys} == {"fc", "aux1", "aux2"}


@pytest.mark.parametrize(("arch", "dim"), [("resnet18", 512), ("convnext_tiny", 768)])
@pytest.mark.parametrize("side", [28, 32])
def test_small_input_stem_shapes(arch: str, dim: int, side: int) -> None:
    adapter = BackboneAdapter(arch, small_input_stem=True).eval()
    assert adapter(_images(side)).shape == (2, dim)


@pytest.mark.parametrize("arch", ["resnet50", "wide_resnet50_2", "resnext50_32x4d"])
def test_small_input_stem_resnet_family(arch: str) -> None:
    torch.manual_seed(0)
    adapter = BackboneAdapter(arch, small_input_stem=True).eval()
    conv1 = adapter.model.conv1
    assert (conv1.kernel_size, conv1.stride, conv1.padding) == ((3, 3), (1, 1), (1, 1))
    assert isinstance(adapter.model.maxpool, nn.Identity)
    assert adapter(_images(28)).shape == (2, 2048)
    # Kaiming normal, fan_out: std = sqrt(2 / (out_channels * 3 * 3)).
    expected_std = (2.0 / (conv1.out_channels * 9)) ** 0.5
    assert abs(conv1.weight.std().item() - expected_std) < 0.1 * expected_std


def test_small_input_stem_convnext_stem() -> None:
    adapter = BackboneAdapter("convnext_tiny", small_input_stem=True)
    stem = adapter.model.features[0][0]
    assert (stem.kernel_size, stem.stride, stem.padding) == ((3, 3), (1, 1), (1, 1))
    assert stem.out_channels == 96


def test_small_input_stem_does_not_mutate_instance() -> None:
    model = torchvision.models.resnet18().eval()
    conv1, maxpool = model.conv1, model.maxpool
    x = _images(64)
    before = model(x)
    adapter = BackboneAdapter(model, small_input_stem=True).eval()
    assert model.conv1 is conv1
    assert model.conv1.kernel_size == (7, 7)
    assert model.maxpool is maxpool
    assert isinstance(model.maxpool, nn.MaxPool2d)
    torch.testing.assert_close(model(x), before, rtol=0, atol=0)
    assert adapter.model.conv1 is not conv1
    assert adapter.model.layer1[0].conv1.weight is model.layer1[0].conv1.weight
    assert adapter(_images(28)).shape == (2, 512)


def test_small_input_stem_export_loads_only_into_same_stem() -> None:
    exported = BackboneAdapter("resnet18", small_input_stem=True).export_state_dict()
    assert exported["conv1.weight"].shape == (64, 3, 3, 3)
    target = BackboneAdapter("resnet18", small_input_stem=True).model
    target.load_state_dict(exported, strict=True)
    with pytest.raises(RuntimeError, match=r"size mismatch for conv1\.weight"):
        torchvision.models.resnet18().load_state_dict(exported, strict=False)


def test_small_input_stem_unsupported_arch() -> None:
    with pytest.raises(ValueError, match=r"supported for ResNet-family .* got arch 'MobileNetV3'"):
        BackboneAdapter(torchvision.models.mobilenet_v3_small(), small_input_stem=True)
    with pytest.raises(ValueError, match=r"ConvNeXt .* got arch 'squeezenet1_0'"):
        BackboneAdapter("squeezenet1_0", small_input_stem=True)


@pytest.fixture(scope="module")
def small_resnet() -> BackboneAdapter:
    torch.manual_seed(0)
    return BackboneAdapter("resnet18", small_input_stem=True).eval()


@settings(max_examples=12, deadline=None)
@given(
    batch=st.integers(min_value=1, max_value=3),
    height=st.integers(min_value=8, max_value=48),
    width=st.integers(min_value=8, max_value=48),
)
def test_small_stem_feature_shape_property(
    small_resnet: BackboneAdapter, batch: int, height: int, width: int
) -> None:
    with torch.no_grad():
        out = small_resnet(torch.randn(batch, 3, height, width))
    assert out.shape == (batch, small_resnet.feature_dim)
    assert torch.isfinite(out).all()


def test_timm_by_name() -> None:
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    adapter = BackboneAdapter("timm:resnet18").eval()
    assert adapter.arch == "timm:resnet18"
    assert adapter.feature_dim == 512
    x = _images(32)
    out = adapter(x)
    assert out.shape == (2, 512)

    stock = timm.create_model("resnet18", pretrained=False).eval()
    result = stock.load_state_dict(adapter.export_state_dict(), strict=False)
    assert set(result.missing_keys) == {"fc.weight", "fc.bias"}
    assert result.unexpected_keys == []
    torch.testing.assert_close(stock.forward_head(stock.forward_features(x), pre_logits=True), out)


def test_timm_instance_uses_pre_logit_width() -> None:
    timm = pytest.importorskip("timm")
    model = timm.create_model("mobilenetv3_small_050", pretrained=False).eval()
    classifier = model.get_classifier()
    adapter = BackboneAdapter(model).eval()
    # num_features (288) is the width before conv_head; the pooled pre-logit feature is 1024.
    assert adapter.feature_dim == 1024 != model.num_features
    assert adapter(_images(32)).shape == (2, 1024)
    assert model.get_classifier() is classifier
    assert model(_images(32)).shape == (2, 1000)
    assert isinstance(adapter.model.classifier, nn.Identity)
    assert adapter.model.conv_stem.weight is model.conv_stem.weight
    assert "classifier.weight" not in adapter.export_state_dict()


def test_timm_errors() -> None:
    pytest.importorskip("timm")
    with pytest.raises(ValueError, match=r"'timm:not_a_real_model' .*timm\.list_models\(\)"):
        BackboneAdapter("timm:not_a_real_model")
    with pytest.raises(ValueError, match=r"small_input_stem=True .* got timm arch"):
        BackboneAdapter("timm:resnet18", small_input_stem=True)


def test_timm_missing_raises_import_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "timm", None)
    with pytest.raises(ImportError, match=r"pip install protohead\[timm\]"):
        BackboneAdapter("timm:resnet18")


@pytest.mark.parametrize("name", ["resnet1000", "fasterrcnn_resnet50_fpn"])
def test_unknown_name(name: str) -> None:
    with pytest.raises(ValueError, match=rf"got '{name}'.*torchvision\.models\.list_models"):
        BackboneAdapter(name)


@pytest.mark.parametrize("bad", [3, None, torch.zeros(2)])
def test_wrong_model_type(bad: object) -> None:
    with pytest.raises(TypeError, match=r"model must be a model name \(str\) or an nn\.Module"):
        BackboneAdapter(bad)  # type: ignore[arg-type]


def test_head_without_linear() -> None:
    with pytest.raises(ValueError, match=r"'squeezenet1_0' .* without an nn\.Linear"):
        BackboneAdapter("squeezenet1_0")


def test_missing_or_removed_head() -> None:
    with pytest.raises(ValueError, match=r"no classification head"):
        BackboneAdapter(nn.Sequential(nn.Conv2d(3, 4, 3)))
    model = torchvision.models.resnet18()
    model.fc = nn.Identity()
    with pytest.raises(ValueError, match=r"head 'fc' of type Identity"):
        BackboneAdapter(model)


def test_bad_small_input_stem_type_and_input_rank() -> None:
    with pytest.raises(TypeError, match=r"small_input_stem must be a bool, got str"):
        BackboneAdapter("resnet18", small_input_stem="yes")  # type: ignore[arg-type]
    adapter = BackboneAdapter("resnet18")
    with pytest.raises(
        ValueError, match=r"x must have shape \(b, c, h, w\), got shape \(3, 32, 32\)"
    ):
        adapter(torch.randn(3, 32, 32))
