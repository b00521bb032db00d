"""Load the frozen backbone to evaluate: a stock model's ``backbone.pth`` or a protohead checkpoint.

Only the backbone is evaluated in the transfer protocol of Sariyildiz et al. (ICLR 2023); the
expendable projector and the classifier of a t-ReX model are discarded. Both loaders return a
:class:`~protohead.backbone.BackboneAdapter`, i.e. a module mapping ``(b, c, h, w) -> (b, d)``.

A training checkpoint also says how the model was trained: :func:`read_training_record` reads
its architecture, preset (whose ``global_crop_size`` is the input size the model learnt at),
stem, training dataset and training-task top-1 without loading any weights, so the evaluation
can default to the model's own resolution and normalisation. The checkpoint's keys are the
trainer's schema, :mod:`protohead.train.checkpoint`: none is spelled out here. Files that
cannot be read (empty, truncated, not a PyTorch file) raise
:class:`UnreadableCheckpointError` naming the file.
"""

from __future__ import annotations

import argparse
import importlib
import os
import pickle
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torchvision.models as tv_models
from torch import nn

from protohead.backbone import BackboneAdapter
from protohead.train.checkpoint import (
    ARG_ARCH,
    ARG_DATASET,
    ARG_SMALL_IMAGES,
    ARG_SMALL_INPUT_STEM,
    ARG_TRAIN_TOP1,
    BACKBONE_PREFIXES,
    KEY_ARGS,
    KEY_METRICS,
    KEY_MODEL,
    KEY_PRESET,
    METRIC_VAL_TOP1,
    PRESET_GLOBAL_CROP_SIZE,
    PRESET_NAME,
    RunSummary,
)

__all__ = [
    "BACKBONE_PREFIXES",  # re-exported from protohead.train.checkpoint
    "TrainingRecord",
    "UnreadableCheckpointError",
    "checkpoint_task_top1",
    "load_backbone",
    "load_checkpoint_backbone",
    "read_training_record",
]


class UnreadableCheckpointError(ValueError):
    """A weights or checkpoint file exists but cannot be loaded (empty, truncated, not PyTorch).

    Example:
        >>> import tempfile
        >>> path = os.path.join(tempfile.mkdtemp(), "empty.pth")
        >>> open(path, "wb").close()
        >>> read_training_record(path)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        protohead.evaluation.loading.UnreadableCheckpointError: checkpoint ... is empty ...
    """


def _first_sentence(err: BaseException) -> str:
    """The start of an error message, on one line (torch's messages run over many lines)."""
    text = " ".join(str(err).split()) or type(err).__name__
    head = text.split(". ")[0]
    return head if len(head) <= 200 else head[:197] + "..."


def _load_file(path: str | os.PathLike[str], mmap: bool = False, what: str = "weights") -> Any:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} file {str(path)!r} does not exist")
    if os.path.getsize(path) == 0:
        raise UnreadableCheckpointError(
            f"{what} {str(path)!r} is empty (0 bytes): an interrupted copy or save?"
        )
    # Memory-mapping needs the zip format; older (legacy) torch files load without it.
    mmap = mmap and zipfile.is_zipfile(path)
    try:
        # weights_only keeps loading safe; Namespace is allowed for checkpoints storing args.
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except (RuntimeError, EOFError, KeyError, ValueError, pickle.UnpicklingError) as err:
        # A truncated zip (PytorchStreamReader), a cut legacy file (EOFError), text or other
        # non-PyTorch bytes (KeyError, UnpicklingError): say which file, on one line.
        raise UnreadableCheckpointError(
            f"{what} {str(path)!r} cannot be loaded (truncated, still being written, or not a "
            f"PyTorch file): {type(err).__name__}: {_first_sentence(err)}"
        ) from err


def _args_of(checkpoint: Mapping[str, Any]) -> Any:
    args = checkpoint.get(KEY_ARGS)
    return vars(args) if isinstance(args, argparse.Namespace) else args


