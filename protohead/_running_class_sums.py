"""Ring writes and running class sums of :class:`~protohead.memory.PrototypeMemoryBank` (internal).

The arithmetic of the memory, kept apart from its API, input checks and state handling.
Nothing here reads a value on the host but the check of :func:`normalise`'s float32-first
path, which only raise mode on the CPU asks for. A ``"skip"``-mode step (gated on the device)
dispatches a fixed sequence of ops whatever the values, so it never stalls and can be
captured in a CUDA graph after one warm-up call per batch size, which builds the constants.

Derived state (``k = num_classes``): ``sums (k + 1, dim)`` float64 and ``counts (k + 1, 1)``
int64 hold each class's sum and number of stored features. Row ``k``, the extra bucket,
collects the empty slots (label ``-1``) so that no update needs a mask; it is scratch
otherwise (a skipped batch parks its sum updates there), and its count is not kept: 0 after
a resync, minus one per empty slot written over since, so it never counts as a class with
entries. ``prototypes (k + 1, dim)`` float32 caches the normalised sums; its row ``k`` is
meaningless.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

# Clamp for the norms of all-zero rows (0 / TINY = 0): any non-zero float64 norm is larger,
# so every class with entries gets a unit row whatever the scale of its features.
TINY = torch.finfo(torch.float64).tiny
# Float32 norms of the cast sums in this range make float32 normalisation as accurate as its
# result: entries stay below 2**60 (no overflow; their squares sum below float32's max), and
# the squares that underflow weigh less than 2**-40 of the squared norm.
FLOAT32_NORMS = (2.0**-50, 2.0**60)


class BatchConstants(NamedTuple):
    """Per-batch-size tensors that every write would otherwise rebuild (``b`` rows)."""

    offsets: Tensor  # (b,) int64: 0 .. b-1, the slots after the write pointer
    count_signs: Tensor  # (2b, 1) int64: -1 for the b evicted rows, +1 for the b new ones
    extra_bucket: Tensor  # () int64: k
    deltas: Tensor  # (2b, dim) float64 scratch: -evicted rows, then new rows
    evicted_deltas: Tensor  # deltas[:b]
    new_deltas: Tensor  # deltas[b:]
    evicted: Tensor  # (b, dim) float32 scratch: the rows read from the ring
    batch: Tensor  # (b, dim) float32 scratch: the rows written to the ring
    batch_units: Tensor  # row_units(batch)
    normalised: Tensor  # (2b, dim) float32 scratch: renormalised sums
    normalised_units: Tensor  # row_units(normalised)


def batch_constants(
    cache: dict[int, BatchConstants], rows: int, dim: int, num_classes: int, device: torch.device
) -> BatchConstants:
    """The :class:`BatchConstants` of a batch of ``rows`` rows, built once into ``cache``."""
    consts = cache.get(rows)
    if consts is not None:
        return consts
    if len(cache) >= 8:  # a few batch sizes per run (the last batch of an epoch...): bound it
        cache.clear()
    count_signs = torch.ones(2 * rows, 1, dtype=torch.long, device=device)
    count_signs[:rows] = -1
    batch = torch.empty(rows, dim, device=device)
    normalised = torch.empty(2 * rows, dim, device=device)
    deltas = torch.empty(2 * rows, dim, dtype=torch.float64, device=device)
    cache[rows] = consts = BatchConstants(
        offsets=torch.arange(rows, device=device),
        count_signs=count_signs,
        extra_bucket=torch.tensor(num_classes, device=device),
        deltas=deltas,
        evicted_deltas=deltas[:rows],
        new_deltas=deltas[rows:],
        evicted=torch.empty(rows, dim, device=device),
        batch=batch,
        batch_units=row_units(batch),
        normalised=normalised,
        normalised_units=row_units(normalised),
    )
    return consts


def row_units(tensor: Tensor) -> Tensor:
    """A 2-d float32 CPU tensor seen as 16-byte units along its rows, when its layout allows.

    ``index_copy_``'s CPU kernel moves one element at a time, so copying rows as complex128
    units moves 4 times fewer and runs about 5 times faster, bit for bit. Other tensors (and
    any tensor on an accelerator, where the kernel is fast) come back unchanged.
    """
    if (
        tensor.is_cpu
        and tensor.dtype == torch.float32
        and tensor.ndim == 2
        and tensor.stride(1) == 1
        and tensor.shape[1] % 4 == 0
        and tensor.stride(0) % 4 == 0
        and tensor.storage_offset() % 4 == 0
    ):
        return tensor.view(torch.complex128)
    return tensor


def enqueue(
    ring: Tensor,
    ring_units: Tensor,
    ring_labels: Tensor,
    ptr: Tensor,
    sums: Tensor,
    counts: Tensor,
    features: Tensor,
    labels: Tensor,
    consts: BatchConstants,
    valid: Tensor | None,
    start: int | None = None,
    new_deltas_ready: bool = False,
) -> Tensor:
    """Writes a batch at ``ptr`` over the oldest rows and moves the class sums and counts.

    ``valid`` (a 0-d bool tensor) gates every write on the device: when it is false, the
    ring, the pointer and every class's sum and count stay bit-identical. ``None`` means the
    batch is known to be valid (checked on the host), which saves the gating; then
    ``start``, the pointer's value if the host read it, lets a batch that does not wrap
    around the ring be read and written as contiguous slices. ``new_deltas_ready`` says that
    ``consts.new_deltas`` already holds ``features`` in float64 (copied for the check); with
    a ``valid`` gate they need no gating, since a skipped batch's buckets are all the extra
    one (whose sum is scratch and may then hold NaN or inf).

    Shapes: ``features (b, dim)`` float32, ``labels (b,)`` int64 with ``b <= ring rows``;
    ``ring_units`` is ``row_units(ring)`` ``-> (2b,)`` int64, the buckets (rows of ``sums``)
    that changed: those of the evicted rows, then those of the new rows.
    """
    size, rows, extra_bucket = ring.shape[0], features.shape[0], sums.shape[0] - 1
    if valid is None and start is not None and start + rows <= size:
        old_features, old_labels = ring[start : start + rows], ring_labels[start : start + rows]
        buckets = torch.cat([old_labels, labels]).remainder_(extra_bucket + 1)  # -1 -> extra
        torch.mul(old_features, -1, out=consts.evicted_deltas)  # before the rows go
        old_features.copy_(features)
        old_labels.copy_(labels)
        ptr.fill_((start + rows) % size)
    else:
        slots = consts.offsets.add(ptr).remainder_(size)
        old_features = torch.index_select(ring, 0, slots, out=consts.evicted)
        old_labels = ring_labels.index_select(0, slots)
        buckets = torch.cat([old_labels, labels]).remainder_(extra_bucket + 1)  # -1 -> extra
        if valid is not None:
            # A skipped batch writes the evicted rows back over themselves and parks its sum
            # and count updates in the extra bucket, so every class stays bit-identical.
            features = torch.where(valid, features, old_features, out=consts.batch)
            labels = torch.where(valid, labels, old_labels)
            buckets = torch.where(valid, buckets, consts.extra_bucket)
            ptr.add_(valid, alpha=rows)
        else:
            ptr.add_(rows)
        ptr.remainder_(size)
        torch.mul(old_features, -1, out=consts.evicted_deltas)
        if ring_units.dtype == torch.complex128:
            if valid is None:
                features = consts.batch.copy_(features)
            ring_units.index_copy_(0, slots, consts.batch_units)
        else:
            ring_units.index_copy_(0, slots, features)
        ring_labels.index_copy_(0, slots, labels)
    # One scatter-add moves each class sum by (new rows - evicted rows); the float64 deltas
    # are written in two halves (a concatenation into float64 converts twice as slowly).
    if not new_deltas_ready:
        consts.new_deltas.copy_(features)
    sums.index_add_(0, buckets, consts.deltas)
    counts.index_add_(0, buckets, consts.count_signs)
    return buckets


def normalise(
    rows: Tensor,
    counts: Tensor,
    out: Tensor | None = None,
    *,
    inplace: bool = False,
    float32_first: bool = False,
) -> Tensor:
    """Rows divided by their norms, zero rows where the count is 0, as float32 (into ``out``).

    Exact path: norms and scaling in float64, then the cast; float64 norms neither overflow
    nor underflow for sums of float32 features, so every class with entries gets a unit row
    whatever its scale (``inplace`` scales ``rows``, a scratch copy the caller owns). With
    ``float32_first`` (for the CPU's raise mode, which reads the host anyway) the rows are
    cast first and normalised in float32, which moves half the bytes, if every non-empty
    row's float32 norm lies in ``FLOAT32_NORMS`` (read on the host): then the cast cannot
    have overflowed and no square under- or overflowed enough to matter, so the result agrees
    with the exact path to float32 rounding. Otherwise it falls back to the exact path.

    Shapes: ``rows (n, dim)`` float64 sums, ``counts (n, 1)`` int64 ``-> (n, dim)`` float32.
    """
    # 1 for classes with entries, else 0: zeroes empty classes' rounding residues (and the
    # extra bucket, whose count is <= 0).
    present = counts.clamp(0, 1)
    if float32_first:
        cast = rows.float() if out is None else out.copy_(rows)
        norms = torch.linalg.vector_norm(cast, dim=1, keepdim=True)
        if torch.equal(norms.clamp(*FLOAT32_NORMS).mul_(present), norms.mul(present)):
            # (The clamp only reaches empty rows, whose norms may be 0.)
            return cast.mul_(torch.div(present, norms.clamp_min_(FLOAT32_NORMS[0])))
    norms = torch.linalg.vector_norm(rows, dim=1, keepdim=True).clamp_min_(TINY)
    scale = torch.div(present, norms)
    scaled = rows.mul_(scale) if inplace else rows * scale
    return scaled.float() if out is None else out.copy_(scaled)


def normalise_rows(
    sums: Tensor,
    counts: Tensor,
    buckets: Tensor,
    consts: BatchConstants,
    out_units: Tensor,
    float32_first: bool = False,
) -> None:
    """Writes the normalised sums of rows ``buckets`` into the float32 cache.

    The same bits as :func:`normalise` of all the sums at those rows (with the same
    ``float32_first`` and outcome of its check), in ``O(len(buckets) * dim)`` whatever the
    number of classes. ``out_units`` is ``row_units(cache)``.
    """
    # The deltas are spent (added to the sums): their scratch holds the gathered rows.
    rows = torch.index_select(sums, 0, buckets, out=consts.deltas)
    present = counts.index_select(0, buckets)
    normalise(rows, present, consts.normalised, inplace=True, float32_first=float32_first)
    # Repeated buckets write the same row, so the order of their writes does not matter.
    source = consts.normalised_units if out_units.dtype == torch.complex128 else consts.normalised
    out_units.index_copy_(0, buckets, source)
