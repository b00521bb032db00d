from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from protohead import PrototypeMemoryBank


def reference_prototypes(features: torch.Tensor, labels: torch.Tensor, num_classes: int):
    """Class means recomputed from scratch, zero rows for absent classes."""
    protos = torch.zeros(num_classes, features.shape[1], dtype=torch.float64)
    for c in range(num_classes):
        rows = features[labels == c].double()
        if len(rows):
            protos[c] = F.normalize(rows.mean(0), dim=0)
    return protos.float()


@settings(max_examples=60, deadline=None)
@given(
    size=st.integers(1, 12),
    num_classes=st.integers(1, 5),
    batch_sizes=st.lists(st.integers(0, 20), min_size=1, max_size=8),
    init=st.sampled_from(["empty", "random"]),
    seed=st.integers(0, 2**16),
)
def test_memory_holds_newest_pairs_and_exact_prototypes(size, num_classes, batch_sizes, init, seed):
    gen = torch.Generator().manual_seed(seed)
    dim = 3
    bank = PrototypeMemoryBank(dim, size, num_classes, init=init, generator=gen)
    init_feats, init_labels = bank.entries()
    history_f, history_l = [init_feats], [init_labels]
    for b in batch_sizes:
        f = torch.randn(b, dim, generator=gen)
        lab = torch.randint(0, num_classes, (b,), generator=gen)
        bank.update(f, lab)
        history_f.append(f)
        history_l.append(lab)
    all_f, all_l = torch.cat(history_f), torch.cat(history_l)
    expect_f, expect_l = all_f[-size:], all_l[-size:]

    got_f, got_l = bank.entries()
    torch.testing.assert_close(got_f, expect_f)
    assert torch.equal(got_l, expect_l)
    assert torch.equal(bank.class_counts, torch.bincount(expect_l, minlength=num_classes))
    torch.testing.assert_close(
        bank.prototypes(), reference_prototypes(expect_f, expect_l, num_classes), atol=1e-5, rtol=0
    )


def test_empty_class_has_zero_prototype_and_prototypes_are_unit_norm():
    bank = PrototypeMemoryBank(4, 8, 3, init="empty")
    bank.update(torch.randn(5, 4), torch.tensor([0, 0, 2, 2, 2]))
    protos = bank.prototypes()
    assert protos.dtype == torch.float32
    assert torch.equal(protos[1], torch.zeros(4))
    torch.testing.assert_close(protos[[0, 2]].norm(dim=1), torch.ones(2))


def test_class_that_leaves_memory_returns_to_zero_prototype():
    bank = PrototypeMemoryBank(2, 2, 2, init="empty")
    bank.update(torch.tensor([[1.0, 2.0], [3.0, 1.0]]), torch.tensor([0, 0]))
    bank.update(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([1, 1]))
    assert bank.class_counts.tolist() == [0, 2]
    assert torch.equal(bank.prototypes()[0], torch.zeros(2))


def test_random_init_fills_every_slot():
    bank = PrototypeMemoryBank(8, 100, 10, generator=torch.Generator().manual_seed(0))
    assert int(bank.class_counts.sum()) == 100
    assert (bank.labels >= 0).all()
    assert bank.init == "random"


def test_oversized_update_keeps_newest_rows():
    bank = PrototypeMemoryBank(1, 3, 10, init="empty")
    bank.update(torch.arange(7.0).unsqueeze(1), torch.arange(7))
    feats, labels = bank.entries()
    assert feats.squeeze(1).tolist() == [4.0, 5.0, 6.0]
    assert labels.tolist() == [4, 5, 6]


def test_stores_float32_from_low_precision_input():
    bank = PrototypeMemoryBank(4, 8, 3, init="empty")
    bank.update(torch.randn(2, 4, dtype=torch.bfloat16), torch.tensor([0, 1]))
    assert bank.features.dtype == torch.float32
    assert bank.prototypes().dtype == torch.float32


def test_update_does_not_track_grad():
    bank = PrototypeMemoryBank(4, 8, 3, init="empty")
    feats = torch.randn(2, 4, requires_grad=True)
    bank.update(feats, torch.tensor([0, 1]))
    assert not bank.features.requires_grad
    assert not bank.prototypes().requires_grad


