"""Input checks shared by the logistic regression and the linear probe.

Every check raises ``TypeError`` or ``ValueError`` naming the argument, the value found and what
is allowed. Finiteness is checked *after* casting to the fit dtype, because finite float64
features beyond the float32 range become inf in a float32 fit; the message then says so instead
of blaming NaN or inf in the input.
"""

from __future__ import annotations

import torch

__all__ = ["all_finite", "check_features", "check_finite_cast", "check_labels"]


def check_features(x: torch.Tensor, name: str) -> None:
    """Require a floating point ``(n, d)`` tensor.

    Raises:
        TypeError: If ``x`` is not a floating point tensor.
        ValueError: If ``x`` is not 2-D.

    Example:
        >>> check_features(torch.zeros(3, 2), "X")
        >>> check_features(torch.zeros(3), "X")
        Traceback (most recent call last):
        ...
        ValueError: X must have shape (n, d), got shape (3,)
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim != 2:
        raise ValueError(f"{name} must have shape (n, d), got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating point tensor, got dtype {x.dtype}")


def check_labels(y: torch.Tensor, n: int, name: str) -> None:
    """Require an integer ``(n,)`` tensor.

    Raises:
        TypeError: If ``y`` is not an integer tensor.
        ValueError: If ``y`` does not have shape ``(n,)``.

    Example:
        >>> check_labels(torch.tensor([0, 1]), 2, "y")
        >>> check_labels(torch.tensor([0.0, 1.0]), 2, "y")
        Traceback (most recent call last):
        ...
        TypeError: y must be an integer tensor, got dtype torch.float32
    """
    if not isinstance(y, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(y).__name__}")
    if y.ndim != 1 or y.shape[0] != n:
        raise ValueError(f"{name} must have shape ({n},) to match X, got shape {tuple(y.shape)}")
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise TypeError(f"{name} must be an integer tensor, got dtype {y.dtype}")


def all_finite(x: torch.Tensor) -> bool:
    """Whether every entry is finite, in one summing pass in the common case.

    NaN and inf propagate into the sum, so a finite sum proves the data finite (element-wise
    ``isfinite`` costs several passes over a 50,000 x 2048 matrix). Only a non-finite sum (bad
    data, or finite values whose sum overflows) falls back to the element-wise check.

    Example:
        >>> all_finite(torch.full((2, 2), 3e38)), all_finite(torch.tensor([1.0, float("nan")]))
        (True, False)
    """
    if bool(torch.isfinite(x.sum())):
        return True
    return bool(torch.isfinite(x).all())


def check_finite_cast(cast: torch.Tensor, source: torch.Tensor, name: str) -> None:
    """Require ``cast`` (``source`` converted to the fit dtype) to be finite everywhere.

    Args:
        cast: The tensor in the dtype the fit uses.
        source: The tensor as the caller passed it.
        name: Argument name for the message.

    Raises:
        ValueError: If ``cast`` holds NaN or inf; the message tells an overflow of finite input
            (e.g. float64 values beyond the float32 range) from NaN or inf in the input.

    Example:
        >>> big = torch.tensor([[1e39]], dtype=torch.float64)
        >>> check_finite_cast(big.float(), big, "X")
        Traceback (most recent call last):
        ...
        ValueError: X must fit in torch.float32 (|value| <= 3.403e+38), got finite values up \
to 1e+39 that overflow it; fit in torch.float64 or rescale the features
    """
    if all_finite(cast):
        return
    if cast.dtype != source.dtype and all_finite(source):
        raise ValueError(
            f"{name} must fit in {cast.dtype} (|value| <= {torch.finfo(cast.dtype).max:.4g}), "
            f"got finite values up to {float(source.abs().max()):.4g} that overflow it; fit in "
            "torch.float64 or rescale the features"
        )
    raise ValueError(f"{name} must contain only finite values, got NaN or inf")
