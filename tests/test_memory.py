from __future__ import annotations

import contextlib
from unittest import mock

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from protohead import PrototypeMemoryBank
from protohead._running_class_sums import normalise


def float64_path() -> contextlib.AbstractContextManager[object]:
    """Raise-mode updates of any size take the float64 running sums (no large-batch step)."""
    return mock.patch("protohead.memory.REREDUCE_SHARE", 0)


def reference_prototypes(features: torch.Tensor, labels: torch.Tensor, num_classes: int):
    """Class means recomputed from scratch, zero rows for absent classes."""
    protos = torch.zeros(num_classes, features.shape[1], dtype=torch.float64)
    for c in range(num_classes):
        rows = features[labels == c].double()
        if len(rows):
            protos[c] = F.normalize(rows.mean(0), dim=0)
    return protos.float()


def reference_sums(features: torch.Tensor, labels: torch.Tensor, num_classes: int):
    """Per-class feature sums in float64, recomputed from scratch."""
    sums = torch.zeros(num_classes, features.shape[1], dtype=torch.float64)
    return sums.index_add_(0, labels, features.double())


# "raise" writes with slice copies (_write_checked), "skip" with the device-gated scatter
# (_write_gated, the GPU default): both must hold exactly the same content.
# Raise mode runs batches of at least size / 8 rows through the large-batch step (float32
# re-reduction, see _ring_reduction) unless float64_path() is on: both are checked.
@pytest.mark.parametrize(
    ("on_invalid", "path"), [("raise", "default"), ("raise", "float64"), ("skip", "default")]
)
@settings(max_examples=60, deadline=None)
@given(
    size=st.integers(1, 12),
    num_classes=st.integers(1, 5),
    batch_sizes=st.lists(st.integers(0, 20), min_size=1, max_size=8),
    init=st.sampled_from(["empty", "random"]),
    seed=st.integers(0, 2**16),
)
def test_memory_holds_newest_pairs_and_exact_prototypes(
    on_invalid, path, size, num_classes, batch_sizes, init, seed
):
    gen = torch.Generator().manual_seed(seed)
    dim = 3
    bank = PrototypeMemoryBank(
        dim, size, num_classes, init=init, on_invalid=on_invalid, generator=gen
    )
    init_feats, init_labels = bank.entries()
    history_f, history_l = [init_feats], [init_labels]
    for b in batch_sizes:
        f = torch.randn(b, dim, generator=gen)
        lab = torch.randint(0, num_classes, (b,), generator=gen)
        with float64_path() if path == "float64" else contextlib.nullcontext():
            bank.update(f, lab)
        history_f.append(f)
        history_l.append(lab)
    all_f, all_l = torch.cat(history_f), torch.cat(history_l)
    expect_f, expect_l = all_f[-size:], all_l[-size:]

    got_f, got_l = bank.entries()
    torch.testing.assert_close(got_f, expect_f)
    assert torch.equal(got_l, expect_l)
    assert torch.equal(bank.class_counts, torch.bincount(expect_l, minlength=num_classes))
    assert int(bank.num_filled) == expect_l.numel()
    assert int(bank.num_skipped_updates) == 0
    # An update writes at most `size` rows (the newest), so the pointer advances by that much.
    written = sum(min(b, size) for b in batch_sizes)
    assert int(bank.ptr) == written % size
    bank._fresh_sums()  # rebuilt from the ring if a large-batch step left them stale
    torch.testing.assert_close(
        bank._class_sums[:num_classes],
        reference_sums(expect_f, expect_l, num_classes),
        atol=1e-9,
        rtol=0,
    )
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
    with float64_path():
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
    # Every class's sum is bit-identical; the extra (empty-slot) bucket is scratch.
    assert torch.equal(bank._class_sums[:3], sums_before[:3])
    bank.update(torch.randn(2, 4), torch.tensor([0, 2]))
    assert int(bank.ptr) == 2
    assert int(bank.num_skipped_updates) == 2


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"dim": 0, "size": 4, "num_classes": 2}, ValueError, r"dim must be an int >= 1, got 0"),
        ({"dim": 4, "size": -1, "num_classes": 2}, ValueError, r"size must be an int >= 1, got -1"),
        ({"dim": 4, "size": 4, "num_classes": 0}, ValueError, "num_classes must be an int >= 1"),
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


def _snapshot(bank: PrototypeMemoryBank) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in bank.state_dict().items()}


