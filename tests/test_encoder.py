from __future__ import annotations

import pytest
import torch
from torch import nn

from protohead import MultiCropEncoder, group_by_resolution
from protohead.encoder import repeat_per_crop


class CountingBackbone(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.calls: list[tuple[int, ...]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append(tuple(x.shape))
        return self.conv(x).mean(dim=(2, 3))


def test_one_backbone_call_per_resolution_run_and_one_head_call():
    backbone = CountingBackbone()
    head_calls = []
    head = nn.Linear(4, 2)
    head.register_forward_hook(lambda m, i, o: head_calls.append(i[0].shape))
    encoder = MultiCropEncoder(backbone, head)
    crops = [torch.randn(3, 3, 16, 16)] * 2 + [torch.randn(3, 3, 8, 8)] * 4
    out = encoder(crops)
    assert out.shape == (18, 2)
    assert backbone.calls == [(6, 3, 16, 16), (12, 3, 8, 8)]
    assert head_calls == [torch.Size([18, 4])]


def test_output_is_crop_major_and_matches_per_crop_encoding():
    backbone = CountingBackbone().eval()
    encoder = MultiCropEncoder(backbone)
    crops = [torch.randn(2, 3, 12, 12), torch.randn(2, 3, 6, 6), torch.randn(2, 3, 6, 6)]
    out = encoder(crops)
    expected = torch.cat([backbone(c) for c in crops])
    torch.testing.assert_close(out, expected)


def test_single_tensor_input():
    encoder = MultiCropEncoder(CountingBackbone(), nn.Linear(4, 5))
    assert encoder(torch.randn(7, 3, 8, 8)).shape == (7, 5)


def test_does_not_modify_modules():
    backbone, head = CountingBackbone(), nn.Linear(4, 2)
    state = {k: v.clone() for k, v in backbone.state_dict().items()}
    encoder = MultiCropEncoder(backbone, head)
    encoder([torch.randn(2, 3, 8, 8)])
    assert encoder.backbone is backbone and encoder.head is head
    for k, v in backbone.state_dict().items():
        assert torch.equal(v, state[k])


def test_interleaved_sizes_keep_order():
    crops = [torch.zeros(1, 3, 4, 4), torch.zeros(1, 3, 2, 2), torch.zeros(1, 3, 4, 4)]
    assert group_by_resolution(crops) == [(0, 1), (1, 2), (2, 3)]


@pytest.mark.parametrize(
    ("crops", "exc", "match"),
    [
        ([], ValueError, "at least one tensor"),
        ([torch.zeros(2, 3, 4)], ValueError, r"crops\[0\] must have shape \(b, c, h, w\)"),
        ([torch.zeros(2, 3, 4, 4), torch.zeros(3, 3, 4, 4)], ValueError, r"crops\[1\] must have"),
        ([torch.zeros(2, 3, 4, 4), torch.zeros(2, 1, 2, 2)], ValueError, "channels"),
        ([torch.zeros(2, 3, 4, 4), "crop"], TypeError, r"crops\[1\] must be a Tensor"),
    ],
)
def test_bad_crops_raise(crops, exc, match):
    with pytest.raises(exc, match=match):
        MultiCropEncoder(CountingBackbone())(crops)


def test_constructor_type_checks():
    with pytest.raises(TypeError, match="backbone must be an nn.Module"):
        MultiCropEncoder("resnet")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="head must be an nn.Module or None"):
        MultiCropEncoder(CountingBackbone(), head=3)  # type: ignore[arg-type]


def test_state_dict_round_trip():
    a = MultiCropEncoder(CountingBackbone(), nn.Linear(4, 2))
    b = MultiCropEncoder(CountingBackbone(), nn.Linear(4, 2))
    b.load_state_dict(a.state_dict())
    crops = [torch.randn(2, 3, 8, 8), torch.randn(2, 3, 4, 4)]
    torch.testing.assert_close(a(crops), b(crops))


def test_precomputed_runs_give_the_same_output_and_skip_the_checks(monkeypatch):
    import protohead.encoder as encoder_module

    backbone = CountingBackbone().eval()
    encoder = MultiCropEncoder(backbone, nn.Linear(4, 2))
    crops = [torch.randn(2, 3, 12, 12)] * 2 + [torch.randn(2, 3, 6, 6)]
    expected = encoder(crops)
    runs = group_by_resolution(crops)

    def forbidden(crops):
        raise AssertionError("crops checked again")

    monkeypatch.setattr(encoder_module, "group_by_resolution", forbidden)
    backbone.calls.clear()
    torch.testing.assert_close(encoder(crops, runs=runs), expected)
    assert backbone.calls == [(4, 3, 12, 12), (2, 3, 6, 6)]


def test_repeat_per_crop_matches_the_crop_major_encoder_order():
    backbone = CountingBackbone().eval()
    encoder = MultiCropEncoder(backbone)
    images = torch.randn(3, 3, 8, 8)
    crops = [images, images.flip(-1), images[:, :, :4, :4]]
    ids = repeat_per_crop(torch.arange(3), len(crops))
    assert ids.tolist() == [0, 1, 2] * 3
    features = encoder(crops)
    for crop, rows in enumerate(features.split(3)):  # row i of each crop is image ids[i]
        torch.testing.assert_close(rows, backbone(crops[crop])[ids[crop * 3 : crop * 3 + 3]])
    onehot = repeat_per_crop(torch.eye(2), 2)  # trailing dims are kept
    assert onehot.tolist() == [[1.0, 0.0], [0.0, 1.0]] * 2


@pytest.mark.parametrize(
    ("args", "exc", "match"),
    [
        ((torch.tensor(1), 2), ValueError, r"values must have shape \(b, \.\.\.\), got a 0-d"),
        (([1, 2], 2), TypeError, "values must be a Tensor, got list"),
        ((torch.arange(2), 0), ValueError, r"num_crops must be an int >= 1, got 0"),
        ((torch.arange(2), 2.0), TypeError, "num_crops must be an int, got float"),
        ((torch.arange(2), True), TypeError, "num_crops must be an int, got bool"),
    ],
)
def test_repeat_per_crop_rejects_bad_arguments(args, exc, match):
    with pytest.raises(exc, match=match):
        repeat_per_crop(*args)
