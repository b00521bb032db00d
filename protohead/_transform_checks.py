"""Argument checks shared by the multi-crop transforms (internal).

Each returns the normalised value or raises a ``TypeError`` (wrong type) or ``ValueError``
(wrong value) naming the argument, the value and what is allowed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from numbers import Integral, Real


def real(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    out = float(value)
    if not math.isfinite(out):
        raise ValueError(f"{name} must be finite, got {out}")
    return out


def integer(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value}")
    return int(value)


def probability(name: str, value: object) -> float:
    p = real(name, value)
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"{name} must be a probability in [0, 1], got {p}")
    return p


def reals(name: str, value: object, length: int) -> tuple[float, ...]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise TypeError(f"{name} must be a sequence of {length} numbers, got {value!r}")
    if len(value) != length:
        raise ValueError(f"{name} must have length {length}, got {len(value)} in {value!r}")
    return tuple(real(f"{name}[{i}]", v) for i, v in enumerate(value))


def interval(name: str, value: object, upper: float | None) -> tuple[float, float]:
    lo, hi = reals(name, value, 2)
    if not (0.0 < lo <= hi and (upper is None or hi <= upper)):
        allowed = "0 < lo <= hi" + ("" if upper is None else f" <= {upper}")
        raise ValueError(f"{name} must be a (lo, hi) pair with {allowed}, got ({lo}, {hi})")
    return lo, hi


def mean_std(mean: object, std: object) -> tuple[tuple[float, ...], tuple[float, ...]]:
    m, s = reals("mean", mean, 3), reals("std", std, 3)
    if min(s) <= 0.0:
        raise ValueError(f"std must be > 0 per channel, got {s}")
    return m, s
