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
import inspect
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from protohead import TReX
from protohead.atomic_files import remove_stale_temp_files
from protohead.presets import TReXPreset
from protohead.train.args import PRESET_FLAGS, get_args_parser, resolve_preset
from protohead.train.batchnorm import recalibrate_batchnorm
from protohead.train.launch import (
    DistributedInfo,
    barrier,
    cleanup_distributed,
    init_distributed,
)
from protohead.train.loaders import build_decoder, build_gpu_aug, build_loaders
from protohead.train.loop import (
    NonFiniteLossError,
    amp_dtype,
    evaluate,
    train_one_epoch,
)
from protohead.train.optim import WarmupCosineLR, param_groups, scaled_lr, sgd_implementation
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
    "fused_memory",
    "get_args_parser",
    "main",
    "resolve_preset",
    "sgd_implementation",
    "train_one_epoch",
]

logger = logging.getLogger("protohead.train")


def _setup_logging(info: DistributedInfo) -> None:
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.INFO if info.is_main else logging.WARNING)


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


def _build_model(
    args: argparse.Namespace, preset: TReXPreset, num_classes: int, device: torch.device
) -> TReX:
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
            fused_memory=fused_memory(args.fused_memory, args.compile, device),
        )
    except (ValueError, ImportError) as err:  # e.g. --small-input-stem on a ViT
        raise UsageError(str(err)) from err


def fused_memory(choice: str, compile_model: bool, device: torch.device) -> bool:
    """Whether ``--fused-memory`` compiles the memory step on ``device``.

    ``auto`` compiles it where launches are the step's cost (CUDA) or where the model is
    compiled anyway (``--compile``); the memory falls back to eager if compiling fails.

    Example:
        >>> cpu = torch.device("cpu")
        >>> fused_memory("auto", False, cpu), fused_memory("auto", True, cpu)
        (False, True)
    """
    if choice == "auto":
        return compile_model or device.type == "cuda"
    return choice == "on"


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
    model = _build_model(args, preset, num_classes, device)
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
    autocast_dtype = amp_dtype(args, device)
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
    status 2, as the parser's own errors do (``--debug`` re-raises it with its traceback).
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
