"""Tests for protohead.train.samplers.ShardedEvalSampler: every sample once, no padding."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protohead.train.samplers import ShardedEvalSampler


@given(n=st.integers(0, 200), world=st.integers(1, 9))
def test_shards_partition_the_dataset_exactly(n, world):
    shards = [list(ShardedEvalSampler(range(n), num_replicas=world, rank=r)) for r in range(world)]
    flat = sorted(i for shard in shards for i in shard)
    assert flat == list(range(n))
    assert [len(ShardedEvalSampler(range(n), world, r)) for r in range(world)] == [
        len(s) for s in shards
    ]
    assert max(map(len, shards)) - min(map(len, shards)) <= 1


def test_defaults_to_a_single_process_without_a_process_group():
    sampler = ShardedEvalSampler(range(3))
    assert (sampler.num_replicas, sampler.rank, list(sampler)) == (1, 0, [0, 1, 2])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_replicas": 0}, "num_replicas must be an int >= 1, got 0"),
        ({"num_replicas": 2, "rank": 2}, r"rank must be an int in \[0, 1\], got 2"),
        ({"num_replicas": 2, "rank": -1}, r"rank must be an int in \[0, 1\], got -1"),
    ],
)
def test_rejects_bad_ranks(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ShardedEvalSampler(range(4), **kwargs)


def test_rejects_unsized_sources():
    with pytest.raises(TypeError, match="data_source must have a length"):
        ShardedEvalSampler(iter(range(3)))  # type: ignore[arg-type]
