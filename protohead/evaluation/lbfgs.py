"""Full-batch L-BFGS with a strong-Wolfe line search, on flat torch tensors (CPU or GPU).

The solver behind :class:`~protohead.evaluation.logreg.LogisticRegression`, the linear probe of
the transfer protocol of Sariyildiz et al. (ICLR 2023). It follows Nocedal & Wright, "Numerical
Optimization" (2nd ed.): the two-loop recursion (Algorithm 7.4) with the ``s'y / y'y`` initial
Hessian scaling, and the bracketing / zoom line search for the strong Wolfe conditions
(Algorithms 3.5 and 3.6) with safeguarded cubic interpolation (eq. 3.59). Compared with
``torch.optim.LBFGS`` it accepts a caller-supplied length for the very first step (a good one
saves the several function evaluations spent growing a tiny first step), uses a *relative*
objective-change criterion as SciPy does, and reports why it stopped.
"""

from __future__ import annotations

import functools
import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch

__all__ = ["LBFGSResult", "LineModel", "lbfgs"]

Objective = Callable[[torch.Tensor], tuple[float, torch.Tensor]]


@dataclass(frozen=True)
class LBFGSResult:
    """Outcome of :func:`lbfgs`.

    Attributes:
        x: Final point ``(p,)``.
        f: Objective at ``x``.
        g: Gradient at ``x`` ``(p,)``.
        n_iter: Iterations (accepted steps).
        n_eval: Objective evaluations.
        converged: Stopped by ``gtol`` or ``ftol`` (not by ``max_iter`` or a failed search).
        reason: ``"gtol"``, ``"ftol"``, ``"max_iter"`` or ``"line_search"``.

    Example:
        >>> result = lbfgs(lambda x: (float((x * x).sum()), 2 * x), torch.ones(2))
        >>> result.converged, result.f < 1e-8, result.reason
        (True, True, 'gtol')
    """

    x: torch.Tensor
    f: float
    g: torch.Tensor
    n_iter: int
    n_eval: int
    converged: bool
    reason: str


def _cubic_min(
    x1: float, f1: float, g1: float, x2: float, f2: float, g2: float, lo: float, hi: float
) -> float:
    """Minimiser in ``[lo, hi]`` of the cubic through two points with their slopes."""
    if x1 == x2:
        return (lo + hi) / 2.0
    d1 = g1 + g2 - 3.0 * (f1 - f2) / (x1 - x2)
    d2_square = d1 * d1 - g1 * g2
    if d2_square < 0.0:
        return (lo + hi) / 2.0
    d2 = math.copysign(math.sqrt(d2_square), x2 - x1)
    denominator = g2 - g1 + 2.0 * d2
    if denominator == 0.0:
        return (lo + hi) / 2.0
    t = x2 - (x2 - x1) * (g2 + d2 - d1) / denominator
    return min(max(t, lo), hi) if math.isfinite(t) else (lo + hi) / 2.0


def _strong_wolfe(
    phi: Callable[[float], tuple[float, Any, float]],
    f0: float,
    gtd0: float,
    t: float,
    max_ls: int,
    c1: float = 1e-4,
    c2: float = 0.9,
) -> tuple[float, float, Any, int, bool]:
    """Step length ``t`` satisfying the strong Wolfe conditions along a descent direction.

    ``phi(t)`` returns ``(f, payload, g'd)`` at ``x + t d`` (the payload, e.g. the gradient, is
    handed back for the chosen step). Returns ``(t, f, payload, evals, ok)``. When the
    evaluation budget runs out, the best point seen is returned with ``ok`` telling whether it
    still decreases ``f`` sufficiently (Armijo); ``t = 0`` means no point improved on ``f0``.
    """
    evals = 0
    t_prev, f_prev, gtd_prev = 0.0, f0, gtd0
    best: tuple[float, float, Any] | None = None
    lo = hi = None
    while evals < max_ls:
        f, g, gtd = phi(t)
        evals += 1
        if math.isfinite(f) and f < (f0 if best is None else best[1]):
            best = (t, f, g)
        if not math.isfinite(f) or f > f0 + c1 * t * gtd0 or (evals > 1 and f >= f_prev):
            lo, hi = (t_prev, f_prev, gtd_prev), (t, f, gtd)
            break
        if abs(gtd) <= -c2 * gtd0:
            return t, f, g, evals, True
        if gtd >= 0.0:
            lo, hi = (t, f, gtd), (t_prev, f_prev, gtd_prev)
            break
        t_next = _cubic_min(t_prev, f_prev, gtd_prev, t, f, gtd, t * 1.1, t * 10.0)
        t_prev, f_prev, gtd_prev, t = t, f, gtd, t_next
    while lo is not None and hi is not None and evals < max_ls:
        (t_lo, f_lo, g_lo), (t_hi, f_hi, g_hi) = lo, hi
        width = abs(t_hi - t_lo)
        if width <= 1e-12 * max(abs(t_lo), abs(t_hi), 1e-30):
            break
        left, right = min(t_lo, t_hi), max(t_lo, t_hi)
        t = _cubic_min(t_lo, f_lo, g_lo, t_hi, f_hi, g_hi, left + 0.1 * width, right - 0.1 * width)
        f, g, gtd = phi(t)
        evals += 1
        if math.isfinite(f) and f < (f0 if best is None else best[1]):
            best = (t, f, g)
        if not math.isfinite(f) or f > f0 + c1 * t * gtd0 or f >= f_lo:
            hi = (t, f, gtd)
        else:
            if abs(gtd) <= -c2 * gtd0:
                return t, f, g, evals, True
            if gtd * (t_hi - t_lo) >= 0.0:
                hi = lo
            lo = (t, f, gtd)
    if best is None:
        return 0.0, f0, None, evals, False
    t_best, f_best, g_best = best
    # Sufficient decrease without the curvature condition: still a valid step to take.
    return t_best, f_best, g_best, evals, f_best <= f0 + c1 * t_best * gtd0


