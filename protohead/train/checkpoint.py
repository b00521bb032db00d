"""Atomic training checkpoints, their schema and a typed reader.

A t-ReX checkpoint (Sariyildiz et al., ICLR 2023) must hold more than the weights: the EMA
teacher and the OCM memory are part of the model's state (``TReX.state_dict()`` includes
both), and the optimiser, scaler, schedule and random generators are needed for a resumed run to
continue bit for bit (:func:`get_rng_state`, from :mod:`protohead.train.rng_state`).
:func:`save_checkpoint` never leaves a half-written file in place of a
good one: it writes a temporary file in the same directory, ``fsync``\\ s it, then renames it
over the target with ``os.replace`` (atomic on POSIX and Windows).

The module also owns the checkpoint's *schema*: the key names ``protohead-train`` writes
(:data:`KEY_MODEL`, :data:`KEY_ARGS`, ...) and :func:`read_training_checkpoint`, the typed reader
through which other code (the transfer evaluation) reads a run's architecture, preset, accuracy
and backbone weights without knowing the layout of the file or of
:class:`~protohead.model.TReX`.
"""

from __future__ import annotations

import argparse
import os
import pickle
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from protohead.atomic_files import atomic_write
from protohead.train.rng_state import get_rng_state, set_rng_state

__all__ = [
    "ARG_ARCH",
    "ARG_EPOCHS",
    "ARG_SMALL_INPUT_STEM",
    "ARG_TRAIN_TOP1",
    "BACKBONE_PREFIXES",
    "KEY_ARGS",
    "KEY_EPOCH",
    "KEY_METRICS",
    "KEY_MODEL",
    "KEY_NUM_CLASSES",
    "KEY_OPTIMIZER",
    "KEY_PRESET",
    "KEY_RNG",
    "KEY_SCALER",
    "KEY_SCHEDULER",
    "KEY_STEP",
    "METRIC_VAL_TOP1",
    "RESUME_KEYS",
    "BackboneExportError",
    "CheckpointFormatError",
    "RunSummary",
    "find_resume_checkpoint",
    "get_rng_state",
    "load_checkpoint",
    "read_training_checkpoint",
    "save_checkpoint",
    "set_rng_state",
]


# --- the schema: what protohead-train writes into a training checkpoint ---------------------

KEY_MODEL = "model"
"""``TReX.state_dict()``: student, EMA teacher and OCM memory."""
KEY_OPTIMIZER = "optimizer"
"""The optimiser's ``state_dict()``."""
KEY_SCHEDULER = "scheduler"
"""The learning-rate schedule's ``state_dict()`` (step count, peak and final rates)."""
KEY_SCALER = "scaler"
"""The fp16 ``GradScaler``'s ``state_dict()``, or ``None``."""
KEY_EPOCH = "epoch"
"""Number of finished epochs (int)."""
KEY_STEP = "step"
"""Number of finished optimiser steps (int)."""
KEY_ARGS = "args"
"""The command-line flags as a dict of plain values (paths as str, tuples as lists)."""
KEY_PRESET = "preset"
"""The resolved preset as a dict (:meth:`~protohead.presets.TReXPreset.to_dict`)."""
KEY_METRICS = "metrics"
"""The last epoch's ``metrics.jsonl`` record (accuracies in %)."""
KEY_RNG = "rng"
"""Every rank's :func:`get_rng_state`, in rank order."""
KEY_NUM_CLASSES = "num_classes"
"""Number of classes the model was built for (int; absent before protohead 0.2)."""
ARG_ARCH = "arch"
"""``args`` entry: the backbone name, ``resnet50`` or ``timm:NAME``."""
ARG_SMALL_INPUT_STEM = "small_input_stem"
"""``args`` entry: whether the backbone has the small-image stem (bool)."""
ARG_EPOCHS = "epochs"
"""``args`` entry: the number of epochs the run was asked for."""
ARG_DATASET = "dataset"
"""``args`` entry: the built-in training dataset's name, or ``None`` for an image folder."""
ARG_SMALL_IMAGES = "small_images"
"""``args`` entry: whether the run used the small-image preset (bool)."""
PRESET_NAME = "name"
"""``preset`` entry: the preset's name (``trex``, ``baseline``...)."""
PRESET_GLOBAL_CROP_SIZE = "global_crop_size"
"""``preset`` entry: the side in px of the global crops, the input size the model learnt at."""
ARG_TRAIN_TOP1 = "train_top1"
"""``args`` entry of other tools' checkpoints: training-task top-1 as a fraction."""
METRIC_VAL_TOP1 = "val_top1"
"""``metrics`` entry: held-out top-1 on the training classes, in %."""
BACKBONE_PREFIXES = (
    "backbone.model.",
    "student.backbone.model.",
    "module.backbone.model.",
    "module.student.backbone.model.",
)
"""Where the ``model`` state_dict may keep the backbone, tried in order (the EMA teacher's
copy, ``teacher.module.backbone.model.``, is never used)."""
RESUME_KEYS = (KEY_MODEL, KEY_OPTIMIZER, KEY_SCHEDULER, KEY_EPOCH)
"""Entries a checkpoint needs to continue a run."""