def test_state_dict_round_trip_restores_exactly():
    gen = torch.Generator().manual_seed(1)
    bank = PrototypeMemoryBank(4, 16, 5, generator=gen)
    for _ in range(5):
        bank.update(torch.randn(7, 4, generator=gen), torch.randint(0, 5, (7,), generator=gen))
    state = bank.state_dict()
    assert set(state) == {"features", "labels", "ptr", "num_skipped_updates"}

    clone = PrototypeMemoryBank(4, 16, 5, init="empty")
    clone.load_state_dict(state)
    assert torch.equal(clone.features, bank.features)
    assert torch.equal(clone.labels, bank.labels)
    assert torch.equal(clone.ptr, bank.ptr)
    assert torch.equal(clone.class_counts, bank.class_counts)
    torch.testing.assert_close(clone.prototypes(), bank.prototypes(), atol=1e-6, rtol=0)
    # Both continue identically.
    f, lab = torch.randn(3, 4), torch.tensor([1, 2, 3])
    bank.update(f, lab)
    clone.update(f, lab)
    torch.testing.assert_close(clone.prototypes(), bank.prototypes(), atol=1e-6, rtol=0)


def test_running_sums_do_not_drift_over_many_updates():
    gen = torch.Generator().manual_seed(0)
    bank = PrototypeMemoryBank(16, 64, 4, generator=gen)
    for _ in range(600):
        bank.update(
            torch.randn(32, 16, generator=gen) * 50, torch.randint(0, 4, (32,), generator=gen)
        )
    incremental = bank._class_sums.clone()
    bank.resync()
    assert (incremental - bank._class_sums).abs().max() < 1e-9


@pytest.mark.parametrize(
    ("features", "labels", "exc", "match"),
    [
        (torch.randn(2, 5), torch.tensor([0, 1]), ValueError, r"features must have shape \(b, 4\)"),
        (torch.randn(4), torch.tensor([0]), ValueError, r"features must have shape"),
        (torch.randn(2, 4), torch.tensor([[0, 1]]), ValueError, r"labels must have shape \(b,\)"),
        (torch.randn(2, 4), torch.tensor([0, 1, 2]), ValueError, "same batch size, got 2 and 3"),
        (torch.randn(2, 4), torch.tensor([0.0, 1.0]), TypeError, "labels must be an integer"),
        (torch.ones(2, 4, dtype=torch.long), torch.tensor([0, 1]), TypeError, "floating point"),
        (torch.randn(2, 4), torch.tensor([0, 3]), ValueError, r"labels must lie in \[0, 3\)"),
        (torch.randn(2, 4), torch.tensor([-1, 0]), ValueError, r"labels must lie in \[0, 3\)"),
        (torch.tensor([[0.0, float("nan"), 0, 0]]), torch.tensor([1]), ValueError, "finite"),
        (torch.tensor([[0.0, float("inf"), 0, 0]]), torch.tensor([1]), ValueError, "finite"),
        ([[0.0, 0, 0, 0]], torch.tensor([1]), TypeError, "features must be a Tensor"),
    ],
)
def test_bad_update_raises_and_leaves_memory_untouched(features, labels, exc, match):
    bank = PrototypeMemoryBank(4, 6, 3, generator=torch.Generator().manual_seed(0))
    before = {k: v.clone() for k, v in bank.state_dict().items()}
    sums_before = bank._class_sums.clone()
    with pytest.raises(exc, match=match):
        bank.update(features, labels)
    for key, value in bank.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert torch.equal(bank._class_sums, sums_before)


def test_skip_mode_ignores_invalid_batch_without_raising():
    bank = PrototypeMemoryBank(4, 6, 3, on_invalid="skip", generator=torch.Generator())
    before = {k: v.clone() for k, v in bank.state_dict().items() if k != "num_skipped_updates"}
    sums_before = bank._class_sums.clone()
    bank.update(torch.tensor([[float("nan"), 0, 0, 0], [1.0, 0, 0, 0]]), torch.tensor([0, 1]))
    bank.update(torch.randn(2, 4), torch.tensor([0, 7]))
    assert int(bank.num_skipped_updates) == 2
    for key, value in before.items():
        assert torch.equal(bank.state_dict()[key], value), key
    assert torch.equal(bank._class_sums, sums_before)
    bank.update(torch.randn(2, 4), torch.tensor([0, 2]))
    assert int(bank.ptr) == 2
    assert int(bank.num_skipped_updates) == 2


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"dim": 0, "size": 4, "num_classes": 2}, ValueError, "dim must be >= 1, got 0"),
        ({"dim": 4, "size": -1, "num_classes": 2}, ValueError, "size must be >= 1, got -1"),
        ({"dim": 4, "size": 4, "num_classes": 0}, ValueError, "num_classes must be >= 1"),
        ({"dim": 4.0, "size": 4, "num_classes": 2}, TypeError, "dim must be an int"),
        ({"dim": 4, "size": 4, "num_classes": 2, "init": "zeros"}, ValueError, "init must be"),
        (
            {"dim": 4, "size": 4, "num_classes": 2, "on_invalid": "warn"},
            ValueError,
            "on_invalid must be",
        ),
    ],
)
def test_constructor_validation(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        PrototypeMemoryBank(**kwargs)