def _task_top1(checkpoint: Any) -> float | None:
    """Training-task top-1 (fraction) recorded in a loaded checkpoint, or ``None``."""
    if not isinstance(checkpoint, Mapping):
        return None
    metrics, args = checkpoint.get(KEY_METRICS), _args_of(checkpoint)
    if isinstance(metrics, Mapping) and _is_number(metrics.get(METRIC_VAL_TOP1)):
        return float(metrics[METRIC_VAL_TOP1]) / 100.0
    if isinstance(args, Mapping) and _is_number(args.get(ARG_TRAIN_TOP1)):
        return float(args[ARG_TRAIN_TOP1])
    return None


def checkpoint_task_top1(path: str | os.PathLike[str]) -> float | None:
    """Training-task top-1, as a fraction, recorded in a protohead training checkpoint.

    Read from ``metrics["val_top1"]`` (percent: the held-out accuracy on the training classes,
    as ``protohead-train`` writes it at the end of every epoch), else from
    ``args["train_top1"]`` (a fraction); ``None`` if neither is there. The tensors are
    memory-mapped, not read.

    Raises:
        FileNotFoundError: If ``path`` does not exist.

    Example:
        >>> import tempfile
        >>> path = os.path.join(tempfile.mkdtemp(), "checkpoint.pth")
        >>> torch.save({"model": {}, "args": {}, "metrics": {"val_top1": 91.5}}, path)
        >>> checkpoint_task_top1(path)
        0.915
    """
    return _task_top1(_load_file(path, mmap=True, what="checkpoint"))


@dataclass(frozen=True)
class TrainingRecord:
    """How a protohead training checkpoint's model was trained (read without its weights).

    Attributes:
        arch: Backbone name (``args["arch"]``).
        small_input_stem: Whether the backbone has the small-image stem.
        preset: The run's preset as a dict (``checkpoint["preset"]``), or ``None`` if absent.
        global_crop_size: Side in pixels of the global crops the model trained on (from
            ``preset``), or ``None`` if not recorded.
        task_top1: Training-task top-1 as a fraction (:func:`checkpoint_task_top1`), or ``None``.
        dataset: The built-in training dataset's name (``args["dataset"]``), or ``None`` for an
            ImageFolder run or when not recorded; its statistics normalised the training images.
        dataset_recorded: Whether ``args`` records the dataset at all (``None`` then means an
            ImageFolder run, normalised with ImageNet statistics).
        small_images: The run used ``--small-images`` (whole-image validation at the crop size).

    Example:
        >>> TrainingRecord("resnet18", False, {"name": "trex"}, 224, 0.7).preset_name
        'trex'
    """

    arch: str
    small_input_stem: bool
    preset: Mapping[str, Any] | None
    global_crop_size: int | None
    task_top1: float | None
    dataset: str | None = None
    dataset_recorded: bool = False
    small_images: bool = False

    @property
    def preset_name(self) -> str | None:
        """The preset's name (``"trex"``, ``"baseline"``...), or ``None``."""
        name = None if self.preset is None else self.preset.get(PRESET_NAME)
        return name if isinstance(name, str) else None


def _record(checkpoint: Any) -> TrainingRecord:
    """The :class:`TrainingRecord` of a loaded checkpoint (``ValueError`` if it is not one)."""
    if not isinstance(checkpoint, Mapping) or KEY_MODEL not in checkpoint:
        found = sorted(checkpoint) if isinstance(checkpoint, Mapping) else type(checkpoint)
        raise ValueError(f"checkpoint must be a dict with a {KEY_MODEL!r} state_dict, got {found}")
    args = _args_of(checkpoint)
    if not isinstance(args, Mapping) or not isinstance(args.get(ARG_ARCH), str):
        raise ValueError(
            f"checkpoint must have {KEY_ARGS!r} with a string {ARG_ARCH!r} (the backbone "
            f"name), got {KEY_ARGS}={checkpoint.get(KEY_ARGS)!r}"
        )
    small_stem = args.get(ARG_SMALL_INPUT_STEM, False)
    if not isinstance(small_stem, bool):
        raise ValueError(
            f"checkpoint {KEY_ARGS} {ARG_SMALL_INPUT_STEM!r} must be a bool, got {small_stem!r}"
        )
    preset = checkpoint.get(KEY_PRESET)
    preset = dict(preset) if isinstance(preset, Mapping) else None
    crop = None if preset is None else preset.get(PRESET_GLOBAL_CROP_SIZE)
    if crop is not None and (isinstance(crop, bool) or not isinstance(crop, int) or crop < 1):
        raise ValueError(
            f"checkpoint {KEY_PRESET} {PRESET_GLOBAL_CROP_SIZE!r} must be an int >= 1, got {crop!r}"
        )
    dataset = args.get(ARG_DATASET)
    return TrainingRecord(
        arch=args[ARG_ARCH],
        small_input_stem=small_stem,
        preset=preset,
        global_crop_size=crop,
        task_top1=_task_top1(checkpoint),
        dataset=dataset if isinstance(dataset, str) else None,
        dataset_recorded=ARG_DATASET in args,
        small_images=args.get(ARG_SMALL_IMAGES) is True,
    )