class LineModel(Protocol):
    """The objective restricted to one search line ``x + t d``, for objectives where that is
    cheaper than full evaluations (e.g. linear models: the scores along the line are an affine
    function of ``t``, so trial steps need no matrix product with the data)."""

    def value(self, t: float) -> tuple[float, float]:
        """``(f, g'd)`` at ``x + t d``."""
        ...

    def gradient(self, t: float) -> torch.Tensor:
        """Full gradient ``(p,)`` at ``x + t d``."""
        ...

    def newton_step(self) -> float:
        """Minimiser of the local quadratic model along ``d`` (0 if unknown)."""
        ...

    def accept(self, t: float) -> None:
        """Called once the step ``t`` is taken: ``x + t d`` is the new current point."""
        ...


def _line_value(model: LineModel, t: float) -> tuple[float, Any, float]:
    f, gtd = model.value(t)
    return f, None, gtd


def _full_value(
    fun: Objective, x: torch.Tensor, d: torch.Tensor, t: float
) -> tuple[float, Any, float]:
    f, g = fun(x + t * d)
    return f, g, float(torch.dot(g, d))


def lbfgs(
    fun: Objective,
    x0: torch.Tensor,
    *,
    max_iter: int = 1000,
    gtol: float = 1e-5,
    ftol: float = 1e-7,
    history_size: int = 20,
    max_ls: int = 12,
    first_step: Callable[[torch.Tensor, torch.Tensor], float] | None = None,
    line_model: Callable[[torch.Tensor, torch.Tensor], LineModel] | None = None,
) -> LBFGSResult:
    """Minimise a smooth function with L-BFGS.

    Stops when ``max|g| <= gtol``; when one iteration lowers ``f`` by at most
    ``ftol * max(|f|, 1)``, or the next quasi-Newton step is predicted to (``-g'd / 2``, with a
    floor of 16 machine epsilons of the dtype, so float32 runs stop at their round-off instead
    of failing line searches); after ``max_iter`` iterations; or when the line search finds no
    acceptable step.

    Args:
        fun: ``x (p,) -> (f, g)``: objective as a float and gradient ``(p,)``.
        x0: Starting point ``(p,)``; not modified.
        max_iter: Iteration cap, ``>= 1``.
        gtol: Gradient tolerance, ``>= 0``.
        ftol: Relative objective-change tolerance, ``>= 0``.
        history_size: Correction pairs kept, ``>= 1``.
        max_ls: Function evaluations per line search, ``>= 1``.
        first_step: ``(x, d) -> t``: length of the first step along the steepest-descent
            direction ``d``; default ``min(1, 1 / max|g|)``.
        line_model: ``(x, d) -> LineModel``: optional cheap restriction of ``fun`` to each
            search line. Trial steps then call its ``value`` and only the accepted step its
            ``gradient``; its ``newton_step`` replaces ``first_step``. ``n_eval`` counts
            ``fun`` calls plus trial values.

    Returns:
        An :class:`LBFGSResult`.

    Raises:
        ValueError: If ``x0`` is not 1-D or an option is out of range.

    Example:
        >>> target = torch.tensor([1.0, -2.0, 3.0], dtype=torch.float64)
        >>> scale = torch.tensor([1.0, 10.0, 100.0], dtype=torch.float64)
        >>> def quadratic(x):
        ...     r = x - target
        ...     return float((scale * r * r).sum()), 2 * scale * r
        >>> result = lbfgs(quadratic, torch.zeros(3, dtype=torch.float64), gtol=1e-8, ftol=0.0)
        >>> result.converged, torch.allclose(result.x, target, atol=1e-6)
        (True, True)
    """
    if x0.ndim != 1:
        raise ValueError(f"x0 must be a flat (p,) tensor, got shape {tuple(x0.shape)}")
    if max_iter < 1 or history_size < 1 or max_ls < 1:
        raise ValueError(
            "max_iter, history_size and max_ls must be >= 1, got "
            f"{max_iter}, {history_size}, {max_ls}"
        )
    if gtol < 0 or ftol < 0:
        raise ValueError(f"gtol and ftol must be >= 0, got {gtol}, {ftol}")

    x = x0.clone()
    f, g = fun(x)
    n_eval = 1
    s_hist: deque[torch.Tensor] = deque(maxlen=history_size)
    y_hist: deque[torch.Tensor] = deque(maxlen=history_size)
    rho_hist: deque[float] = deque(maxlen=history_size)
    gamma = 1.0
    for n_iter in range(max_iter):
        if float(g.abs().max()) <= gtol:
            return LBFGSResult(x, f, g, n_iter, n_eval, True, "gtol")
        # Two-loop recursion: d = -H g.
        q = -g
        alphas = []
        for s, y, rho in zip(reversed(s_hist), reversed(y_hist), reversed(rho_hist), strict=True):
            alpha = rho * float(torch.dot(s, q))
            alphas.append(alpha)
            q = q - alpha * y
        d = q * gamma
        for s, y, rho, alpha in zip(s_hist, y_hist, rho_hist, reversed(alphas), strict=True):
            beta = rho * float(torch.dot(y, d))
            d = d + (alpha - beta) * s
        gtd = float(torch.dot(g, d))
        if not s_hist or gtd >= 0.0:
            # No curvature yet (or a lost descent direction): restart from steepest descent.
            s_hist.clear()
            y_hist.clear()
            rho_hist.clear()
            d = -g
            gtd = float(torch.dot(g, d))
            if line_model is not None:
                model = line_model(x, d)
                t0 = model.newton_step()
            else:
                t0 = first_step(x, d) if first_step is not None else 0.0
            if not (math.isfinite(t0) and t0 > 0.0):
                t0 = min(1.0, 1.0 / max(float(g.abs().max()), 1e-30))
        else:
            # A quasi-Newton step is expected to lower f by about -g'd / 2: once that is below
            # ftol (or the dtype's resolution), further steps cannot pay off.
            floor = max(ftol, 16.0 * torch.finfo(g.dtype).eps) * max(abs(f), 1.0)
            if -0.5 * gtd <= floor:
                return LBFGSResult(x, f, g, n_iter, n_eval, True, "ftol")
            t0 = 1.0
            if line_model is not None:
                model = line_model(x, d)

        phi: Callable[[float], tuple[float, Any, float]]
        if line_model is not None:
            phi = functools.partial(_line_value, model)
        else:
            phi = functools.partial(_full_value, fun, x, d)
        t, f_new, g_new, evals, ok = _strong_wolfe(phi, f, gtd, t0, max_ls)
        n_eval += evals
        if not ok or t == 0.0:
            return LBFGSResult(x, f, g, n_iter, n_eval, False, "line_search")
        if line_model is not None:
            g_new = model.gradient(t)
            model.accept(t)
        step = t * d
        x = x + step
        y_vec = g_new - g
        ys = float(torch.dot(y_vec, step))
        if ys > 1e-10 * float(torch.linalg.vector_norm(y_vec) * torch.linalg.vector_norm(step)):
            s_hist.append(step)
            y_hist.append(y_vec)
            rho_hist.append(1.0 / ys)
            gamma = ys / float(torch.dot(y_vec, y_vec))
        decrease = f - f_new
        f, g = f_new, g_new
        if decrease <= ftol * max(abs(f), 1.0):
            return LBFGSResult(x, f, g, n_iter + 1, n_eval, True, "ftol")
    return LBFGSResult(x, f, g, max_iter, n_eval, False, "max_iter")
