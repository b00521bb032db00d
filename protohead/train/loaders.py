"""Data side of the trainer: DataLoaders and the on-device augmenter."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence, Sized
from typing import Any, NamedTuple, cast

import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, default_collate
from torchvision.transforms import v2

from protohead.augment import BatchedMultiCrop, MultiCropTransform, eval_transform
from protohead.data import (
    SkipBadCollate,
    build_datasets,
    dataset_info,
    multicrop_collate,
    uint8_collate,
    with_transform,
)
from protohead.data.batched_decode import BatchedDecoder
from protohead.data.encoded import as_encoded, encoded_collate
from protohead.presets import TReXPreset
from protohead.train.launch import DistributedInfo
from protohead.train.samplers import ShardedEvalSampler
from protohead.train.seeding import SeededDataset, SeededSampler


class Loaders(NamedTuple):
    """The DataLoaders of a run and what the training loop needs to know about them."""

    train: DataLoader[Any]
    val: DataLoader[Any]
    bn: DataLoader[Any] | None
    sampler: SeededSampler
    num_classes: int
    multicrop: MultiCropTransform
    train_size: int  # images in the training set (all ranks together)


def build_loaders(args: argparse.Namespace, preset: TReXPreset, info: DistributedInfo) -> Loaders:
    """Training (multi-crop, decoded uint8 with ``--gpu-aug`` or file bytes with ``--decode
    batched``), validation and BatchNorm recalibration loaders, sharded over the ranks of
    ``info``."""
    stats = dataset_info(args.dataset)
    multicrop = MultiCropTransform(preset.multicrop_config(), mean=stats.mean, std=stats.std)
    val_crop = args.val_crop_size or preset.global_crop_size
    val_resize = args.val_resize_size
    if val_resize is None and args.small_images:
        val_resize = val_crop  # 28-32 px datasets are evaluated on the whole image
    val_tf = eval_transform(val_crop, val_resize, mean=stats.mean, std=stats.std)
    train_tf: Any = v2.PILToTensor() if batched_aug(args) else multicrop
    data = build_datasets(
        args.dataset,
        data_dir=args.data_dir,
        root=args.data_root,
        train_transform=train_tf,
        val_transform=val_tf,
        skip_bad_images=args.skip_bad_images,
        fake_sizes=tuple(args.fake_size),
        fake_image_size=args.fake_image_size,
        classes=args.classes,
    )
    # Map-style datasets with a length (ImageFolder, FakeData, ...): typed as Sized here.
    train_set, val_set = cast(Sized, data.train), cast(Sized, data.val)
    inner: DistributedSampler[Any] = DistributedSampler(
        data.train,
        num_replicas=info.world_size,
        rank=info.rank,
        shuffle=True,
        seed=args.seed,
        drop_last=True,
    )
    sampler = SeededSampler(inner, args.seed)
    train_source: Any = data.train
    train_collate: Callable[[Sequence[Any]], Any] = multicrop_collate
    if args.decode == "batched":  # the same files, read as bytes; build_decoder decodes them
        train_source, train_collate = as_encoded(data.train), encoded_collate
    elif args.gpu_aug:
        train_collate = uint8_collate
    workers = args.workers
    common: dict[str, Any] = {
        "num_workers": workers,
        "pin_memory": info.device.type == "cuda",
        "persistent_workers": workers > 0,
    }
    if workers > 0:
        common["prefetch_factor"] = args.prefetch_factor
    plain_collate = SkipBadCollate(cast(Callable[[Sequence[Any]], Any], default_collate))
    train_loader = DataLoader(
        SeededDataset(train_source),
        batch_size=args.batch_size,
        sampler=sampler,
        collate_fn=SkipBadCollate(train_collate),
        drop_last=True,
        **common,
    )
    val_loader = DataLoader(
        data.val,
        batch_size=args.batch_size * 2,
        sampler=ShardedEvalSampler(val_set, info.world_size, info.rank),
        collate_fn=plain_collate,
        **common,
    )
    bn_loader = None
    if args.bn_recalibration_batches > 0:
        # Training images as the evaluation sees them; the same count on every rank, since
        # SyncBatchNorm needs every rank in every forward.
        per_rank = min(
            args.bn_recalibration_batches * args.batch_size, len(train_set) // info.world_size
        )
        order = torch.randperm(len(train_set), generator=torch.Generator().manual_seed(args.seed))
        mine = order[info.rank * per_rank : (info.rank + 1) * per_rank].tolist()
        bn_loader = DataLoader(
            with_transform(data.train, val_tf),
            batch_size=args.batch_size,
            sampler=mine,
            collate_fn=plain_collate,
            **common,
        )
    return Loaders(
        train_loader, val_loader, bn_loader, sampler, data.num_classes, multicrop, len(train_set)
    )


def batched_aug(args: argparse.Namespace) -> bool:
    """Whether the multi-crop runs batched on the device (``--gpu-aug``, or ``--decode batched``,
    which feeds it decoded batches)."""
    return bool(args.gpu_aug or args.decode == "batched")


def build_decoder(args: argparse.Namespace, device: torch.device) -> BatchedDecoder | None:
    """The ``--decode batched`` decoder on ``device``; None with ``--decode pil``."""
    if args.decode != "batched":
        return None
    return BatchedDecoder(
        device,
        max_side=args.decode_max_side or None,
        skip_bad_images=args.skip_bad_images,
    )


def build_gpu_aug(
    args: argparse.Namespace,
    multicrop: MultiCropTransform,
    device: torch.device,
    dtype: torch.dtype | None,
) -> nn.Module | None:
    """The batched augmenter matching ``multicrop``, on ``device``; None without ``--gpu-aug`` or
    ``--decode batched``."""
    if not batched_aug(args):
        return None
    fuse = args.gpu_aug_fuse == "on" or (args.gpu_aug_fuse == "auto" and device.type == "cuda")
    aug: nn.Module = BatchedMultiCrop.from_transform(
        multicrop,
        output_dtype=dtype or torch.float32,
        channels_last=args.channels_last,
        fuse=fuse,
    )
    return aug.to(device)
