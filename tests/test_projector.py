from __future__ import annotations

import pytest
import torch
from torch import nn

from protohead import Projector


def test_layer_order_matches_paper():
    proj = Projector(32, out_dim=8, hidden_dim=16, num_hidden_layers=3)
    kinds = [type(m) for m in proj.layers]
    assert kinds == [nn.Linear, nn.BatchNorm1d, nn.GELU] * 3 + [nn.Linear]
    hidden = [m for m in proj.layers if isinstance(m, nn.Linear)]
    assert all(m.bias is not None for m in hidden[:-1])
    assert hidden[-1].bias is None
    assert hidden[-1].out_features == 8


def test_zero_hidden_layers_is_single_bias_free_linear():
    proj = Projector(32, out_dim=8, num_hidden_layers=0)
    assert len(proj.layers) == 1
    assert isinstance(proj.layers[0], nn.Linear)
    assert proj.layers[0].bias is None
    assert proj(torch.randn(5, 32)).shape == (5, 8)


def test_init_is_trunc_normal_std_002_and_zero_bias():
    torch.manual_seed(0)
    proj = Projector(1024, out_dim=256, hidden_dim=1024, num_hidden_layers=1)
    first = proj.layers[0]
    assert first.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert first.weight.abs().max().item() <= 2.0
    assert torch.equal(first.bias, torch.zeros_like(first.bias))


def test_input_l2_norm_makes_output_scale_invariant():
    proj = Projector(16, out_dim=4, hidden_dim=8, num_hidden_layers=1).eval()
    x = torch.randn(3, 16)
    torch.testing.assert_close(proj(x), proj(7.5 * x))
    raw = Projector(16, out_dim=4, hidden_dim=8, num_hidden_layers=0, input_l2_norm=False)
    assert not torch.allclose(raw(x), raw(7.5 * x))


def test_custom_norm_and_act_layers():
    proj = Projector(
        8, out_dim=4, hidden_dim=6, num_hidden_layers=2, norm_layer=nn.LayerNorm, act_layer=nn.ReLU
    )
    assert [type(m) for m in proj.layers][:3] == [nn.Linear, nn.LayerNorm, nn.ReLU]
    no_norm = Projector(8, out_dim=4, hidden_dim=6, num_hidden_layers=1, norm_layer=None)
    assert [type(m) for m in no_norm.layers] == [nn.Linear, nn.GELU, nn.Linear]


def test_state_dict_round_trip():
    a = Projector(8, out_dim=4, hidden_dim=6, num_hidden_layers=2)
    a.train()
    a(torch.randn(10, 8))  # moves BN running stats
    b = Projector(8, out_dim=4, hidden_dim=6, num_hidden_layers=2)
    b.load_state_dict(a.state_dict())
    x = torch.randn(3, 8)
    torch.testing.assert_close(a.eval()(x), b.eval()(x))


def test_forward_compiles_fullgraph():
    proj = Projector(8, out_dim=4, hidden_dim=6, num_hidden_layers=1).eval()
    compiled = torch.compile(proj, fullgraph=True, backend="eager")
    x = torch.randn(3, 8)
    torch.testing.assert_close(compiled(x), proj(x))


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"in_dim": 0}, ValueError, "in_dim must be an int >= 1, got 0"),
        ({"in_dim": 8, "out_dim": -2}, ValueError, "out_dim must be an int >= 1, got -2"),
        ({"in_dim": 8, "hidden_dim": 0}, ValueError, "hidden_dim must be an int >= 1"),
        (
            {"in_dim": 8, "num_hidden_layers": -1},
            ValueError,
            "num_hidden_layers must be an int >= 0",
        ),
        ({"in_dim": 8.0}, TypeError, "in_dim must be an int"),
    ],
)
def test_constructor_validation(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        Projector(**kwargs)


def test_wrong_input_shape_raises():
    with pytest.raises(ValueError, match=r"x must have shape \(b, 8\), got \(3, 9\)"):
        Projector(8, num_hidden_layers=0)(torch.randn(3, 9))
