"""What to evaluate, resolved before any weights load: the model's label, input size and statistics.

A model trained on 28 px images and probed at the paper's 224 px, or normalised with other
statistics than it saw, scores several points lower without any error (a ``--small-images``
Fashion-MNIST checkpoint: 87.33 % at 224 px, 94.00 % at its own 28 px). So the evaluation input
follows the model unless the user says otherwise: a :class:`ModelSource` carries the resolution
and normalisation recorded for the model, and :func:`resolve_transform` turns them, and any
explicit values, into the :class:`~protohead.evaluation.features.TransformConfig`, recording
where each value came from.

The transform is the transfer protocol's ``Resize(s) -> CenterCrop(s)`` (Sariyildiz et al.,
ICLR 2023, with ``s = 224``), at the side ``s`` the model was trained at: a training checkpoint's
``global_crop_size``. Only the weights are loaded later, by :attr:`ModelSource.load`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from protohead.backbone import BackboneAdapter
from protohead.data.datasets import DATASETS as TRAINING_DATASETS
from protohead.evaluation.features import IMAGENET_MEAN, IMAGENET_STD, TransformConfig
from protohead.evaluation.loading import (
    TrainingRecord,
    load_backbone,
    load_checkpoint_backbone,
    read_training_record,
)
from protohead.pretrained import load_pretrained, pretrained_info

__all__ = [
    "PROTOCOL_SIZE",
    "ModelSource",
    "arch_source",
    "checkpoint_source",
    "resolve_transform",
]

PROTOCOL_SIZE = 224
"""Input side of the paper's transfer protocol, for models that record none."""


@dataclass(frozen=True)
class ModelSource:
    """A model to evaluate, described before its weights are loaded.

    Attributes:
        label: Name in the report and table, e.g. ``"resnet18 trex (checkpoint.pth)"``.
        description: JSON-ready facts recorded in the report (kind, path, arch, preset...).
        load: Loads the backbone, ``(b, c, h, w) -> (b, d)``.
        task_top1: Training-task top-1 (fraction) recorded with the model, or ``None``.
        input_size: Side the model was trained at, or ``None`` when not recorded.
        input_size_origin: Where ``input_size`` comes from (for the report).
        mean: Normalisation mean the model was trained with, or ``None`` when not recorded.
        std: Normalisation std, ``None`` exactly when ``mean`` is.
        stats_origin: Where ``mean``/``std`` come from (for the report).

    Example:
        >>> source = arch_source("resnet18", None)
        >>> source.label, source.input_size, source.description["weights"]
        ('resnet18 (random init)', None, None)
    """

    label: str
    description: dict[str, Any]
    load: Callable[[], nn.Module] = field(repr=False)
    task_top1: float | None = None
    input_size: int | None = None
    input_size_origin: str = "not recorded"
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    stats_origin: str = "not recorded"


def arch_source(arch: str, weights: str | None, *, small_input_stem: bool = False) -> ModelSource:
    """A stock torchvision/timm model, randomly initialised or with a ``backbone.pth``.

    Nothing is read here: a bare state_dict records neither resolution nor statistics.

    Example:
        >>> arch_source("resnet50", "runs/trex/backbone.pth").label
        'resnet50 (backbone.pth)'
    """
    label = f"{arch} (random init)" if weights is None else f"{arch} ({Path(weights).name})"
    return ModelSource(
        label=label,
        description={
            "kind": "arch",
            "arch": arch,
            "weights": weights,
            "small_input_stem": small_input_stem,
        },
        load=lambda: load_backbone(arch, weights, small_input_stem=small_input_stem),
    )


def pretrained_source(name: str, *, progress: bool = True) -> ModelSource:
    """Released t-ReX weights by name (:func:`protohead.load_pretrained`), a ResNet-50.

    The authors trained at 224 px with ImageNet statistics; their reported ImageNet-1K top-1
    is the training-task top-1. Nothing is downloaded until ``load`` runs.

    Raises:
        ValueError: If ``name`` is not a registry name.

    Example:
        >>> source = pretrained_source("trex_resnet50")
        >>> source.label, source.input_size, source.task_top1
        ('resnet50 trex_resnet50 (released weights)', 224, 0.78)
    """
    info = pretrained_info(name)
    return ModelSource(
        label=f"resnet50 {name} (released weights)",
        description={"kind": "pretrained", "pretrained": name, "arch": "resnet50"},
        load=lambda: BackboneAdapter(load_pretrained(name, progress=progress)),
        task_top1=info.imagenet_top1 / 100,
        input_size=PROTOCOL_SIZE,
        input_size_origin="released weights: trained at 224 px",
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        stats_origin="released weights: ImageNet statistics",
    )


