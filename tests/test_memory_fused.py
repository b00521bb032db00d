"""PrototypeMemoryBank(fused=True): the compiled step holds the eager step's state."""

from __future__ import annotations

import functools
import warnings
from pathlib import Path

import pytest
import torch

from protohead import PrototypeMemoryBank
from protohead._fused_memory_step import FusedStep


@functools.cache
def compile_works() -> bool:
    try:
        torch.compile(lambda x: x + 1, fullgraph=True)(torch.ones(2))
    except Exception:  # no C++ compiler, no backend...
        return False
    return True


needs_compile = pytest.mark.skipif(
    not compile_works(), reason="torch.compile has no working backend on this machine"
)


def twin_banks(mode: str, size: int = 24, classes: int = 7, dim: int = 8):
    """An eager and a fused memory in the same initial state."""
    return [
        PrototypeMemoryBank(
            dim,
            size,
            classes,
            on_invalid=mode,
            fused=fused,
            generator=torch.Generator().manual_seed(3),
        )
        for fused in (False, True)
    ]


def batches(classes: int, dim: int):
    """Valid batches of two sizes that wrap around the ring, and two invalid ones."""
    gen = torch.Generator().manual_seed(0)
    for step in range(12):
        rows = 5 if step % 3 else 9
        features = torch.randn(rows, dim, generator=gen) * 3
        labels = torch.randint(0, classes, (rows,), generator=gen)
        if step == 4:
            features[1, 2] = float("nan")
        if step == 8:
            labels[0] = classes  # out of range
        yield features, labels


@needs_compile
@pytest.mark.parametrize("mode", ["skip", "raise"])
def test_fused_step_keeps_the_eager_state(mode):
    eager, fused = twin_banks(mode)
    for features, labels in batches(7, 8):
        got = []
        for bank in (eager, fused):
            protos = bank.prototypes()
            try:
                bank.update(features, labels)
            except ValueError as error:
                got.append((protos, str(error)))
            else:
                got.append((protos, None))
        torch.testing.assert_close(got[1][0], got[0][0], rtol=1e-6, atol=1e-7)
        assert got[1][1] == got[0][1]  # the same error, or none
    for key, value in eager.state_dict().items():
        assert torch.equal(fused.state_dict()[key], value), key
    eager._fresh_sums()  # a large raise-mode batch leaves them to be rebuilt from the ring
    torch.testing.assert_close(fused._class_sums[:7], eager._class_sums[:7], rtol=0, atol=1e-12)
    assert torch.equal(fused.class_counts, eager.class_counts)
    assert int(fused.num_skipped_updates) == (2 if mode == "skip" else 0)


@needs_compile
def test_fused_raise_mode_rejects_a_bad_batch_with_the_memory_untouched():
    bank = PrototypeMemoryBank(4, 6, 3, on_invalid="raise", fused=True)
    bank.update(torch.randn(4, 4), torch.tensor([0, 1, 2, 0]))
    before = {k: v.clone() for k, v in bank.state_dict().items()}
    protos = bank.prototypes()
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\), got values \[7\]"):
        bank.update(torch.randn(2, 4), torch.tensor([1, 7]))
    with pytest.raises(ValueError, match="features must be finite"):
        bank.update(torch.full((2, 4), float("inf")), torch.tensor([1, 2]))
    for key, value in bank.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert torch.equal(bank.prototypes(), protos)


def test_a_compile_failure_warns_once_and_runs_the_same_step_eagerly(monkeypatch):
    def broken_compile(function, **kwargs):
        def call(*args):
            raise torch._dynamo.exc.TorchDynamoException("no C++ compiler found")

        return call

    monkeypatch.setattr(FusedStep, "_compiled", {})
    monkeypatch.setattr(torch, "compile", broken_compile)
    eager, fused = twin_banks("skip")
    first = torch.randn(3, 8), torch.tensor([0, 1, 2])
    with pytest.warns(
        RuntimeWarning, match=r"torch.compile failed \(TorchDynamoException: no C"
    ) as seen:
        fused.update(*first)
    # docs/troubleshooting.md quotes the message, with the error elided.
    message = str(seen[0].message).replace(
        "TorchDynamoException: no C++ compiler found", "BackendCompilerFailed: ..."
    )
    page = (Path(__file__).resolve().parents[1] / "docs" / "troubleshooting.md").read_text()
    assert f"RuntimeWarning: {message}" in page
    eager.update(*first)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no second warning
        for features, labels in batches(7, 8):
            for bank in (eager, fused):
                bank.update(features, labels)
            torch.testing.assert_close(fused.prototypes(), eager.prototypes())
    assert fused._fused_step.failed.startswith("TorchDynamoException")
    assert int(fused.num_skipped_updates) == int(eager.num_skipped_updates) == 2


@needs_compile
def test_fused_step_compiles_to_at_most_twenty_kernels():
    # One update + prototypes, counted as the kernels Inductor generates for the two compiled
    # graphs (each runs once per step); the eager path dispatches some thirty ops instead.
    from torch._inductor import config as inductor_config
    from torch._inductor import metrics

    torch._dynamo.reset()
    saved = FusedStep._compiled.copy()
    FusedStep._compiled.clear()
    try:
        with inductor_config.patch(fx_graph_cache=False):
            metrics.reset()
            bank = PrototypeMemoryBank(16, 64, 5, on_invalid="skip", fused=True)
            bank.prototypes()
            bank.update(torch.randn(8, 16), torch.randint(0, 5, (8,)))
            kernels = metrics.generated_kernel_count
    finally:
        FusedStep._compiled.clear()
        FusedStep._compiled.update(saved)
    assert 1 <= kernels <= 20


def test_fused_must_be_a_bool():
    with pytest.raises(TypeError, match="fused must be a bool, got int 1"):
        PrototypeMemoryBank(4, 8, 2, fused=1)


@needs_compile
def test_fused_bank_moves_casts_and_reloads_like_the_eager_one():
    eager, fused = twin_banks("skip")
    for features, labels in batches(7, 8):
        eager.update(features, labels)
        fused.update(features, labels)
    fused = fused.double().float()  # casts leave the memory's dtypes alone
    restored = PrototypeMemoryBank(8, 24, 7, on_invalid="skip", fused=True)
    restored.load_state_dict(fused.state_dict())
    torch.testing.assert_close(restored.prototypes(), eager.prototypes())
    assert "fused=True" in repr(restored)


def test_a_pickle_from_before_fused_loads_as_an_eager_memory():
    import pickle

    bank = PrototypeMemoryBank(4, 8, 3, init="empty")
    bank.update(torch.randn(2, 4), torch.tensor([0, 2]))
    del bank.__dict__["fused"], bank.__dict__["_fused_step"]  # as pickled by 0.1
    restored = pickle.loads(pickle.dumps(bank))
    assert restored.fused is False and restored._fused_step is None
    restored.update(torch.randn(2, 4), torch.tensor([1, 2]))
    assert restored.class_counts.tolist() == [1, 1, 2]
    assert "fused=False" in repr(restored.to("cpu"))
