from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from protohead import PrototypeClassifier, PrototypeMemoryBank


@settings(max_examples=40, deadline=None)
@given(
    temperature=st.floats(0.01, 10.0),
    scale=st.floats(1e-3, 1e3),
    seed=st.integers(0, 1000),
)
def test_cosine_logits_bounded_by_inverse_temperature(temperature, scale, seed):
    gen = torch.Generator().manual_seed(seed)
    clf = PrototypeClassifier(6, 4, temperature=temperature)
    logits = clf(torch.randn(5, 6, generator=gen) * scale)
    assert logits.abs().max() <= 1.0 / temperature * (1 + 1e-5)


def test_memory_mode_uses_prototypes():
    bank = PrototypeMemoryBank(3, 10, 2, init="empty")
    bank.update(torch.tensor([[2.0, 0, 0], [0, 0, 5.0]]), torch.tensor([0, 1]))
    clf = PrototypeClassifier(3, 2, temperature=0.5, memory=bank)
    z = torch.tensor([[1.0, 1.0, 0.0]])
    expected = F.normalize(z, dim=1) @ torch.eye(3)[[0, 2]].T / 0.5
    torch.testing.assert_close(clf(z), expected)
    assert clf.uses_memory
    assert clf.weight is None  # nothing to learn


def test_class_absent_from_memory_has_zero_logit():
    bank = PrototypeMemoryBank(3, 10, 3, init="empty")
    bank.update(torch.randn(4, 3), torch.tensor([0, 0, 2, 2]))
    logits = PrototypeClassifier(3, 3, memory=bank)(torch.randn(5, 3))
    assert torch.equal(logits[:, 1], torch.zeros(5))


def test_precomputed_prototypes_override_memory():
    bank = PrototypeMemoryBank(3, 10, 2)
    clf = PrototypeClassifier(3, 2, memory=bank)
    protos = torch.eye(3)[:2]
    z = torch.randn(4, 3)
    torch.testing.assert_close(clf(z, protos), F.normalize(z, dim=1) @ protos.T / 0.1)
    with pytest.raises(ValueError, match=r"prototypes must have shape \(2, 3\)"):
        clf(z, torch.eye(3))


def test_no_gradient_reaches_memory_but_reaches_features():
    bank = PrototypeMemoryBank(3, 10, 2)
    clf = PrototypeClassifier(3, 2, memory=bank)
    z = torch.randn(4, 3, requires_grad=True)
    clf(z).sum().backward()
    assert z.grad is not None and z.grad.abs().sum() > 0
    assert not any(b.requires_grad for b in bank.buffers())


def test_learnable_cosine_mode_has_weight_and_grad():
    clf = PrototypeClassifier(5, 3, temperature=0.1)
    assert isinstance(clf.weight, nn.Parameter)
    clf(torch.randn(2, 5)).sum().backward()
    assert clf.weight.grad is not None and clf.weight.grad.abs().sum() > 0


def test_linear_mode_is_plain_linear_with_bias():
    clf = PrototypeClassifier(5, 3, temperature=None)
    assert isinstance(clf.linear, nn.Linear) and clf.linear.bias is not None
    x = torch.randn(2, 5)
    torch.testing.assert_close(clf(x), clf.linear(x))
    with pytest.raises(ValueError, match="undefined for temperature=None"):
        clf.class_weights()


@pytest.mark.parametrize("mode", ["cosine", "memory", "linear"])
def test_state_dict_round_trip(mode):
    def make():
        if mode == "linear":
            return PrototypeClassifier(4, 3, temperature=None)
        memory = PrototypeMemoryBank(4, 8, 3) if mode == "memory" else None
        return PrototypeClassifier(4, 3, memory=memory)

    a, b = make(), make()
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 4)
    torch.testing.assert_close(a(x), b(x))


@pytest.mark.parametrize("memory", [False, True])
def test_forward_compiles_fullgraph(memory):
    bank = PrototypeMemoryBank(4, 8, 3) if memory else None
    clf = PrototypeClassifier(4, 3, memory=bank)
    compiled = torch.compile(clf, fullgraph=True, backend="eager")
    x = torch.randn(2, 4)
    torch.testing.assert_close(compiled(x), clf(x))


@pytest.mark.parametrize("memory", [False, True])
def test_autocast_bf16_gives_bf16_logits_close_to_fp32(memory):
    gen = torch.Generator().manual_seed(0)
    bank = PrototypeMemoryBank(16, 32, 5, generator=gen) if memory else None
    clf = PrototypeClassifier(16, 5, temperature=0.1, memory=bank)
    z = torch.randn(8, 16, generator=gen) * 3
    reference = clf(z)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = clf(z)
    assert reference.dtype == torch.float32
    assert logits.dtype == torch.bfloat16  # the matmul runs in bf16 under autocast
    # Logits lie in [-10, 10]; bf16 keeps 8 significant bits (relative step 2**-8), and the
    # rounded inputs of the 16-term dot product add a few such errors: 0.1 is ~1% of 1/tau.
    torch.testing.assert_close(logits.float(), reference, atol=0.1, rtol=0.02)


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"temperature": 0.0}, ValueError, r"temperature must be a real number > 0, got 0.0"),
        ({"temperature": -1.0}, ValueError, r"temperature must be a real number > 0, got -1.0"),
        ({"temperature": float("nan")}, ValueError, "temperature must be finite, got nan"),
        ({"temperature": "0.1"}, TypeError, "temperature must be a real number, got str"),
        ({"dim": 0}, ValueError, "dim must be an int >= 1, got 0"),
        ({"num_classes": -3}, ValueError, "num_classes must be an int >= 1, got -3"),
        ({"memory": object()}, TypeError, "memory must be a PrototypeMemoryBank"),
        ({"memory": PrototypeMemoryBank(5, 4, 3)}, ValueError, "memory must have dim=4"),
        (
            {"memory": PrototypeMemoryBank(4, 4, 3), "temperature": None},
            ValueError,
            "temperature must be > 0 when memory is given",
        ),
    ],
)
def test_constructor_validation(kwargs, exc, match):
    args = {"dim": 4, "num_classes": 3, **kwargs}
    with pytest.raises(exc, match=match):
        PrototypeClassifier(**args)


def test_wrong_input_shape_raises():
    with pytest.raises(ValueError, match=r"z must have shape \(b, 4\), got \(2, 5\)"):
        PrototypeClassifier(4, 3)(torch.randn(2, 5))


@pytest.mark.parametrize("temperature", [0.1, None])
def test_non_tensor_inputs_raise_type_error(temperature):
    clf = PrototypeClassifier(3, 2, temperature=temperature)
    with pytest.raises(TypeError, match="prototypes must be a Tensor or None, got list"):
        clf(torch.randn(4, 3), [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="z must be a Tensor, got list"):
        clf([[1.0, 0.0, 0.0]])  # type: ignore[arg-type]
