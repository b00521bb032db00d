"""Train t-ReX / t-ReX* (or the supervised baseline) with protohead.

Reference script for Sariyildiz et al., "No Reason for No Supervision: Improved Generalization
in Supervised Models" (ICLR 2023), laid out like torchvision's
``references/classification/train.py``: :func:`get_args_parser`, :func:`train_one_epoch`,
:func:`evaluate` and :func:`main`.

Single process (CPU or one GPU)::

    python examples/train_trex.py --dataset fashion-mnist --preset trex --small-images \\
        --device cpu --output-dir runs/fmnist

ImageNet on 4 GPUs (64 images per GPU, the paper's setting)::

    torchrun --nproc_per_node=4 examples/train_trex.py --data-dir /data/imagenet \\
        --arch resnet50 --preset trex --output-dir runs/trex

Re-running the same command resumes from ``<output-dir>/checkpoint.pth``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import inspect
import json
import logging
import math
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler
from torchvision.transforms import v2

from protohead import (
    PRESETS,
    MultiCropTransform,
    TReX,
    eval_transform,
    get_preset,
    multicrop_collate,
)
from protohead.atomic_files import atomic_write
from protohead.batchnorm import recalibrate_batchnorm
from protohead.checkpoint import (
    find_resume_checkpoint,
    get_rng_state,
    load_checkpoint,
    save_checkpoint,
    set_rng_state,
)
from protohead.class_subset import parse_classes
from protohead.data import (
    DATASETS,
    SkipBadCollate,
    build_datasets,
    dataset_info,
    uint8_collate,
    with_transform,
)
from protohead.launch import (
    DistributedInfo,
    all_gather_objects,
    all_reduce_sum,
    barrier,
    cleanup_distributed,
    init_distributed,
)
from protohead.optim import WarmupCosineLR, param_groups, scaled_lr
from protohead.samplers import ShardedEvalSampler
from protohead.seeding import SeededDataset, SeededSampler, sample_seed, seed_everything
from protohead.small_images import small_image_preset

logger = logging.getLogger("train_trex")

CHECKPOINT = "checkpoint.pth"
METRICS = "metrics.jsonl"
BACKBONE = "backbone.pth"
# Preset fields that have a command-line flag of the same name (dashes for underscores).


def _int_or_none(text: str) -> int | None:
    return None if text.lower() == "none" else int(text)


def _float_or_none(text: str) -> float | None:
    return None if text.lower() == "none" else float(text)


_AUG = "stronger augmentation helps transfer, may cost training-task accuracy"
# Preset fields with a flag of the same name: (argument type, one-line trade-off).
PRESET_FLAGS: dict[str, tuple[Any, str]] = {
    "projector_hidden_layers": (
        _int_or_none,
        "projector depth or 'none'; deeper shields the backbone (transfer), trains slower",
    ),
    "projector_hidden_dim": (int, "projector width; wider helps transfer, costs memory/time"),
    "projector_out_dim": (int, "projector bottleneck; paper: 256, smaller saves memory"),
    "projector_input_l2_norm": (bool, "L2-normalise the projector input; stabilises training"),
    "temperature": (
        _float_or_none,
        "cosine-softmax temperature or 'none' (linear); lower sharpens, too low is unstable",
    ),
    "memory_size": (
        int,
        "OCM memory slots, 0 learns class weights; larger is smoother but staler",
    ),
    "ema_momentum": (float, "teacher EMA momentum; higher is smoother but lags short runs"),
    "num_global_crops": (int, "global crops per image; each also costs a teacher forward"),
    "num_local_crops": (int, "local crops per image; more help transfer, each costs a pass"),
    "global_crop_size": (int, "global crop side in px; smaller is faster, less accurate"),
    "local_crop_size": (int, "local crop side in px; smaller is cheaper, less informative"),
    "global_crop_scale": (tuple, "global crop area range; lower LO augments more, fits less"),
    "local_crop_scale": (tuple, "local crop area range; tiny crops of small images say little"),
    "color_jitter_p": (float, f"probability of colour jitter; {_AUG}"),
    "grayscale_p": (float, f"probability of grayscale; {_AUG}"),
    "global_blur_p": (float, f"probability of blur on global crops; {_AUG}"),
    "local_blur_p": (float, f"probability of blur on local crops; {_AUG}"),
    "global_solarize_p": (float, f"probability of solarize on global crops; {_AUG}"),
}


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite."""


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    """Command-line flags; every preset value can be overridden by its own flag."""
    parser = argparse.ArgumentParser(
        description="t-ReX / t-ReX* training (Sariyildiz et al., ICLR 2023)",
        add_help=add_help,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    data = parser.add_argument_group("data")
    source = data.add_mutually_exclusive_group()
    source.add_argument(
        "--dataset",
        choices=sorted(DATASETS),
        default=None,
        help="built-in dataset; small ones make quick runs but say little about ImageNet transfer",
    )
    source.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="ImageFolder root with train/ and val/ (ImageNet layout); the paper's setting",
    )
    data.add_argument(
        "--data-root",
        type=Path,
        default=None,
        help="where built-in datasets are read/downloaded (default: Debian dir, then ./data)",
    )
    data.add_argument(
        "--classes",
        type=parse_classes,
        default=None,
        help="train on these class ids only, relabelled 0..k-1, e.g. 0-4 (the seen half of a "
        "concept-generalisation split; see examples/eval_demo.py)",
    )
    data.add_argument(
        "--skip-bad-images",
        action="store_true",
        help="skip and count unreadable files instead of stopping; hides data problems",
    )
    data.add_argument(
        "--workers",
        type=int,
        default=8,
        help="DataLoader workers per process; more feed the GPU faster but cost RAM and cores",
    )
    data.add_argument(
        "--prefetch-factor",
        type=int,
        default=4,
        help="batches each worker prepares ahead; smooths stalls at the cost of memory",
    )
    data.add_argument(
        "--gpu-aug",
        "--batched-aug",
        dest="gpu_aug",
        action="store_true",
        help="batched multi-crop on the training device (GPUMultiCrop, also on CPU): workers "
        "only decode; much faster, crops differ from PIL's within small tolerances",
    )
    data.add_argument(
        "--gpu-aug-fuse",
        choices=("auto", "on", "off"),
        default="auto",
        help="with --gpu-aug, compile the augmenter's colour ops into fused kernels "
        "(GPUMultiCrop(fuse=True)); auto: on for CUDA (first batches compile), off elsewhere",
    )
    data.add_argument(
        "--val-crop-size",
        type=int,
        default=None,
        help="validation center crop (default: the global crop size); larger is slower",
    )
    data.add_argument(
        "--val-resize-size",
        type=int,
        default=None,
        help="validation resize before the crop (default: crop * 256 / 224, or the crop size "
        "with --small-images); a larger resize zooms in",
    )
    data.add_argument(
        "--fake-size",
        type=int,
        nargs=2,
        default=(256, 64),
        metavar=("TRAIN", "VAL"),
        help="sizes of --dataset fake; only for smoke runs",
    )
    data.add_argument(
        "--fake-image-size", type=int, default=32, help="side of --dataset fake images"
    )

    model = parser.add_argument_group("model")
    model.add_argument(
        "--arch",
        default="resnet50",
        help="torchvision model name or timm:NAME; bigger backbones transfer better but cost more",
    )
    model.add_argument(
        "--small-input-stem",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="3x3 stride-1 stem without max-pool for 28-32 px images: more accurate, ~4-16x "
        "more compute (ResNet/ConvNeXt only)",
    )
    model.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default="trex",
        help="paper configuration: trex transfers best, trex-star is best on the training "
        "classes, baseline is plain supervised",
    )
    model.add_argument(
        "--small-images",
        action="store_true",
        help="rescale the preset to the dataset's 28-32 px images and short runs "
        "(protohead.small_images) and evaluate whole images; explicit flags still win",
    )
    model.add_argument(
        "--memory-init",
        choices=("random", "empty"),
        default="random",
        help="initial OCM memory; random gives every class a prototype from step 1, empty "
        "suits tiny memories",
    )
    model.add_argument(
        "--sync-bn",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="SyncBatchNorm across processes when distributed; exact batch stats, some "
        "communication",
    )

    preset = parser.add_argument_group(
        "preset overrides (default: the value of --preset, after --small-images)"
    )
    for field, (kind, text) in PRESET_FLAGS.items():
        # SUPPRESS: only flags given on the command line become attributes (needed because
        # "none" is a valid value for the projector depth and the temperature).
        extra: dict[str, Any] = {"default": argparse.SUPPRESS, "help": text}
        if kind is bool:
            extra["action"] = argparse.BooleanOptionalAction
        elif kind is tuple:
            extra.update(type=float, nargs=2, metavar=("LO", "HI"))
        else:
            extra["type"] = kind
        preset.add_argument(f"--{field.replace('_', '-')}", **extra)

    optim = parser.add_argument_group("optimisation")
    optim.add_argument(
        "--epochs", type=int, default=100, help="training epochs; paper: 100, longer is better"
    )
    optim.add_argument(
        "--batch-size",
        type=int,
        default=64,
        help="images per process (paper: 64 x 4 GPUs); larger is faster per image, may need "
        "more warm-up",
    )
    optim.add_argument(
        "--lr",
        type=float,
        default=0.1,
        help="learning rate at a global batch of 256, scaled linearly; too high diverges",
    )
    optim.add_argument(
        "--warmup-epochs",
        type=float,
        default=10.0,
        help="linear warm-up from 0; longer is safer for large batches, slower to start",
    )
    optim.add_argument(
        "--final-lr", type=float, default=1e-6, help="learning rate at the end of the cosine"
    )
    optim.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    optim.add_argument(
        "--weight-decay",
        type=float,
        default=1e-4,
        help="decay on weights only (not biases/norms); more regularises, too much underfits",
    )
    optim.add_argument(
        "--label-smoothing",
        type=float,
        default=0.0,
        help="label smoothing; paper: 0 (it hurts transfer)",
    )

    run = parser.add_argument_group("run")
    run.add_argument(
        "--bn-recalibration-batches",
        type=int,
        default=20,
        help="batches of training images (eval transform) that re-estimate the student's "
        "BatchNorm statistics before each evaluation and the export; multi-crop skews the "
        "running averages towards local crops, 0 keeps them",
    )
    run.add_argument(
        "--device",
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="cuda or cpu; under torchrun each process uses cuda:LOCAL_RANK",
    )
    run.add_argument(
        "--amp",
        choices=("auto", "bf16", "fp16", "none"),
        default="auto",
        help="autocast on GPU: auto = bf16 if supported else fp16 + GradScaler; none is slower",
    )
    run.add_argument(
        "--channels-last",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="NHWC tensors; faster convolutions on GPUs and recent CPUs",
    )
    run.add_argument(
        "--tf32",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="TF32 matmuls/convolutions on Ampere+ GPUs; faster, slightly less precise",
    )
    run.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the student and teacher; faster steps after minutes of compiling",
    )
    run.add_argument(
        "--threads", type=int, default=None, help="CPU threads for torch (default: torch's)"
    )
    run.add_argument("--seed", type=int, default=0, help="random seed (offset per rank)")
    run.add_argument(
        "--output-dir",
        type=Path,
        default=Path("runs/trex"),
        help="checkpoints, metrics.jsonl, backbone.pth and TensorBoard logs go here",
    )
    run.add_argument(
        "--resume",
        type=Path,
        default=None,
        help="checkpoint to resume (default: <output-dir>/checkpoint.pth if it exists)",
    )
    run.add_argument(
        "--save-every",
        type=int,
        default=0,
        help="also keep checkpoint_epoch<N>.pth every N epochs (0: never); costs disk",
    )
    run.add_argument(
        "--print-freq",
        type=int,
        default=50,
        help="steps between log lines (and NaN checks); lower syncs the GPU more often",
    )
    run.add_argument(
        "--max-steps-per-epoch", type=int, default=None, help="cap steps per epoch (smoke runs)"
    )
    return parser


