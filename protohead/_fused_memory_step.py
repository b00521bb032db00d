"""The memory's step as two pure functions that ``torch.compile`` fuses (internal).

:class:`~protohead.memory.PrototypeMemoryBank` with ``fused=True`` runs its update and its
prototypes through these. Eagerly, a gated update dispatches some thirty small ops, and on an
accelerator each is a kernel launch, which is what the step costs there; compiled, Inductor
fuses them into about a dozen loops (generated C++ on the CPU, Triton on GPUs) with no host
sync. The state is the eager path's, bit for bit where the arithmetic is the same: the ring,
labels, pointer, skip counter and running sums are the same buffers, written by the same gated
scheme (an invalid batch rewrites the evicted rows over themselves and parks its sum updates in
the extra bucket, see ``_running_class_sums``).

Compiling needs a working backend (a C++ compiler on the CPU, Triton on GPUs) and takes
seconds per batch size. When it fails, :class:`FusedStep` warns once and runs the same two
functions eagerly from then on.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import Tensor
from torch.utils._python_dispatch import _get_current_dispatch_mode

from protohead._memory_checks import batch_validity
from protohead._running_class_sums import normalise

__all__ = ["FusedStep", "gated_write", "normalised_prototypes"]


def gated_write(
    ring: Tensor,
    ring_labels: Tensor,
    ptr: Tensor,
    skipped: Tensor,
    sums: Tensor,
    counts: Tensor,
    features: Tensor,
    labels: Tensor,
    offsets: Tensor,
    count_signs: Tensor,
    count_skips: bool,
) -> Tensor:
    """Writes a batch at ``ptr`` if it is valid, moves the class sums; returns the validity.

    ``offsets`` is ``arange(b + 1)``: the slots of the batch and, last, the pointer after it.
    ``count_signs`` is ``(2b, 1)`` int64, -1 for the evicted rows and +1 for the new ones.
    ``count_skips`` adds an invalid batch to ``skipped`` (skip mode); raise mode reads the
    result instead and raises, with the memory untouched either way.

    Shapes: ``ring (size, dim)`` float32, ``ring_labels (size,)``, ``sums (k + 1, dim)``
    float64, ``counts (k + 1, 1)`` int64, ``features (b, dim)`` float32 and ``labels (b,)``
    int64 with ``b <= size`` ``-> ()`` bool.
    """
    size, rows, extra_bucket = ring.shape[0], features.shape[0], sums.shape[0] - 1
    valid = batch_validity(features, labels, extra_bucket)
    if count_skips:
        skipped.add_(~valid)
    slots_and_next = (offsets + ptr) % size
    slots = slots_and_next[:rows]
    old_rows, old_labels = ring[slots], ring_labels[slots]
    new_rows = torch.where(valid, features, old_rows)
    new_labels = torch.where(valid, labels, old_labels)
    ptr.copy_(torch.where(valid, slots_and_next[rows], ptr))
    ring.index_copy_(0, slots, new_rows)
    ring_labels.index_copy_(0, slots, new_labels)
    # Empty slots (-1) and every row of an invalid batch go to the extra bucket.
    buckets = torch.cat([old_labels, new_labels]).remainder(extra_bucket + 1)
    buckets = torch.where(valid, buckets, extra_bucket)
    sums.index_add_(0, buckets, torch.cat([old_rows.neg(), new_rows]).double())
    counts.index_add_(0, buckets, count_signs)
    return valid


def normalised_prototypes(sums: Tensor, counts: Tensor) -> Tensor:
    """Every class's normalised sum, as :func:`~protohead._running_class_sums.normalise`.

    Shapes: ``sums (k + 1, dim)`` float64, ``counts (k + 1, 1)`` ``-> (k, dim)`` float32.
    """
    classes = sums.shape[0] - 1
    return normalise(sums[:classes], counts[:classes])


class FusedStep:
    """The compiled :func:`gated_write` and :func:`normalised_prototypes` of one memory.

    The compiled functions are shared by every memory (``torch.compile`` keeps one entry per
    shape); the per-batch-size constants and the fallback state belong to one memory. Only
    compile-time failures (``torch._dynamo`` errors, raised before anything runs) switch to
    their eager versions; anything else propagates.
    """

    _compiled: ClassVar[dict[str, Callable[..., Any]]] = {}

    def __init__(self) -> None:
        self.failed: str | None = None  # why compiling failed, once it has
        self._constants: dict[int, tuple[Tensor, Tensor]] = {}

    def constants(self, rows: int, device: torch.device) -> tuple[Tensor, Tensor]:
        """``offsets`` and ``count_signs`` of a batch of ``rows`` rows (see gated_write)."""
        found = self._constants.get(rows)
        if found is None or found[0].device != device:
            if len(self._constants) >= 8:  # a few batch sizes per run: bound the cache
                self._constants.clear()
            signs = torch.ones(2 * rows, 1, dtype=torch.long, device=device)
            signs[:rows] = -1
            found = self._constants[rows] = (torch.arange(rows + 1, device=device), signs)
        return found

    def run(self, name: str, *args: Any) -> Any:
        """The function ``name`` (``"write"`` or ``"prototypes"``) applied to ``args``.

        Compiled, unless compiling failed before or a ``TorchDispatchMode`` (an op counter, a
        FLOP counter...) is active, which ``torch.compile`` does not support: then the same
        function runs eagerly, with the same result.
        """
        function = gated_write if name == "write" else normalised_prototypes
        if self.failed is not None or _get_current_dispatch_mode() is not None:
            return function(*args)
        compiled = self._compiled.get(name)
        if compiled is None:
            compiled = self._compiled[name] = torch.compile(function, fullgraph=True)
        try:
            return compiled(*args)
        except torch._dynamo.exc.TorchDynamoException as error:
            # Raised while tracing or compiling, before the graph ran: the state is untouched.
            self.failed = f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"
            warnings.warn(
                f"PrototypeMemoryBank(fused=True): torch.compile failed ({self.failed}); "
                "this memory runs its step eagerly from now on",
                RuntimeWarning,
                stacklevel=4,
            )
            return function(*args)

    def reset(self) -> None:
        """Drops the constants (after a device move)."""
        self._constants.clear()
