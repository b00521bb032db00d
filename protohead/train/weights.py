"""Weights from outside the run: ``--init-from``, and how saved weights fit a model.

``protohead-train --init-from PATH`` starts the backbone from a ``backbone.pth`` (the stock
torchvision/timm layout that the trainer exports, or a stock model's own ``state_dict``) or from
the student backbone of a training checkpoint, instead of a random initialisation. The file
must fit ``--arch`` and ``--small-input-stem`` exactly: only the stock classifier's keys may be
missing or extra. A value that is not a file is the name of released weights
(:func:`protohead.list_pretrained`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from protohead import TReX
from protohead.backbone import BackboneAdapter
from protohead.pretrained import list_pretrained, load_pretrained
from protohead.train.checkpoint import KEY_MODEL, RunSummary, load_checkpoint
from protohead.train.usage import UsageError

__all__ = ["describe_mismatch", "init_backbone", "resolve_init_from"]


def describe_mismatch(
    expected: Mapping[str, Any],
    given: Mapping[str, Any],
    ignore: Callable[[str], bool] = lambda key: False,
) -> str | None:
    """One line on how ``given`` fails to fit a model whose ``state_dict()`` is ``expected``.

    Counts missing keys, unexpected keys (except those ``ignore`` accepts) and tensors of
    another shape, each with an example; ``None`` when ``given`` fits.

    Example:
        >>> describe_mismatch({"w": torch.zeros(2, 3)}, {"w": torch.zeros(2, 5), "b": 1})
        "1 unexpected key (e.g. 'b'), 1 tensor of another shape (e.g. 'w': (2, 5) in the file, (2, 3) in this model)"
    """  # noqa: E501
    missing = [key for key in expected if key not in given]
    unexpected = [key for key in given if key not in expected and not ignore(key)]
    reshaped = [
        key
        for key, value in expected.items()
        if isinstance(value, Tensor)
        and isinstance(given.get(key), Tensor)
        and tuple(given[key].shape) != tuple(value.shape)
    ]
    parts = []
    if missing:
        parts.append(f"{_count(missing, 'missing key')} (e.g. {missing[0]!r})")
    if unexpected:
        parts.append(f"{_count(unexpected, 'unexpected key')} (e.g. {unexpected[0]!r})")
    if reshaped:
        key = reshaped[0]
        parts.append(
            f"{_count(reshaped, 'tensor')} of another shape (e.g. {key!r}: "
            f"{tuple(given[key].shape)} in the file, {tuple(expected[key].shape)} in this model)"
        )
    return ", ".join(parts) or None


def _count(items: list[str], noun: str) -> str:
    return f"{len(items)} {noun}{'' if len(items) == 1 else 's'}"


def _as_state_dict(value: Any, source: str) -> dict[str, Tensor]:
    if isinstance(value, BackboneAdapter):
        return value.export_state_dict()
    if isinstance(value, nn.Module):
        return dict(value.state_dict())
    if isinstance(value, Mapping) and value and all(isinstance(k, str) for k in value):
        return dict(value)
    raise UsageError(f"--init-from {source}: expected a state_dict, got {type(value).__name__}")


def resolve_init_from(value: str) -> tuple[dict[str, Tensor], str]:
    """The backbone weights ``--init-from value`` names, and how to name their source.

    ``value`` is a file (a ``backbone.pth``, a stock model's ``state_dict`` or a training
    checkpoint, whose student backbone is used) or, when it is not a file, the name of
    released weights (:func:`protohead.load_pretrained`, see :func:`protohead.list_pretrained`).

    Raises:
        UsageError: If ``value`` is neither a readable file nor a known pretrained name.

    Example:
        >>> resolve_init_from("no/such/backbone.pth")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        protohead.train.usage.UsageError: --init-from 'no/such/backbone.pth': no such file or pretrained name (names: trex_resnet50, ...)
    """  # noqa: E501
    path = Path(value)
    if path.is_file():
        try:
            loaded = load_checkpoint(path)
            if KEY_MODEL in loaded:
                return RunSummary.from_checkpoint(loaded, path).backbone_state, str(path)
        except ValueError as err:  # CheckpointFormatError: unreadable, or no backbone in it
            raise UsageError(f"--init-from {path}: {err}") from err
        return _as_state_dict(loaded, str(path)), str(path)
    if value not in list_pretrained():
        raise UsageError(
            f"--init-from {value!r}: no such file or pretrained name (names: "
            f"{', '.join(list_pretrained())})"
        )
    try:
        weights = load_pretrained(value)
    except FileNotFoundError as err:  # offline without a cached download: says what to do
        raise UsageError(f"--init-from {value!r}: {err}") from err
    return _as_state_dict(weights, repr(value)), repr(value)


def _is_removed_head(model: nn.Module, key: str) -> bool:
    """Whether ``key`` belongs to a classifier that the adapter replaced (by an identity or,
    for auxiliary heads, nothing): such keys of a stock state_dict have no place to go."""
    node = model
    for part in key.split(".")[:-1]:
        if part not in node._modules:
            return False
        child = node._modules[part]
        if child is None or isinstance(child, nn.Identity):
            return True
        node = child
    return False


@torch.no_grad()
def init_backbone(model: TReX, state: Mapping[str, Tensor], source: str) -> None:
    """Load ``state`` into the student backbone (and the EMA teacher's copy) of ``model``.

    Strict except for the stock classifier's keys; a leading ``module.`` (DDP) is stripped.
    Everything is checked before anything is loaded.

    Raises:
        UsageError: Naming the missing, unexpected or mis-shaped keys.

    Example:
        >>> model = TReX("resnet18", 3, projector_hidden_dim=16, memory_size=8)
        >>> weights = BackboneAdapter("resnet18").export_state_dict()
        >>> init_backbone(model, weights, "backbone.pth")
        >>> torch.equal(model.backbone.model.conv1.weight, weights["conv1.weight"])
        True
    """
    backbone = model.backbone
    if not isinstance(backbone, BackboneAdapter):
        raise TypeError(f"model.backbone must be a BackboneAdapter, got {type(backbone).__name__}")
    if state and all(key.startswith("module.") for key in state):
        state = {key[len("module.") :]: value for key, value in state.items()}
    expected = backbone.model.state_dict()
    problem = describe_mismatch(expected, state, lambda key: _is_removed_head(backbone.model, key))
    if problem is not None:
        raise UsageError(
            f"--init-from {source} does not fit --arch {backbone.arch}: {problem}; pass weights "
            "of the same --arch and --small-input-stem (a backbone.pth of such a run)"
        )
    backbone.model.load_state_dict({key: state[key] for key in expected}, strict=True)
    if model.teacher is not None:  # the teacher starts as a copy of the student
        model.teacher.module.load_state_dict(model.student.state_dict())