def _resolve_preset(args: argparse.Namespace) -> Any:
    preset = get_preset(args.preset)
    if args.small_images:
        size = dataset_info(args.dataset).image_size
        if size is None:  # folders and FakeData: the requested crop size, else the fake size
            size = getattr(args, "global_crop_size", args.fake_image_size)
        preset = small_image_preset(preset, size)
    # Override flags default to argparse.SUPPRESS, so only flags given on the command line
    # are attributes (needed because "none" is a valid value for two of them).
    overrides = {field: getattr(args, field) for field in PRESET_FLAGS if hasattr(args, field)}
    for field in ("global_crop_scale", "local_crop_scale"):
        if field in overrides:
            overrides[field] = tuple(overrides[field])
    return preset.replace(**overrides)


def _setup_logging(info: DistributedInfo) -> None:
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.INFO if info.is_main else logging.WARNING)


def _autocast_dtype(args: argparse.Namespace, device: torch.device) -> torch.dtype | None:
    if device.type != "cuda" or args.amp == "none":
        return None
    if args.amp == "fp16" or (args.amp == "auto" and not torch.cuda.is_bf16_supported()):
        return torch.float16
    return torch.bfloat16


def _autocast(device: torch.device, dtype: torch.dtype | None) -> Any:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def _progress(loader: Iterable[Any], total: int, enabled: bool, desc: str) -> Iterable[Any]:
    if not enabled or not sys.stdout.isatty():
        return loader
    try:
        from tqdm import tqdm
    except ImportError:
        return loader
    bar: Iterable[Any] = tqdm(loader, total=total, desc=desc, dynamic_ncols=True, leave=False)
    return bar