def read_training_record(path: str | os.PathLike[str]) -> TrainingRecord:
    """Read how a protohead training checkpoint's model was trained, without its weights.

    The tensors are memory-mapped, not read, so this is cheap even for a large checkpoint.

    Args:
        path: A checkpoint written by ``protohead-train`` (or any dict with ``"model"`` and
            ``"args"`` holding ``"arch"``).

    Returns:
        The :class:`TrainingRecord`.

    Raises:
        FileNotFoundError: If ``path`` does not exist.
        UnreadableCheckpointError: If the file is empty, truncated or not a PyTorch file.
        ValueError: If it is not a training checkpoint (the message names what is missing).

    Example:
        >>> import tempfile
        >>> path = os.path.join(tempfile.mkdtemp(), "checkpoint.pth")
        >>> torch.save({"model": {}, "args": {"arch": "resnet18", "dataset": "fashion-mnist"},
        ...             "preset": {"name": "trex", "global_crop_size": 28},
        ...             "metrics": {"val_top1": 94.0}}, path)
        >>> record = read_training_record(path)
        >>> record.arch, record.preset_name, record.global_crop_size, record.task_top1
        ('resnet18', 'trex', 28, 0.94)
    """
    return _record(_load_file(path, mmap=True, what="checkpoint"))


def _strip_module_prefix(state: Mapping[str, Any]) -> dict[str, Any]:
    if state and all(key.startswith("module.") for key in state):
        return {key[len("module.") :]: value for key, value in state.items()}
    return dict(state)


def _build_stock(arch: str) -> nn.Module:
    """The stock classification model ``arch`` (random initialisation)."""
    if not isinstance(arch, str):
        raise TypeError(f"arch must be a model name (str), got {type(arch).__name__}")
    if arch.startswith("timm:"):
        try:
            timm = importlib.import_module("timm")
        except ImportError as err:
            raise ImportError(
                f"arch {arch!r} needs the optional dependency timm; "
                "install it with `pip install protohead[timm]`"
            ) from err
        if not timm.is_model(arch[len("timm:") :]):
            raise ValueError(f"arch {arch!r} is not a known timm model; see timm.list_models()")
        built: nn.Module = timm.create_model(arch[len("timm:") :], pretrained=False)
        return built
    if arch not in tv_models.list_models(module=tv_models):
        raise ValueError(
            f"arch must be a torchvision classification model name or 'timm:<name>', got "
            f"{arch!r}; see torchvision.models.list_models(module=torchvision.models)"
        )
    stock: nn.Module = tv_models.get_model(arch, weights=None)
    return stock


def _backbone_from_state(
    arch: str, state: Mapping[str, Any], small_input_stem: bool
) -> BackboneAdapter:
    """Build ``arch`` and load ``state`` strictly, except that classifier keys may be absent."""
    stock = _build_stock(arch)
    adapter = BackboneAdapter(stock, small_input_stem=small_input_stem)
    backbone_keys = set(adapter.export_state_dict())
    classifier_keys = set(stock.state_dict()) - backbone_keys
    unexpected = sorted(set(state) - backbone_keys - classifier_keys)
    missing = sorted(backbone_keys - set(state))
    if unexpected or missing:
        raise ValueError(
            f"weights must match the {arch!r} backbone (only classifier keys may be missing), "
            f"got {len(missing)} missing keys {missing[:5]} and {len(unexpected)} unexpected "
            f"keys {unexpected[:5]}"
        )
    try:
        adapter.model.load_state_dict({k: state[k] for k in backbone_keys}, strict=True)
    except RuntimeError as err:  # shape mismatches, e.g. a small-input stem on one side only
        raise ValueError(f"weights do not fit the {arch!r} backbone: {err}") from err
    return adapter


