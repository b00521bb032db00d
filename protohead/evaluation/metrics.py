"""Log-odds of a top-1 accuracy, the transfer score averaged across datasets.

Sariyildiz et al., "No Reason for No Supervision: Improved Generalization in Supervised Models"
(ICLR 2023) average transfer accuracies across datasets on the log-odds scale
``ln(p / (1 - p))``, which spreads out accuracies close to 0 or 1 instead of letting the easy
datasets dominate an arithmetic mean of accuracies.
"""

from __future__ import annotations

import math

from protohead import _validation as check

__all__ = ["LOG_ODDS_EPS", "log_odds"]

LOG_ODDS_EPS = 1e-4
"""Default clipping of :func:`log_odds`: accuracies are clipped to ``[1e-4, 1 - 1e-4]``, so the
log-odds lie in ``[-9.2102, 9.2102]`` (a test set would need over 10,000 images to resolve
accuracies beyond that)."""


def log_odds(accuracy: float, *, eps: float = LOG_ODDS_EPS) -> float:
    """Log-odds ``ln(p / (1 - p))`` of an accuracy ``p`` given as a fraction.

    ``p`` is first clipped to ``[eps, 1 - eps]`` so that 0% and 100% give finite values
    (``-ln((1 - eps) / eps)`` and ``+ln((1 - eps) / eps)``; about ``∓9.21`` for the default).

    Args:
        accuracy: Top-1 accuracy as a fraction in ``[0, 1]`` (not a percentage).
        eps: Clipping margin, in ``(0, 0.5)``.

    Returns:
        The log-odds; 0.0 at 50%.

    Raises:
        TypeError: If ``accuracy`` or ``eps`` is not a real number.
        ValueError: If ``accuracy`` is outside ``[0, 1]`` or NaN (e.g. a percentage such as
            73.5 was passed), or ``eps`` is outside ``(0, 0.5)``.

    Example:
        >>> log_odds(0.5)
        0.0
        >>> round(log_odds(0.9), 4)
        2.1972
        >>> round(log_odds(1.0), 4), round(log_odds(0.0), 4)
        (9.2102, -9.2102)
    """
    accuracy = check.real("accuracy", accuracy)
    eps = check.real_in("eps", eps, above=0, below=0.5)
    if not 0.0 <= accuracy <= 1.0:
        raise ValueError(
            f"accuracy must be a fraction in [0, 1] (not a percentage), got {accuracy!r}"
        )
    p = min(max(float(accuracy), eps), 1.0 - eps)
    return math.log(p) - math.log1p(-p)
