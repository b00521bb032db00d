"""Run directory of the trainer (``protohead-train``): checkpoints, ``metrics.jsonl``, the exported
``backbone.pth`` and TensorBoard logs.

Checkpoints, ``metrics.jsonl`` and ``backbone.pth`` are replaced atomically (written next to
their destination, then renamed), so a run killed at any moment leaves the previous version
readable and a re-run resumes cleanly; TensorBoard's event files are appended by its writer.

A re-run resumes only a checkpoint of the same run: :func:`plan_resume` compares the settings
recorded in it (``--arch``, ``--small-input-stem``, the dataset and the resolved preset) with
this run's before any state is loaded, and a finished run is reported as complete.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from protohead import TReX
from protohead.atomic_files import atomic_write
from protohead.presets import TReXPreset
from protohead.train.checkpoint import (
    KEY_ARGS,
    KEY_EPOCH,
    KEY_METRICS,
    KEY_MODEL,
    KEY_NUM_CLASSES,
    KEY_OPTIMIZER,
    KEY_PRESET,
    KEY_RNG,
    KEY_SCALER,
    KEY_SCHEDULER,
    KEY_STEP,
    BackboneExportError,
    CheckpointFormatError,
    RunSummary,
    find_resume_checkpoint,
    get_rng_state,
    load_checkpoint,
    read_training_checkpoint,
    save_checkpoint,
    set_rng_state,
)
from protohead.train.launch import DistributedInfo, all_gather_objects
from protohead.train.optim import WarmupCosineLR
from protohead.train.usage import UsageError
from protohead.train.weights import describe_mismatch

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
        KEY_MODEL: model.state_dict(),
        KEY_OPTIMIZER: optimizer.state_dict(),
        KEY_SCHEDULER: scheduler.state_dict(),
        KEY_SCALER: scaler.state_dict() if scaler is not None else None,
        KEY_EPOCH: epoch,
        KEY_STEP: scheduler.num_steps,
        KEY_ARGS: args_dict(args),
        KEY_PRESET: preset.to_dict(),
        KEY_NUM_CLASSES: model.num_classes,
        KEY_METRICS: metrics,  # the epoch's metrics.jsonl record (val_top1 in %)
        # Every rank's generators, so a resumed distributed run continues each rank's streams.
        KEY_RNG: all_gather_objects(get_rng_state()),
    }


# Flags recorded in a checkpoint that a resumed run must share (the preset is compared too).
RESUMED_SETTINGS = ("arch", "small_input_stem", "dataset", "classes")
_TRY = "use another --output-dir or the same settings"


@dataclasses.dataclass(frozen=True)
class ResumePlan:
    """The checkpoint a run continues, already checked against this run's settings.

    Holds no tensors: the memory-mapped ones read for the check are released at once (a
    mapped file could not be replaced by the next checkpoint on Windows).
    """

    path: Path
    epoch: int  # finished epochs

    def complete(self, epochs: int) -> bool:
        """Whether the checkpoint has trained ``epochs`` epochs (or more) already."""
        return self.epoch >= epochs


def _plain(value: Any) -> Any:
    """JSON-like form for comparisons: tuples as lists, paths as str."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return str(value) if isinstance(value, Path) else value


def _shown(name: str, value: Any, settings: Mapping[str, Any]) -> str:
    """``value`` of setting ``name`` as the flag that gives it, e.g. ``--memory-size 64``."""
    flag = "--preset" if name == "name" else "--" + name.replace("_", "-")
    if name == "dataset" and value is None:
        return f"--data-dir {settings.get('data_dir')}"
    if isinstance(value, bool):
        return flag if value else f"--no-{flag[2:]}"
    if value is None:
        return (
            f"{flag} none" if name in ("temperature", "projector_hidden_layers") else f"no {flag}"
        )
    if isinstance(value, list):
        return f"{flag} {(',' if name == 'classes' else ' ').join(map(str, value))}"
    return f"{flag} {value}"


def setting_differences(
    run: RunSummary, args: argparse.Namespace, preset: TReXPreset
) -> list[tuple[str, str]]:
    """``(recorded, current)`` flags for each setting the checkpoint's run had otherwise.

    Compares :data:`RESUMED_SETTINGS`, then the preset's name and every field; settings an
    older checkpoint did not record are skipped.
    """
    current = args_dict(args)
    mine = preset.to_dict()
    pairs = [(key, run.args, current) for key in RESUMED_SETTINGS]
    # The preset's name (--preset) first: it explains the field differences that follow.
    pairs += [(key, run.preset, mine) for key in sorted(mine, key=lambda k: k != "name")]
    return [
        (_shown(key, _plain(old[key]), old), _shown(key, _plain(new[key]), new))
        for key, old, new in pairs
        if key in old and key in new and _plain(old[key]) != _plain(new[key])
    ]


