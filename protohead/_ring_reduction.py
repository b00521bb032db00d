"""The large-batch step of :class:`~protohead.memory.PrototypeMemoryBank` (internal).

The running float64 sums make a step cost ``O(b * dim)``: the ``b`` evicted rows are
subtracted and the ``b`` new ones added, each converted to float64. When a batch holds a good
share of the memory (``b >= size / 8``) those ``2b`` float64 rows cost more than summing the
whole ring again in float32, which is what this step does, for raise mode on the CPU: it
reduces the ring as it will be after the write (the kept rows plus the batch) into the
prototype table, normalises it in float32 and only then writes the batch. The float64 sums
are left stale; the memory rebuilds them from the ring (:meth:`resync`) before it next needs
them. Class counts are integers and are kept current on this path too.

The check that a float32 sum is good enough is the one of
:func:`~protohead._running_class_sums.normalise`'s float32-first path: every class with
entries must get a float32 norm well inside float32's range. The same read also catches
non-finite features, since a NaN or inf in the batch makes its class's norm NaN or inf. When
the check fails the step writes nothing and returns ``False``; the caller then judges the
batch exactly (raising for non-finite features) and takes the float64 path.
"""

from __future__ import annotations

import torch
from torch import Tensor

from protohead._running_class_sums import FLOAT32_NORMS

__all__ = ["REREDUCE_SHARE", "rereduce", "ring_prototypes"]

# A batch of at least size / REREDUCE_SHARE rows takes this path. The float64 update costs
# about 6 float32 row-passes per batch row (2b rows converted, scattered and read), the
# re-reduction about one per ring row: measured on one CPU thread (dim 256, 1,000 classes,
# size 8192), the two cross between b = 512 and b = 1,024.
REREDUCE_SHARE = 8

Spans = list[tuple[int, int]]


def rereduce(
    ring: Tensor,
    ring_labels: Tensor,
    counts: Tensor,
    start: int,
    features: Tensor,
    labels: Tensor,
) -> Tensor | None:
    """Writes ``features``/``labels`` at slot ``start``; returns the new class means.

    The result holds every class's L2-normalised float32 sum over the ring as it is after
    the write (zero rows for classes without entries), summed from the oldest row to the
    newest, so it has the bits that :func:`ring_prototypes` gives for the new state.
    ``counts`` moves as in :func:`~protohead._running_class_sums.enqueue`. Returns ``None``,
    with the ring, labels and counts untouched, when float32 cannot vouch for a class's
    norm (non-finite features among them).

    Labels must already lie in ``[0, num_classes)``; the caller moves the write pointer.

    Shapes: ``ring (size, dim)`` float32, ``ring_labels (size,)`` int64 (``-1``: empty),
    ``counts (k + 1, 1)`` int64, ``features (b, dim)`` float32 with ``b <= size``,
    ``labels (b,)`` int64 ``-> (k, dim)`` float32.
    """
    size, rows, buckets = ring.shape[0], features.shape[0], counts.shape[0]
    stop = start + rows
    # The slots the batch takes and the rows it keeps (oldest first), in at most two slices.
    if stop <= size:
        written, kept = [(start, stop)], [(stop, size), (0, start)]
    else:
        written, kept = [(start, size), (0, stop - size)], [(stop - size, start)]
    table = _sums(ring, ring_labels, kept, buckets)
    table.index_add_(0, labels, features)
    evicted = torch.cat([ring_labels[low:high] for low, high in written]).remainder_(buckets)
    moved = torch.bincount(labels, minlength=buckets) - torch.bincount(evicted, minlength=buckets)
    if not _normalise_checked(table, counts[:, 0].add(moved)):
        return None
    offset = 0
    for low, high in written:
        ring[low:high].copy_(features[offset : offset + high - low])
        ring_labels[low:high].copy_(labels[offset : offset + high - low])
        offset += high - low
    counts[:, 0].add_(moved)
    return table[: buckets - 1]


def ring_prototypes(ring: Tensor, ring_labels: Tensor, counts: Tensor, ptr: int) -> Tensor | None:
    """The class means of the ring as :func:`rereduce` computes them (the same bits), or
    ``None`` when float32 cannot vouch for them. ``ptr`` is the next write slot: the oldest
    row. Shapes as :func:`rereduce`."""
    table = _sums(ring, ring_labels, [(ptr, ring.shape[0]), (0, ptr)], counts.shape[0])
    return table[: counts.shape[0] - 1] if _normalise_checked(table, counts[:, 0]) else None


def _sums(ring: Tensor, ring_labels: Tensor, spans: Spans, buckets: int) -> Tensor:
    """Float32 sums of the rows in ``spans`` (in order) by class; ``-1`` labels go to the
    extra bucket. ``-> (buckets, dim)``."""
    table = torch.zeros(buckets, ring.shape[1], device=ring.device)
    for low, high in spans:
        if high > low:
            table.index_add_(0, ring_labels[low:high].remainder(buckets), ring[low:high])
    return table


def _normalise_checked(table: Tensor, counts: Tensor) -> bool:
    """Normalises the rows of ``table`` in place when every class with entries (``counts``
    ``(k + 1,)`` above 0) has a float32 norm in ``FLOAT32_NORMS``; else returns ``False``."""
    present = counts.clamp(0, 1).unsqueeze_(1)
    norms = torch.linalg.vector_norm(table, dim=1, keepdim=True)
    # The clamp only reaches empty rows (norm 0 allowed) and rows float32 cannot vouch for;
    # NaN compares unequal, so a non-finite feature fails the check too.
    if not torch.equal(norms.clamp(*FLOAT32_NORMS).mul_(present), norms.mul(present)):
        return False
    table.mul_(torch.div(present, norms.clamp_min_(FLOAT32_NORMS[0])))
    return True