def _assert_unchanged(bank: PrototypeMemoryBank, before: dict[str, torch.Tensor]) -> None:
    for key, value in bank.state_dict().items():
        assert torch.equal(value, before[key]), key


def _edited_state(**changes: torch.Tensor) -> dict[str, torch.Tensor]:
    """A valid state of a (dim 3, size 8, 3 classes) bank with some entries replaced."""
    source = PrototypeMemoryBank(3, 8, 3, generator=torch.Generator().manual_seed(1))
    source.update(torch.randn(5, 3), torch.tensor([0, 1, 2, 0, 1]))
    return {**source.state_dict(), **changes}


@pytest.mark.parametrize(
    ("state", "match"),
    [
        (
            PrototypeMemoryBank(3, 16, 3).state_dict(),
            r"features must be a tensor of shape \(8, 3\), got a torch.float32 tensor of shape "
            r"\(16, 3\)(.|\n)*labels must be a tensor of shape \(8,\)",
        ),
        (
            _edited_state(labels=torch.tensor([0, 1, 9, 2, -1, 4, 0, 1])),
            r"labels must be in \[-1, 3\) \(-1: empty slot\), got values \[4, 9\]",
        ),
        (
            _edited_state(labels=torch.zeros(8)),
            "labels must be an integer tensor, got torch.float32",
        ),
        (_edited_state(features=torch.ones(8, 3, dtype=torch.long)), "features must be floating"),
        (_edited_state(features=torch.full((8, 3), float("nan"))), "features must be finite"),
        (
            _edited_state(ptr=torch.tensor(20)),
            r"ptr must be a 0-d integer tensor in \[0, 8\), got 20",
        ),
        (_edited_state(ptr=torch.tensor([1])), r"ptr must be a 0-d integer tensor in \[0, 8\)"),
        (_edited_state(ptr=torch.tensor(1.0)), r"ptr must be a 0-d integer tensor"),
        (
            _edited_state(num_skipped_updates=torch.tensor(-3)),
            "num_skipped_updates must be .* >= 0",
        ),
    ],
)
def test_bad_state_dict_is_rejected_before_anything_is_copied(state, match):
    bank = PrototypeMemoryBank(3, 8, 3, generator=torch.Generator().manual_seed(0))
    bank.update(torch.randn(3, 3), torch.tensor([2, 1, 0]))
    before, sums_before = _snapshot(bank), bank._class_sums.clone()
    with pytest.raises(RuntimeError, match=match):
        bank.load_state_dict(state)
    _assert_unchanged(bank, before)
    assert torch.equal(bank._class_sums, sums_before)
    bank.update(torch.randn(2, 3), torch.tensor([0, 2]))  # still works
    assert int(bank.ptr) == 5


def test_valid_state_dict_with_other_dtypes_loads_and_resyncs():
    state = _edited_state()
    state["labels"] = state["labels"].int()
    bank = PrototypeMemoryBank(3, 8, 3, init="empty")
    bank.load_state_dict(state)
    assert bank.labels.dtype == torch.long
    assert torch.equal(bank.labels, state["labels"].long())
    assert int(bank.class_counts.sum()) == 8


def test_oversized_batch_is_judged_on_all_rows():
    bank = PrototypeMemoryBank(1, 3, 10, init="empty")
    before = _snapshot(bank)
    labels = torch.tensor([99, 1, 2, 3, 4, 5, 6])  # the bad row is older than the kept 3
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 10\), got values \[99\]"):
        bank.update(torch.arange(7.0).unsqueeze(1), labels)
    _assert_unchanged(bank, before)
    nan_first = torch.arange(7.0).unsqueeze(1)
    nan_first[0] = float("nan")
    with pytest.raises(ValueError, match="features must be finite"):
        bank.update(nan_first, torch.arange(7))

    skipper = PrototypeMemoryBank(1, 3, 10, init="empty", on_invalid="skip")
    skipper.update(torch.arange(7.0).unsqueeze(1), labels)
    assert int(skipper.num_skipped_updates) == 1
    assert int(skipper.num_filled) == 0


