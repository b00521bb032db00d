"""The buffers of :class:`~protohead.memory.PrototypeMemoryBank` and how they survive (internal).

The memory's persistent state is the ring (``features``, ``labels``, ``ptr``,
``num_skipped_updates``); everything else (running class sums and counts, the prototype cache,
views and per-batch-size constants) is derived from it and rebuilt, never saved. This base class
keeps that discipline through the ways a module's state changes hands: pickling (views are
dropped and relinked; pickles of earlier versions are resynced), module casts (every buffer keeps
its dtype; only device moves apply) and ``load_state_dict`` (all entries checked before any is
copied, then the derived state recomputed).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from protohead._fused_memory_step import FusedStep
from protohead._memory_checks import state_problems
from protohead._running_class_sums import BatchConstants, row_units

__all__ = ["MemoryState"]

# Attributes that view buffers: rebuilt after a device move or unpickling, never pickled
# (torch.save refuses two dtypes viewing one storage).
_VIEWS = ("_ring_units", "_prototype_rows", "_prototype_units", "_sum_rows", "_count_rows")


class MemoryState(nn.Module):
    """Base of the memory: derived-state registration, pickling, casts and loading.

    Subclasses register the persistent buffers, set ``dim``, ``size`` and ``num_classes``, then
    call :meth:`_add_derived_state`.
    """

    dim: int
    size: int
    num_classes: int
    features: Tensor
    labels: Tensor
    ptr: Tensor
    num_skipped_updates: Tensor
    _class_sums: Tensor
    _class_counts: Tensor
    _prototypes: Tensor
    _fused_step: FusedStep | None

    def _add_derived_state(self) -> None:
        """Registers the running sums, counts and prototype cache (see _running_class_sums)."""
        buckets, device = self.num_classes + 1, self.features.device
        sums = torch.zeros(buckets, self.dim, dtype=torch.float64, device=device)
        self.register_buffer("_class_sums", sums, persistent=False)
        counts = torch.zeros(buckets, 1, dtype=torch.long, device=device)
        self.register_buffer("_class_counts", counts, persistent=False)
        self.register_buffer("_prototypes", torch.zeros(buckets, self.dim), persistent=False)
        self._batch_constants: dict[int, BatchConstants] = {}
        self._cache_valid = False  # whether _prototypes holds the current normalised sums
        self._sums_stale = False  # whether _class_sums lags the ring (see _ring_reduction)
        self._handover: Tensor | None = None  # prototypes a large-batch step already made
        self._link_views()

    def _link_views(self) -> None:
        """(Re)creates the views of the buffers that the step uses (see _VIEWS)."""
        self._ring_units = row_units(self.features)
        self._prototype_rows = self._prototypes[: self.num_classes]
        self._prototype_units = row_units(self._prototypes)
        self._sum_rows = self._class_sums[: self.num_classes]
        self._count_rows = self._class_counts[: self.num_classes]

    def __getstate__(self) -> dict[str, Any]:
        state: dict[str, Any] = super().__getstate__()
        for name in _VIEWS:
            state.pop(name, None)
        state["_batch_constants"] = {}
        state["_handover"] = None  # derived, and recomputed from the ring when asked
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        if "_fused_step" not in state:  # pickled by a protohead without fused=
            self.fused, self._fused_step = False, None
        if "_prototypes" not in self._buffers:
            self._add_derived_state()  # pickled by a protohead without the prototype cache
            self.resync()
        else:
            self.__dict__.setdefault("_sums_stale", False)  # pickled before _ring_reduction
            self.__dict__.setdefault("_handover", None)
            self._link_views()

    @torch.no_grad()
    def resync(self) -> None:
        """Recompute the running class sums and counts exactly from the ring."""
        buckets = self.labels.remainder(self.num_classes + 1)  # -1 (empty) -> extra bucket
        self._class_sums.zero_().index_add_(0, buckets, self.features.double())
        ones = torch.ones_like(buckets).unsqueeze(1)
        self._class_counts.zero_().index_add_(0, buckets, ones)
        self._class_counts[self.num_classes] = 0  # the extra bucket's count is not kept
        self._cache_valid = self._sums_stale = False
        self._handover = None

    def _fresh_sums(self) -> None:
        """Rebuilds the float64 sums if a large-batch step left them stale."""
        if self._sums_stale:
            self.resync()

    def _apply(self, fn: Callable[[Tensor], Tensor], recurse: bool = True) -> MemoryState:
        # Module casts (.half(), .double(), .to(torch.bfloat16), a parent's .float()...) would
        # turn the float64 sums into float32 (an index_add_ dtype error at the next update)
        # and round the float32 ring. Every buffer keeps its dtype; only device moves apply.
        def keep_dtype(tensor: Tensor) -> Tensor:
            moved = fn(tensor)
            return moved if moved.dtype == tensor.dtype else tensor.to(device=moved.device)

        super()._apply(keep_dtype, recurse)
        self._link_views()
        self._batch_constants.clear()  # they live on the old device
        self._handover = None
        if self._fused_step is not None:
            self._fused_step.reset()
        return self

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        # PyTorch copies buffer by buffer, so one bad entry would leave the ring half-loaded
        # (or, with labels >= num_classes, make resync() index out of bounds). Every incoming
        # entry is checked first; on any problem nothing of this module is copied and the
        # messages go to error_msgs, from which load_state_dict raises its RuntimeError.
        problems = state_problems(state_dict, prefix, self.size, self.dim, self.num_classes)
        if problems:
            error_msgs.extend(problems)
            return
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
        self.resync()  # the running sums are derived state, not saved
