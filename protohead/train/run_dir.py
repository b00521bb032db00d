"""Run directory of the trainer (``protohead-train``): checkpoints, ``metrics.jsonl``, the exported
``backbone.pth`` and TensorBoard logs.

Checkpoints, ``metrics.jsonl`` and ``backbone.pth`` are replaced atomically (written next to
their destination, then renamed), so a run killed at any moment leaves the previous version
readable and a re-run resumes cleanly; TensorBoard's event files are appended by its writer.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

import torch

from protohead import TReX
from protohead.atomic_files import atomic_write
from protohead.presets import TReXPreset
from protohead.train.checkpoint import (
    find_resume_checkpoint,
    get_rng_state,
    load_checkpoint,
    save_checkpoint,
    set_rng_state,
)
from protohead.train.launch import DistributedInfo, all_gather_objects
from protohead.train.optim import WarmupCosineLR

# The trainer's other helpers here (resume, per-epoch saving, metrics records) take its parsed
# flags and are internal to it; the file names and the exported backbone are the public contract.
__all__ = ["BACKBONE", "CHECKPOINT", "METRICS", "export_backbone"]

CHECKPOINT = "checkpoint.pth"
"""The latest checkpoint of a run (model, optimiser, schedule, RNG states, flags); a re-run with the
same ``--output-dir`` resumes from it. ``--save-every N`` also keeps ``checkpoint_epoch<N>.pth``."""
METRICS = "metrics.jsonl"
"""One JSON record per finished epoch (losses, top-1/top-5 in %, learning rate, images/s)."""
BACKBONE = "backbone.pth"
"""The student backbone's state_dict written at the end of a run (see :func:`export_backbone`)."""

logger = logging.getLogger("protohead.train")


def args_dict(args: argparse.Namespace) -> dict[str, Any]:
    """``args`` as plain JSON-able values (paths as str, tuples as lists) for checkpoints."""
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


def checkpoint_state(
    model: TReX,
    optimizer: torch.optim.Optimizer,
    scheduler: WarmupCosineLR,
    scaler: torch.amp.GradScaler | None,
    epoch: int,
    args: argparse.Namespace,
    preset: TReXPreset,
    metrics: dict[str, Any],
) -> dict[str, Any]:
    """Everything a resumed run needs, plus the run's configuration and last metrics.

    Collective: every rank must call it (it gathers each rank's random-generator states).
    """
    return {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else None,
        "epoch": epoch,
        "step": scheduler.num_steps,
        "args": args_dict(args),
        "preset": preset.to_dict(),
        "metrics": metrics,  # the epoch's metrics.jsonl record (val_top1 in %)
        # Every rank's generators, so a resumed distributed run continues each rank's streams.
        "rng": all_gather_objects(get_rng_state()),
    }


def resume_run(
    args: argparse.Namespace,
    info: DistributedInfo,
    model: TReX,
    optimizer: torch.optim.Optimizer,
    scheduler: WarmupCosineLR,
    scaler: torch.amp.GradScaler | None,
) -> int:
    """Load ``--resume`` (or ``<output-dir>/checkpoint.pth``) into the training objects.

    Returns the number of finished epochs (0 for a fresh start). On the main rank the metrics
    of epochs that will be re-run are dropped from ``metrics.jsonl``.
    """
    path = find_resume_checkpoint(args.resume, args.output_dir, CHECKPOINT)
    if path is None:
        return 0
    ckpt = load_checkpoint(path, map_location=info.device)
    try:  # first: it checks that this run continues the checkpoint's schedule
        scheduler.load_state_dict(ckpt["scheduler"])
    except ValueError as err:
        raise SystemExit(f"cannot resume from {path}: {err}") from err
    model.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    if scaler is not None and ckpt.get("scaler") is not None:
        scaler.load_state_dict(ckpt["scaler"])
    start_epoch = int(ckpt["epoch"])
    rng = ckpt.get("rng")
    if isinstance(rng, list) and len(rng) == info.world_size:
        set_rng_state(rng[info.rank])
    logger.info("resumed from %s at epoch %d", path, start_epoch)
    if info.is_main:
        truncate_metrics(args.output_dir / METRICS, start_epoch)
    return start_epoch


def _read_records(path: Path) -> list[str]:
    if not path.is_file():
        return []
    return [line for line in path.read_text().splitlines() if line.strip()]


def append_metrics(path: Path, record: dict[str, Any]) -> None:
    """Add one JSON line to ``path``; the file is rewritten atomically, never half-appended."""
    lines = [*_read_records(path), json.dumps(record)]
    with atomic_write(path, "w") as handle:
        handle.write("".join(line + "\n" for line in lines))


def truncate_metrics(path: Path, start_epoch: int) -> None:
    """Drop records of epochs that will be re-run after a resume (keeps the file consistent)."""
    if not path.is_file():
        return
    kept = [line for line in _read_records(path) if json.loads(line).get("epoch", 0) <= start_epoch]
    with atomic_write(path, "w") as handle:
        handle.write("".join(line + "\n" for line in kept))


def tensorboard_writer(output_dir: Path, enabled: bool) -> Any:
    """A ``SummaryWriter`` in ``<output_dir>/tensorboard``; None if disabled or not installed."""
    if not enabled:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(output_dir / "tensorboard"))


def save_epoch(
    state: dict[str, Any],
    metrics: dict[str, Any],
    output_dir: Path,
    save_every: int,
    writer: Any,
) -> None:
    """Main rank, end of an epoch: checkpoint (and every ``save_every`` epochs a kept copy),
    the ``metrics.jsonl`` record and the TensorBoard scalars."""
    epoch = int(metrics["epoch"])
    # Metrics first: a run killed before the checkpoint lands resumes from the previous epoch
    # and drops this record (truncate_metrics); the other order would lose it for good.
    append_metrics(output_dir / METRICS, metrics)
    save_checkpoint(state, output_dir / CHECKPOINT)
    if save_every and epoch % save_every == 0:
        save_checkpoint(state, output_dir / f"checkpoint_epoch{epoch}.pth")
    if writer is not None:
        for key, value in metrics.items():
            if key not in ("epoch", "step"):
                writer.add_scalar(key, value, epoch)


def export_backbone(model: TReX, output_dir: Path) -> Path:
    """Write the student backbone's weights (CPU, contiguous) as ``<output_dir>/backbone.pth``:
    a torchvision/timm state_dict without the classifier; projector and memory are dropped.

    Args:
        model: The trained model (its student backbone is exported, not the EMA teacher).
        output_dir: Existing run directory.

    Returns:
        The path written, atomically.

    Example:
        >>> import tempfile, torchvision
        >>> from protohead import TReX
        >>> model = TReX("resnet18", 10, projector_hidden_dim=8, memory_size=16)
        >>> with tempfile.TemporaryDirectory() as out:
        ...     path = export_backbone(model, Path(out))
        ...     weights = torch.load(path)
        >>> path.name
        'backbone.pth'
        >>> result = torchvision.models.resnet18().load_state_dict(weights, strict=False)
        >>> sorted(result.missing_keys), result.unexpected_keys
        (['fc.bias', 'fc.weight'], [])
    """
    backbone = {k: v.detach().cpu().contiguous() for k, v in model.backbone_state_dict().items()}
    return save_checkpoint(backbone, output_dir / BACKBONE)