def save_checkpoint(state: Mapping[str, Any], path: str | os.PathLike[str]) -> Path:
    """Write ``state`` to ``path`` atomically: temp file, ``fsync``, ``os.replace``.

    If anything fails (or the process dies) before the rename, the previous file at ``path`` is
    untouched and still loadable; the temporary file is removed on exceptions. The parent
    directory is created if needed.

    Args:
        state: What to save with ``torch.save`` (e.g. model/optimiser state_dicts, the epoch).
        path: Destination file.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        TypeError: If ``state`` is not a mapping.
        OSError: If the file cannot be written (the previous file is kept).

    Example:
        >>> import tempfile, pathlib
        >>> target = pathlib.Path(tempfile.mkdtemp()) / "ckpt.pth"
        >>> _ = save_checkpoint({"epoch": 3}, target)
        >>> load_checkpoint(target)["epoch"]
        3
    """
    if not isinstance(state, Mapping):
        raise TypeError(f"state must be a mapping, got {type(state).__name__}")
    target = Path(path)
    with atomic_write(target, "wb", durable=True) as handle:
        torch.save(dict(state), handle)
        if hasattr(os, "fchmod"):  # mkstemp creates 0600; checkpoints are usually shared
            os.fchmod(handle.fileno(), 0o644)
    return target


