"""FIFO memory of (feature, label) pairs whose class means are t-ReX's OCM prototypes."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from protohead import _validation as check
from protohead._fused_memory_step import FusedStep
from protohead._memory_checks import (
    batch_validity,
    check_label_form,
    check_update_inputs,
    raise_invalid,
)
from protohead._memory_state import MemoryState
from protohead._ring_reduction import REREDUCE_SHARE, rereduce, ring_prototypes
from protohead._running_class_sums import (
    batch_constants,
    enqueue,
    normalise,
    normalise_rows,
)
from protohead.distributed import all_gather_rows, get_world_size

__all__ = ["PrototypeMemoryBank"]

MemoryInit = Literal["random", "empty"]
OnInvalid = Literal["auto", "raise", "skip"]
_INITS = ("random", "empty")
_ON_INVALID = ("auto", "raise", "skip")


class PrototypeMemoryBank(MemoryState):
    """Ring buffer of features and labels whose L2-normalised class means act as class weights.

    This is the online class means (OCM) component of t-ReX (Sariyildiz et al., ICLR 2023,
    Eq. 2): an EMA teacher writes its (un-normalised) projector outputs into a FIFO memory,
    and the classifier's weight for class ``c`` is the normalised mean of the stored features
    labelled ``c``.

    **Cost.** Running per-class sums and counts are kept in float64 next to the ring: an
    update subtracts the ``b`` overwritten rows and adds the ``b`` new ones, and renormalises
    only the classes whose sums changed (at most ``2b``, evicted rows' classes included),
    so a step costs ``O(b * dim + C_changed * dim)`` whatever ``size`` is, plus one copy of
    the ``(num_classes, dim)`` result in :meth:`prototypes`. With few classes (at most
    ``2b``, or ``4b`` with float32 first, below) :meth:`prototypes` renormalises them all
    instead, which is then cheaper, with the same result. Norms are taken in float64, so
    features of any finite scale give unit rows. Float32 first: in raise mode on the CPU, a
    table of at least 32768 entries is normalised in float32 when every class sum's float32
    norm lies well inside float32's range (checked on the host), else in float64; the two
    agree to float32 rounding. Large batches: in raise mode on the CPU, a batch of at least
    ``size / 8`` rows would cost more in float64 deltas than summing the whole ring again, so
    the update re-reduces the ring (as it will be after the write) in float32 instead, checks
    the result as the float32-first path does (a non-finite feature fails the check, and is
    then reported as usual) and only then writes; the prototypes then agree with the float64
    sums to float32 summation error, and the float64 sums are rebuilt from the ring when a
    smaller batch comes. The sums are derived state: they are not saved in the
    ``state_dict`` and are recomputed exactly from the ring after loading (or on
    :meth:`resync`). A ``"skip"``-mode update (below) dispatches a fixed sequence of ops,
    none of which waits for the device, so it can be captured in a CUDA graph after one
    warm-up call per batch size; a ``"raise"``-mode update reads the check's result and the
    write pointer on the host in one go, and writes a batch that does not wrap around the
    ring as contiguous slices.

    **Initial state.** ``init="random"`` (the default) fills the ring with standard-normal
    features and uniformly random labels, as the paper's reference implementation does: every
    class then has a (random) prototype from the first step, so all classes receive gradient
    at once, and the random entries are flushed out after ``size`` rows of real features.
    ``init="empty"`` starts with no entries; a class without entries has a zero prototype
    (logit 0) until the teacher writes one, which suits short runs or memories much smaller
    than the number of classes.

    **Invalid updates.** Labels outside ``[0, num_classes)`` or non-finite features are
    checked on the (gathered) batch before anything is written. With ``on_invalid="raise"``
    a ``ValueError`` is raised and the memory is untouched. Raising needs the check's result
    on the host, which on an accelerator would stall the step, so ``on_invalid="skip"`` gates
    the write on the device instead: an invalid batch leaves the memory untouched and
    increments :attr:`num_skipped_updates`. ``"auto"`` (default) raises for CPU tensors and
    skips on accelerators.

    **Distributed.** When ``torch.distributed`` is initialised, :meth:`update` gathers the
    features and labels of all ranks (which may hold different batch sizes) in rank order
    before enqueueing them, so every rank holds the same memory. Sizing that gather reads the
    ranks' row counts on the host, the one device sync of a distributed update, unless
    ``equal_batches=True`` promises equal row counts on every rank.

    Buffers in the ``state_dict``: ``features`` ``(size, dim)`` float32, ``labels``
    ``(size,)`` int64 (``-1`` marks an empty slot), ``ptr`` (next write slot) and
    ``num_skipped_updates``. ``load_state_dict`` checks all of them (shapes, dtypes, label and
    pointer ranges) before copying any, so a rejected state leaves the memory as it was.

    **Casts.** Module casts (``.half()``, ``.bfloat16()``, ``.float()``, ``.double()``,
    ``.to(dtype)``, also through a parent module such as :class:`~protohead.TReX`) leave
    every buffer's dtype alone: the ring stays float32 (features are stored as float32
    whatever the input dtype, and casting it would round stored features), the sums
    float64, labels and counters int64. Device moves apply as usual; :meth:`prototypes`
    returns float32, which the classifier casts to its input's dtype.

    Args:
        dim: Feature dimension, >= 1.
        size: Number of (feature, label) slots, >= 1. The paper uses 8192.
        num_classes: Number of classes, >= 1.
        init: ``"random"`` or ``"empty"``, see above.
        on_invalid: ``"auto"``, ``"raise"`` or ``"skip"``, see above.
        generator: Optional generator for the random initial state.
        equal_batches: Every rank passes the same number of rows to every :meth:`update`
            (a ``DistributedSampler`` with ``drop_last=True``): the distributed gather skips
            the exchange of row counts, so a ``"skip"``-mode update never syncs the host (see
            :func:`~protohead.distributed.all_gather_rows`). No effect in a single process.
        fused: Run :meth:`update` and :meth:`prototypes` as ``torch.compile``-d functions:
            about a dozen fused loops per step instead of some thirty dispatched ops (kernel
            launches on an accelerator), no host sync in skip mode, the same state as the
            eager path. Prototypes are then renormalised in full on every call (one fused
            pass over the ``(num_classes, dim)`` sums), so on the CPU with many classes the
            eager cache can be cheaper. Each new batch size compiles once (seconds); needs a
            C++ compiler on the CPU or Triton on a GPU; if compiling fails the memory
            warns once (``RuntimeWarning``) and runs the same step eagerly.

    Raises:
        TypeError: If a size is not an int.
        ValueError: If a size is < 1 or ``init``/``on_invalid`` is unknown.

    Example:
        >>> bank = PrototypeMemoryBank(dim=4, size=6, num_classes=3, init="empty")
        >>> bank.update(torch.tensor([[1.0, 0, 0, 0], [0, 2.0, 0, 0]]), torch.tensor([0, 2]))
        >>> bank.prototypes()
        tensor([[1., 0., 0., 0.],
                [0., 0., 0., 0.],
                [0., 1., 0., 0.]])
        >>> bank.class_counts.tolist()
        [1, 0, 1]
    """

    def __init__(
        self,
        dim: int,
        size: int,
        num_classes: int,
        init: MemoryInit = "random",
        on_invalid: OnInvalid = "auto",
        generator: torch.Generator | None = None,
        equal_batches: bool = False,
        fused: bool = False,
    ) -> None:
        super().__init__()
        for name, value in (("dim", dim), ("size", size), ("num_classes", num_classes)):
            check.integer(name, value, 1)
        if init not in _INITS:
            raise ValueError(f"init must be one of {_INITS}, got {init!r}")
        if on_invalid not in _ON_INVALID:
            raise ValueError(f"on_invalid must be one of {_ON_INVALID}, got {on_invalid!r}")
        check.boolean("equal_batches", equal_batches)
        check.boolean("fused", fused)
        self.dim = dim
        self.size = size
        self.num_classes = num_classes
        self.init = init
        self.on_invalid = on_invalid
        self.equal_batches = equal_batches
        self.fused = fused
        self._fused_step = FusedStep() if fused else None

        self.register_buffer("features", torch.zeros(size, dim), persistent=True)
        self.register_buffer("labels", torch.full((size,), -1, dtype=torch.long), persistent=True)
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long), persistent=True)
        self.register_buffer(
            "num_skipped_updates", torch.zeros((), dtype=torch.long), persistent=True
        )
        self._add_derived_state()
        self.reset(generator=generator)

    @torch.no_grad()
    def reset(self, generator: torch.Generator | None = None) -> None:
        """Return to the initial state chosen by ``init``."""
        self.ptr.zero_()
        self.num_skipped_updates.zero_()
        if self.init == "random":
            device = self.features.device
            feats = torch.randn(self.size, self.dim, generator=generator)
            labels = torch.randint(0, self.num_classes, (self.size,), generator=generator)
            self.features.copy_(feats.to(device))
            self.labels.copy_(labels.to(device))
        else:
            self.features.zero_()
            self.labels.fill_(-1)
        self.resync()

    @property
    def class_counts(self) -> Tensor:
        """Number of stored entries per class, ``(num_classes,)`` int64."""
        return self._count_rows[:, 0]

    @property
    def num_filled(self) -> Tensor:
        """Number of non-empty slots, a 0-d int64 tensor (no host sync)."""
        return self.class_counts.sum()

    @torch.no_grad()
    def prototypes(self) -> Tensor:
        """L2-normalised class means; a class without entries gets a zero row.

        Unit rows for features of any finite float32 scale (see the class docstring). With
        many classes (more than 2 or 4 times the rows of the last update), :meth:`update`
        keeps a cache current by renormalising only the classes it touched, and a call
        costs one copy of the result; with few classes, a call normalises them all. Both
        give the same rows. After a large-batch update (class docstring) the first call
        returns the table that the update computed, and later calls re-reduce the ring to
        the same bits.

        Shapes: ``-> (num_classes, dim)`` float32, a new tensor on every call.
        """
        if self._fused_step is not None:
            self._fresh_sums()
            protos: Tensor = self._fused_step.run(
                "prototypes", self._class_sums, self._class_counts
            )
            return protos
        if self._handover is not None:  # computed by the last update: no copy needed
            protos, self._handover = self._handover, None
            return protos
        if self._sums_stale:
            fresh = ring_prototypes(self.features, self.labels, self._class_counts, int(self.ptr))
            if fresh is not None:
                return fresh
        if self._cache_valid:
            return self._prototype_rows.clone()
        self._fresh_sums()
        return normalise(self._sum_rows, self._count_rows, float32_first=self._float32_first())

    def _float32_first(self) -> bool:
        """Whether normalisation tries float32 first, reading a check on the host: in raise
        mode on the CPU, for prototype tables big enough that saving a float64 pass beats
        the check's few ops, and not while torch.compile traces (a host read breaks graphs).
        """
        big = self.num_classes * self.dim >= 1 << 15
        compiling = torch.compiler.is_compiling()
        return big and self.features.is_cpu and self._mode() == "raise" and not compiling

    @torch.no_grad()
    def entries(self) -> tuple[Tensor, Tensor]:
        """Stored pairs from oldest to newest, empty slots excluded.

        Shapes: ``-> (n, dim), (n,)``. Reads the fill state, so it syncs with the device;
        meant for inspection and tests, not for the training step.
        """
        order = (torch.arange(self.size, device=self.ptr.device) + self.ptr) % self.size
        feats, labels = self.features[order], self.labels[order]
        keep = labels >= 0
        return feats[keep], labels[keep]

    def _mode(self) -> str:
        """``on_invalid`` with ``"auto"`` resolved for the memory's device."""
        if self.on_invalid != "auto":
            return self.on_invalid
        return "raise" if self.features.device.type == "cpu" else "skip"

    def check_labels(self, labels: Tensor) -> None:
        """Check ``labels`` as :meth:`update` will, without touching any state.

        Lets a caller (e.g. :class:`~protohead.TReX`) reject a bad step before it changes
        other state. Type, dtype and shape are always checked, without a host sync. The range
        ``[0, num_classes)`` is checked only when ``on_invalid`` resolves to ``"raise"``
        (which reads the host anyway); in ``"skip"`` mode :meth:`update` skips such a batch on
        the device instead.

        Raises:
            TypeError: If ``labels`` is not an integer tensor.
            ValueError: If ``labels`` is not 1-d, or (``"raise"`` mode) a label is out of range.
        """
        check_label_form(labels)
        if self._mode() == "raise" and labels.numel() > 0:
            lowest, highest = torch.aminmax(labels)
            if not bool((lowest >= 0) & (highest < self.num_classes)):
                raise_invalid(labels, self.num_classes)

    @torch.no_grad()
    def update(self, features: Tensor, labels: Tensor) -> None:
        """Enqueue ``features`` with their ``labels``, overwriting the oldest slots.

        Runs without grad. Features are stored as float32 whatever their dtype. If one
        update (after the distributed gather) holds more rows than ``size``, only the newest
        ``size`` rows are kept; validity is still judged on all rows.

        Shapes: ``features (b, dim)``, ``labels (b,)``; ``b`` may differ across ranks.

        Raises:
            TypeError: Wrong tensor types or dtypes.
            ValueError: Wrong shapes; with ``on_invalid`` resolving to ``"raise"`` also
                labels outside ``[0, num_classes)`` or non-finite features.
        """
        check_update_inputs(features, labels, self.dim)
        device = self.features.device
        features = features.to(device=device, dtype=torch.float32)
        labels = labels.to(device=device, dtype=torch.long)
        if get_world_size() > 1:  # a single process needs no gather (and no detach: no_grad)
            features, labels = all_gather_rows(features, labels, equal_rows=self.equal_batches)
        rows = features.shape[0]
        if rows == 0:
            return
        self._handover = None
        # (A batch larger than the ring takes the eager path, which judges validity on the
        # rows it then drops too.)
        if self._fused_step is not None and rows <= self.size:
            self._update_fused(features, labels)
            return

        raising = self._mode() == "raise"
        if raising and self._rereduces(rows) and self._update_rereduced(features, labels):
            return

        # Validity covers every gathered row, also those an oversized batch drops below: an
        # invalid batch is rejected (or skipped) as a whole, whatever its size.
        consts, checked, new_deltas_ready = None, features, False
        if rows <= self.size:
            # The sums need the new rows in float64 anyway: copied first, they give the check
            # its float64 sum without converting the batch a second time. (Skip mode adds
            # them ungated: a skipped batch's sum updates go to the scratch bucket.)
            consts = batch_constants(
                self._batch_constants, rows, self.dim, self.num_classes, device
            )
            checked, new_deltas_ready = consts.new_deltas.copy_(features), True
        valid = batch_validity(checked, labels, self.num_classes)
        gate: Tensor | None = valid
        start = None
        if raising:
            # One host read gives the check's result and where the batch goes (-1: invalid).
            start = int(torch.where(valid, self.ptr, -1))
            if start < 0:
                raise_invalid(labels, self.num_classes)
            gate = None  # known valid: write ungated
        else:
            self.num_skipped_updates.add_(~valid)
        if rows > self.size:
            features, labels = features[-self.size :], labels[-self.size :]
            rows = self.size
        if consts is None:
            consts = batch_constants(
                self._batch_constants, rows, self.dim, self.num_classes, device
            )
        if self._ring_units.data_ptr() != self.features.data_ptr():
            self._link_views()  # load_state_dict(assign=True) replaced the ring
        self._fresh_sums()
        sums, counts = self._class_sums, self._class_counts
        ring = (self.features, self._ring_units, self.labels, self.ptr)
        buckets = enqueue(
            *ring, sums, counts, features, labels, consts, gate, start, new_deltas_ready
        )
        # The update changed the classes of 2 * rows buckets. Renormalising just those into a
        # cache pays off when they are few next to the classes: a touched row costs about
        # one (float64) or two (float32 first) rows of a full renormalisation, and the cache
        # a copy. Else prototypes() renormalises them all when asked. Same rows either way.
        fast = self._float32_first()
        if (4 if fast else 2) * rows >= self.num_classes:
            if self._cache_valid:
                self._cache_valid = False
        elif self._cache_valid:
            normalise_rows(sums, counts, buckets, consts, self._prototype_units, fast)
        else:
            normalise(self._sum_rows, self._count_rows, self._prototype_rows, float32_first=fast)
            self._cache_valid = True

    def _rereduces(self, rows: int) -> bool:
        """Whether a raise-mode update of ``rows`` rows re-reduces the ring in float32."""
        share = rows * REREDUCE_SHARE >= self.size and rows <= self.size
        return share and self.features.is_cpu and not torch.compiler.is_compiling()

    def _update_rereduced(self, features: Tensor, labels: Tensor) -> bool:
        """The large-batch step (see ``_ring_reduction``); ``False`` if it wrote nothing
        because float32 could not vouch for the result (then the float64 path judges)."""
        self.check_labels(labels)
        start = int(self.ptr)
        table = rereduce(self.features, self.labels, self._class_counts, start, features, labels)
        if table is None:
            return False
        self.ptr.fill_((start + features.shape[0]) % self.size)
        self._sums_stale, self._cache_valid, self._handover = True, False, table
        return True

    def _update_fused(self, features: Tensor, labels: Tensor) -> None:
        """The update through the fused step (see ``_fused_memory_step``)."""
        assert self._fused_step is not None
        self._fresh_sums()
        offsets, count_signs = self._fused_step.constants(features.shape[0], features.device)
        raising = self._mode() == "raise"
        ring = (self.features, self.labels, self.ptr, self.num_skipped_updates)
        sums = (self._class_sums, self._class_counts)
        valid = self._fused_step.run(
            "write", *ring, *sums, features, labels, offsets, count_signs, not raising
        )
        self._cache_valid = False  # prototypes() renormalises (fused) from the sums
        # Raise mode: the write was gated on the device, so an invalid batch left the memory
        # untouched; the one host read comes after it.
        if raising and not bool(valid):
            raise_invalid(labels, self.num_classes)

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, size={self.size}, num_classes={self.num_classes}, "
            f"init={self.init!r}, on_invalid={self.on_invalid!r}, "
            f"equal_batches={self.equal_batches}, fused={self.fused}"
        )