def test_check_labels_checks_form_always_and_range_only_in_raise_mode():
    raiser = PrototypeMemoryBank(2, 4, 3, on_invalid="raise")
    skipper = PrototypeMemoryBank(2, 4, 3, on_invalid="skip")
    raiser.check_labels(torch.tensor([0, 2]))
    raiser.check_labels(torch.zeros(0, dtype=torch.long))
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\), got values \[-1, 3\]"):
        raiser.check_labels(torch.tensor([-1, 3, 0]))
    skipper.check_labels(torch.tensor([-1, 3, 0]))  # left to update(), which skips on device
    for bank in (raiser, skipper):
        with pytest.raises(TypeError, match="labels must be an integer tensor, got torch.float32"):
            bank.check_labels(torch.tensor([0.0, 1.0]))
        with pytest.raises(ValueError, match=r"labels must have shape \(b,\), got \(1, 2\)"):
            bank.check_labels(torch.tensor([[0, 1]]))
        with pytest.raises(TypeError, match="labels must be a Tensor, got list"):
            bank.check_labels([0, 1])  # type: ignore[arg-type]


def test_equal_batches_must_be_a_bool():
    with pytest.raises(TypeError, match="equal_batches must be a bool, got int"):
        PrototypeMemoryBank(4, 8, 3, equal_batches=1)  # type: ignore[arg-type]
    bank = PrototypeMemoryBank(4, 8, 3, equal_batches=True)
    assert "equal_batches=True" in repr(bank)


def full_renormalisation(bank: PrototypeMemoryBank) -> torch.Tensor:
    """Every class renormalised from the running sums, as with few classes."""
    c = bank.num_classes
    fast = bank._float32_first()
    return normalise(bank._class_sums[:c], bank._class_counts[:c], float32_first=fast)


# Many classes and small batches: each update renormalises only the classes it touched into
# a cache. That must give the bits of renormalising every class, and the exact class means.
@pytest.mark.parametrize("on_invalid", ["raise", "skip"])
@settings(max_examples=40, deadline=None)
@given(
    size=st.integers(1, 10),
    num_classes=st.integers(13, 40),  # more than 4 x the batch: the cached path
    batch_sizes=st.lists(st.integers(0, 3), min_size=1, max_size=12),
    init=st.sampled_from(["empty", "random"]),
    seed=st.integers(0, 2**16),
)
def test_renormalising_touched_classes_matches_renormalising_all(
    on_invalid, size, num_classes, batch_sizes, init, seed
):
    gen = torch.Generator().manual_seed(seed)
    bank = PrototypeMemoryBank(
        3, size, num_classes, init=init, on_invalid=on_invalid, generator=gen
    )
    for b in batch_sizes:
        with float64_path():  # small sizes would take the large-batch step
            bank.update(
                torch.randn(b, 3, generator=gen), torch.randint(0, num_classes, (b,), generator=gen)
            )
        assert bank._cache_valid or not b
        got = bank.prototypes()
        assert torch.equal(got, full_renormalisation(bank))
        feats, labels = bank.entries()
        torch.testing.assert_close(
            got, reference_prototypes(feats, labels, num_classes), atol=1e-6, rtol=0
        )


def test_class_whose_last_entry_is_evicted_is_renormalised_to_zero():
    bank = PrototypeMemoryBank(2, 3, 40, init="empty")  # 40 classes, batches of 1: cached
    with float64_path():
        for feature, label in (([1.0, 0.0], 5), ([0.0, 1.0], 6), ([1.0, 1.0], 7)):
            bank.update(torch.tensor([feature]), torch.tensor([label]))
        assert bank.prototypes()[5].tolist() == [1.0, 0.0]
        bank.update(torch.tensor([[0.0, 2.0]]), torch.tensor([6]))  # overwrites class 5's entry
    protos = bank.prototypes()
    assert bank._cache_valid
    assert protos[5].tolist() == [0.0, 0.0]
    assert protos[6].tolist() == [0.0, 1.0]
    assert int(bank.class_counts[5]) == 0


def test_skip_and_raise_modes_give_bit_identical_memories_and_close_prototypes():
    gen = torch.Generator().manual_seed(3)
    banks = [
        PrototypeMemoryBank(4, 10, 25, on_invalid=mode, generator=torch.Generator().manual_seed(1))
        for mode in ("raise", "skip")
    ]
    for b in (3, 4, 9, 12, 2, 1, 5):  # wraps around; 12 > size keeps the newest 10
        feats, labels = (
            torch.randn(b, 4, generator=gen) * 10,
            torch.randint(0, 25, (b,), generator=gen),
        )
        with float64_path():
            for bank in banks:
                bank.update(feats, labels)
    raised, skipped = banks
    for key, value in raised.state_dict().items():
        assert torch.equal(skipped.state_dict()[key], value), key
    assert torch.equal(skipped._class_sums, raised._class_sums)
    assert torch.equal(skipped._class_counts, raised._class_counts)
    # Raise mode on the CPU normalises in float32 first (skip mode in float64): float32 rounding.
    torch.testing.assert_close(skipped.prototypes(), raised.prototypes(), atol=3e-7, rtol=0)
    feats, labels = raised.entries()
    reference = reference_prototypes(feats, labels, 25)
    for bank in banks:
        torch.testing.assert_close(bank.prototypes(), reference, atol=1e-6, rtol=0)


