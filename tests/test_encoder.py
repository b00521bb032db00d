from __future__ import annotations

import pytest
import torch
from torch import nn

from protohead import MultiCropEncoder, group_by_resolution


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
