"""The authors' full t-ReX training checkpoints, loaded into protohead's :class:`~protohead.TReX`.

Two of the released models (``trex_resnet50_repro``, ``trex_star_resnet50_repro``) come with
the full state of their training run. The authors' training script saves a dict with
``"model"`` (the state_dict of their DistributedDataParallel model, keys prefixed with
``module.``), ``"optimizer"`` (SGD with momentum), ``"fp16_scaler"`` (mixed-precision
gradient scaler), ``"epoch"`` (epochs completed) and ``"args"`` (their ``argparse`` options).

Their model keys (``module.`` removed) map onto a :class:`~protohead.TReX` as follows:

| authors' key | TReX key |
| --- | --- |
| ``model.encoder.<k>`` (torchvision ResNet, ``fc`` removed) | ``student.backbone.model.<k>`` |
| ``model.head.layers.<i>.fc.<p>`` (hidden Linear ``n``) | ``student.head.layers.<3n>.<p>`` |
| ``model.head.layers.<i>.bn.<p>`` (its BatchNorm1d) | ``student.head.layers.<3n+1>.<p>`` |
| ``model.head.layers.<j>.weight`` (bottleneck) | ``student.head.layers.<3h>.weight`` |
| ``model_ema.…`` (EMA teacher, OCM runs) | ``teacher.module.…``, same rules |
| ``memory.features`` / ``labels`` / ``ptr`` (OCM runs) | ``classifier.memory.…`` |
| ``clf.fc.weight`` (learned class weights, runs without memory) | ``classifier.weight`` |

``h`` is the number of hidden layers; in the authors' projector, index 0 of ``layers`` is a
parameter-free L2 normalisation of the input when that normalisation is on. Not in their
checkpoints, so left as the model has them: the teacher's update count (``num_updates``, only
read by a momentum schedule; theirs is constant) and the memory's skipped-update counter (set
to 0). Their SGD momentum buffers map onto an SGD optimizer over the same parameters.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from protohead._memory_checks import state_problems
from protohead.model import TReX
from protohead.pretrained._authors_layout import (
    EMA_MOMENTUM,
    NUM_CLASSES,
    key_map,
    load_file,
    projector_layout,
)
from protohead.pretrained.files import pretrained_file
from protohead.pretrained.registry import PRETRAINED
from protohead.projector import Projector

__all__ = [
    "AuthorsCheckpoint",
    "authors_to_trex_state_dict",
    "authors_trex_kwargs",
    "load_authors_checkpoint",
    "read_authors_checkpoint",
]

_NOT_IN_CHECKPOINT = ("teacher._extra_state", "classifier.memory.num_skipped_updates")


@dataclass(frozen=True)
class AuthorsCheckpoint:
    """A full training checkpoint of the authors, read by :func:`read_authors_checkpoint`.

    Args:
        model: Their model's state_dict, DistributedDataParallel's ``module.`` removed.
        optimizer: Their SGD state_dict, or ``None``.
        scaler: Their gradient scaler's state_dict (``torch.amp.GradScaler``), or ``None``.
        epoch: Epochs completed, or ``None``.
        args: Their training options as a dict (empty if not stored).

    Example:
        >>> AuthorsCheckpoint(model={}, optimizer=None, scaler=None, epoch=100, args={}).epoch
        100
    """

    model: dict[str, Tensor]
    optimizer: dict[str, Any] | None
    scaler: dict[str, Any] | None
    epoch: int | None
    args: dict[str, Any]


def read_authors_checkpoint(
    source: str | os.PathLike[str] | Mapping[str, Any], *, progress: bool = True
) -> AuthorsCheckpoint:
    """Read a full checkpoint of the authors: a registry name, a file, or a loaded dict.

    A registry name (``"trex_resnet50_repro"``) downloads its full checkpoint into
    ``torch.hub``'s cache (several hundred MB, licence CC BY-NC-SA 4.0). Files are read with
    ``torch.load(weights_only=True)``, allowing only the ``argparse.Namespace`` and numpy
    arrays their options hold; a file needing anything else is refused (if you trust it, load
    it yourself and pass the dict).

    Raises:
        TypeError: If ``source`` has the wrong type.
        ValueError: If the file cannot be read safely or is not in the authors' layout.
        FileNotFoundError: If a file does not exist (or, for a name, cannot be downloaded).

    Example:
        >>> raw = {"model": {"module.memory.ptr": torch.zeros(1, dtype=torch.long)}, "epoch": 3}
        >>> ckpt = read_authors_checkpoint(raw)
        >>> list(ckpt.model), ckpt.epoch, ckpt.optimizer
        (['memory.ptr'], 3, None)
    """
    if isinstance(source, Mapping):
        raw: Any = source
    elif isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if isinstance(source, str) and source in PRETRAINED:
            path = str(pretrained_file(source, full_checkpoint=True, progress=progress))
        elif not os.path.isfile(path):
            raise FileNotFoundError(f"source must be a registry name or a file, got {path!r}")
        raw = load_file(path)
    else:
        raise TypeError(f"source must be a name, a path or a dict, got {type(source).__name__}")
    if not isinstance(raw, Mapping) or not isinstance(raw.get("model"), Mapping):
        got = sorted(map(str, raw)) if isinstance(raw, Mapping) else type(raw).__name__
        raise ValueError(f"checkpoint must be a dict with a 'model' state_dict, got {got}")
    state = raw["model"]
    if not all(isinstance(k, str) and isinstance(v, Tensor) for k, v in state.items()):
        raise ValueError("checkpoint 'model' must map str keys to tensors")
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    args = raw.get("args")
    args = vars(args) if isinstance(args, argparse.Namespace) else dict(args or {})
    scaler = raw.get("fp16_scaler", raw.get("scaler"))
    epoch = raw.get("epoch")
    return AuthorsCheckpoint(
        model=dict(state),
        optimizer=dict(raw["optimizer"]) if isinstance(raw.get("optimizer"), Mapping) else None,
        scaler=dict(scaler) if isinstance(scaler, Mapping) else None,
        epoch=epoch if isinstance(epoch, int) and not isinstance(epoch, bool) else None,
        args=args,
    )


def authors_trex_kwargs(checkpoint: AuthorsCheckpoint) -> dict[str, Any]:
    """Keyword arguments of a :class:`~protohead.TReX` with the checkpoint's structure.

    Read from the weights' shapes (projector depth and widths, input normalisation, memory
    size, classes of learned weights) and the stored options (``arch``, ``clf_tau``).

    Raises:
        ValueError: If the checkpoint has no projector bottleneck.

    Example:
        >>> state = {"model.head.layers.1.fc.weight": torch.zeros(64, 512),
        ...          "model.head.layers.2.weight": torch.zeros(16, 64),
        ...          "memory.features": torch.zeros(32, 16)}
        >>> ckpt = AuthorsCheckpoint(state, None, None, None, {"arch": "resnet18"})
        >>> kwargs = authors_trex_kwargs(ckpt)
        >>> kwargs["projector_hidden_layers"], kwargs["memory_size"], kwargs["num_classes"]
        (1, 32, 1000)
        >>> TReX(**kwargs).projector.input_l2_norm
        True
    """
    state, args = checkpoint.model, checkpoint.args
    hidden, bottleneck = projector_layout(state, "model")
    if bottleneck is None:
        raise ValueError("checkpoint 'model' must hold a projector (model.head.layers.<j>.weight)")
    first = state.get(f"model.head.layers.{hidden[0]}.fc.weight") if hidden else None
    tau = args.get("clf_tau", 0.1)
    memory = state.get("memory.features")
    clf = state.get("clf.fc.weight")
    return {
        "backbone": str(args.get("arch", "resnet50")),
        "num_classes": int(clf.shape[0]) if clf is not None else NUM_CLASSES,
        "projector_hidden_layers": len(hidden),
        "projector_hidden_dim": int(first.shape[0]) if first is not None else 2048,
        "projector_out_dim": int(state[f"model.head.layers.{bottleneck}.weight"].shape[0]),
        "projector_input_l2_norm": min([*hidden, bottleneck]) == 1,
        "temperature": float(tau) if tau > 0 else None,
        "memory_size": int(memory.shape[0]) if memory is not None else 0,
        "ema_momentum": EMA_MOMENTUM,
    }


def authors_to_trex_state_dict(state: Mapping[str, Tensor], model: TReX) -> dict[str, Tensor]:
    """The authors' model state_dict renamed (and reshaped) for ``model``, checked to fit.

    Every key must map onto a key of ``model`` with the same shape, and every entry of
    ``model`` must be filled, except those the authors do not save (module docstring).

    Raises:
        TypeError: If ``model`` is not a :class:`~protohead.TReX`.
        ValueError: Listing every unmapped checkpoint key, every entry of ``model`` left
            unfilled and every shape mismatch.

    Example:
        >>> model = TReX("resnet18", 10, projector_hidden_dim=8, memory_size=4)
        >>> authors_to_trex_state_dict({"clf.fc.weight": torch.zeros(10, 256)}, model)
        ... # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: checkpoint must fit the model ...
    """
    if not isinstance(model, TReX):
        raise TypeError(f"model must be a TReX, got {type(model).__name__}")
    names = key_map(state, model)
    target = model.state_dict()
    unmapped = [key for key in state if key not in names]
    mismatched: list[str] = []
    mapped: dict[str, Tensor] = {}
    for key, name in names.items():
        value = state[key]
        if name.endswith("memory.ptr") and value.shape == (1,):
            value = value.reshape(())  # the authors' pointer is a 1-element vector
        if name not in target:
            mismatched.append(f"{key} -> {name}, which the model does not have")
        elif value.shape != target[name].shape:
            mismatched.append(
                f"{key} -> {name}: shape {tuple(value.shape)}, model {tuple(target[name].shape)}"
            )
        else:
            mapped[name] = value
    if "classifier.memory.num_skipped_updates" in target:
        mapped["classifier.memory.num_skipped_updates"] = torch.zeros((), dtype=torch.long)
    unfilled = [k for k in target if k not in mapped and k not in _NOT_IN_CHECKPOINT]
    projector = model.projector
    if isinstance(projector, Projector):
        hidden, bottleneck = projector_layout(state, "model")
        if bottleneck is not None and (min([*hidden, bottleneck]) == 1) != projector.input_l2_norm:
            mismatched.append(
                f"projector input L2 normalisation: the model has input_l2_norm="
                f"{projector.input_l2_norm}, the checkpoint the opposite"
            )
    memory = model.memory
    if memory is not None and not (unmapped or unfilled or mismatched):
        mismatched += state_problems(
            mapped, "classifier.memory.", memory.size, memory.dim, memory.num_classes
        )
    parts = [
        f"{len(items)} {title}: {', '.join(items)}"
        for title, items in (
            ("checkpoint key(s) without a counterpart in the model", unmapped),
            ("model entr(ies) not in the checkpoint", unfilled),
            ("mismatch(es)", mismatched),
        )
        if items
    ]
    if parts:
        raise ValueError(
            "checkpoint must fit the model (build it with TReX(**authors_trex_kwargs(ckpt)) "
            "for a match); " + "; ".join(parts)
        )
    return mapped


def load_authors_checkpoint(
    model: TReX,
    checkpoint: AuthorsCheckpoint | str | os.PathLike[str] | Mapping[str, Any],
    *,
    optimizer: torch.optim.Optimizer | None = None,
    scaler: Any | None = None,
) -> AuthorsCheckpoint:
    """Restore ``model`` (and optionally an SGD ``optimizer`` and a ``scaler``) from it.

    Student, projector, teacher, memory or learned class weights all come from the
    checkpoint (see the module docstring). With ``optimizer``, its per-parameter momentum
    buffers are set from the authors' (matched by parameter name); its hyper-parameters (lr,
    weight decay) stay as built, the learning-rate schedule sets them. With ``scaler`` (a
    ``torch.amp.GradScaler``), its state is loaded. Everything is checked before anything is
    changed.

    Args:
        model: A :class:`~protohead.TReX` of the checkpoint's structure, e.g.
            ``TReX(**authors_trex_kwargs(ckpt))``.
        checkpoint: An :class:`AuthorsCheckpoint`, or what :func:`read_authors_checkpoint`
            takes (a registry name, a file, a loaded dict).
        optimizer: Optional ``torch.optim.SGD`` over parameters of ``model`` (typically
            ``SGD(protohead.train.optim.param_groups(model, 1e-4), lr, momentum=0.9)``).
        scaler: Optional object with ``load_state_dict`` for the gradient scaler state.

    Returns:
        The checkpoint as read (``epoch`` is the number of epochs completed).

    Raises:
        TypeError: If ``optimizer`` is not an SGD or ``scaler`` has no ``load_state_dict``.
        ValueError: If the checkpoint does not fit (see :func:`authors_to_trex_state_dict`),
            or the optimizer/scaler state is requested but absent or does not map.

    Example:
        >>> ckpt = AuthorsCheckpoint({}, None, None, None, {})
        >>> load_authors_checkpoint(TReX("resnet18", 3, memory_size=4), ckpt)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: checkpoint must fit the model ...
    """
    if not isinstance(checkpoint, AuthorsCheckpoint):
        checkpoint = read_authors_checkpoint(checkpoint)
    if optimizer is not None and not isinstance(optimizer, torch.optim.SGD):
        raise TypeError(
            "optimizer must be a torch.optim.SGD (the checkpoint holds SGD momentum buffers), "
            f"got {type(optimizer).__name__}"
        )
    if scaler is not None and not callable(getattr(scaler, "load_state_dict", None)):
        raise TypeError(f"scaler must have a load_state_dict method, got {type(scaler).__name__}")
    mapped = authors_to_trex_state_dict(checkpoint.model, model)
    optimizer_state = None
    if optimizer is not None:
        optimizer_state = _optimizer_state(checkpoint, model, optimizer)
    if scaler is not None and checkpoint.scaler is None:
        raise ValueError("checkpoint must hold a gradient scaler state when scaler is given")
    result = model.load_state_dict(mapped, strict=False)
    assert not result.unexpected_keys and set(result.missing_keys) <= set(_NOT_IN_CHECKPOINT)
    if optimizer is not None and optimizer_state is not None:
        optimizer.load_state_dict(optimizer_state)
    if scaler is not None:
        scaler.load_state_dict(checkpoint.scaler)
    return checkpoint


def _optimizer_state(
    checkpoint: AuthorsCheckpoint, model: TReX, optimizer: torch.optim.Optimizer
) -> dict[str, Any]:
    """``optimizer``'s state_dict with the authors' momentum buffers, matched by name."""
    source = checkpoint.optimizer
    if source is None:
        raise ValueError("checkpoint must hold an optimizer state when optimizer is given")
    names = key_map(checkpoint.model, model)
    params = dict(model.named_parameters())
    # The authors' optimizer numbers their trainable parameters in model order, the weight
    # matrices (group 0, decayed) before the biases and 1-D parameters (group 1).
    trainable = [
        k for k in checkpoint.model if not k.startswith("model_ema.") and names.get(k) in params
    ]
    decayed = [k for k in trainable if not (k.endswith(".bias") or checkpoint.model[k].ndim == 1)]
    order = decayed + [k for k in trainable if k not in set(decayed)]
    groups = source.get("param_groups", [])
    sizes = [len(g.get("params", [])) for g in groups]
    if sizes != [len(decayed), len(order) - len(decayed)]:
        raise ValueError(
            f"checkpoint optimizer must have groups of {len(decayed)} and "
            f"{len(order) - len(decayed)} parameters to be mapped, got {sizes}"
        )
    ids = [i for g in groups for i in g["params"]]
    by_name = {order[n]: ids[n] for n in range(len(order))}
    source_of = {names[k]: k for k in order}
    target = optimizer.state_dict()
    flat = [p for g in optimizer.param_groups for p in g["params"]]
    name_of = {id(p): n for n, p in params.items()}
    problems: list[str] = []
    state: dict[int, dict[str, Tensor]] = {}
    for index, param in enumerate(flat):
        name = name_of.get(id(param))
        if name is None or name not in source_of:
            problems.append(f"optimizer parameter {index} ({name or 'not in the model'})")
            continue
        entry = source.get("state", {}).get(by_name[source_of[name]])
        if entry is None:
            continue  # never stepped: no buffer
        if set(entry) != {"momentum_buffer"} or entry["momentum_buffer"].shape != param.shape:
            problems.append(f"{name}: state {sorted(entry)} does not fit an SGD momentum buffer")
            continue
        state[index] = {"momentum_buffer": entry["momentum_buffer"].detach().clone()}
    if problems:
        raise ValueError("optimizer state cannot be mapped: " + "; ".join(problems))
    return {"state": state, "param_groups": target["param_groups"]}
