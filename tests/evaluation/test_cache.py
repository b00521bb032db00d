"""Tests for protohead.evaluation.cache."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from protohead.evaluation.cache import FeatureCache, model_checksum


def test_checksum_tracks_every_tensor_and_ignores_identity() -> None:
    torch.manual_seed(0)
    a = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    b = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    b.load_state_dict(a.state_dict())
    assert model_checksum(a) == model_checksum(b)
    assert len(model_checksum(a)) == 64
    with torch.no_grad():
        b[1].running_mean[0] += 1e-6  # a buffer, not a parameter
    assert model_checksum(a) != model_checksum(b)
    half = nn.Linear(2, 2).to(torch.bfloat16)
    assert model_checksum(half) == model_checksum(half.state_dict())


def test_checksum_rejects_non_tensors() -> None:
    with pytest.raises(TypeError, match="state_dict entry 'w' must be a tensor"):
        model_checksum({"w": 1.0})  # type: ignore[dict-item]
    with pytest.raises(TypeError, match="model must be an nn.Module or a state_dict, got int"):
        model_checksum(3)  # type: ignore[arg-type]


def test_key_depends_on_model_dataset_split_and_transform(tmp_path: Path) -> None:
    cache = FeatureCache(tmp_path)
    base = {"model": "m", "dataset": {"name": "fake"}, "split": "test", "transform": {"crop": 1}}
    key = cache.key(**base)  # type: ignore[arg-type]
    assert key.startswith("fake-test-")
    variants = [
        {**base, "model": "m2"},
        {**base, "dataset": {"name": "fake", "classes": 3}},
        {**base, "split": "trainval"},
        {**base, "transform": {"crop": 2}},
    ]
    assert len({cache.key(**v) for v in variants} | {key}) == 5  # type: ignore[arg-type]
    assert "/" not in cache.key(**{**base, "dataset": {"name": "a/b c"}})  # type: ignore[arg-type]


def test_round_trip_and_atomic_write(tmp_path: Path) -> None:
    cache = FeatureCache(tmp_path / "nested")
    features, labels = torch.randn(5, 3), torch.arange(5)
    path = cache.save("k", features, labels)
    assert path == tmp_path / "nested" / "k.pt"
    loaded = cache.load("k")
    assert loaded is not None
    assert torch.equal(loaded[0], features) and torch.equal(loaded[1], labels)
    assert [p.name for p in (tmp_path / "nested").iterdir()] == ["k.pt"], "no temp files left"


def test_failed_write_leaves_no_entry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = FeatureCache(tmp_path)

    def broken_save(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        cache.save("k", torch.zeros(2, 2), torch.zeros(2, dtype=torch.long))
    assert list(tmp_path.iterdir()) == []
    assert cache.load("k") is None


def test_corrupt_or_mismatched_entry_is_a_miss(tmp_path: Path) -> None:
    cache = FeatureCache(tmp_path)
    cache.path("bad").write_bytes(b"not a torch file")
    assert cache.load("bad") is None
    cache.save("other", torch.zeros(2, 2), torch.zeros(2, dtype=torch.long))
    cache.path("other").rename(cache.path("renamed"))
    assert cache.load("renamed") is None  # stored key does not match the file name
    with pytest.raises(ValueError, match=r"features must be \(n, d\) and labels \(n,\)"):
        cache.save("k", torch.zeros(3), torch.zeros(3))
