"""Sample checks shared by the collate functions ``multicrop_collate`` and ``uint8_collate``.

A DataLoader batch is a sequence of ``(input, label)`` samples. Both collate functions accept
the same samples and labels, and name the offending sample when one is malformed, instead of
failing deep inside ``torch.stack`` or silently truncating a float label with ``int()``.
"""

from __future__ import annotations

from collections.abc import Sequence
from numbers import Integral
from typing import Any

import torch

__all__ = ["check_batch", "label_tensor", "sample_pair"]


def check_batch(batch: object) -> Sequence[Any]:
    """Checks that ``batch`` is a non-empty sequence of samples.

    Raises:
        TypeError: If ``batch`` is not a sequence.
        ValueError: If it is empty.

    Example:
        >>> len(check_batch([(0, 1)]))
        1
    """
    if not isinstance(batch, Sequence) or isinstance(batch, (str, bytes)):
        raise TypeError(f"batch must be a sequence of samples, got {type(batch).__name__}")
    if len(batch) == 0:
        raise ValueError("batch must contain at least one sample, got an empty batch")
    return batch


def sample_pair(j: int, sample: object, what: str) -> tuple[Any, Any]:
    """Sample ``j`` of a batch as its ``(input, label)`` pair; ``what`` describes the input.

    Raises:
        ValueError: If the sample is not a pair.

    Example:
        >>> sample_pair(3, [1, 2], "crops")
        (1, 2)
    """
    if isinstance(sample, (str, bytes)) or not isinstance(sample, Sequence) or len(sample) != 2:
        got = f"length {len(sample)}" if isinstance(sample, Sequence) else type(sample).__name__
        raise ValueError(f"batch[{j}] must be a ({what}, label) pair, got {got}")
    return sample[0], sample[1]


def label_tensor(j: int, label: object) -> torch.Tensor:
    """Label of sample ``j`` as an int64 scalar: an int or a one-element integer tensor.

    Bools and floats are rejected rather than truncated (``int(2.7) == 2``).

    Raises:
        TypeError: If ``label`` is not an int or a one-element integer tensor.

    Example:
        >>> label_tensor(0, 7), label_tensor(1, torch.tensor([3], dtype=torch.int32))
        (tensor(7), tensor(3))
    """
    if isinstance(label, Integral) and not isinstance(label, bool):
        return torch.tensor(int(label), dtype=torch.int64)
    if isinstance(label, torch.Tensor):
        kind = label.dtype
        if label.numel() == 1 and not (
            kind.is_floating_point or kind.is_complex or kind == torch.bool
        ):
            return label.reshape(()).to(torch.int64)
        got = f"a {kind} tensor of shape {tuple(label.shape)}"
    else:
        got = f"{label!r} ({type(label).__name__})"
    raise TypeError(
        f"label of sample {j} must be an int or a one-element integer tensor, got {got}"
    )
