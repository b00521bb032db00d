"""Input checks of a :class:`~protohead.TReX` step, run once before any state changes (internal).

A training step changes state in several places (student and teacher BatchNorm statistics, the
teacher's EMA weights and update count, the memory), so :func:`check_step` judges the whole
input up front and the model's blocks are then called on the checked input without checking it
again. Two kinds of checks:

* Form (types, shapes, sizes): read from tensor metadata, free, always run.
* Values (labels in range, finite pixels): need the values on the host, i.e. a device sync.
  They run only when the memory's ``on_invalid`` resolves to ``"raise"``, as one fused
  reduction and one host read. In ``"skip"`` mode the step stays sync-free and the memory
  skips an invalid batch on the device instead.

With several processes in ``"raise"`` mode the decision is collective: every rank contributes
a problem code with one small all-gather, so all ranks raise (or go on) together and the
memory's gather, a collective as well, never pairs one rank's step with another's next step.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from protohead._memory_checks import is_integer
from protohead.distributed import all_gather_scalar, get_rank, get_world_size
from protohead.encoder import group_by_resolution

# Problem codes exchanged between ranks (0: fine). Small ints, so one all-gather carries them.
_FORM, _LABELS, _CROPS = 1, 2, 3
_REASONS = {
    _FORM: "bad crop or label shapes/types",
    _LABELS: "labels out of range",
    _CROPS: "non-finite crops",
}


def check_step(
    crops: Sequence[Tensor],
    labels: Tensor | None,
    *,
    num_classes: int,
    num_global_crops: int,
    training: bool,
    update_memory: bool,
    raise_mode: bool,
    flag_device: torch.device,
) -> list[tuple[int, int]]:
    """Check a forward's input; returns ``group_by_resolution(crops)``.

    Args:
        crops: The crop list, global crops first.
        labels: The labels, or ``None``.
        num_classes: Valid labels lie in ``[0, num_classes)``.
        num_global_crops: Leading crops that the teacher encodes.
        training: The model is in training mode (the forward changes BatchNorm statistics).
        update_memory: The step feeds the memory (training, labels given, OCM on).
        raise_mode: The memory's ``on_invalid`` resolves to ``"raise"``: values are checked.
        flag_device: Device of the problem code (the memory's: NCCL needs CUDA tensors).

    Raises:
        TypeError, ValueError: Naming the argument, the value and what is allowed. With several
            processes in ``raise_mode`` while feeding the memory, every rank raises a
            ``ValueError`` naming the ranks with bad input.
    """
    collective = update_memory and raise_mode and get_world_size() > 1
    try:
        runs = _check_form(crops, labels, num_global_crops, training, update_memory)
    except (TypeError, ValueError) as err:
        if not collective:
            raise
        _agree(torch.tensor(_FORM, device=flag_device), err)
        raise  # not reached: this rank's code is not 0, so _agree raised on every rank
    if not (training and raise_mode):
        return runs
    code = _value_code(crops, labels if update_memory else None, num_classes, flag_device)
    if collective:
        _agree(code, None, crops, labels, num_classes)
    elif int(code) != 0:  # the one host read of a raise-mode step
        raise _value_error(crops, labels if update_memory else None, num_classes)
    return runs


def _check_form(
    crops: Sequence[Tensor],
    labels: Tensor | None,
    num_global_crops: int,
    training: bool,
    update_memory: bool,
) -> list[tuple[int, int]]:
    """Types and shapes only: reads no tensor value, so it costs no device sync."""
    runs = group_by_resolution(crops)
    batch = crops[0].shape[0]
    if labels is not None:
        if not isinstance(labels, Tensor):
            raise TypeError(f"labels must be a Tensor, got {type(labels).__name__}")
        if labels.shape != (batch,):
            raise ValueError(f"labels must have shape ({batch},), got {tuple(labels.shape)}")
        if not is_integer(labels):
            raise TypeError(f"labels must be an integer tensor, got {labels.dtype}")
    if training and batch == 0:
        # An empty batch would still count a BatchNorm step and an EMA step; the loss is
        # undefined for it anyway.
        raise ValueError("crops must hold at least one image in training mode, got batch size 0")
    if update_memory:
        if len(crops) < num_global_crops:
            raise ValueError(
                f"crops must hold at least num_global_crops={num_global_crops} tensors, "
                f"got {len(crops)}"
            )
        # The global crops are enqueued together: a crop of another size among them is a
        # local crop in the wrong place.
        if runs[0][1] < num_global_crops:
            j = runs[0][1]
            raise ValueError(
                f"crops[{j}] must have the size {tuple(crops[0].shape[-2:])} of crops[0] (the "
                f"first num_global_crops={num_global_crops} crops are global), "
                f"got {tuple(crops[j].shape[-2:])}"
            )
    return runs


@torch.no_grad()
def _value_code(
    crops: Sequence[Tensor], labels: Tensor | None, num_classes: int, device: torch.device
) -> Tensor:
    """0-d problem code on ``device``, computed without reading anything on the host."""
    code = torch.zeros((), dtype=torch.long, device=device)
    floating = [c for c in crops if c.is_floating_point()]
    if floating:
        # The max-norm is NaN or inf exactly when a pixel is (and cannot overflow): one fused
        # multi-tensor reduction over all crops.
        norms = torch.stack(torch._foreach_norm(floating, float("inf")))
        bad = ~torch.isfinite(norms).all()
        code = torch.where(bad.to(device), _CROPS, code)
    if labels is not None and labels.numel() > 0:
        lowest, highest = torch.aminmax(labels)
        bad = (lowest < 0) | (highest >= num_classes)
        code = torch.where(bad.to(device), _LABELS, code)
    return code


def _value_error(crops: Sequence[Tensor], labels: Tensor | None, num_classes: int) -> ValueError:
    """The message for a bad value code (error path: host reads are fine here)."""
    problems = []
    if labels is not None:
        outside = labels[(labels < 0) | (labels >= num_classes)]
        if outside.numel() > 0:
            values = outside.unique()[:8].tolist()
            problems.append(f"labels must lie in [0, {num_classes}), got values {values}")
    bad_crops = [
        f"crops[{i}]"
        for i, crop in enumerate(crops)
        if crop.is_floating_point() and not bool(torch.isfinite(crop).all())
    ]
    if bad_crops:
        problems.append(f"{', '.join(bad_crops)} must be finite, got NaN or inf")
    return ValueError("; ".join(problems) + "; no state was changed")


def _agree(
    code: Tensor,
    form_error: Exception | None,
    crops: Sequence[Tensor] = (),
    labels: Tensor | None = None,
    num_classes: int = 0,
) -> None:
    """Exchange the ranks' codes (one all-gather, one host read) and raise on every rank if
    any rank's is not 0."""
    codes = all_gather_scalar(code).tolist()
    bad = [rank for rank, c in enumerate(codes) if c != 0]
    if not bad:
        return
    reasons = ", ".join(f"rank {rank}: {_REASONS[codes[rank]]}" for rank in bad)
    summary = (
        f"invalid training step on rank(s) {bad} of {len(codes)} ({reasons}); every rank "
        "rejected it before any state changed"
    )
    rank = get_rank()
    if rank not in bad:
        raise ValueError(summary)
    local = form_error if form_error is not None else _value_error(crops, labels, num_classes)
    raise ValueError(f"{summary}. On this rank (rank {rank}): {local}") from local
