"""Two-process gloo tests on CPU: the memory bank must be identical on every rank."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from protohead import PrototypeMemoryBank, TReX, all_gather_rows, all_gather_variable
from protohead.distributed import all_gather_scalar

pytestmark = pytest.mark.distributed

WORLD_SIZE = 2


def _init(rank: int, init_file: str, timeout_s: float | None = None) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    kwargs = {} if timeout_s is None else {"timeout": timedelta(seconds=timeout_s)}
    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD_SIZE, **kwargs
    )


def _memory_batches(rank: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The 6 (features, labels) batches that ``rank`` feeds its memory in _memory_worker."""
    gen = torch.Generator().manual_seed(100 + rank)  # ranks see different data
    batches = []
    for step in range(6):
        batch = 1 + rank * 3 + step  # different batch sizes per rank and per step
        batches.append(
            (torch.randn(batch, 5, generator=gen), torch.randint(0, 4, (batch,), generator=gen))
        )
    return batches


def _memory_worker(rank: int, init_file: str, out_dir: str) -> None:
    _init(rank, init_file)
    try:
        bank = PrototypeMemoryBank(5, 16, 4, init="empty")
        for features, labels in _memory_batches(rank):
            bank.update(features, labels)
        bank.update(
            torch.randn(0, 5), torch.zeros(0, dtype=torch.long)
        )  # an empty rank-local batch
        gathered = all_gather_variable(torch.full((rank + 1, 2), float(rank)))
        pair = all_gather_rows(
            torch.full((rank + 1, 3), float(rank)), torch.arange(rank + 1) + 10 * rank
        )
        torch.save(
            {
                "state": bank.state_dict(),
                "protos": bank.prototypes(),
                "gathered": gathered,
                "pair": pair,
            },
            Path(out_dir) / f"rank{rank}.pt",
        )
    finally:
        dist.destroy_process_group()


def _trex_worker(rank: int, init_file: str, out_dir: str) -> None:
    _init(rank, init_file)
    try:
        torch.manual_seed(0)  # same init on both ranks
        model = TReX(
            "resnet18",
            num_classes=3,
            projector_hidden_dim=16,
            projector_out_dim=8,
            memory_size=12,
            memory_init="empty",
        )
        gen = torch.Generator().manual_seed(rank)
        batch = 2 + rank
        crops = [
            torch.randn(batch, 3, 32, 32, generator=gen),
            torch.randn(batch, 3, 16, 16, generator=gen),
        ]
        labels = torch.randint(0, 3, (batch,), generator=gen)
        model.train()
        model(crops, labels)
        torch.save({"memory": model.memory.state_dict()}, Path(out_dir) / f"trex{rank}.pt")
    finally:
        dist.destroy_process_group()


def _reject_worker(rank: int, init_file: str, out_dir: str) -> None:
    # A short timeout turns a desynchronised collective into an error instead of a hang.
    _init(rank, init_file, timeout_s=60)
    try:
        torch.manual_seed(0)  # same init on both ranks
        model = TReX(
            "resnet18",
            num_classes=3,
            projector_hidden_dim=16,
            projector_out_dim=8,
            memory_size=12,
            memory_init="empty",
        ).train()  # CPU tensors: on_invalid="auto" resolves to "raise"
        gen = torch.Generator().manual_seed(rank)

        def batch() -> tuple[list[torch.Tensor], torch.Tensor]:
            size = 2 + rank  # different batch sizes per rank
            crops = [
                torch.randn(size, 3, 32, 32, generator=gen),
                torch.randn(size, 3, 16, 16, generator=gen),
            ]
            return crops, torch.randint(0, 3, (size,), generator=gen)

        def full_state() -> dict:
            return {
                k: v.clone() if isinstance(v, torch.Tensor) else v
                for k, v in model.state_dict().items()
            }

        def same(a: dict, b: dict) -> bool:
            return a.keys() == b.keys() and all(
                torch.equal(v, b[k]) if isinstance(v, torch.Tensor) else v == b[k]
                for k, v in a.items()
            )

        model(*batch())  # a good step, so the states are not the initial ones
        results = []
        for case in ("bad-label-on-1", "nan-on-0-shape-on-1"):
            crops, labels = batch()
            if case == "bad-label-on-1" and rank == 1:
                labels[0] = 7
            if case == "nan-on-0-shape-on-1":
                if rank == 0:
                    crops[1][0, 0, 0, 0] = float("nan")
                else:
                    labels = labels[:1]
            before = full_state()
            error = None
            try:
                model(crops, labels)
            except ValueError as err:  # caught: the loop goes on, as a tolerant trainer would
                error = str(err)
            results.append({"error": error, "unchanged": same(before, full_state())})
        model(*batch())  # a good step after the rejected ones
        torch.save(
            {
                "results": results,
                "memory": model.memory.state_dict(),
                "num_updates": model.teacher.num_updates,
                "flags": all_gather_scalar(torch.tensor(10 + rank)),
            },
            Path(out_dir) / f"reject{rank}.pt",
        )
    finally:
        dist.destroy_process_group()


