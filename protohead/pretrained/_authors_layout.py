"""How the authors' t-ReX training code names and saves things (internal).

Facts read from their repository (github.com/naver/trex): key names of their model, the
layout of their projector, and what their saved options hold. Used by
:mod:`protohead.pretrained.authors_checkpoint`.
"""

from __future__ import annotations

import argparse
import importlib
import pickle
import re
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from protohead.backbone import BackboneAdapter
from protohead.model import TReX
from protohead.projector import Projector

__all__ = [
    "BOTTLENECK",
    "EMA_MOMENTUM",
    "HIDDEN",
    "MEMORY_KEYS",
    "NUM_CLASSES",
    "key_map",
    "load_file",
    "projector_layout",
]

HIDDEN = re.compile(r"^(model|model_ema)\.head\.layers\.(\d+)\.(fc|bn)\.(\w+)$")
BOTTLENECK = re.compile(r"^(model|model_ema)\.head\.layers\.(\d+)\.weight$")
MEMORY_KEYS = ("features", "labels", "ptr")
EMA_MOMENTUM = 0.999  # fixed in their code, not one of their options
NUM_CLASSES = 1000  # ImageNet-1K, not one of their options


def key_map(state: Mapping[str, Tensor], model: TReX) -> dict[str, str]:
    """Authors' key -> TReX key, for the keys that have a counterpart."""
    inner = "model." if isinstance(model.backbone, BackboneAdapter) else ""
    prefixes = {"model": "student."}
    if model.teacher is not None:
        prefixes["model_ema"] = "teacher.module."
    head = _head_positions(model.projector)
    names: dict[str, str] = {}
    for key in state:
        root = key.split(".", 1)[0]
        if root in prefixes and key.startswith(f"{root}.encoder."):
            rest = key[len(root) + len(".encoder.") :]
            names[key] = f"{prefixes[root]}backbone.{inner}{rest}"
        elif root in prefixes and head is not None:
            hidden_layers, bottleneck = projector_layout(state, root)
            target_hidden, target_norms, target_bottleneck = head
            if (m := HIDDEN.match(key)) and int(m[2]) in hidden_layers:
                n = hidden_layers.index(int(m[2]))
                slots = target_hidden if m[3] == "fc" else target_norms
                if n < len(slots) and slots[n] is not None:
                    names[key] = f"{prefixes[root]}head.layers.{slots[n]}.{m[4]}"
            elif (m := BOTTLENECK.match(key)) and int(m[2]) == bottleneck:
                names[key] = f"{prefixes[root]}head.layers.{target_bottleneck}.weight"
        elif root == "memory" and model.memory is not None and key[len("memory.") :] in MEMORY_KEYS:
            names[key] = f"classifier.{key}"
        elif key == "clf.fc.weight" and model.memory is None:
            linear = model.classifier.linear is not None
            names[key] = "classifier.linear.weight" if linear else "classifier.weight"
    return names


def projector_layout(state: Mapping[str, Tensor], root: str) -> tuple[list[int], int | None]:
    """Indices of the hidden blocks and of the bottleneck in the authors' ``root`` projector."""
    hidden = sorted({int(m[2]) for k in state if (m := HIDDEN.match(k)) and m[1] == root})
    ends = [int(m[2]) for k in state if (m := BOTTLENECK.match(k)) and m[1] == root]
    return hidden, (ends[0] if len(ends) == 1 else None)


def _head_positions(projector: nn.Module) -> tuple[list[int], list[int | None], int] | None:
    """Positions of the hidden Linears, their norms and the bottleneck in a Projector."""
    if not isinstance(projector, Projector):
        return None
    layers = list(projector.layers)
    linears = [i for i, layer in enumerate(layers) if isinstance(layer, nn.Linear)]
    norms: list[int | None] = [
        i + 1
        if i + 1 < len(layers) and isinstance(layers[i + 1], nn.modules.batchnorm._NormBase)
        else None
        for i in linears[:-1]
    ]
    return linears[:-1], norms, linears[-1]


def _safe_globals() -> list[Any]:
    """What the authors' ``args`` need beyond tensors: a Namespace holding numpy arrays."""
    allowed: list[Any] = [argparse.Namespace]
    try:
        np = importlib.import_module("numpy")
    except ImportError:
        return allowed
    try:
        multiarray = importlib.import_module("numpy._core.multiarray")
    except ImportError:  # numpy 1.x
        multiarray = importlib.import_module("numpy.core.multiarray")
    allowed += [np.ndarray, np.dtype]
    for kind in ("bool", "int8", "int16", "int32", "int64", "uint8", "float16", "float32",
                 "float64"):  # fmt: skip
        allowed.append(type(np.dtype(kind)))
    # Files pickled under numpy 1.x name numpy.core, under 2.x numpy._core.
    for package in ("numpy.core", "numpy._core"):
        for name in ("_reconstruct", "scalar"):
            allowed.append((getattr(multiarray, name), f"{package}.multiarray.{name}"))
    return allowed


def load_file(path: str) -> Any:
    try:
        with torch.serialization.safe_globals(_safe_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError) as err:
        try:
            unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(path)
        except Exception:  # only improves the message; the load error is what counts
            unsafe = []
        raise ValueError(
            f"{path!r} must be a checkpoint of tensors, numbers, strings, argparse options and "
            f"numpy arrays, but it cannot be loaded safely (it needs {unsafe}): {err}; if you "
            "trust the file, load it with torch.load(path, weights_only=False) and pass the dict"
        ) from err
