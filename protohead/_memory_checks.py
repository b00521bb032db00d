"""Input checks of :class:`~protohead.memory.PrototypeMemoryBank` (internal).

Kept apart so that the memory module holds the ring logic only. Nothing here reads a device
value except :func:`state_problems`, which runs when a state dict is loaded, not per step,
and :func:`raise_invalid`, which words an error already decided on the host.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor


def state_problems(
    state_dict: Mapping[str, Any], prefix: str, size: int, dim: int, classes: int
) -> list[str]:
    """Why a memory bank's entries in ``state_dict`` cannot be loaded (empty when they can)."""
    problems: list[str] = []

    def bad(name: str, allowed: str, got: object) -> None:
        problems.append(f"{prefix}{name} must be {allowed}, got {got}")

    feats = state_dict.get(prefix + "features")
    if feats is not None:
        if not isinstance(feats, Tensor) or feats.shape != (size, dim):
            bad("features", f"a tensor of shape ({size}, {dim})", describe(feats))
        elif not feats.is_floating_point():
            bad("features", "floating point", feats.dtype)
        elif not bool(torch.isfinite(feats).all()):
            bad("features", "finite", "NaN or inf")
    labels = state_dict.get(prefix + "labels")
    if labels is not None:
        if not isinstance(labels, Tensor) or labels.shape != (size,):
            bad("labels", f"a tensor of shape ({size},)", describe(labels))
        elif not is_integer(labels):
            bad("labels", "an integer tensor", labels.dtype)
        elif not bool(((labels >= -1) & (labels < classes)).all()):
            outside = labels[(labels < -1) | (labels >= classes)].unique()[:8].tolist()
            bad("labels", f"in [-1, {classes}) (-1: empty slot)", f"values {outside}")
    for name, high in (("ptr", size), ("num_skipped_updates", None)):
        value = state_dict.get(prefix + name)
        allowed = f"a 0-d integer tensor in [0, {high})" if high else "a 0-d integer >= 0"
        if value is None:
            continue
        if not isinstance(value, Tensor) or value.ndim != 0 or not is_integer(value):
            bad(name, allowed, describe(value))
        elif int(value) < 0 or (high is not None and int(value) >= high):
            bad(name, allowed, int(value))
    return problems


def check_update_inputs(features: Tensor, labels: Tensor, dim: int) -> None:
    """Types, dtypes and shapes of an update's arguments: checks that never read the device."""
    if not isinstance(features, Tensor):
        raise TypeError(f"features must be a Tensor, got {type(features).__name__}")
    if features.ndim != 2 or features.shape[1] != dim:
        raise ValueError(f"features must have shape (b, {dim}), got {tuple(features.shape)}")
    if not features.is_floating_point():
        raise TypeError(f"features must be floating point, got {features.dtype}")
    check_label_form(labels)
    if labels.shape[0] != features.shape[0]:
        raise ValueError(
            "features and labels must have the same batch size, got "
            f"{features.shape[0]} and {labels.shape[0]}"
        )


def raise_invalid(labels: Tensor, num_classes: int) -> None:
    """Raises for an invalid batch: bad labels if there are any, else bad features."""
    bad = (labels < 0) | (labels >= num_classes)
    if bool(bad.any()):
        raise ValueError(
            f"labels must lie in [0, {num_classes}), got values "
            f"{labels[bad].unique()[:8].tolist()}; the memory was not modified"
        )
    raise ValueError("features must be finite, got NaN or inf; the memory was not modified")


def batch_validity(features: Tensor, labels: Tensor, num_classes: int) -> Tensor:
    """Whether every label lies in ``[0, num_classes)`` and every feature is finite.

    A 0-d bool tensor computed on the device without a host sync, in six ops whatever the
    batch size (the check runs on every update).

    Shapes: ``features (b, dim)`` with ``b >= 1``, ``labels (b,)`` int64 ``-> ()`` bool.
    """
    lowest, highest = torch.aminmax(labels)
    # Non-negative exactly when both are: lowest >= 0 and highest <= num_classes - 1.
    in_range = lowest.bitwise_or(num_classes - 1 - highest)
    # A float64 sum of float32 values cannot overflow, so it is finite iff every feature is,
    # and times 0 it is 0, or NaN for NaN and inf; NaN <= anything is false. (One read of
    # the batch, no temporary.)
    finite_zero = features.sum(dtype=torch.float64).mul_(0)
    return finite_zero.le(in_range)


def is_integer(tensor: Tensor) -> bool:
    return not (tensor.dtype == torch.bool or tensor.is_floating_point() or tensor.is_complex())


def check_label_form(labels: Tensor) -> None:
    """Type, rank and dtype of a labels argument: checks that never read the device."""
    if not isinstance(labels, Tensor):
        raise TypeError(f"labels must be a Tensor, got {type(labels).__name__}")
    if labels.ndim != 1:
        raise ValueError(f"labels must have shape (b,), got {tuple(labels.shape)}")
    if not is_integer(labels):
        raise TypeError(f"labels must be an integer tensor, got {labels.dtype}")


def describe(value: object) -> str:
    if isinstance(value, Tensor):
        return f"a {value.dtype} tensor of shape {tuple(value.shape)}"
    return type(value).__name__