def _equal_batches_worker(rank: int, init_file: str, out_dir: str) -> None:
    import protohead.distributed as pd

    _init(rank, init_file)
    try:
        calls: list[int] = []
        original = pd._all_gather_single

        def counting(output, tensor):
            calls.append(tensor.shape[0])
            original(output, tensor)

        pd._all_gather_single = counting
        results = {}
        for equal in (False, True):
            gen = torch.Generator().manual_seed(100 + rank)  # ranks see different data
            bank = PrototypeMemoryBank(5, 16, 4, init="empty", equal_batches=equal)
            calls.clear()
            for _ in range(3):
                bank.update(
                    torch.randn(4, 5, generator=gen), torch.randint(0, 4, (4,), generator=gen)
                )
            results[equal] = {"state": bank.state_dict(), "collectives": len(calls)}
        torch.save(results, Path(out_dir) / f"equal{rank}.pt")
    finally:
        dist.destroy_process_group()


def _spawn(worker, tmp_path: Path) -> None:
    mp.spawn(worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD_SIZE, join=True)


def test_memory_identical_across_ranks_with_different_batch_sizes(tmp_path):
    _spawn(_memory_worker, tmp_path)
    r0 = torch.load(tmp_path / "rank0.pt")
    r1 = torch.load(tmp_path / "rank1.pt")
    for key in r0["state"]:
        assert torch.equal(r0["state"][key], r1["state"][key]), key
    assert torch.equal(r0["protos"], r1["protos"])
    # 6 steps of (1+s) + (4+s) rows = 60 rows went through a 16-slot memory.
    assert int(r0["state"]["ptr"]) == 60 % 16
    # One process fed each step's rows of rank 0, then rank 1, holds the same memory.
    single = PrototypeMemoryBank(5, 16, 4, init="empty")
    for (f0, l0), (f1, l1) in zip(_memory_batches(0), _memory_batches(1), strict=True):
        single.update(torch.cat([f0, f1]), torch.cat([l0, l1]))
    for key, value in single.state_dict().items():
        assert torch.equal(r0["state"][key], value), key
    torch.testing.assert_close(r0["protos"], single.prototypes(), atol=1e-6, rtol=0)
    assert int(single.num_filled) == 16
    assert r0["gathered"].tolist() == [[0.0, 0.0], [1.0, 1.0], [1.0, 1.0]]
    assert torch.equal(r0["gathered"], r1["gathered"])
    for r in (r0, r1):  # one count exchange for both tensors, rows stay paired
        features, labels = r["pair"]
        assert features[:, 0].tolist() == [0.0, 1.0, 1.0] and labels.tolist() == [0, 10, 11]


def test_equal_batches_skip_the_row_count_exchange_and_give_the_same_memory(tmp_path):
    _spawn(_equal_batches_worker, tmp_path)
    r0, r1 = (torch.load(tmp_path / f"equal{r}.pt") for r in range(2))
    for r in (r0, r1):
        # 3 updates: counts + features + labels each by default, only the data when equal.
        assert r[False]["collectives"] == 9 and r[True]["collectives"] == 6
        for key in r[False]["state"]:
            assert torch.equal(r[False]["state"][key], r[True]["state"][key]), key
    assert torch.equal(r0[True]["state"]["features"], r1[True]["state"]["features"])
    assert int(r0[True]["state"]["ptr"]) == 3 * 8 % 16


