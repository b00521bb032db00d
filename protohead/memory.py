"""FIFO memory of (feature, label) pairs whose class means are t-ReX's OCM prototypes."""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import Tensor, nn

from protohead._memory_checks import check_label_form, state_problems
from protohead.distributed import all_gather_rows

__all__ = ["PrototypeMemoryBank"]

MemoryInit = Literal["random", "empty"]
OnInvalid = Literal["auto", "raise", "skip"]
_INITS = ("random", "empty")
_ON_INVALID = ("auto", "raise", "skip")


class PrototypeMemoryBank(nn.Module):
    """Ring buffer of features and labels whose L2-normalised class means act as class weights.

    This is the online class means (OCM) component of t-ReX (Sariyildiz et al., ICLR 2023,
    Eq. 2): an EMA teacher writes its (un-normalised) projector outputs into a FIFO memory,
    and the classifier's weight for class ``c`` is the normalised mean of the stored features
    labelled ``c``.

    Running per-class sums are kept in float64 next to the ring, so :meth:`update` and
    :meth:`prototypes` cost ``O(batch * dim + num_classes * dim)`` whatever ``size`` is. The
    sums are derived state: they are not saved in the ``state_dict`` and are recomputed
    exactly from the ring after loading (or on :meth:`resync`).

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

    features: Tensor
    labels: Tensor
    ptr: Tensor
    num_skipped_updates: Tensor
    _class_sums: Tensor
    _class_counts: Tensor

    def __init__(
        self,
        dim: int,
        size: int,
        num_classes: int,
        init: MemoryInit = "random",
        on_invalid: OnInvalid = "auto",
        generator: torch.Generator | None = None,
        equal_batches: bool = False,
    ) -> None:
        super().__init__()
        for name, value in (("dim", dim), ("size", size), ("num_classes", num_classes)):
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{name} must be an int, got {type(value).__name__}")
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if init not in _INITS:
            raise ValueError(f"init must be one of {_INITS}, got {init!r}")
        if on_invalid not in _ON_INVALID:
            raise ValueError(f"on_invalid must be one of {_ON_INVALID}, got {on_invalid!r}")
        if not isinstance(equal_batches, bool):
            raise TypeError(f"equal_batches must be a bool, got {type(equal_batches).__name__}")
        self.dim = dim
        self.size = size
        self.num_classes = num_classes
        self.init = init
        self.on_invalid = on_invalid
        self.equal_batches = equal_batches

        self.register_buffer("features", torch.zeros(size, dim), persistent=True)
        self.register_buffer("labels", torch.full((size,), -1, dtype=torch.long), persistent=True)
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long), persistent=True)
        self.register_buffer(
            "num_skipped_updates", torch.zeros((), dtype=torch.long), persistent=True
        )
        # One extra row collects empty slots (label -1), so updates need no masking.
        self.register_buffer(
            "_class_sums", torch.zeros(num_classes + 1, dim, dtype=torch.float64), persistent=False
        )
        self.register_buffer(
            "_class_counts", torch.zeros(num_classes + 1, dtype=torch.long), persistent=False
        )
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

    @torch.no_grad()
    def resync(self) -> None:
        """Recompute the running class sums and counts exactly from the ring."""
        buckets = self._buckets(self.labels)
        self._class_sums.zero_().index_add_(0, buckets, self.features.double())
        self._class_counts.zero_().index_add_(0, buckets, torch.ones_like(buckets))

    def _buckets(self, labels: Tensor) -> Tensor:
        return torch.where(labels < 0, torch.full_like(labels, self.num_classes), labels)

    @property
    def class_counts(self) -> Tensor:
        """Number of stored entries per class, ``(num_classes,)`` int64."""
        return self._class_counts[: self.num_classes]

    @property
    def num_filled(self) -> Tensor:
        """Number of non-empty slots, a 0-d int64 tensor (no host sync)."""
        return self.class_counts.sum()

    @torch.no_grad()
    def prototypes(self) -> Tensor:
        """L2-normalised class means; a class without entries gets a zero row.

        Shapes: ``-> (num_classes, dim)`` float32.
        """
        # Normalising in float32 halves the traffic of the float64 sums (error ~1e-7). The
        # mean and the sum point the same way, so normalising the sum skips a division, and a
        # class whose sum kept a rounding residue after its last entry left is zeroed by the
        # presence mask, folded into the per-row scale.
        sums = self._class_sums[: self.num_classes].float()
        scale = torch.linalg.vector_norm(sums, dim=1, keepdim=True).clamp_min_(1e-12)
        scale = scale.reciprocal_().mul_((self.class_counts > 0).unsqueeze(1))
        return sums.mul_(scale)

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
                self._raise_invalid(labels)

    def _validate_local(self, features: Tensor, labels: Tensor) -> None:
        if not isinstance(features, Tensor):
            raise TypeError(f"features must be a Tensor, got {type(features).__name__}")
        if features.ndim != 2 or features.shape[1] != self.dim:
            raise ValueError(
                f"features must have shape (b, {self.dim}), got {tuple(features.shape)}"
            )
        if not features.is_floating_point():
            raise TypeError(f"features must be floating point, got {features.dtype}")
        check_label_form(labels)
        if labels.shape[0] != features.shape[0]:
            raise ValueError(
                "features and labels must have the same batch size, got "
                f"{features.shape[0]} and {labels.shape[0]}"
            )

    def _raise_invalid(self, labels: Tensor) -> None:
        """Raises for an invalid batch: bad labels if there are any, else bad features."""
        bad = (labels < 0) | (labels >= self.num_classes)
        if bool(bad.any()):
            raise ValueError(
                f"labels must lie in [0, {self.num_classes}), got values "
                f"{labels[bad].unique()[:8].tolist()}; the memory was not modified"
            )
        raise ValueError("features must be finite, got NaN or inf; the memory was not modified")

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
        self._validate_local(features, labels)
        device = self.features.device
        features, labels = all_gather_rows(
            features.to(device=device, dtype=torch.float32),
            labels.to(device=device, dtype=torch.long),
            equal_rows=self.equal_batches,
        )
        if features.shape[0] == 0:
            return

        # Validity covers every gathered row, also those an oversized batch drops below: an
        # invalid batch is rejected (or skipped) as a whole, whatever its size.
        # x * 0 is 0 for every finite x and NaN for NaN/inf: one cheap pass instead of isfinite.
        lowest, highest = torch.aminmax(labels)
        valid = (features.mul(0).sum() == 0) & (lowest >= 0) & (highest < self.num_classes)
        raise_mode = self._mode() == "raise"
        if raise_mode and not bool(valid):
            self._raise_invalid(labels)
        if features.shape[0] > self.size:
            features, labels = features[-self.size :], labels[-self.size :]
        if raise_mode:
            self._write_checked(features, labels)
        else:
            self._write_gated(features, labels, valid)

    def _write_checked(self, features: Tensor, labels: Tensor) -> None:
        """Writes a validated batch with slice copies (``raise`` mode reads the host anyway)."""
        start, rows = int(self.ptr), features.shape[0]
        head = min(rows, self.size - start)  # rows before the ring wraps, then the rest at 0
        for src, dst in ((slice(0, head), start), (slice(head, rows), 0)):
            n = src.stop - src.start
            if n == 0:
                continue
            old_feats = self.features[dst : dst + n]
            old_buckets = self._buckets(self.labels[dst : dst + n])
            new_labels = labels[src]
            self._class_sums.index_add_(0, old_buckets, old_feats.double(), alpha=-1)
            self._class_sums.index_add_(0, new_labels, features[src].double())
            counts = torch.bincount(new_labels, minlength=self.num_classes + 1)
            self._class_counts.add_(
                counts.sub_(torch.bincount(old_buckets, minlength=counts.numel()))
            )
            old_feats.copy_(features[src])
            self.labels[dst : dst + n].copy_(new_labels)
        self.ptr.fill_((start + rows) % self.size)

    def _write_gated(self, features: Tensor, labels: Tensor, valid: Tensor) -> None:
        """Writes a batch with every write gated on ``valid`` on the device: no host sync."""
        device, rows = self.features.device, features.shape[0]
        slots = (self.ptr + torch.arange(rows, device=device)) % self.size
        old_feats = self.features[slots].double()
        old_buckets = self._buckets(self.labels[slots])
        # An invalid batch becomes a bit-exact no-op without reading `valid` on the host.
        weight = valid.long()
        new_feats = torch.where(valid, features, 0.0).double()
        new_buckets = torch.where(valid, labels, torch.zeros_like(labels))
        features = torch.where(valid, features, self.features[slots])
        labels = torch.where(valid, labels, self.labels[slots])
        self.num_skipped_updates.add_(1 - weight)
        self._class_sums.index_add_(0, old_buckets, old_feats * (-weight))
        self._class_sums.index_add_(0, new_buckets, new_feats * weight)
        ones = weight.expand(rows)
        self._class_counts.index_add_(0, old_buckets, -ones)
        self._class_counts.index_add_(0, new_buckets, ones)
        self.features.index_copy_(0, slots, features)
        self.labels.index_copy_(0, slots, labels)
        self.ptr.copy_((self.ptr + rows * weight) % self.size)

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

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, size={self.size}, num_classes={self.num_classes}, "
            f"init={self.init!r}, on_invalid={self.on_invalid!r}, "
            f"equal_batches={self.equal_batches}"
        )
