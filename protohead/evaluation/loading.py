"""Load the frozen backbone to evaluate: a stock model's ``backbone.pth`` or a protohead checkpoint.

Only the backbone is evaluated in the transfer protocol of Sariyildiz et al. (ICLR 2023); the
expendable projector and the classifier of a t-ReX model are discarded. Both loaders return a
:class:`~protohead.backbone.BackboneAdapter`, i.e. a module mapping ``(b, c, h, w) -> (b, d)``.
"""

from __future__ import annotations

import argparse
import importlib
import os
from collections.abc import Mapping
from typing import Any

import torch
import torchvision.models as tv_models
from torch import nn

from protohead.backbone import BackboneAdapter

__all__ = [
    "BACKBONE_PREFIXES",
    "checkpoint_task_top1",
    "load_backbone",
    "load_checkpoint_backbone",
]

BACKBONE_PREFIXES = (
    "backbone.model.",
    "student.backbone.model.",
    "module.backbone.model.",
    "module.student.backbone.model.",
)
"""Where a protohead checkpoint's ``"model"`` state_dict may keep the backbone, tried in order
(the EMA teacher's copy, ``teacher.module.backbone.model.``, is never used)."""


def _load_file(path: str | os.PathLike[str], mmap: bool = False) -> Any:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"weights file {str(path)!r} does not exist")
    # weights_only keeps loading safe; Namespace is allowed for checkpoints storing argparse args.
    with torch.serialization.safe_globals([argparse.Namespace]):
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)


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
    checkpoint = _load_file(path, mmap=True)
    if not isinstance(checkpoint, Mapping):
        return None
    metrics, args = checkpoint.get("metrics"), checkpoint.get("args")
    args = vars(args) if isinstance(args, argparse.Namespace) else args
    if isinstance(metrics, Mapping) and _is_number(metrics.get("val_top1")):
        return float(metrics["val_top1"]) / 100.0
    if isinstance(args, Mapping) and _is_number(args.get("train_top1")):
        return float(args["train_top1"])
    return None


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
        TypeError: If ``arch`` is not a str.
        ValueError: On an unknown ``arch`` or weights that do not fit it.
        ImportError: For ``"timm:<name>"`` without timm installed.

    Example:
        >>> backbone = load_backbone("resnet18")
        >>> backbone.feature_dim
        512
    """
    if weights is None:
        return BackboneAdapter(_build_stock(arch), small_input_stem=small_input_stem)
    state = _load_file(weights)
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
    checkpoint = _load_file(path)
    if not isinstance(checkpoint, Mapping) or "model" not in checkpoint:
        found = sorted(checkpoint) if isinstance(checkpoint, Mapping) else type(checkpoint)
        raise ValueError(f"checkpoint must be a dict with a 'model' state_dict, got {found}")
    raw_args = checkpoint.get("args")
    args = vars(raw_args) if isinstance(raw_args, argparse.Namespace) else raw_args
    if not isinstance(args, Mapping) or not isinstance(args.get("arch"), str):
        raise ValueError(
            "checkpoint must have 'args' with a string 'arch' (the backbone name), "
            f"got args={raw_args!r}"
        )
    state = checkpoint["model"]
    if not isinstance(state, Mapping):
        raise ValueError(f"checkpoint 'model' must be a state_dict, got {type(state).__name__}")
    prefix = next((p for p in BACKBONE_PREFIXES if any(k.startswith(p) for k in state)), None)
    if prefix is None:
        tops = sorted({key.split(".")[0] for key in state})
        raise ValueError(
            f"checkpoint 'model' has no backbone keys under any of {list(BACKBONE_PREFIXES)}, "
            f"got top-level keys {tops}"
        )
    backbone_state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    small_stem = args.get("small_input_stem", False)
    if not isinstance(small_stem, bool):
        raise ValueError(f"checkpoint args 'small_input_stem' must be a bool, got {small_stem!r}")
    return _backbone_from_state(args["arch"], backbone_state, small_stem), dict(args)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
