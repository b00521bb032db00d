"""Tests for protohead.train.seeding: per-sample seeds make augmentations reproducible anywhere."""

from __future__ import annotations

import random

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from protohead import MultiCropTransform, multicrop_collate
from protohead.train.seeding import SeededDataset, SeededSampler, sample_seed, seed_everything


class _Images(Dataset):
    """uint8 images pushed through a random multi-crop transform."""

    def __init__(self, n: int = 6) -> None:
        gen = torch.Generator().manual_seed(0)
        self.images = torch.randint(0, 256, (n, 3, 20, 20), dtype=torch.uint8, generator=gen)
        self.transform = MultiCropTransform(
            num_local_crops=2, global_crop_size=12, local_crop_size=6
        )

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        return self.transform(self.images[i]), i


@given(seed=st.integers(0, 2**40), epoch=st.integers(0, 10**4), index=st.integers(0, 10**7))
def test_sample_seed_is_deterministic_63_bit_and_sensitive_to_each_input(seed, epoch, index):
    value = sample_seed(seed, epoch, index)
    assert value == sample_seed(seed, epoch, index)
    assert 0 <= value < 2**63
    assert value != sample_seed(seed, epoch, index + 1)
    assert value != sample_seed(seed, epoch + 1, index)
    assert value != sample_seed(seed + 1, epoch, index)


@pytest.mark.parametrize(
    ("args", "error", "match"),
    [
        ((-1, 0, 0), ValueError, "seed must be an int >= 0, got -1"),
        ((0, -1, 0), ValueError, "epoch must be an int >= 0, got -1"),
        ((0, 0, 1.5), TypeError, "index must be an int, got float 1.5"),
    ],
)
def test_sample_seed_rejects_bad_values(args, error, match):
    with pytest.raises(error, match=match):
        sample_seed(*args)


def test_seed_everything_seeds_python_and_torch():
    seed_everything(5)
    first = (random.random(), torch.rand(2))
    seed_everything(5)
    assert random.random() == first[0] and torch.equal(torch.rand(2), first[1])
    with pytest.raises(ValueError, match="seed must be an int >= 0, got -3"):
        seed_everything(-3)


def test_seeded_sampler_pairs_indices_with_epoch_dependent_seeds():
    inner = DistributedSampler(range(8), num_replicas=2, rank=1, shuffle=True, seed=3)
    sampler = SeededSampler(inner, seed=3)
    epoch0 = list(sampler)
    assert len(sampler) == 4 and [i for i, _ in epoch0] == list(inner)
    assert all(s == sample_seed(3, 0, i) for i, s in epoch0)
    sampler.set_epoch(1)
    assert inner.epoch == 1
    assert [s for _, s in sampler] != [s for _, s in epoch0]
    with pytest.raises(TypeError, match="sampler must have a length"):
        SeededSampler(iter(range(3)), seed=0)


def test_seeded_dataset_is_reproducible_and_leaves_the_global_generator_alone():
    ds = SeededDataset(_Images())
    torch.manual_seed(0)
    before = torch.get_rng_state()
    a = ds[(2, 77)]
    assert torch.equal(torch.get_rng_state(), before)
    torch.rand(5)  # a different global state must not change the sample
    b = ds[(2, 77)]
    assert all(torch.equal(x, y) for x, y in zip(a[0], b[0], strict=True))
    c = ds[(2, 78)]
    assert not torch.equal(a[0][0], c[0][0])
    assert len(ds) == 6 and ds[3][1] == 3


def test_batches_do_not_depend_on_the_number_of_workers():
    def batches(workers: int):
        sampler = SeededSampler(DistributedSampler(range(6), 1, 0, seed=1), seed=1)
        sampler.set_epoch(2)
        loader = DataLoader(
            SeededDataset(_Images()),
            batch_size=3,
            sampler=sampler,
            num_workers=workers,
            collate_fn=multicrop_collate,
        )
        return list(loader)

    serial, parallel = batches(0), batches(2)
    for (crops_a, labels_a), (crops_b, labels_b) in zip(serial, parallel, strict=True):
        assert torch.equal(labels_a, labels_b)
        assert all(torch.equal(x, y) for x, y in zip(crops_a, crops_b, strict=True))
