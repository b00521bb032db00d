"""Tests for protohead.train.launch: torchrun environment parsing and single-process collectives."""

from __future__ import annotations

import pytest
import torch

from protohead.train.launch import (
    all_gather_objects,
    all_reduce_sum,
    barrier,
    cleanup_distributed,
    init_distributed,
)


@pytest.mark.parametrize("env", [{}, {"WORLD_SIZE": "1", "RANK": "0"}])
def test_single_process_creates_no_process_group(env):
    info = init_distributed("cpu", env=env)
    assert (info.rank, info.world_size, info.local_rank) == (0, 1, 0)
    assert info.is_main and not info.distributed
    assert not torch.distributed.is_initialized()


@pytest.mark.parametrize(
    ("env", "match"),
    [
        ({"WORLD_SIZE": "two"}, "WORLD_SIZE must be an int, got 'two'"),
        ({"WORLD_SIZE": "2", "RANK": "-1"}, "RANK must be >= 0, got -1"),
        ({"WORLD_SIZE": "2", "RANK": "2"}, "RANK must be < WORLD_SIZE=2, got 2"),
        ({"WORLD_SIZE": "2"}, "RANK must be set when WORLD_SIZE > 1"),
    ],
)
def test_malformed_torchrun_environment_is_rejected(env, match):
    with pytest.raises(ValueError, match=match):
        init_distributed("cpu", env=env)
    assert not torch.distributed.is_initialized()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only error")
def test_cuda_without_cuda_says_to_use_cpu():
    with pytest.raises(RuntimeError, match="needs CUDA, which is not available; pass --device cpu"):
        init_distributed("cuda", env={})


def test_collectives_are_identities_without_a_process_group():
    x = torch.tensor([1.0, 2.0])
    out = all_reduce_sum(x)
    assert torch.equal(out, x) and out is not x
    assert all_gather_objects({"a": 1}) == [{"a": 1}]
    barrier()
    cleanup_distributed()