# (classes, dim): small tables (float64 only) and tables of 32768 entries, which raise mode
# normalises in float32 first, each with every class renormalised or the cache.
TABLES = [(2, 4), (50, 4), (4, 8192), (8192, 4)]


@pytest.mark.parametrize("on_invalid", ["raise", "skip"])
@pytest.mark.parametrize("scale", [1.0, 1e30, 1e-30, 3e38])
@pytest.mark.parametrize(("num_classes", "dim"), TABLES)
def test_prototypes_of_extreme_finite_features_are_unit_rows(num_classes, dim, scale, on_invalid):
    bank = PrototypeMemoryBank(dim, 8, num_classes, init="empty", on_invalid=on_invalid)
    base = torch.tensor([[1.0, 0.5, -0.5, 0.0], [0.75, 0.0, 1.0, 0.0], [0.5, 0.5, 0.5, 0.5]])
    feats = base.repeat(1, dim // 4) * scale  # finite; two class-0 rows sum past 3.4e38
    bank.update(feats[:1], torch.tensor([0]))  # fills the cache where there is one
    bank.update(feats[1:], torch.tensor([0, 1]))
    protos = bank.prototypes()
    sums = torch.stack([feats[:2].double().sum(0), feats[2].double()])
    expected = (sums / sums.norm(dim=1, keepdim=True)).float()  # F.normalize's eps: too big
    torch.testing.assert_close(protos[:2], expected, atol=1e-6, rtol=0)
    assert torch.equal(protos[2:], torch.zeros(num_classes - 2, dim))


@pytest.mark.parametrize("on_invalid", ["raise", "skip"])
def test_cached_and_full_renormalisation_agree_bit_for_bit_on_a_big_table(on_invalid):
    # 8192 classes x dim 4: raise mode normalises in float32 first, in the cache (batches
    # of 1-3) and in full (prototypes() after a batch of 4096 invalidates the cache).
    gen = torch.Generator().manual_seed(7)
    bank = PrototypeMemoryBank(4, 4096, 8192, init="empty", on_invalid=on_invalid, generator=gen)
    assert bank._float32_first() == (on_invalid == "raise")
    for b in (1, 3, 2, 3, 3, 1, 2, 3, 3, 3, 2, 3, 1, 3, 3, 3, 3, 3, 3, 3, 3, 3, 1, 2):
        bank.update(torch.randn(b, 4, generator=gen) * 5, torch.randint(0, 40, (b,), generator=gen))
        assert bank._cache_valid
        cached = bank.prototypes()
        assert torch.equal(cached, full_renormalisation(bank))
    feats, labels = bank.entries()
    reference = reference_prototypes(feats, labels, 8192)
    torch.testing.assert_close(cached, reference, atol=1e-6, rtol=0)
    with float64_path():  # (else raise mode takes the large-batch step)
        bank.update(
            torch.randn(4096, 4, generator=gen), torch.randint(0, 40, (4096,), generator=gen)
        )
    assert not bank._cache_valid
    feats, labels = bank.entries()
    reference = reference_prototypes(feats, labels, 8192)
    torch.testing.assert_close(bank.prototypes(), reference, atol=1e-6, rtol=0)


def test_prototypes_are_a_new_tensor_that_later_updates_leave_alone():
    bank = PrototypeMemoryBank(4, 8, 30, generator=torch.Generator().manual_seed(0))
    bank.update(torch.randn(2, 4), torch.tensor([0, 1]))  # 30 classes, 2 rows: cached
    held = bank.prototypes()
    kept = held.clone()
    bank.update(torch.randn(2, 4), torch.tensor([0, 1]))
    assert torch.equal(held, kept)  # e.g. saved by autograd for the step's backward
    held.zero_()
    assert not torch.equal(bank.prototypes(), held)
