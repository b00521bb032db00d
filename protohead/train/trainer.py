"""Train t-ReX / t-ReX* (or the supervised baseline) with protohead.

Reference script for Sariyildiz et al., "No Reason for No Supervision: Improved Generalization
in Supervised Models" (ICLR 2023), laid out like torchvision's
``references/classification/train.py``: :func:`get_args_parser`, :func:`train_one_epoch`,
:func:`evaluate` and :func:`main`.

Single process (CPU or one GPU)::

    protohead-train --dataset fashion-mnist --preset trex --small-images \\
        --device cpu --output-dir runs/fmnist

ImageNet on 4 GPUs (64 images per GPU, the paper's setting)::

    torchrun --nproc_per_node=4 -m protohead.train --data-dir /data/imagenet \\
        --arch resnet50 --preset trex --output-dir runs/trex

Re-running the same command resumes from ``<output-dir>/checkpoint.pth`` (or says that the
run is complete). Bad input (a wrong flag, missing data, a checkpoint of another run) ends the
command with one ``protohead-train: error: ...`` line and exit status 2, see
:mod:`protohead.train.usage`.
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import logging
import math
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from protohead import TReX
from protohead.atomic_files import remove_stale_temp_files
from protohead.data.batched_decode import BatchedDecoder
from protohead.encoder import repeat_per_crop
from protohead.presets import TReXPreset
from protohead.train.args import PRESET_FLAGS, get_args_parser, resolve_preset
from protohead.train.batchnorm import recalibrate_batchnorm
from protohead.train.launch import (
    DistributedInfo,
    all_reduce_sum,
    barrier,
    cleanup_distributed,
    init_distributed,
)
from protohead.train.loaders import build_decoder, build_gpu_aug, build_loaders
from protohead.train.optim import WarmupCosineLR, param_groups, scaled_lr
from protohead.train.run_dir import (
    BACKBONE,
    CHECKPOINT,
    ResumePlan,
    checkpoint_state,
    export_backbone,
    plan_resume,
    resume_run,
    save_epoch,
    tensorboard_writer,
)
from protohead.train.seeding import sample_seed, seed_everything
from protohead.train.usage import UsageError, check_args
from protohead.train.weights import init_backbone, resolve_init_from

__all__ = [
    "PRESET_FLAGS",
    "NonFiniteLossError",
    "UsageError",
    "cli",
    "evaluate",
    "get_args_parser",
    "main",
    "resolve_preset",
    "sgd_implementation",
    "train_one_epoch",
]

logger = logging.getLogger("protohead.train")


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite."""


def _setup_logging(info: DistributedInfo) -> None:
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.INFO if info.is_main else logging.WARNING)


def sgd_implementation(choice: str, device: torch.device) -> dict[str, bool]:
    """``torch.optim.SGD`` keyword arguments for ``--optimizer-impl`` on ``device``.

    All three give the same update; they differ in kernel launches per step (one per parameter
    tensor for the for-loop, which dominates the optimiser's cost on a GPU).

    Example:
        >>> sgd_implementation("auto", torch.device("cpu"))
        {'foreach': True, 'fused': False}
    """
    if choice == "auto":
        choice = "fused" if device.type == "cuda" else "foreach"
    return {"foreach": choice == "foreach", "fused": choice == "fused"}


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
        if isinstance(inputs, tuple):  # (padded batch, sizes), decoded on the device
            decoded: list[Tensor] = gpu_aug(*inputs, generator=generator)
            return decoded
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
    decoder: BatchedDecoder | None = None,
) -> dict[str, float]:
    """One epoch of ``steps`` iterations; returns the epoch's mean metrics (all ranks).

    ``train_model`` is ``model`` or its DDP wrapper. Loss and accuracy are accumulated on the
    device and read only every ``--print-freq`` steps and at the end, where a non-finite loss
    raises :class:`NonFiniteLossError` before anything is saved. With ``decoder``
    (``--decode batched``) the loader yields file bytes, decoded here on the device; files it
    drops (``--skip-bad-images``) count as skipped like those the loader drops.
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
        if decoder is not None:  # file bytes -> padded uint8 batch on the device
            decoded_batch = decoder(inputs, labels)
            inputs, labels = (decoded_batch.images, decoded_batch.sizes), decoded_batch.labels
            num_bad += decoded_batch.skipped
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
            correct = (global_logits.argmax(1) == repeat_per_crop(labels, num_global)).sum()
            correct = correct / num_global
            batch_loss = loss.detach().double() * batch
            stats += torch.stack([batch_loss, correct.double()])
            window_loss += batch_loss
        images += batch
        window_images += batch
        if (step + 1) % args.print_freq == 0 or step + 1 == steps:
            # The loop's own host sync, every print_freq steps (fp16's GradScaler and a
            # distributed memory gather add theirs); summed over ranks so that all of them see a
            # non-finite loss at the same step and stop together.
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
        "train_skipped_images": skipped_total,
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
    the result equals a single-process evaluation. Images the loader dropped as unreadable
    (``--skip-bad-images``) are counted in ``val_skipped_images``.
    """
    model.eval()
    stats = torch.zeros(3, dtype=torch.float64, device=device)  # top-1, top-5, loss sums
    seen = skipped = 0
    k = min(5, model.num_classes)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    for images, labels, num_bad in loader:
        skipped += num_bad
        images = images.to(device, non_blocking=True, memory_format=fmt)
        labels = labels.to(device, non_blocking=True)
        with _autocast(device, autocast_dtype):
            logits = model(images).float()
        topk = logits.topk(k, dim=1).indices
        hits = topk == labels[:, None]
        loss = nn.functional.cross_entropy(logits, labels, reduction="sum")
        stats += torch.stack([hits[:, 0].sum().double(), hits.any(1).sum().double(), loss.double()])
        seen += labels.shape[0]
    counts = torch.tensor([seen, skipped], dtype=torch.float64, device=device)
    top1, top5, loss_sum, count, skipped_total = all_reduce_sum(torch.cat([stats, counts])).tolist()
    count = max(count, 1.0)
    return {
        "val_top1": 100 * top1 / count,
        "val_top5": 100 * top5 / count,
        "val_loss": loss_sum / count,
        "val_skipped_images": skipped_total,
    }


