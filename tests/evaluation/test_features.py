"""Tests for protohead.evaluation.features."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch import nn
from torch.utils.data import TensorDataset

import protohead.evaluation.features as features_module
from protohead.evaluation.cache import FeatureCache
from protohead.evaluation.datasets import image_folder_pair
from protohead.evaluation.features import TransformConfig, cached_features, extract_features


def small_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3),
        nn.BatchNorm2d(4),
        nn.Dropout(0.5),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
    )


def test_transform_config_builds_resize_crop_normalise() -> None:
    transform = TransformConfig(resize=40, crop=32).build()
    out = transform(Image.new("RGB", (80, 60), color=(255, 0, 0)))
    assert out.shape == (3, 32, 32)
    torch.testing.assert_close(out[0].mean(), torch.tensor((1 - 0.485) / 0.229))
    assert TransformConfig().as_dict()["interpolation"] == "bicubic"
    assert TransformConfig().as_dict()["crop"] == 224


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"resize": 0}, "resize must be >= 1, got 0"),
        ({"resize": 10, "crop": 11}, r"crop must be in \[1, resize=10\], got 11"),
        ({"interpolation": "lanczos"}, "interpolation must be one of"),
        ({"std": (0.0, 1.0, 1.0)}, "mean and std must have equal length and std > 0"),
    ],
)
def test_transform_config_validation(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        TransformConfig(**kwargs)  # type: ignore[arg-type]


def test_extract_features_eval_mode_and_caller_model_untouched() -> None:
    net = small_net().train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    data = TensorDataset(torch.randn(7, 3, 8, 8), torch.arange(7))
    feats, labels = extract_features(net, data, batch_size=3, device="cpu", progress=False)
    assert feats.shape == (7, 4) and feats.dtype == torch.float32
    assert torch.equal(labels, torch.arange(7))
    again, _ = extract_features(net, data, batch_size=7, device="cpu", progress=False)
    torch.testing.assert_close(feats, again)  # eval mode: no dropout, running BN stats
    assert net.training and all(m.training for m in net.modules())
    for key, value in net.state_dict().items():
        assert torch.equal(value, before[key]), f"{key} changed"


def test_extract_features_rejects_bad_model_output_and_arguments() -> None:
    data = TensorDataset(torch.randn(2, 3, 4, 4), torch.arange(2))
    with pytest.raises(ValueError, match=r"model must return pooled \(b, d\) features"):
        extract_features(nn.Identity(), data, device="cpu", progress=False)
    with pytest.raises(ValueError, match="batch_size must be >= 1, got 0"):
        extract_features(small_net(), data, batch_size=0)
    empty = TensorDataset(torch.zeros(0, 3, 4, 4), torch.zeros(0))
    with pytest.raises(ValueError, match="dataset must hold at least one image"):
        extract_features(small_net(), empty)


def test_progress_logs_without_tqdm(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setitem(sys.modules, "tqdm", None)
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)
    data = TensorDataset(torch.randn(4, 3, 4, 4), torch.arange(4))
    with caplog.at_level(logging.INFO, logger="protohead.evaluation.features"):
        extract_features(small_net(), data, batch_size=1, device="cpu", desc="toy")
    assert "toy: 4/4 batches" in caplog.text


def test_cache_hit_on_second_run_and_invalidated_by_weight_change(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []
    real = features_module.extract_features

    def counting(*args: object, **kwargs: object) -> tuple[torch.Tensor, torch.Tensor]:
        calls.append(1)
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(features_module, "extract_features", counting)
    net = small_net()
    data = TensorDataset(torch.randn(5, 3, 8, 8), torch.arange(5))
    cache = FeatureCache(tmp_path)
    kwargs = {
        "cache": cache,
        "dataset_config": {"name": "toy"},
        "split": "test",
        "transform_config": TransformConfig(8, 8).as_dict(),
        "device": "cpu",
        "progress": False,
    }
    first = cached_features(net, data, **kwargs)  # type: ignore[arg-type]
    second = cached_features(net, data, **kwargs)  # type: ignore[arg-type]
    assert (first[2], second[2], len(calls)) == (False, True, 1)
    torch.testing.assert_close(first[0], second[0])
    with torch.no_grad():
        net[0].weight.mul_(2.0)
    third = cached_features(net, data, **kwargs)  # type: ignore[arg-type]
    assert third[2] is False and len(calls) == 2
    assert not torch.allclose(third[0], first[0])
    other_split = cached_features(net, data, **{**kwargs, "split": "trainval"})  # type: ignore[arg-type]
    assert other_split[2] is False
    no_cache = cached_features(net, data, **{**kwargs, "cache": None})  # type: ignore[arg-type]
    assert no_cache[2] is False
    grown = TensorDataset(torch.randn(6, 3, 8, 8), torch.arange(6))
    assert cached_features(net, grown, **kwargs)[2] is False  # type: ignore[arg-type]


def write_folder(root: Path, size: int, color: tuple[int, int, int]) -> None:
    for name in ("train/a/1.png", "train/a/2.png", "train/b/3.png", "test/a/4.png", "test/b/5.png"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (size, size), color=color).save(root / name)


def folder_features(cache: FeatureCache, train: str | Path, test: str | Path) -> tuple[object, ...]:
    data = image_folder_pair("mine", train, test, transform=TransformConfig(8, 8).build())
    return cached_features(
        small_net(),
        data.trainval,
        cache=cache,
        dataset_config=data.config,
        split="trainval",
        transform_config=TransformConfig(8, 8).as_dict(),
        device="cpu",
        progress=False,
    )


def test_rewritten_image_folder_misses_the_cache(tmp_path: Path) -> None:
    cache = FeatureCache(tmp_path / "cache")
    write_folder(tmp_path / "data", 8, (255, 0, 0))
    train, test = tmp_path / "data" / "train", tmp_path / "data" / "test"
    first = folder_features(cache, train, test)
    assert first[2] is False and folder_features(cache, train, test)[2] is True
    write_folder(tmp_path / "data", 12, (0, 0, 255))  # same files, same count, new images
    rewritten = folder_features(cache, train, test)
    assert rewritten[2] is False
    assert not torch.allclose(rewritten[0], first[0])  # type: ignore[arg-type]
    # Same bytes, but a newer modification time: the file may have changed, so recompute.
    stat = (train / "a" / "1.png").stat()
    os.utime(train / "a" / "1.png", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert folder_features(cache, train, test)[2] is False


def test_same_relative_path_from_another_directory_misses_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = FeatureCache(tmp_path / "cache")
    write_folder(tmp_path / "one" / "data", 8, (255, 0, 0))
    write_folder(tmp_path / "two" / "data", 8, (0, 255, 0))
    monkeypatch.chdir(tmp_path / "one")
    first = folder_features(cache, "data/train", "data/test")
    assert first[2] is False and folder_features(cache, "data/train", "data/test")[2] is True
    monkeypatch.chdir(tmp_path / "two")
    other = folder_features(cache, "data/train", "data/test")
    assert other[2] is False
    assert not torch.allclose(other[0], first[0])  # type: ignore[arg-type]
