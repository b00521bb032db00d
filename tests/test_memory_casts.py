"""The memory through module casts, device moves, copies and pickling."""

from __future__ import annotations

import copy
import io
import pickle

import pytest
import torch
from torch import nn

from protohead import PrototypeMemoryBank, TReX

CASTS = {
    "float()": lambda m: m.float(),
    "half()": lambda m: m.half(),
    "bfloat16()": lambda m: m.bfloat16(),
    "double()": lambda m: m.double(),
    "to(float32)": lambda m: m.to(torch.float32),
    "to(float16)": lambda m: m.to(torch.float16),
    "to(cpu, float64)": lambda m: m.to("cpu", torch.float64),
    "type(float32)": lambda m: m.type(torch.float32),  # casts integer tensors too
    "cpu()": lambda m: m.cpu(),
}
CAST_DTYPES = {
    "float()": torch.float32,
    "half()": torch.float16,
    "bfloat16()": torch.bfloat16,
    "double()": torch.float64,
    "to(float32)": torch.float32,
    "to(float16)": torch.float16,
    "to(cpu, float64)": torch.float64,
    "type(float32)": torch.float32,
    "cpu()": torch.float32,
}


def filled_bank(num_classes: int = 3) -> PrototypeMemoryBank:
    gen = torch.Generator().manual_seed(0)
    bank = PrototypeMemoryBank(4, 8, num_classes, generator=gen)
    bank.update(torch.randn(3, 4, generator=gen) * 7, torch.tensor([0, 1, 2]))
    return bank


def snapshot(bank: PrototypeMemoryBank) -> dict[str, torch.Tensor]:
    return {name: buf.clone() for name, buf in bank.named_buffers()}


@pytest.mark.parametrize("inside_parent", [False, True], ids=["alone", "in-parent"])
@pytest.mark.parametrize("cast", list(CASTS))
def test_casts_keep_every_buffer_and_the_memory_working(cast, inside_parent):
    bank = filled_bank()
    before = snapshot(bank)
    module = nn.Sequential(nn.Linear(4, 4), bank) if inside_parent else bank
    CASTS[cast](module)
    if inside_parent:  # the cast did reach the rest of the model
        assert module[0].weight.dtype == CAST_DTYPES[cast]
    for name, buf in bank.named_buffers():  # same dtypes, same values: nothing rounded
        assert buf.dtype == before[name].dtype, name
        assert torch.equal(buf, before[name]), name

    # Used to fail with "index_add_(): self (Float) and source (Double) ..." after .float().
    bank.update(torch.randn(2, 4).to(CAST_DTYPES[cast]), torch.tensor([0, 1]))
    protos = bank.prototypes()
    assert protos.dtype == torch.float32
    assert torch.isfinite(protos).all()

    restored = PrototypeMemoryBank(4, 8, 3, init="empty")
    restored.load_state_dict(bank.state_dict())
    for key, value in bank.state_dict().items():
        assert torch.equal(restored.state_dict()[key], value), key
    torch.testing.assert_close(restored.prototypes(), protos, atol=1e-6, rtol=0)


@pytest.mark.parametrize("cast", ["half()", "bfloat16()", "double()", "to(float32)"])
def test_cast_trex_keeps_a_working_memory(cast):
    model = TReX(
        "resnet18", num_classes=3, projector_hidden_dim=16, projector_out_dim=8, memory_size=12
    )
    CASTS[cast](model)
    assert model.memory is not None
    assert model.memory.features.dtype == torch.float32
    assert model.memory._class_sums.dtype == torch.float64
    assert model.memory.labels.dtype == torch.long
    model.memory.update(torch.randn(2, 8).to(CAST_DTYPES[cast]), torch.tensor([0, 2]))
    assert int(model.memory.ptr) == 2


def test_float32_trex_trains_a_step_after_to_float32():
    torch.manual_seed(0)
    model = TReX(
        "resnet18", num_classes=3, projector_hidden_dim=16, projector_out_dim=8, memory_size=12
    ).to(torch.float32)
    model.train()
    crops = [torch.randn(2, 3, 32, 32), torch.randn(2, 3, 16, 16)]
    labels = torch.tensor([0, 2])
    model.loss(model(crops, labels), labels).backward()
    assert model.memory is not None and int(model.memory.ptr) == 2


def copy_by_torch_save(bank: PrototypeMemoryBank) -> PrototypeMemoryBank:
    buffer = io.BytesIO()
    torch.save(bank, buffer)
    buffer.seek(0)
    loaded: PrototypeMemoryBank = torch.load(buffer, weights_only=False)
    return loaded


@pytest.mark.parametrize("num_classes", [3, 40])  # prototypes renormalised in full / cached
@pytest.mark.parametrize(
    "duplicate",
    [copy.deepcopy, lambda b: pickle.loads(pickle.dumps(b)), copy_by_torch_save],
    ids=["deepcopy", "pickle", "torch.save"],
)
def test_copies_are_independent_and_continue_identically(duplicate, num_classes):
    bank = filled_bank(num_classes)
    twin = duplicate(bank)
    gen = torch.Generator().manual_seed(1)
    for _ in range(5):
        feats, labels = torch.randn(3, 4, generator=gen), torch.randint(0, 3, (3,), generator=gen)
        bank.update(feats, labels)
        twin.update(feats, labels)
        assert torch.equal(twin.prototypes(), bank.prototypes())
    for key, value in bank.state_dict().items():
        assert torch.equal(twin.state_dict()[key], value), key
    assert twin.features.data_ptr() != bank.features.data_ptr()


def test_pickle_of_a_memory_without_the_prototype_cache_still_loads():
    # Whole-module pickles of earlier protohead versions lack the cache and hold 1-d counts.
    bank = filled_bank()
    del bank._buffers["_prototypes"]
    bank._buffers["_class_counts"] = bank._class_counts[:, 0].clone()
    restored = pickle.loads(pickle.dumps(bank))
    assert restored._class_counts.shape == (4, 1)
    restored.update(torch.randn(2, 4), torch.tensor([0, 1]))
    assert torch.isfinite(restored.prototypes()).all()


def test_load_state_dict_with_assign_writes_the_assigned_ring():
    bank = filled_bank(40)
    source = PrototypeMemoryBank(4, 8, 40, generator=torch.Generator().manual_seed(5))
    state = {key: value.clone() for key, value in source.state_dict().items()}
    bank.load_state_dict(state, assign=True)
    assert bank.features is state["features"] or torch.equal(bank.features, state["features"])
    feats, labels = torch.randn(2, 4), torch.tensor([7, 9])
    bank.update(feats, labels)
    source.update(feats, labels)
    for key, value in source.state_dict().items():
        assert torch.equal(bank.state_dict()[key], value), key
    torch.testing.assert_close(bank.prototypes(), source.prototypes(), atol=1e-6, rtol=0)
