"""Tests for protohead.train.batchnorm.recalibrate_batchnorm (precise BN after multi-crop)."""

from __future__ import annotations

import datetime
import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from protohead import TReX
from protohead.train.batchnorm import recalibrate_batchnorm


def _net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.BatchNorm1d(4))


def test_statistics_become_averages_over_the_batches_and_settings_are_restored():
    net = _net()
    net.eval()
    net[1].momentum = 0.3
    data = [torch.randn(16, 3) * 2 + 1 for _ in range(5)]
    weights = [p.clone() for p in net.parameters()]
    assert recalibrate_batchnorm(net, data, num_batches=5) == 5
    hidden = [net[0](x).detach() for x in data]
    assert torch.allclose(
        net[1].running_mean, torch.stack([h.mean(0) for h in hidden]).mean(0), atol=1e-5
    )
    assert torch.allclose(
        net[1].running_var, torch.stack([h.var(0) for h in hidden]).mean(0), atol=1e-5
    )
    assert int(net[1].num_batches_tracked) == 5
    assert net[1].momentum == 0.3 and not net.training
    assert all(torch.equal(a, b) for a, b in zip(weights, net.parameters(), strict=True))


def test_num_batches_caps_the_batches_used():
    net = _net()
    data = [torch.randn(8, 3), torch.randn(8, 3) + 10.0]
    assert recalibrate_batchnorm(net, iter(data), num_batches=1) == 1
    assert torch.allclose(net[1].running_mean, net[0](data[0]).detach().mean(0), atol=1e-5)


def test_prepare_maps_loader_items_to_inputs():
    net = _net()
    batches = [(torch.randn(8, 3), torch.zeros(8)) for _ in range(2)]
    used = recalibrate_batchnorm(net, batches, num_batches=9, prepare=lambda item: item[0])
    assert used == 2


def test_empty_input_or_an_error_leaves_the_statistics_unchanged():
    net = _net()
    net.train()
    net(torch.randn(32, 3) + 3.0)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    assert recalibrate_batchnorm(net, [], num_batches=3) == 0

    def failing():
        yield torch.randn(8, 3)
        raise RuntimeError("loader died")

    with pytest.raises(RuntimeError, match="loader died"):
        recalibrate_batchnorm(net, failing(), num_batches=3)
    for key, value in net.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert net[1].momentum == 0.1 and net.training


def test_modules_without_batchnorm_are_left_alone():
    assert recalibrate_batchnorm(nn.Linear(2, 2), [torch.randn(3, 2)], num_batches=1) == 0


def test_fixes_running_statistics_skewed_by_local_crops():
    torch.manual_seed(0)
    model = TReX("resnet18", 4, projector_hidden_dim=16, projector_out_dim=8, memory_size=0)
    model.train()
    global_crops = torch.rand(32, 3, 32, 32)
    for _ in range(3):  # local crops with other statistics pass through the same BN layers
        model([global_crops, torch.rand(32, 3, 16, 16) * 4 - 2], torch.arange(32) % 4)
    with torch.no_grad():
        batch_stats = model.student(global_crops)
        model.eval()
        skewed = model.student(global_crops)
        recalibrate_batchnorm(model.student, [global_crops], num_batches=1)
        fixed = model.student(global_crops)
    # Running variances are unbiased, batch variances biased, so "fixed" is close, not exact.
    fixed_error = (fixed - batch_stats).abs().mean()
    assert fixed_error * 5 < (skewed - batch_stats).abs().mean()


@pytest.mark.parametrize(("value", "error"), [(0, ValueError), (1.5, TypeError), (True, TypeError)])
def test_rejects_bad_arguments(value, error):
    with pytest.raises(error, match=f"num_batches must be an int.*, got .*{value}"):
        recalibrate_batchnorm(_net(), [], num_batches=value)
    with pytest.raises(TypeError, match="module must be an nn.Module, got str"):
        recalibrate_batchnorm("net", [], num_batches=1)  # type: ignore[arg-type]


def _bn_worker(rank: int, init_file: str, out_dir: str, rank1_batches: int) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"file://{init_file}",
        rank=rank,
        world_size=2,
        timeout=datetime.timedelta(seconds=60),
    )
    try:
        data = _rank_batches()[rank][: 2 if rank == 0 else rank1_batches]
        net = _net()
        used = recalibrate_batchnorm(net, data, num_batches=5)
        torch.save({"used": used, "bn": net[1].state_dict()}, Path(out_dir) / f"bn{rank}.pt")
    finally:
        dist.destroy_process_group()


def _rank_batches() -> list[list[torch.Tensor]]:
    gen = torch.Generator().manual_seed(3)
    return [[torch.randn(8, 3, generator=gen) + 4.0 * r for _ in range(2)] for r in range(2)]


@pytest.mark.distributed
@pytest.mark.parametrize("rank1_batches", [0, 1])
def test_ranks_are_weighted_by_batches_and_an_empty_rank_does_not_hang(tmp_path, rank1_batches):
    mp.spawn(
        _bn_worker,
        args=(str(tmp_path / "init"), str(tmp_path), rank1_batches),
        nprocs=2,
        join=True,
    )
    r0, r1 = (torch.load(tmp_path / f"bn{r}.pt") for r in range(2))
    assert (r0["used"], r1["used"]) == (2, rank1_batches)
    assert torch.equal(r0["bn"]["running_mean"], r1["bn"]["running_mean"])
    # The same batches on one process give the batch-weighted average of the two ranks.
    batches = _rank_batches()
    single = _net()
    recalibrate_batchnorm(single, batches[0][:2] + batches[1][:rank1_batches], num_batches=5)
    torch.testing.assert_close(r0["bn"]["running_mean"], single[1].running_mean)
    torch.testing.assert_close(r0["bn"]["running_var"], single[1].running_var)