def _wrap_ddp(model: nn.Module, device: torch.device) -> nn.Module:
    """DDP without per-step buffer broadcasts: every rank enqueues the same gathered features,
    so the memory (and the teacher) stay identical without them."""
    ids = [device.index] if device.type == "cuda" else None
    params = inspect.signature(DistributedDataParallel).parameters
    # broadcast_buffers is deprecated from torch 2.13; forward_sync_buffers=False still
    # broadcasts once at construction, harmless since every rank built the same buffers.
    if "forward_sync_buffers" in params:
        return DistributedDataParallel(model, device_ids=ids, forward_sync_buffers=False)
    return DistributedDataParallel(model, device_ids=ids, broadcast_buffers=False)


def main(args: argparse.Namespace) -> dict[str, Any]:
    """Train, evaluate every epoch, checkpoint, and export ``backbone.pth``.

    Returns the last epoch's metrics (empty when there was nothing left to train).

    Raises:
        UsageError: On bad input (flags, data, a checkpoint of another run), before anything
            is trained; :func:`cli` prints it as one line.
        NonFiniteLossError: If the loss diverges.
    """
    check_args(args)
    info = init_distributed(args.device)
    try:
        return _train(args, info)
    finally:
        cleanup_distributed()


def _build_model(args: argparse.Namespace, preset: TReXPreset, num_classes: int) -> TReX:
    try:
        return TReX(
            args.arch,
            num_classes,
            **preset.model_kwargs(),
            small_input_stem=args.small_input_stem,
            memory_init=args.memory_init,
            on_invalid="skip",
            # drop_last=True gives every rank equal batches unless bad images are dropped.
            equal_batches=not args.skip_bad_images,
            fused_memory=args.compile,
        )
    except (ValueError, ImportError) as err:  # e.g. --small-input-stem on a ViT
        raise UsageError(str(err)) from err


