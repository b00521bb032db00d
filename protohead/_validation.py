"""Argument checks shared by every protohead module (internal).

Each returns the normalised value or raises a ``TypeError`` (wrong type) or ``ValueError``
(wrong value) naming the argument, the value and what is allowed, so that every constructor
and function reports a bad argument the same way. Modules import it as
``from protohead import _validation as check`` and call ``check.integer(...)`` etc.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from numbers import Integral, Real


def real(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} {value!r}")
    out = float(value)
    if not math.isfinite(out):
        raise ValueError(f"{name} must be finite, got {out}")
    return out


def integer(
    name: str, value: object, minimum: int | None = None, maximum: int | None = None
) -> int:
    """``value`` as an int in ``[minimum, maximum]`` (bools are not ints here)."""
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    number = int(value)
    if (minimum is not None and number < minimum) or (maximum is not None and number > maximum):
        if maximum is None:
            allowed = f">= {minimum}"
        elif minimum is None:
            allowed = f"<= {maximum}"
        else:
            allowed = f"in [{minimum}, {maximum}]"
        raise ValueError(f"{name} must be an int {allowed}, got {number}")
    return number


def boolean(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__} {value!r}")
    return value


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


def real_in(
    name: str,
    value: object,
    *,
    above: float | None = None,
    at_least: float | None = None,
    below: float | None = None,
    at_most: float | None = None,
) -> float:
    """``value`` as a finite float within the given bounds (open ``above``/``below``, closed
    ``at_least``/``at_most``; give at most one lower and one upper bound).

    Example:
        >>> real_in("C", 2, above=0.0)
        2.0
        >>> real_in("val_fraction", 1.0, above=0.0, below=1.0)
        Traceback (most recent call last):
        ...
        ValueError: val_fraction must be a real number in (0.0, 1.0), got 1.0
    """
    x = real(name, value)
    low, low_open = (above, True) if above is not None else (at_least, False)
    high, high_open = (below, True) if below is not None else (at_most, False)
    too_low = low is not None and (x <= low if low_open else x < low)
    too_high = high is not None and (x >= high if high_open else x > high)
    if too_low or too_high:
        if high is None:
            allowed = f"{'>' if low_open else '>='} {low}"
        elif low is None:
            allowed = f"{'<' if high_open else '<='} {high}"
        else:
            allowed = f"in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
        raise ValueError(f"{name} must be a real number {allowed}, got {x}")
    return x
