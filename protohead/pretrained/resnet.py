"""Build a stock torchvision ResNet-50 holding released t-ReX / t-ReX* weights."""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from typing import Any

import torch
import torchvision.models as tv_models
from torch import Tensor, nn

from protohead.pretrained.files import Source, pretrained_file
from protohead.pretrained.registry import pretrained_info

__all__ = ["load_pretrained", "released_state_dict"]

# The released files hold a stock ``resnet50`` state_dict without the classifier.
_CLASSIFIER_KEYS = ("fc.weight", "fc.bias")
# Containers some checkpoints wrap a state_dict in; the released ResNet-50 files have none.
_WRAPPERS = ("state_dict", "model")
# Keys of the authors' full training checkpoints (their DDP model state, ``module.`` removed).
_FULL_CHECKPOINT_HINTS = ("model.encoder.", "model_ema.", "memory.")


def load_pretrained(name: str, *, source: Source | None = None, progress: bool = True) -> nn.Module:
    """A torchvision ``resnet50()`` holding the released weights ``name``.

    The weights are those published by the authors of t-ReX (Sariyildiz et al., ICLR 2023),
    downloaded on first use from their server into ``torch.hub``'s cache, under **their
    licence, CC BY-NC-SA 4.0** (non-commercial, share-alike); protohead does not redistribute
    them. The file is checked before use: its SHA-256 against the registry (when recorded) and
    its layout, which must fill every key of the stock model except the classifier.

    The classifier ``fc`` (1000 ImageNet classes) is **not** part of the released weights: it
    keeps torchvision's random initialisation. For features, set ``model.fc = nn.Identity()``
    (or use :class:`~protohead.BackboneAdapter`); for a new task, replace ``fc``. The model is
    returned in training mode, like every freshly built torchvision model.

    Args:
        name: A registry name, see :func:`~protohead.list_pretrained`.
        source: Load this file instead of downloading: a local path, a ``file://`` URL or an
            ``http(s)://`` URL. Use it on machines without network, with the file downloaded
            elsewhere.
        progress: Show a progress bar while downloading.

    Returns:
        The ``torchvision.models.resnet50`` with the released backbone weights.

    Raises:
        TypeError: If an argument has the wrong type.
        ValueError: If ``name`` is unknown (the message lists the names), the SHA-256 differs
            from the recorded one, or the file is not a ResNet-50 state_dict in the released
            layout (the message names the missing and unexpected keys).
        FileNotFoundError: If a local ``source`` does not exist.
        WeightsUnavailableError: If the file is not cached and cannot be downloaded; the
            message names the URL and how to pass ``source=``.

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> stock = tv_models.resnet50()
        >>> released = {k: v for k, v in stock.state_dict().items() if not k.startswith("fc.")}
        >>> path = Path(tempfile.mkdtemp()) / "trex.pth"
        >>> torch.save(released, path)
        >>> model = load_pretrained("trex_resnet50", source=path.as_uri())
        >>> torch.equal(model.conv1.weight, stock.conv1.weight)
        True
    """
    info = pretrained_info(name)
    path = pretrained_file(name, source=source, progress=progress)
    model: nn.Module = tv_models.get_model(info.arch, weights=None)
    state = released_state_dict(path, model, name)
    result = model.load_state_dict(state, strict=False)
    # Checked above already; kept as the contract the authors state for their files.
    assert sorted(result.missing_keys) == sorted(_CLASSIFIER_KEYS) and not result.unexpected_keys
    return model


def released_state_dict(path: Source, model: nn.Module, name: str) -> dict[str, Tensor]:
    """The state_dict in ``path``, checked to fill ``model`` except its ``fc`` classifier.

    A wrapping ``"state_dict"``/``"model"`` entry and DistributedDataParallel's ``module.``
    prefix are removed first.

    Raises:
        ValueError: If the file is not a state_dict that fits ``model`` in that way; the
            message lists the missing, unexpected and mis-shaped keys.

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> model = tv_models.resnet18()
        >>> path = Path(tempfile.mkdtemp()) / "wrapped.pth"
        >>> sd = {"module." + k: v for k, v in model.state_dict().items() if "fc" not in k}
        >>> torch.save({"state_dict": sd}, path)
        >>> len(released_state_dict(path, model, "example")) == len(model.state_dict()) - 2
        True
    """
    where = str(path)
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as err:
        raise ValueError(
            f"{where!r} must be a PyTorch weights file of {name} (a state_dict), but it "
            f"cannot be loaded safely: {err}"
        ) from err
    state = _unwrap(loaded, where)
    expected = model.state_dict()
    allowed_missing = set(_CLASSIFIER_KEYS)
    missing = sorted(set(expected) - set(state) - allowed_missing)
    unexpected = sorted(set(state) - set(expected))
    present_fc = sorted(allowed_missing & set(state))
    mis_shaped = sorted(
        f"{key} {tuple(state[key].shape)} (model: {tuple(expected[key].shape)})"
        for key in set(state) & set(expected)
        if state[key].shape != expected[key].shape
    )
    if missing or unexpected or present_fc or mis_shaped:
        hint = ""
        if any(key.startswith(_FULL_CHECKPOINT_HINTS) for key in state):
            hint = (
                "; this looks like a full training checkpoint of the authors: load it into a "
                "protohead TReX with protohead.pretrained.authors_checkpoint"
            )
        raise ValueError(
            f"{where!r} must hold the {name} {type(model).__name__} weights in the released "
            f"layout (every key of the stock model except {list(_CLASSIFIER_KEYS)}), got "
            f"missing keys {_few(missing)}, unexpected keys {_few(unexpected)}, classifier "
            f"keys {present_fc} and shape mismatches {_few(mis_shaped)}{hint}"
        )
    return state


def _unwrap(loaded: Any, where: str) -> dict[str, Tensor]:
    state = loaded
    if isinstance(state, Mapping) and not all(isinstance(v, Tensor) for v in state.values()):
        wrapper = next((k for k in _WRAPPERS if isinstance(state.get(k), Mapping)), None)
        if wrapper is not None:
            state = state[wrapper]
    if not isinstance(state, Mapping) or not all(
        isinstance(k, str) and isinstance(v, Tensor) for k, v in state.items()
    ):
        got = (
            f"a dict with keys {_few(sorted(map(str, state)))}"
            if isinstance(state, Mapping)
            else type(state).__name__
        )
        raise ValueError(f"{where!r} must hold a state_dict (str -> Tensor), got {got}")
    if state and all(key.startswith("module.") for key in state):
        return {key[len("module.") :]: value for key, value in state.items()}
    return dict(state)


def _few(keys: list[str], limit: int = 12) -> str:
    """``keys`` as a list, the first ``limit`` of them and a count of the rest."""
    if len(keys) <= limit:
        return str(keys)
    return f"{keys[:limit]} and {len(keys) - limit} more"