def load_backbone(
    arch: str, weights: str | os.PathLike[str] | None = None, *, small_input_stem: bool = False
) -> BackboneAdapter:
    """A torchvision/timm backbone, optionally with weights from a ``backbone.pth``.

    Args:
        arch: A torchvision model name (``"resnet50"``) or ``"timm:<name>"``.
        weights: A state_dict loadable into the stock model; the classifier keys (e.g.
            ``fc.weight``) may be missing or present, any other missing or unexpected key is an
            error. A leading ``module.`` (DistributedDataParallel) is stripped. ``None`` keeps
            the random initialisation.
        small_input_stem: Build the small-image stem of
            :class:`~protohead.backbone.BackboneAdapter` (the weights must have it too).

    Returns:
        The backbone, ``(b, c, h, w) -> (b, d)``.

    Raises:
        FileNotFoundError: If ``weights`` does not exist.
        UnreadableCheckpointError: If ``weights`` is empty, truncated or not a PyTorch file.
        TypeError: If ``arch`` is not a str.
        ValueError: On an unknown ``arch``, weights that do not fit it, or a training
            checkpoint passed as ``weights`` (use :func:`load_checkpoint_backbone`).
        ImportError: For ``"timm:<name>"`` without timm installed.

    Example:
        >>> backbone = load_backbone("resnet18")
        >>> backbone.feature_dim
        512
    """
    if weights is None:
        return BackboneAdapter(_build_stock(arch), small_input_stem=small_input_stem)
    state = _load_file(weights)
    if isinstance(state, Mapping) and isinstance(state.get(KEY_MODEL), Mapping):
        raise ValueError(
            f"weights {str(weights)!r} is a training checkpoint (a dict with {KEY_MODEL!r}), "
            "not a backbone state_dict: load it with load_checkpoint_backbone (--checkpoint)"
        )
    if not isinstance(state, Mapping) or not all(isinstance(k, str) for k in state):
        raise ValueError(f"weights must hold a state_dict, got {type(state).__name__}")
    return _backbone_from_state(arch, _strip_module_prefix(state), small_input_stem)


def load_checkpoint_backbone(
    path: str | os.PathLike[str],
) -> tuple[BackboneAdapter, dict[str, Any]]:
    """The student backbone of a protohead training checkpoint.

    The checkpoint is a dict with ``"model"``: the ``state_dict`` of a
    :class:`~protohead.model.TReX` (backbone keys under one of :data:`BACKBONE_PREFIXES`) and
    ``"args"``: a dict (or ``argparse.Namespace``) with at least ``"arch"`` and optionally
    ``"small_input_stem"``.

    Args:
        path: The checkpoint file.

    Returns:
        ``(backbone, args)``: the loaded :class:`~protohead.backbone.BackboneAdapter` and the
        checkpoint's args as a dict.

    Raises:
        FileNotFoundError: If ``path`` does not exist.
        UnreadableCheckpointError: If the file is empty, truncated or not a PyTorch file.
        ValueError: If the file is not such a checkpoint (the message names what is missing)
            or its backbone weights do not fit ``args["arch"]``.

    Example:
        >>> import tempfile
        >>> from protohead.model import TReX
        >>> trex = TReX("resnet18", num_classes=3, projector_hidden_dim=16, memory_size=8)
        >>> path = os.path.join(tempfile.mkdtemp(), "checkpoint.pth")
        >>> torch.save({"model": trex.state_dict(), "args": {"arch": "resnet18"}}, path)
        >>> backbone, args = load_checkpoint_backbone(path)
        >>> backbone.feature_dim, args["arch"]
        (512, 'resnet18')
    """
    checkpoint = _load_file(path, what="checkpoint")
    record = _record(checkpoint)
    # The schema's reader finds the student backbone (CheckpointFormatError, a ValueError,
    # names what is missing).
    backbone_state = RunSummary.from_checkpoint(checkpoint, path).backbone_state
    backbone = _backbone_from_state(record.arch, backbone_state, record.small_input_stem)
    return backbone, dict(_args_of(checkpoint))


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
