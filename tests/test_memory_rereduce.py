"""The memory's large-batch step: raise-mode batches of at least size / 8 rows on the CPU."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch

from protohead import PrototypeMemoryBank
from protohead._ring_reduction import REREDUCE_SHARE
from tests.test_memory import float64_path, reference_prototypes, reference_sums


def twin_banks(size: int = 64, classes: int = 5, dim: int = 8, init: str = "random"):
    """A bank on the default path and one held to the float64 sums, in the same state."""
    return [
        PrototypeMemoryBank(
            dim,
            size,
            classes,
            init=init,
            on_invalid="raise",
            generator=torch.Generator().manual_seed(1),
        )
        for _ in range(2)
    ]


def snapshot(bank: PrototypeMemoryBank) -> dict[str, torch.Tensor]:
    state = {k: v.clone() for k, v in bank.state_dict().items()}
    state["counts"] = bank.class_counts.clone()
    return state


def assert_same(bank: PrototypeMemoryBank, state: dict[str, torch.Tensor]) -> None:
    assert torch.equal(bank.class_counts, state["counts"])
    for key, value in bank.state_dict().items():
        assert torch.equal(value, state[key]), key


@pytest.mark.parametrize("init", ["random", "empty"])
def test_large_batches_give_the_float64_paths_state_and_its_prototypes_to_rounding(init):
    gen = torch.Generator().manual_seed(0)
    fast, exact = twin_banks(init=init)
    # 8 rows = size / 8 (the smallest that takes the step), 24 and 40 wrap around the ring.
    for rows in (8, 24, 40, 7, 64, 3, 8):
        feats, labels = (
            torch.randn(rows, 8, generator=gen) * 4,
            torch.randint(0, 5, (rows,), generator=gen),
        )
        fast.update(feats, labels)
        with float64_path():
            exact.update(feats, labels)
        assert fast._sums_stale == (rows * REREDUCE_SHARE >= 64)
        assert_same(fast, snapshot(exact))
        got = fast.prototypes()
        torch.testing.assert_close(got, exact.prototypes(), atol=1e-6, rtol=0)
        stored, stored_labels = fast.entries()
        torch.testing.assert_close(
            got, reference_prototypes(stored, stored_labels, 5), atol=1e-6, rtol=0
        )


def test_prototypes_are_new_tensors_with_the_same_bits_on_every_call():
    bank = PrototypeMemoryBank(
        4, 32, 3, on_invalid="raise", generator=torch.Generator().manual_seed(0)
    )
    bank.update(torch.randn(20, 4), torch.randint(0, 3, (20,)))  # wraps: starts at 0, then...
    bank.update(torch.randn(20, 4), torch.randint(0, 3, (20,)))  # ...slots 20-31 and 0-7
    first = bank.prototypes()  # made by the update
    second = bank.prototypes()  # re-reduced from the ring
    assert torch.equal(first, second)
    first.zero_()
    assert torch.equal(bank.prototypes(), second)
    assert torch.allclose(second.norm(dim=1), torch.ones(3))


@pytest.mark.parametrize(
    ("features", "labels", "match"),
    [
        (torch.full((16, 4), float("nan")), torch.zeros(16, dtype=torch.long), "must be finite"),
        (torch.full((16, 4), float("inf")), torch.zeros(16, dtype=torch.long), "must be finite"),
        (
            torch.randn(16, 4),
            torch.full((16,), 3),
            r"labels must lie in \[0, 3\), got values \[3\]",
        ),
        (
            torch.randn(16, 4),
            torch.full((16,), -1),
            r"labels must lie in \[0, 3\), got values \[-1\]",
        ),
    ],
)
def test_an_invalid_large_batch_raises_and_leaves_everything_untouched(features, labels, match):
    bank = PrototypeMemoryBank(
        4, 32, 3, on_invalid="raise", generator=torch.Generator().manual_seed(0)
    )
    bank.update(torch.randn(16, 4), torch.randint(0, 3, (16,)))  # leaves the sums stale
    before, protos = snapshot(bank), bank.prototypes()
    with pytest.raises(ValueError, match=match):
        bank.update(features, labels)
    assert_same(bank, before)
    assert torch.equal(bank.prototypes(), protos)


@pytest.mark.parametrize("scale", [1e37, 1e-30])
def test_features_float32_cannot_sum_or_norm_take_the_float64_path(scale):
    # 1e37: class sums overflow float32; 1e-30: their squares underflow. Both are finite.
    bank = PrototypeMemoryBank(4, 32, 2, init="empty", on_invalid="raise")
    feats = torch.rand(32, 4, generator=torch.Generator().manual_seed(0)) * scale
    labels = torch.arange(32) % 2
    bank.update(feats, labels)
    assert not bank._sums_stale  # the float64 path took the batch
    protos = bank.prototypes()
    assert torch.allclose(protos.norm(dim=1), torch.ones(2))
    # (The reference normalises with an epsilon, so it sees the features at unit scale.)
    reference = reference_prototypes(feats / scale, labels, 2)
    torch.testing.assert_close(protos, reference, atol=1e-6, rtol=0)


def test_a_smaller_batch_after_large_ones_rebuilds_the_exact_sums():
    gen = torch.Generator().manual_seed(2)
    bank = PrototypeMemoryBank(8, 64, 5, on_invalid="raise", generator=gen)
    for _ in range(5):
        bank.update(torch.randn(16, 8, generator=gen), torch.randint(0, 5, (16,), generator=gen))
    assert bank._sums_stale
    bank.update(torch.randn(2, 8, generator=gen), torch.randint(0, 5, (2,), generator=gen))
    assert not bank._sums_stale
    feats, labels = bank.entries()
    torch.testing.assert_close(
        bank._class_sums[:5], reference_sums(feats, labels, 5), atol=1e-9, rtol=0
    )


def test_skip_mode_fused_and_oversized_batches_keep_the_float64_sums():
    gen = torch.Generator().manual_seed(3)
    banks = [
        PrototypeMemoryBank(4, 16, 3, on_invalid="skip"),
        PrototypeMemoryBank(4, 16, 3, on_invalid="raise", fused=True),
    ]
    for bank in banks:
        bank.update(torch.randn(16, 4, generator=gen), torch.randint(0, 3, (16,), generator=gen))
        assert not bank._sums_stale
    raised = PrototypeMemoryBank(4, 16, 3, on_invalid="raise")
    raised.update(torch.randn(17, 4, generator=gen), torch.randint(0, 3, (17,), generator=gen))
    assert not raised._sums_stale


def test_a_stale_memory_survives_pickling_copies_casts_and_state_dicts():
    gen = torch.Generator().manual_seed(4)
    bank = PrototypeMemoryBank(4, 32, 3, on_invalid="raise", generator=gen)
    bank.update(torch.randn(12, 4, generator=gen), torch.randint(0, 3, (12,), generator=gen))
    assert bank._sums_stale and bank._handover is not None
    expected = bank.prototypes()
    for other in (pickle.loads(pickle.dumps(bank)), copy.deepcopy(bank), bank.double()):
        assert torch.equal(other.prototypes(), expected)
    loaded = PrototypeMemoryBank(4, 32, 3, on_invalid="raise")
    loaded.load_state_dict(bank.state_dict())
    assert not loaded._sums_stale
    torch.testing.assert_close(loaded.prototypes(), expected, atol=1e-6, rtol=0)
    # Both continue alike (the loaded one from its rebuilt float64 sums).
    feats, labels = torch.randn(2, 4, generator=gen), torch.randint(0, 3, (2,), generator=gen)
    for other in (bank, loaded):
        other.update(feats, labels)
    assert_same(loaded, snapshot(bank))
    torch.testing.assert_close(loaded.prototypes(), bank.prototypes(), atol=1e-6, rtol=0)
