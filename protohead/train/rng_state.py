"""Random-generator states of a training run: Python's, numpy's, torch's CPU and CUDA's.

A resumed t-ReX run (Sariyildiz et al., ICLR 2023) continues bit for bit only if every
generator continues where it stopped: :func:`get_rng_state` captures them as tensors and plain
values (so a checkpoint holding them loads with ``torch.load(weights_only=True)``) and
:func:`set_rng_state` validates every part before restoring any.
"""

from __future__ import annotations

import importlib.util
import random
from collections.abc import Mapping
from typing import Any

import torch

__all__ = ["get_rng_state", "set_rng_state"]


def _numpy() -> Any | None:
    """The numpy module when installed (it is optional for protohead)."""
    if importlib.util.find_spec("numpy") is None:
        return None
    return importlib.import_module("numpy")


def get_rng_state() -> dict[str, Any]:
    """The states of Python's, numpy's (if installed), torch's CPU and all CUDA generators.

    Everything is stored as tensors and plain Python values, so a checkpoint holding it loads
    with ``torch.load(weights_only=True)``. CUDA states are included only when CUDA has been
    initialised (reading them would otherwise create a context on every device).

    Example:
        >>> state = get_rng_state()
        >>> a = torch.rand(2)
        >>> set_rng_state(state)
        >>> torch.equal(a, torch.rand(2))
        True
    """
    state: dict[str, Any] = {"python": random.getstate(), "torch": torch.get_rng_state()}
    np = _numpy()
    if np is not None:
        kind, keys, pos, has_gauss, gauss = np.random.get_state(legacy=True)
        state["numpy"] = {
            "kind": str(kind),
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "gauss": float(gauss),
        }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore generator states saved by :func:`get_rng_state`.

    Entries that are absent are left alone; CUDA states are restored only when the number of
    visible devices matches (a run resumed on other hardware keeps its fresh CUDA states).
    State tensors may sit on any device, e.g. in a checkpoint loaded with
    ``map_location="cuda"``: they are copied to the CPU, where the generators keep them.

    Raises:
        TypeError: If ``state`` is not a mapping.
        ValueError: If an entry has the wrong form; nothing is restored then.

    Example:
        >>> state = get_rng_state()
        >>> first = torch.randint(0, 1000, (3,))
        >>> set_rng_state(state)
        >>> torch.equal(first, torch.randint(0, 1000, (3,)))
        True
    """
    if not isinstance(state, Mapping):
        raise TypeError(f"state must be a mapping from get_rng_state(), got {type(state).__name__}")
    # Every part is checked (on scratch generators where possible) before any is restored, so
    # a bad entry can never leave some streams restored and others not.
    state = {key: _on_cpu(key, value) for key, value in state.items()}
    py = state.get("python")
    if py is not None:
        try:
            random.Random().setstate(py)
        except (TypeError, ValueError) as err:
            raise ValueError(
                f"state['python'] must be a state from random.getstate(), got {py!r:.80} ({err})"
            ) from err
    cpu = state.get("torch")
    if cpu is not None:
        expected = torch.get_rng_state().shape
        if not (isinstance(cpu, torch.Tensor) and cpu.dtype == torch.uint8):
            raise ValueError(f"state['torch'] must be a uint8 tensor, got {_describe(cpu)}")
        if cpu.shape != expected:
            raise ValueError(
                f"state['torch'] must be a uint8 tensor of shape {tuple(expected)} "
                f"(torch.get_rng_state()), got shape {tuple(cpu.shape)}"
            )
    np = _numpy()
    nps = state.get("numpy")
    np_state = None if nps is None else _numpy_state(nps, np)
    cuda = state.get("cuda")
    if cuda is not None and not (
        isinstance(cuda, (list, tuple))
        and all(
            isinstance(t, torch.Tensor) and t.dtype == torch.uint8 and t.ndim == 1 for t in cuda
        )
    ):
        raise ValueError(
            "state['cuda'] must be a list of 1-d uint8 tensors from "
            f"torch.cuda.get_rng_state_all(), got {_describe(cuda)}"
        )

    if py is not None:
        random.setstate(py)
    if cpu is not None:
        torch.set_rng_state(cpu)
    if np_state is not None and np is not None:
        np.random.set_state(np_state)
    if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


def _on_cpu(key: str, value: Any) -> Any:
    """``value`` with every tensor in it (also in lists and dicts) copied to the CPU."""
    if isinstance(value, torch.Tensor):
        if value.device.type == "cpu":
            return value
        if value.device.type == "meta":
            raise ValueError(f"state[{key!r}] holds a tensor on the meta device, which has no data")
        return value.cpu()
    if isinstance(value, (list, tuple)):
        return type(value)(_on_cpu(key, v) for v in value)
    if isinstance(value, Mapping):
        return {k: _on_cpu(key, v) for k, v in value.items()}
    return value


def _numpy_state(nps: Any, np: Any | None) -> tuple[Any, ...] | None:
    """The legacy numpy state tuple for ``state['numpy']`` (None without numpy), validated."""
    if not (isinstance(nps, Mapping) and {"kind", "keys", "pos"} <= set(nps)):
        raise ValueError(f"state['numpy'] must hold 'kind', 'keys' and 'pos', got {nps!r:.200}")
    keys = nps["keys"]
    integer = isinstance(keys, torch.Tensor) and not (
        keys.dtype == torch.bool or keys.is_floating_point() or keys.is_complex()
    )
    if not integer or keys.shape != (624,):
        raise ValueError(
            "state['numpy']['keys'] must be an integer tensor of shape (624,) (the MT19937 "
            f"key), got {_describe(keys)}"
        )
    # astype(uint32) below would silently wrap values outside the key's range.
    if not bool(((keys >= 0) & (keys < 2**32)).all()):
        raise ValueError("state['numpy']['keys'] must hold values in [0, 2**32), got others")
    if np is None:
        return None  # numpy is not installed: there is nothing to restore
    key_array = keys.cpu().numpy().astype(np.uint32)
    np_state = (nps["kind"], key_array, nps["pos"], nps.get("has_gauss", 0), nps.get("gauss", 0.0))
    try:
        np.random.RandomState().set_state(np_state)
    except (TypeError, ValueError) as err:
        raise ValueError(f"state['numpy'] must be a state from get_rng_state(), got {err}") from err
    return np_state


def _describe(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"a {value.dtype} tensor of shape {tuple(value.shape)}"
    return type(value).__name__
