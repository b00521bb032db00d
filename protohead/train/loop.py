"""The per-epoch loops of the trainer: :func:`train_one_epoch` and :func:`evaluate`.

Both keep their running sums on the device and read them on the host only every
``--print-freq`` steps and at the end of the epoch (summed over ranks), so a step never waits
for the device; see :mod:`protohead.train.trainer` for the run around them.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import Tensor, nn

from protohead import TReX
from protohead.data.batched_decode import BatchedDecoder
from protohead.encoder import repeat_per_crop
from protohead.train.launch import all_reduce_sum
from protohead.train.optim import WarmupCosineLR

__all__ = ["NonFiniteLossError", "amp_dtype", "evaluate", "train_one_epoch"]

logger = logging.getLogger("protohead.train")


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite."""


def amp_dtype(args: argparse.Namespace, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of ``--amp`` on ``device``; ``None``: no autocast (CPU, ``none``).

    Example:
        >>> amp_dtype(argparse.Namespace(amp="auto"), torch.device("cpu")) is None
        True
    """
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