def _start(args: argparse.Namespace, info: DistributedInfo) -> tuple[TReXPreset, ResumePlan | None]:
    """The preset and the checkpoint to resume, checked before any data or model is built."""
    try:
        preset = resolve_preset(args)
    except ValueError as err:  # an override flag out of range
        raise UsageError(str(err)) from err
    if info.is_main:
        args.output_dir.mkdir(parents=True, exist_ok=True)
        removed = remove_stale_temp_files(args.output_dir)
        if removed:  # left by a run killed while it saved (kill -9, OOM killer, preemption)
            logger.info("removed %d stale temporary file(s) in %s", len(removed), args.output_dir)
    return preset, plan_resume(args, preset)


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
    preset, plan = _start(args, info)
    output_dir: Path = args.output_dir
    if plan is not None and plan.complete(args.epochs) and (output_dir / BACKBONE).is_file():
        logger.info(
            "run in %s is complete: %d/%d epochs; nothing to do (raise --epochs to train longer)",
            output_dir,
            plan.epoch,
            args.epochs,
        )
        return {}
    init_weights = None
    if args.init_from is not None:
        if plan is None:
            init_weights = resolve_init_from(args.init_from)
        else:
            logger.info("--init-from %s is ignored: resuming from %s", args.init_from, plan.path)
    logger.info("preset %s: %s", args.preset, preset)

    # Same seed everywhere for identical initial weights and memory, then per-rank seeds.
    seed_everything(args.seed)
    try:
        loaders = build_loaders(args, preset, info)
    except (FileNotFoundError, ValueError) as err:  # no images, empty class folder, ...
        raise UsageError(str(err)) from err
    train_loader, val_loader, sampler = loaders.train, loaders.val, loaders.sampler
    num_classes, multicrop = loaders.num_classes, loaders.multicrop
    steps = len(train_loader)
    if args.max_steps_per_epoch is not None:
        steps = min(steps, args.max_steps_per_epoch)
    if steps < 1:
        size, ranks = loaders.train_size, info.world_size
        shares = f", {size // ranks} per process over {ranks} processes" if ranks > 1 else ""
        raise UsageError(
            f"the training set gives no full batch of --batch-size {args.batch_size}: it has "
            f"{size} images{shares}; lower --batch-size"
        )
    model = _build_model(args, preset, num_classes)
    if init_weights is not None:
        init_backbone(model, *init_weights)
        logger.info("backbone initialised from %s", init_weights[1])
    seed_everything(args.seed + info.rank)
    if info.distributed and args.sync_bn and device.type == "cuda":
        # SyncBatchNorm is GPU-only; CPU (gloo) runs keep per-process batch statistics.
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    model.to(device).to(memory_format=fmt)
    if args.compile:
        # In place (nn.Module.compile), so state_dict keys and checkpoints do not change.
        model.student.compile(mode=args.compile_mode)
        if model.teacher is not None:
            model.teacher.module.compile(mode=args.compile_mode)

    global_batch = args.batch_size * info.world_size
    base_lr = scaled_lr(args.lr, global_batch)
    optimizer = torch.optim.SGD(
        param_groups(model, args.weight_decay),
        lr=base_lr,
        momentum=args.momentum,
        **sgd_implementation(args.optimizer_impl, device),
    )
    scheduler = WarmupCosineLR(
        optimizer,
        base_lr=base_lr,
        total_steps=args.epochs * steps,
        warmup_steps=min(round(args.warmup_epochs * steps), args.epochs * steps),
        final_lr=min(args.final_lr, base_lr),
    )
    if args.warmup_epochs >= args.epochs:
        logger.warning(
            "--warmup-epochs %g covers the whole run of %d epochs: the learning rate never "
            "reaches its peak nor decays; lower --warmup-epochs for short runs",
            args.warmup_epochs,
            args.epochs,
        )
    autocast_dtype = _autocast_dtype(args, device)
    scaler = torch.amp.GradScaler("cuda") if autocast_dtype == torch.float16 else None
    gpu_aug = build_gpu_aug(args, multicrop, device, autocast_dtype)
    decoder = build_decoder(args, device)

    checkpoint_path = output_dir / CHECKPOINT
    start_epoch = 0
    if plan is not None:
        start_epoch = resume_run(plan, args, info, model, optimizer, scheduler, scaler)
        if start_epoch >= args.epochs:
            logger.info("the run is complete; writing its missing %s", BACKBONE)

    train_model: nn.Module = model
    if info.distributed:
        train_model = _wrap_ddp(model, device)
    writer = tensorboard_writer(output_dir, info.is_main and args.tensorboard is not False)
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
                decoder=decoder,
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
        state = checkpoint_state(
            model, optimizer, scheduler, scaler, epoch + 1, args, preset, metrics
        )
        if info.is_main:
            save_epoch(state, metrics, output_dir, args.save_every, writer)
        barrier()
        skipped = ""
        if args.skip_bad_images:  # without it an unreadable image stops the run
            skipped = "  skipped unreadable images: {:.0f} train, {:.0f} val".format(
                metrics["train_skipped_images"], metrics["val_skipped_images"]
            )
        logger.info(
            "epoch %d/%d  train loss %.4f  train top-1 %.2f  test top-1 %.2f  top-5 %.2f  "
            "lr %.5f  %.0f img/s  %.1f s%s",
            epoch + 1,
            args.epochs,
            metrics["train_loss"],
            metrics["train_top1"],
            metrics["val_top1"],
            metrics["val_top5"],
            metrics["lr"],
            metrics["images_per_s"],
            epoch_time,
            skipped,
        )
    if info.is_main:
        path = export_backbone(model, output_dir)
        logger.info("backbone weights for %s written to %s", args.arch, path)
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


def cli(argv: Sequence[str] | None = None) -> int:
    """The ``protohead-train`` command (``python -m protohead.train``); returns the exit code.

    A :class:`UsageError` becomes one ``protohead-train: error: ...`` line on stderr and exit
    status 2, like argparse's own errors (``--debug`` re-raises it with its traceback).
    """
    parser = get_args_parser()
    args = parser.parse_args(argv)
    try:
        main(args)
    except UsageError as error:
        if args.debug:
            raise
        print(f"{parser.prog}: error: {' '.join(str(error).split())}", file=sys.stderr)
        return 2
    except NonFiniteLossError as error:
        logger.error("%s", error)
        return 2
    return 0