def plan_resume(args: argparse.Namespace, preset: TReXPreset) -> ResumePlan | None:
    """The checkpoint this run continues (``--resume``, else ``<output-dir>/checkpoint.pth``).

    Reads only the checkpoint's recorded settings (the tensors are memory-mapped) and checks
    them against this run's before anything is built. Returns ``None`` for a fresh start.

    Raises:
        UsageError: If ``--resume`` does not exist, the file is not a readable training
            checkpoint (e.g. a ``backbone.pth``), or it was trained with other settings.
    """
    try:
        path = find_resume_checkpoint(args.resume, args.output_dir, CHECKPOINT)
    except FileNotFoundError:
        raise UsageError(f"--resume {str(args.resume)!r} does not exist") from None
    if path is None:
        return None
    try:
        run = read_training_checkpoint(path)
    except BackboneExportError as err:
        raise UsageError(
            f"cannot resume from {path}: it {err.reason}; use --init-from to start a run from "
            "these weights"
        ) from err
    except CheckpointFormatError as err:
        raise UsageError(
            f"cannot resume from {path}: it {err.reason}; replace it with an intact copy (or a "
            "checkpoint_epoch<N>.pth), or delete it to start afresh"
        ) from err
    if run.missing_resume_keys:
        missing = "/".join(repr(key) for key in run.missing_resume_keys)
        raise UsageError(
            f"cannot resume from {path}: it has no {missing}, so it cannot continue a run; use "
            "--init-from to start a run from its backbone"
        )
    differences = setting_differences(run, args, preset)
    epoch = run.epoch
    del run  # drops the memory-mapped tensors
    if epoch is None:
        raise UsageError(f"cannot resume from {path}: its 'epoch' is not an int; {_TRY}")
    if differences:
        shown = differences[:3]
        more = f" (and {len(differences) - 3} more)" if len(differences) > 3 else ""
        raise UsageError(
            f"cannot resume from {path}: it was trained with {' '.join(o for o, _ in shown)}, "
            f"this run has {' '.join(n for _, n in shown)}{more}; {_TRY}"
        )
    return ResumePlan(path, epoch)


def resume_run(
    plan: ResumePlan,
    args: argparse.Namespace,
    info: DistributedInfo,
    model: TReX,
    optimizer: torch.optim.Optimizer,
    scheduler: WarmupCosineLR,
    scaler: torch.amp.GradScaler | None,
) -> int:
    """Load the checkpoint of ``plan`` (from :func:`plan_resume`) into the training objects.

    Returns the number of finished epochs. Everything is checked before anything is loaded.
    On the main rank the metrics of epochs that will be re-run are dropped from
    ``metrics.jsonl``.

    Raises:
        UsageError: If the checkpoint's model or schedule does not fit this run (another
            number of classes, global batch size or learning rate).
    """
    path = plan.path
    ckpt = load_checkpoint(path, map_location=info.device)
    recorded = ckpt.get(KEY_NUM_CLASSES)
    if recorded is not None and recorded != model.num_classes:
        raise UsageError(
            f"cannot resume from {path}: it was trained on {recorded} classes, this run's data "
            f"has {model.num_classes}; {_TRY}"
        )
    problem = describe_mismatch(model.state_dict(), ckpt[KEY_MODEL])
    if problem is not None:
        raise UsageError(f"cannot resume from {path}: its model does not fit ({problem}); {_TRY}")
    try:  # first: it checks that this run continues the checkpoint's schedule
        scheduler.load_state_dict(ckpt[KEY_SCHEDULER])
    except ValueError as err:
        raise UsageError(f"cannot resume from {path}: {err}") from err
    model.load_state_dict(ckpt[KEY_MODEL])
    optimizer.load_state_dict(ckpt[KEY_OPTIMIZER])
    if scaler is not None and ckpt.get(KEY_SCALER) is not None:
        scaler.load_state_dict(ckpt[KEY_SCALER])
    start_epoch = int(ckpt[KEY_EPOCH])
    rng = ckpt.get(KEY_RNG)
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
    """A ``SummaryWriter`` in ``<output_dir>/tensorboard``; None if disabled or not installed.

    A missing ``tensorboard`` package is reported in one log line rather than silently.
    """
    if not enabled:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        logger.warning(
            "TensorBoard logging is off: the tensorboard package is not installed (pip install "
            "'protohead[tensorboard]'); metrics still go to %s",
            output_dir / METRICS,
        )
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