def _prepare(
    inputs: Any,
    device: torch.device,
    gpu_aug: nn.Module | None,
    generator: torch.Generator | None,
    channels_last: bool,
) -> list[Tensor]:
    """Move a batch to the device (and augment it there with ``--gpu-aug``)."""
    if gpu_aug is not None:
        if isinstance(inputs, Tensor):
            images: Tensor | list[Tensor] = inputs.to(device, non_blocking=True)
        else:
            images = [image.to(device, non_blocking=True) for image in inputs]
        crops: list[Tensor] = gpu_aug(images, generator=generator)
        return crops
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return [c.to(device, non_blocking=True, memory_format=fmt) for c in inputs]


def train_one_epoch(
    model: TReX,
    train_model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: WarmupCosineLR,
    scaler: torch.amp.GradScaler | None,
    loader: Iterable[Any],
    steps: int,
    epoch: int,
    args: argparse.Namespace,
    *,
    device: torch.device,
    autocast_dtype: torch.dtype | None,
    gpu_aug: nn.Module | None = None,
    generator: torch.Generator | None = None,
    show_progress: bool = True,
) -> dict[str, float]:
    """One epoch of ``steps`` iterations; returns the epoch's mean metrics (all ranks).

    ``train_model`` is ``model`` or its DDP wrapper. Loss and accuracy are accumulated on the
    device and read only every ``--print-freq`` steps and at the end, where a non-finite loss
    raises :class:`NonFiniteLossError` before anything is saved.
    """
    model.train()
    # Device-side sums (loss x images, correct); image counts stay on the host, since creating
    # a device tensor from a Python number would be a host-to-device copy, i.e. a sync.
    stats = torch.zeros(2, dtype=torch.float64, device=device)
    window_loss = torch.zeros((), dtype=torch.float64, device=device)
    images = skipped = 0
    lr = 0.0
    start = window_start = time.perf_counter()
    window_images = 0
    num_global = model.num_global_crops
    progress = _progress(loader, steps, show_progress, f"epoch {epoch + 1}/{args.epochs}")
    iterator: Iterator[Any] = iter(progress)
    for step in range(steps):
        inputs, labels, num_bad = next(iterator)
        skipped += num_bad
        labels = labels.to(device, non_blocking=True)
        crops = _prepare(inputs, device, gpu_aug, generator, args.channels_last)
        lr = scheduler.step()
        with _autocast(device, autocast_dtype):
            logits = train_model(crops, labels)
        loss = model.loss(logits.float(), labels, args.label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()

        batch = labels.shape[0]
        with torch.no_grad():
            global_logits = logits[: batch * num_global].detach()
            correct = (global_logits.argmax(1) == labels.repeat(num_global)).sum() / num_global
            batch_loss = loss.detach().double() * batch
            stats += torch.stack([batch_loss, correct.double()])
            window_loss += batch_loss
        images += batch
        window_images += batch
        if (step + 1) % args.print_freq == 0 or step + 1 == steps:
            # The only host sync, every print_freq steps; summed over ranks so that all of them
            # see a non-finite loss at the same step and stop together.
            window = torch.stack([window_loss, window_loss.new_tensor(float(window_images))])
            loss_sum, count = all_reduce_sum(window).tolist()
            loss_value = loss_sum / max(count, 1.0)
            if not math.isfinite(loss_value):
                raise NonFiniteLossError(
                    f"loss is {loss_value} at epoch {epoch + 1}, step {step + 1} (within the "
                    f"last {args.print_freq} steps)"
                )
            elapsed = time.perf_counter() - window_start
            rate = window_images / max(elapsed, 1e-9)
            message = f"loss {loss_value:.4f}  lr {lr:.5f}  {rate:.0f} img/s"
            if hasattr(progress, "set_postfix_str"):
                progress.set_postfix_str(message)
            else:
                logger.info("epoch %d  step %d/%d  %s", epoch + 1, step + 1, steps, message)
            window_loss.zero_()
            window_start, window_images = time.perf_counter(), 0
    if hasattr(progress, "close"):
        progress.close()
    elapsed = time.perf_counter() - start
    counts = torch.tensor([images, skipped], dtype=torch.float64, device=device)
    loss_sum, correct_sum, seen, skipped_total = all_reduce_sum(torch.cat([stats, counts])).tolist()
    return {
        "train_loss": loss_sum / max(seen, 1.0),
        "train_top1": 100.0 * correct_sum / max(seen, 1.0),
        "lr": lr,
        "images_per_s": seen / max(elapsed, 1e-9),
        "skipped_images": skipped_total,
    }


@torch.no_grad()
def evaluate(
    model: TReX,
    loader: Iterable[Any],
    device: torch.device,
    *,
    autocast_dtype: torch.dtype | None = None,
    channels_last: bool = False,
) -> dict[str, float]:
    """Top-1/top-5 accuracy (in %) and loss of ``model`` on a sharded loader, summed over ranks.

    For OCM models the classifier's weights are the memory prototypes, so this measures the
    model as it is used at test time. Each sample is counted once (see ShardedEvalSampler), so
    the result equals a single-process evaluation.
    """
    model.eval()
    stats = torch.zeros(3, dtype=torch.float64, device=device)  # top-1, top-5, loss sums
    seen = 0
    k = min(5, model.num_classes)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    for images, labels, _ in loader:
        images = images.to(device, non_blocking=True, memory_format=fmt)
        labels = labels.to(device, non_blocking=True)
        with _autocast(device, autocast_dtype):
            logits = model(images).float()
        topk = logits.topk(k, dim=1).indices
        hits = topk == labels[:, None]
        loss = nn.functional.cross_entropy(logits, labels, reduction="sum")
        stats += torch.stack([hits[:, 0].sum().double(), hits.any(1).sum().double(), loss.double()])
        seen += labels.shape[0]
    totals = torch.cat([stats, torch.tensor([seen], dtype=torch.float64, device=device)])
    top1, top5, loss_sum, count = all_reduce_sum(totals).tolist()
    count = max(count, 1.0)
    return {
        "val_top1": 100 * top1 / count,
        "val_top5": 100 * top5 / count,
        "val_loss": loss_sum / count,
    }


class _Loaders(NamedTuple):
    train: DataLoader[Any]
    val: DataLoader[Any]
    bn: DataLoader[Any] | None
    sampler: SeededSampler
    num_classes: int
    multicrop: MultiCropTransform


def _loaders(args: argparse.Namespace, preset: Any, info: DistributedInfo) -> _Loaders:
    stats = dataset_info(args.dataset)
    multicrop = MultiCropTransform(**preset.transform_kwargs(), mean=stats.mean, std=stats.std)
    val_crop = args.val_crop_size or preset.global_crop_size
    val_resize = args.val_resize_size
    if val_resize is None and args.small_images:
        val_resize = val_crop  # 28-32 px datasets are evaluated on the whole image
    val_tf = eval_transform(val_crop, val_resize, mean=stats.mean, std=stats.std)
    train_tf: Any = v2.PILToTensor() if args.gpu_aug else multicrop
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
    inner = DistributedSampler(
        data.train,
        num_replicas=info.world_size,
        rank=info.rank,
        shuffle=True,
        seed=args.seed,
        drop_last=True,
    )
    sampler = SeededSampler(inner, args.seed)
    workers = args.workers
    common: dict[str, Any] = {
        "num_workers": workers,
        "pin_memory": info.device.type == "cuda",
        "persistent_workers": workers > 0,
    }
    if workers > 0:
        common["prefetch_factor"] = args.prefetch_factor
    plain_collate = SkipBadCollate(torch.utils.data.default_collate)
    train_loader = DataLoader(
        SeededDataset(data.train),
        batch_size=args.batch_size,
        sampler=sampler,
        collate_fn=SkipBadCollate(uint8_collate if args.gpu_aug else multicrop_collate),
        drop_last=True,
        **common,
    )
    val_loader = DataLoader(
        data.val,
        batch_size=args.batch_size * 2,
        sampler=ShardedEvalSampler(data.val, info.world_size, info.rank),
        collate_fn=plain_collate,
        **common,
    )
    bn_loader = None
    if args.bn_recalibration_batches > 0:
        # Training images as the evaluation sees them; the same count on every rank, since
        # SyncBatchNorm needs every rank in every forward.
        per_rank = min(
            args.bn_recalibration_batches * args.batch_size, len(data.train) // info.world_size
        )
        order = torch.randperm(len(data.train), generator=torch.Generator().manual_seed(args.seed))
        mine = order[info.rank * per_rank : (info.rank + 1) * per_rank].tolist()
        bn_loader = DataLoader(
            with_transform(data.train, val_tf),
            batch_size=args.batch_size,
            sampler=mine,
            collate_fn=plain_collate,
            **common,
        )
    return _Loaders(train_loader, val_loader, bn_loader, sampler, data.num_classes, multicrop)


def _build_gpu_aug(
    args: argparse.Namespace,
    multicrop: MultiCropTransform,
    device: torch.device,
    dtype: torch.dtype | None,
) -> nn.Module | None:
    if not args.gpu_aug:
        return None
    try:
        from protohead.gpu_multicrop import GPUMultiCrop
    except ImportError as err:
        raise SystemExit(f"--gpu-aug needs protohead.gpu_multicrop ({err})") from err
    fuse = args.gpu_aug_fuse == "on" or (args.gpu_aug_fuse == "auto" and device.type == "cuda")
    aug: nn.Module = GPUMultiCrop.from_transform(
        multicrop,
        output_dtype=dtype or torch.float32,
        channels_last=args.channels_last,
        fuse=fuse,
    )
    return aug.to(device)


def _wrap_ddp(model: nn.Module, device: torch.device) -> nn.Module:
    """DDP without per-step buffer broadcasts: every rank enqueues the same gathered features,
    so the memory (and the teacher) stay identical without them."""
    ids = [device.index] if device.type == "cuda" else None
    params = inspect.signature(DistributedDataParallel).parameters
    if "forward_sync_buffers" in params:  # torch >= 2.14 renamed broadcast_buffers
        return DistributedDataParallel(model, device_ids=ids, forward_sync_buffers=False)
    return DistributedDataParallel(model, device_ids=ids, broadcast_buffers=False)


def _args_dict(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in vars(args).items():
        if key.startswith("_"):
            continue
        if isinstance(value, Path):
            value = str(value)
        elif isinstance(value, tuple):
            value = list(value)
        out[key] = value
    return out


def _write_metrics(path: Path, record: dict[str, Any]) -> None:
    with path.open("a") as handle:
        handle.write(json.dumps(record) + "\n")


def _truncate_metrics(path: Path, start_epoch: int) -> None:
    """Drop records of epochs that will be re-run after a resume (keeps the file consistent)."""
    if not path.is_file():
        return
    kept = [
        line
        for line in path.read_text().splitlines()
        if line.strip() and json.loads(line).get("epoch", 0) <= start_epoch
    ]
    with atomic_write(path, "w") as handle:
        handle.write("".join(line + "\n" for line in kept))


def _tensorboard(output_dir: Path, enabled: bool) -> Any:
    if not enabled:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(output_dir / "tensorboard"))


def _checkpoint_state(
    model: TReX,
    optimizer: torch.optim.Optimizer,
    scheduler: WarmupCosineLR,
    scaler: torch.amp.GradScaler | None,
    epoch: int,
    args: argparse.Namespace,
    preset: Any,
    metrics: dict[str, Any],
) -> dict[str, Any]:
    return {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else None,
        "epoch": epoch,
        "step": scheduler.num_steps,
        "args": _args_dict(args),
        "preset": dataclasses.asdict(preset),
        "metrics": metrics,  # the epoch's metrics.jsonl record (val_top1 in %)
        # Every rank's generators, so a resumed distributed run continues each rank's streams.
        "rng": all_gather_objects(get_rng_state()),
    }


def main(args: argparse.Namespace) -> dict[str, Any]:
    """Train, evaluate every epoch, checkpoint, and export ``backbone.pth``.

    Returns the last epoch's metrics (empty when there was nothing left to train).
    """
    if args.dataset is None and args.data_dir is None:
        raise SystemExit("give --dataset NAME or --data-dir PATH (ImageFolder train/ and val/)")
    if args.data_dir is not None and not args.data_dir.is_dir():
        raise SystemExit(f"--data-dir {str(args.data_dir)!r} does not exist")
    info = init_distributed(args.device)
    try:
        return _train(args, info)
    finally:
        cleanup_distributed()


def _train(args: argparse.Namespace, info: DistributedInfo) -> dict[str, Any]:
    run_start = time.perf_counter()
    _setup_logging(info)
    device = info.device
    if args.threads:
        torch.set_num_threads(args.threads)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = args.tf32
        torch.backends.cudnn.allow_tf32 = args.tf32
    preset = _resolve_preset(args)
    output_dir: Path = args.output_dir
    if info.is_main:
        output_dir.mkdir(parents=True, exist_ok=True)
    logger.info("preset %s: %s", args.preset, preset)

    # Same seed everywhere for identical initial weights and memory, then per-rank seeds.
    seed_everything(args.seed)
    loaders = _loaders(args, preset, info)
    train_loader, val_loader, sampler = loaders.train, loaders.val, loaders.sampler
    num_classes, multicrop = loaders.num_classes, loaders.multicrop
    model = TReX(
        args.arch,
        num_classes,
        **preset.model_kwargs(),
        small_input_stem=args.small_input_stem,
        memory_init=args.memory_init,
        on_invalid="skip",
    )
    seed_everything(args.seed + info.rank)
    if info.distributed and args.sync_bn and device.type == "cuda":
        # SyncBatchNorm is GPU-only; CPU (gloo) runs keep per-process batch statistics.
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    model.to(device).to(memory_format=fmt)
    if args.compile:
        model.student.compile()
        if model.teacher is not None:
            model.teacher.module.compile()

    global_batch = args.batch_size * info.world_size
    base_lr = scaled_lr(args.lr, global_batch)
    optimizer = torch.optim.SGD(
        param_groups(model, args.weight_decay), lr=base_lr, momentum=args.momentum
    )
    steps = len(train_loader)
    if args.max_steps_per_epoch is not None:
        steps = min(steps, args.max_steps_per_epoch)
    if steps < 1:
        raise SystemExit(
            f"the training set gives no full batch of --batch-size {args.batch_size} per process"
        )
    scheduler = WarmupCosineLR(
        optimizer,
        base_lr=base_lr,
        total_steps=args.epochs * steps,
        warmup_steps=min(round(args.warmup_epochs * steps), args.epochs * steps),
        final_lr=min(args.final_lr, base_lr),
    )
    autocast_dtype = _autocast_dtype(args, device)
    scaler = torch.amp.GradScaler("cuda") if autocast_dtype == torch.float16 else None
    gpu_aug = _build_gpu_aug(args, multicrop, device, autocast_dtype)

    start_epoch = 0
    checkpoint_path = output_dir / CHECKPOINT
    resume = find_resume_checkpoint(args.resume, output_dir)
    if resume is not None:
        ckpt = load_checkpoint(resume, map_location=device)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        if scaler is not None and ckpt.get("scaler") is not None:
            scaler.load_state_dict(ckpt["scaler"])
        start_epoch = int(ckpt["epoch"])
        rng = ckpt.get("rng")
        if isinstance(rng, list) and len(rng) == info.world_size:
            set_rng_state(rng[info.rank])
        logger.info("resumed from %s at epoch %d", resume, start_epoch)
        if info.is_main:
            _truncate_metrics(output_dir / METRICS, start_epoch)

    train_model: nn.Module = model
    if info.distributed:
        train_model = _wrap_ddp(model, device)
    writer = _tensorboard(output_dir, info.is_main)
    logger.info(
        "training %s on %s: %d classes, %d steps/epoch, global batch %d, lr %.4g, %d process(es)",
        args.arch,
        args.dataset or args.data_dir,
        num_classes,
        steps,
        global_batch,
        base_lr,
        info.world_size,
    )
    metrics: dict[str, Any] = {}
    for epoch in range(start_epoch, args.epochs):
        sampler.set_epoch(epoch)
        generator = None
        if gpu_aug is not None:
            generator = torch.Generator(device).manual_seed(
                sample_seed(args.seed, epoch, info.rank)
            )
        tic = time.perf_counter()
        try:
            train_stats = train_one_epoch(
                model,
                train_model,
                optimizer,
                scheduler,
                scaler,
                train_loader,
                steps,
                epoch,
                args,
                device=device,
                autocast_dtype=autocast_dtype,
                gpu_aug=gpu_aug,
                generator=generator,
                show_progress=info.is_main,
            )
        except NonFiniteLossError as err:
            kept = (
                f"{checkpoint_path} (after epoch {epoch})"
                if checkpoint_path.is_file()
                else "none (no epoch had finished)"
            )
            raise NonFiniteLossError(
                f"{err}; stopping. Last good checkpoint: {kept}. Lower --lr, raise "
                "--warmup-epochs, or check the data."
            ) from err
        if loaders.bn is not None:
            recalibrate_batchnorm(
                model.student,
                loaders.bn,
                args.bn_recalibration_batches,
                prepare=lambda batch: batch[0].to(device, non_blocking=True, memory_format=fmt),
            )
        val_stats = evaluate(
            model,
            val_loader,
            device,
            autocast_dtype=autocast_dtype,
            channels_last=args.channels_last,
        )
        epoch_time = time.perf_counter() - tic
        metrics = {
            "epoch": epoch + 1,
            **train_stats,
            **val_stats,
            "epoch_time_s": epoch_time,
            "step": scheduler.num_steps,
        }
        state = _checkpoint_state(
            model, optimizer, scheduler, scaler, epoch + 1, args, preset, metrics
        )
        if info.is_main:
            save_checkpoint(state, checkpoint_path)
            if args.save_every and (epoch + 1) % args.save_every == 0:
                save_checkpoint(state, output_dir / f"checkpoint_epoch{epoch + 1}.pth")
            _write_metrics(output_dir / METRICS, metrics)
            if writer is not None:
                for key, value in metrics.items():
                    if key not in ("epoch", "step"):
                        writer.add_scalar(key, value, epoch + 1)
        barrier()
        logger.info(
            "epoch %d/%d  train loss %.4f  train top-1 %.2f  test top-1 %.2f  top-5 %.2f  "
            "lr %.5f  %.0f img/s  %.1f s",
            epoch + 1,
            args.epochs,
            metrics["train_loss"],
            metrics["train_top1"],
            metrics["val_top1"],
            metrics["val_top5"],
            metrics["lr"],
            metrics["images_per_s"],
            epoch_time,
        )
    if info.is_main:
        backbone = {
            k: v.detach().cpu().contiguous() for k, v in model.backbone_state_dict().items()
        }
        save_checkpoint(backbone, output_dir / BACKBONE)
        logger.info("backbone weights for %s written to %s", args.arch, output_dir / BACKBONE)
    if metrics:
        logger.info(
            "done: %d epochs in %.1f s, final test top-1 %.2f",
            args.epochs - start_epoch,
            time.perf_counter() - run_start,
            metrics["val_top1"],
        )
    if writer is not None:
        writer.close()
    return metrics


if __name__ == "__main__":
    cli_args = get_args_parser().parse_args()
    try:
        main(cli_args)
    except NonFiniteLossError as error:
        logger.error("%s", error)
        raise SystemExit(2) from None