def test_trex_memory_gathers_teacher_features_from_all_ranks(tmp_path):
    _spawn(_trex_worker, tmp_path)
    m0 = torch.load(tmp_path / "trex0.pt")["memory"]
    m1 = torch.load(tmp_path / "trex1.pt")["memory"]
    for key in m0:
        assert torch.equal(m0[key], m1[key]), key
    assert int(m0["ptr"]) == 2 + 3  # both ranks' global crops were enqueued
    assert (m0["labels"] >= 0).sum() == 5


def test_invalid_step_on_one_rank_is_rejected_on_every_rank_and_ranks_stay_in_step(tmp_path):
    _spawn(_reject_worker, tmp_path)
    r0, r1 = (torch.load(tmp_path / f"reject{r}.pt") for r in range(2))
    first = (
        "invalid training step on rank(s) [1] of 2 (rank 1: labels out of range); every rank "
        "rejected it before any state changed"
    )
    assert r0["results"][0]["error"] == first
    assert r1["results"][0]["error"] == (
        f"{first}. On this rank (rank 1): labels must lie in [0, 3), got values [7]; "
        "no state was changed"
    )
    second = (
        "invalid training step on rank(s) [0, 1] of 2 (rank 0: non-finite crops, rank 1: bad "
        "crop or label shapes/types); every rank rejected it before any state changed"
    )
    assert r0["results"][1]["error"] == (
        f"{second}. On this rank (rank 0): crops[1] must be finite, got NaN or inf; "
        "no state was changed"
    )
    assert r1["results"][1]["error"] == (
        f"{second}. On this rank (rank 1): labels must have shape (3,), got (1,)"
    )
    for r in (r0, r1):  # BN statistics, EMA weights and count, memory: all bit-identical
        assert [result["unchanged"] for result in r["results"]] == [True, True]
        assert r["num_updates"] == 2  # the two good steps only
        assert r["flags"].tolist() == [10, 11]
    for key in r0["memory"]:
        assert torch.equal(r0["memory"][key], r1["memory"][key]), key
    assert int(r0["memory"]["ptr"]) == 2 * (2 + 3)  # both good steps of both ranks
    page = (Path(__file__).resolve().parents[1] / "docs" / "troubleshooting.md").read_text()
    assert f"```text\nValueError: {first}\n```" in page


def test_gather_without_process_group_is_identity():
    x = torch.randn(3, 2)
    assert torch.equal(all_gather_variable(x), x)
    with pytest.raises(ValueError, match="at least 1 dimension"):
        all_gather_variable(torch.tensor(1.0))
    y = torch.arange(3)
    for equal in (False, True):
        gx, gy = all_gather_rows(x, y, equal_rows=equal)
        assert torch.equal(gx, x) and torch.equal(gy, y)


def test_gather_scalar_without_process_group_and_bad_input():
    assert all_gather_scalar(torch.tensor(4)).tolist() == [4]
    with pytest.raises(ValueError, match=r"value must be a 0-d tensor, got shape \(2,\)"):
        all_gather_scalar(torch.zeros(2))
    with pytest.raises(TypeError, match="value must be a Tensor, got int"):
        all_gather_scalar(3)  # type: ignore[arg-type]


def test_gather_rows_rejects_bad_input():
    with pytest.raises(ValueError, match="at least one tensor"):
        all_gather_rows()
    with pytest.raises(ValueError, match=r"same number of rows, got \[3, 2\]"):
        all_gather_rows(torch.zeros(3, 2), torch.zeros(2))
    with pytest.raises(ValueError, match=r"tensors\[1\] must have at least 1 dimension"):
        all_gather_rows(torch.zeros(3), torch.tensor(1))
    with pytest.raises(TypeError, match=r"tensors\[0\] must be a Tensor, got list"):
        all_gather_rows([1, 2])  # type: ignore[arg-type]


def test_import_works_on_torch_builds_without_distributed_collectives():
    # Builds without distributed support only stub torch.distributed; importing protohead and
    # single-process gathers must still work there.
    code = (
        "import torch, torch.distributed as d\n"
        "for name in ('all_gather_into_tensor', 'all_gather_single'):\n"
        "    if hasattr(d, name): delattr(d, name)\n"
        "import protohead\n"
        "print(protohead.all_gather_variable(torch.arange(2)).tolist())\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.strip() == "[0, 1]"