def _stats(
    record: TrainingRecord,
) -> tuple[tuple[float, ...] | None, tuple[float, ...] | None, str]:
    """The normalisation the training run used, as its data pipeline chose it."""
    if record.dataset is not None and record.dataset in TRAINING_DATASETS:
        info = TRAINING_DATASETS[record.dataset]
        return info.mean, info.std, f"checkpoint: statistics of its dataset {record.dataset!r}"
    if record.dataset_recorded and record.dataset is None:
        # protohead-train normalises an image-folder run (--data-dir) with ImageNet statistics.
        return IMAGENET_MEAN, IMAGENET_STD, "checkpoint: image-folder run, ImageNet statistics"
    return None, None, "not recorded in the checkpoint"


def checkpoint_source(path: str) -> ModelSource:
    """A protohead training checkpoint: reads its record (not its weights) now.

    Raises:
        FileNotFoundError: If ``path`` does not exist.
        UnreadableCheckpointError: If the file is empty, truncated or not a PyTorch file.
        ValueError: If it is not a training checkpoint.

    Example:
        >>> import os, tempfile
        >>> path = os.path.join(tempfile.mkdtemp(), "checkpoint.pth")
        >>> torch.save({"model": {}, "args": {"arch": "resnet18", "dataset": "fashion-mnist"},
        ...             "preset": {"name": "trex", "global_crop_size": 28}}, path)
        >>> source = checkpoint_source(path)
        >>> source.label, source.input_size, source.mean
        ('resnet18 trex (checkpoint.pth)', 28, (0.286, 0.286, 0.286))
    """
    record = read_training_record(path)
    mean, std, stats_origin = _stats(record)
    name = " ".join(filter(None, [record.arch, record.preset_name]))
    return ModelSource(
        label=f"{name} ({Path(path).name})",
        description={
            "kind": "checkpoint",
            "checkpoint": path,
            "arch": record.arch,
            "preset": record.preset_name,
            "small_input_stem": record.small_input_stem,
            "global_crop_size": record.global_crop_size,
            "training_dataset": record.dataset,
        },
        load=lambda: load_checkpoint_backbone(path)[0],
        task_top1=record.task_top1,
        input_size=record.global_crop_size,
        input_size_origin=(
            "checkpoint: preset global_crop_size"
            if record.global_crop_size is not None
            else "not recorded in the checkpoint"
        ),
        mean=mean,
        std=std,
        stats_origin=stats_origin,
    )


def resolve_transform(
    source: ModelSource,
    *,
    resize: int | None = None,
    crop: int | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    interpolation: str = "bicubic",
) -> tuple[TransformConfig, dict[str, str]]:
    """The evaluation transform: explicit values first, then the model's, then the protocol's.

    ``crop`` defaults to the model's training input size (else 224) and ``resize`` to ``crop``
    (the protocol's ``Resize(s) -> CenterCrop(s)``); ``mean``/``std`` to the model's training
    statistics (else ImageNet's). Give both of ``mean`` and ``std`` or neither.

    Returns:
        ``(config, origin)``: the transform and, for ``"resize"``, ``"crop"`` and ``"stats"``,
        where the value came from.

    Raises:
        ValueError: If only one of ``mean``/``std`` is given, or the values are out of range.

    Example:
        >>> source = ModelSource("m", {}, load=nn.Identity, input_size=28, mean=(0.5,) * 3,
        ...                      std=(0.25,) * 3, input_size_origin="checkpoint")
        >>> config, origin = resolve_transform(source)
        >>> config.resize, config.crop, config.mean, origin["crop"]
        (28, 28, (0.5, 0.5, 0.5), 'checkpoint')
        >>> resolve_transform(source, crop=24)[0].resize
        24
    """
    if (mean is None) != (std is None):
        raise ValueError(
            f"--mean and --std go together: give both or neither, got mean={mean} std={std}"
        )
    origin: dict[str, str] = {}
    if crop is not None:
        origin["crop"] = "--crop"
    elif source.input_size is not None:
        crop, origin["crop"] = source.input_size, source.input_size_origin
    else:
        crop, origin["crop"] = PROTOCOL_SIZE, f"protocol default ({source.input_size_origin})"
    if resize is not None:
        origin["resize"] = "--resize"
    else:
        resize, origin["resize"] = crop, "= crop (protocol: Resize(s) -> CenterCrop(s))"
    if mean is not None and std is not None:
        stats = (tuple(mean), tuple(std))
        origin["stats"] = "--mean/--std"
    elif source.mean is not None and source.std is not None:
        stats, origin["stats"] = (source.mean, source.std), source.stats_origin
    else:
        stats = (IMAGENET_MEAN, IMAGENET_STD)
        origin["stats"] = f"protocol default, ImageNet ({source.stats_origin})"
    config = TransformConfig(resize, crop, interpolation, *stats)
    return config, origin