def load_checkpoint(
    path: str | os.PathLike[str],
    map_location: str | torch.device = "cpu",
    *,
    mmap: bool = False,
) -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` (``weights_only=True``).

    Args:
        path: The checkpoint file.
        map_location: Where to put the tensors.
        mmap: Memory-map the tensors instead of reading them (files in torch's zip format;
            others are read).

    Returns:
        The saved mapping.

    Raises:
        FileNotFoundError: If ``path`` does not exist.
        CheckpointFormatError: (a ``ValueError``) If the file is empty, truncated, corrupt or
            does not hold a dict.

    Example:
        >>> import tempfile, pathlib
        >>> target = pathlib.Path(tempfile.mkdtemp()) / "ckpt.pth"
        >>> _ = save_checkpoint({"weights": torch.ones(2)}, target)
        >>> load_checkpoint(target)["weights"]
        tensor([1., 1.])
    """
    source = Path(path)
    if not source.is_file():
        raise FileNotFoundError(f"checkpoint {str(source)!r} does not exist")
    size = source.stat().st_size
    if size == 0:
        raise CheckpointFormatError(source, "is not readable: the file is empty (0 bytes)")
    zipped = zipfile.is_zipfile(source)  # torch.save's format; a cut-off copy loses its index
    try:
        # argparse.Namespace: older checkpoints (and other tools') store the flags that way.
        with torch.serialization.safe_globals([argparse.Namespace]):
            loaded = torch.load(
                source, map_location=map_location, weights_only=True, mmap=mmap and zipped
            )
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, pickle.UnpicklingError) as err:
        if isinstance(err, FileNotFoundError):
            raise
        if not zipped:
            reason = (
                f"is not readable: its {size} bytes are not a complete torch.save archive "
                "(cut short by an interrupted copy or a full disk, or not a checkpoint)"
            )
        else:
            reason = f"is not readable: {(str(err).strip() or type(err).__name__).splitlines()[0]}"
        raise CheckpointFormatError(source, reason) from err
    if not isinstance(loaded, dict):
        raise CheckpointFormatError(source, f"must hold a dict, got {type(loaded).__name__}")
    return loaded


def find_resume_checkpoint(
    resume: str | os.PathLike[str] | None,
    output_dir: str | os.PathLike[str] | None,
    filename: str = "checkpoint.pth",
) -> Path | None:
    """The checkpoint a run should resume from, or ``None`` for a fresh start.

    An explicit ``resume`` path wins (and must exist); otherwise ``output_dir / filename`` is
    used when it exists, so re-running the same command continues an interrupted run.

    Raises:
        FileNotFoundError: If ``resume`` is given but does not exist.

    Example:
        >>> find_resume_checkpoint(None, None) is None
        True
    """
    if resume is not None and str(resume) != "":
        explicit = Path(resume)
        if not explicit.is_file():
            raise FileNotFoundError(f"resume checkpoint {str(explicit)!r} does not exist")
        return explicit
    if output_dir is not None:
        candidate = Path(output_dir) / filename
        if candidate.is_file():
            return candidate
    return None


# --- the typed reader ------------------------------------------------------------------------


class CheckpointFormatError(ValueError):
    """A file that is not a readable training checkpoint; ``path`` and ``reason`` say why.

    Example:
        >>> err = CheckpointFormatError("runs/x/checkpoint.pth", "is not readable: empty")
        >>> str(err), err.reason
        ("checkpoint 'runs/x/checkpoint.pth' is not readable: empty", 'is not readable: empty')
    """

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        super().__init__(f"checkpoint {str(path)!r} {reason}")
        self.path = Path(path)
        self.reason = reason


class BackboneExportError(CheckpointFormatError):
    """The file is a backbone export (a bare ``state_dict``, e.g. ``backbone.pth``).

    Example:
        >>> err = BackboneExportError("backbone.pth", 3)
        >>> isinstance(err, CheckpointFormatError), err.reason.split(",")[0]
        (True, 'is a backbone export (a bare state_dict of 3 tensors)')
    """

    def __init__(self, path: str | os.PathLike[str], num_tensors: int) -> None:
        super().__init__(
            path,
            f"is a backbone export (a bare state_dict of {num_tensors} tensors), not a training "
            f"checkpoint (no {KEY_MODEL!r}/{KEY_OPTIMIZER!r}/{KEY_SCHEDULER!r})",
        )


@dataclass(frozen=True)
class RunSummary:
    """What a training checkpoint says about its run, read through the schema.

    Attributes:
        path: The checkpoint file.
        arch: Backbone name (``args["arch"]``).
        small_input_stem: Whether the backbone has the small-image stem.
        preset: The resolved preset as a dict; empty if the checkpoint has none.
        global_crop_size: The preset's global crop side in px, or ``None``.
        task_top1: Training-task top-1 as a fraction: ``metrics["val_top1"] / 100``, else
            ``args["train_top1"]``, else ``None``.
        epoch: Finished epochs, or ``None``.
        epochs: Epochs the run was asked for, or ``None``.
        num_classes: Classes of the model, or ``None`` (older checkpoints).
        args: The recorded flags (a dict, also when saved as an ``argparse.Namespace``).
        metrics: The last epoch's metrics (empty if none).
        backbone_state: The student backbone's weights under the stock torchvision/timm key
            names (memory-mapped when read with ``mmap=True``).
        missing_resume_keys: Entries of :data:`RESUME_KEYS` the file lacks (empty: resumable).

    Example:
        >>> import tempfile, pathlib
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "checkpoint.pth"
        >>> weights = {"student.backbone.model.fc.weight": torch.ones(1)}
        >>> _ = save_checkpoint({KEY_MODEL: weights, KEY_ARGS: {ARG_ARCH: "resnet18"}}, path)
        >>> run = read_training_checkpoint(path)
        >>> run.arch, list(run.backbone_state), run.missing_resume_keys
        ('resnet18', ['fc.weight'], ('optimizer', 'scheduler', 'epoch'))
    """

    path: Path
    arch: str
    small_input_stem: bool
    preset: dict[str, Any]
    global_crop_size: int | None
    task_top1: float | None
    epoch: int | None
    epochs: int | None
    num_classes: int | None
    args: dict[str, Any]
    metrics: dict[str, Any]
    backbone_state: dict[str, torch.Tensor]
    missing_resume_keys: tuple[str, ...]

    @classmethod
    def from_checkpoint(
        cls, checkpoint: Mapping[str, Any], path: str | os.PathLike[str]
    ) -> RunSummary:
        """Summarise an already loaded checkpoint (see :func:`read_training_checkpoint`).

        Example:
            >>> state = {KEY_MODEL: {"backbone.model.w": torch.ones(1)}, KEY_ARGS: {ARG_ARCH: "x"}}
            >>> RunSummary.from_checkpoint(state, "ckpt.pth").backbone_state
            {'w': tensor([1.])}
        """
        source = Path(path)
        model = checkpoint.get(KEY_MODEL)
        if model is None:
            if checkpoint and all(
                isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in checkpoint.items()
            ):
                raise BackboneExportError(source, len(checkpoint))
            found = sorted(map(str, checkpoint))[:8]
            raise CheckpointFormatError(
                source, f"is not a training checkpoint: it has no {KEY_MODEL!r} (keys {found})"
            )
        if not isinstance(model, Mapping):
            raise CheckpointFormatError(
                source, f"must have a state_dict {KEY_MODEL!r}, got a {type(model).__name__}"
            )
        raw_args = checkpoint.get(KEY_ARGS)
        args = vars(raw_args) if isinstance(raw_args, argparse.Namespace) else raw_args
        if not isinstance(args, Mapping) or not isinstance(args.get(ARG_ARCH), str):
            raise CheckpointFormatError(
                source, f"must have {KEY_ARGS!r} with a string {ARG_ARCH!r}, got {raw_args!r:.80}"
            )
        stem = args.get(ARG_SMALL_INPUT_STEM, False)
        if not isinstance(stem, bool):
            raise CheckpointFormatError(
                source, f"must have a bool {KEY_ARGS}[{ARG_SMALL_INPUT_STEM!r}], got {stem!r}"
            )
        prefix = next((p for p in BACKBONE_PREFIXES if any(k.startswith(p) for k in model)), None)
        if prefix is None:
            tops = sorted({str(key).split(".")[0] for key in model})
            raise CheckpointFormatError(
                source,
                f"has no backbone weights under any of {list(BACKBONE_PREFIXES)} in "
                f"{KEY_MODEL!r} (top-level keys {tops})",
            )
        preset = checkpoint.get(KEY_PRESET)
        preset = dict(preset) if isinstance(preset, Mapping) else {}
        metrics = checkpoint.get(KEY_METRICS)
        metrics = dict(metrics) if isinstance(metrics, Mapping) else {}
        if _is_number(metrics.get(METRIC_VAL_TOP1)):
            top1: float | None = float(metrics[METRIC_VAL_TOP1]) / 100.0
        else:
            top1 = float(args[ARG_TRAIN_TOP1]) if _is_number(args.get(ARG_TRAIN_TOP1)) else None
        return cls(
            path=source,
            arch=args[ARG_ARCH],
            small_input_stem=stem,
            preset=preset,
            global_crop_size=_int_or_none(preset.get(PRESET_GLOBAL_CROP_SIZE)),
            task_top1=top1,
            epoch=_int_or_none(checkpoint.get(KEY_EPOCH)),
            epochs=_int_or_none(args.get(ARG_EPOCHS)),
            num_classes=_int_or_none(checkpoint.get(KEY_NUM_CLASSES)),
            args=dict(args),
            metrics=metrics,
            backbone_state={k[len(prefix) :]: v for k, v in model.items() if k.startswith(prefix)},
            missing_resume_keys=tuple(k for k in RESUME_KEYS if k not in checkpoint),
        )


def read_training_checkpoint(path: str | os.PathLike[str], *, mmap: bool = True) -> RunSummary:
    """Read a training checkpoint's run settings, accuracy and backbone weights.

    Loads with ``torch.load(weights_only=True)`` (an ``argparse.Namespace`` in ``args`` is
    allowed), tensors on the CPU and, with ``mmap=True``, memory-mapped rather than read.

    Args:
        path: A ``checkpoint.pth`` of ``protohead-train`` (or any dict with ``"model"``, a
            :class:`~protohead.model.TReX` state_dict, and ``"args"`` with ``"arch"``).
        mmap: Memory-map the tensors.

    Returns:
        The :class:`RunSummary`.

    Raises:
        FileNotFoundError: If ``path`` does not exist.
        BackboneExportError: If the file is a bare backbone ``state_dict``.
        CheckpointFormatError: If it is empty, truncated, unreadable, or lacks ``"model"``,
            ``"args"["arch"]`` or backbone weights (the message names what is missing).

    Example:
        >>> import tempfile, pathlib
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "checkpoint.pth"
        >>> state = {
        ...     KEY_MODEL: {"student.backbone.model.fc.weight": torch.ones(1)},
        ...     KEY_ARGS: {ARG_ARCH: "resnet18", ARG_EPOCHS: 4},
        ...     KEY_EPOCH: 4,
        ...     KEY_METRICS: {METRIC_VAL_TOP1: 91.5},
        ... }
        >>> run = read_training_checkpoint(save_checkpoint(state, path))
        >>> run.arch, run.small_input_stem, run.epoch, run.epochs, run.task_top1
        ('resnet18', False, 4, 4, 0.915)
    """
    return RunSummary.from_checkpoint(load_checkpoint(path, mmap=mmap), path)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _int_or_none(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None
