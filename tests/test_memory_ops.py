"""How many aten ops one memory step dispatches, and that none of them waits for the device.

Counting ops is deterministic (a TorchDispatchMode sees every op), so these bounds are fair
tests where timings are not; benchmarks/bench_memory_ops.py prints the same counts next to
timings. Each op is a kernel launch on an accelerator, where launches dominate the step.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from protohead import PrototypeMemoryBank

HOST_SYNC_OPS = {"_local_scalar_dense", "item", "is_nonzero", "nonzero", "equal", "allclose"}
# Counted before these bounds (ImageNet-scale memory, 1000 classes): skip 56, raise 42 with
# 2 host syncs; the naive re-reduction dispatches 11.
MAX_SKIP_OPS = 35
MAX_RAISE_OPS = 34


class OpCounter(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        self.ops.append(func.__name__.split(".")[0])
        return func(*args, **(kwargs or {}))


def count_step(bank: PrototypeMemoryBank, batch: int) -> list[str]:
    """The ops of one warmed-up prototypes() + update(), as TReX runs them per step."""
    gen = torch.Generator().manual_seed(0)
    features = torch.randn(batch, bank.dim, generator=gen)
    labels = torch.randint(0, bank.num_classes, (batch,), generator=gen)
    bank.prototypes()
    bank.update(features, labels)  # warm-up: per-batch-size constants, the prototype cache
    with OpCounter() as counter:
        bank.prototypes()
        bank.update(features, labels)
    return counter.ops


# (size, classes, dim, batch): ImageNet-scale memory with many classes (prototypes from the
# cache) and with few (prototypes renormalised in full), and a small memory.
SIZES = [(65536, 1000, 256, 256), (65536, 10000, 64, 256), (2048, 10, 128, 128)]


@pytest.mark.parametrize(("size", "classes", "dim", "batch"), SIZES)
def test_skip_mode_step_dispatches_few_ops_and_never_syncs(size, classes, dim, batch):
    bank = PrototypeMemoryBank(dim, size, classes, on_invalid="skip")
    ops = count_step(bank, batch)
    assert not HOST_SYNC_OPS & set(ops), ops
    assert len(ops) <= MAX_SKIP_OPS, ops


@pytest.mark.parametrize(("size", "classes", "dim", "batch"), SIZES)
def test_raise_mode_step_reads_the_host_once_or_twice(size, classes, dim, batch):
    # Once for the validity check and the write pointer; with a big prototype table (at
    # least 32768 entries) once more for the range check of the float32 normalisation
    # (raise mode on the CPU, where reading the host costs nothing).
    bank = PrototypeMemoryBank(dim, size, classes, on_invalid="raise")
    ops = count_step(bank, batch)
    expected = ["_local_scalar_dense"] + (["equal"] if classes * dim >= 1 << 15 else [])
    assert sorted(op for op in ops if op in HOST_SYNC_OPS) == expected
    assert len(ops) <= MAX_RAISE_OPS, ops


def test_skipped_batch_dispatches_the_same_ops_as_a_written_one():
    # The gate is data, not control flow: an invalid batch costs what a valid one does, so
    # the step keeps one shape (and could be replayed from a CUDA graph).
    bank = PrototypeMemoryBank(8, 64, 100, on_invalid="skip")
    valid = count_step(bank, 4)
    nan_features, bad_labels = torch.full((4, 8), float("nan")), torch.tensor([0, 1, 2, 500])
    with OpCounter() as counter:
        bank.prototypes()
        bank.update(nan_features, bad_labels)
    assert counter.ops == valid
    assert int(bank.num_skipped_updates) == 1
