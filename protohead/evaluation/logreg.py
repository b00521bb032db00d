"""L2-regularised multinomial logistic regression fitted with full-batch L-BFGS in torch.

This is the linear classifier of the transfer protocol of Sariyildiz et al., "No Reason for No
Supervision: Improved Generalization in Supervised Models" (ICLR 2023): frozen features, a
softmax classifier with a bias, and an L2 penalty whose strength is tuned on a validation split
(see :mod:`protohead.evaluation.search`).

Objective. For ``n`` samples, ``k`` classes, weights ``W`` of shape ``(k, d)`` and bias ``b``::

    L(W, b) = (1 / n) * sum_i CE(W x_i + b, y_i) + 1 / (2 * C * n) * ||W||_F^2

which is ``1 / (C * n)`` times scikit-learn's ``C * sum_i CE_i + 0.5 * ||W||_F^2``: the same
minimiser for the same ``C`` (the bias is not penalised in either). For two classes this class
still fits two weight vectors (softmax), unlike scikit-learn's single binomial vector; compare
with scikit-learn on three or more classes.

Centring. With ``center=True`` (the default) the optimiser works with ``W (x - mu) + b'`` where
``mu`` is the mean training feature. Because the bias is unpenalised this is an exact
reparametrisation (``b = b' - W mu``) with the same minimiser, but it decouples the bias from the
weights, which L-BFGS converges on in far fewer iterations for features with a large mean (such
as post-ReLU pooled features). The data is never copied for it. Features are *not* rescaled,
since that would change what ``C`` means.

Solver. :func:`~protohead.evaluation.lbfgs.lbfgs` on the flat ``[W, b']``, with the gradient
written out (no autograd). The scores are affine along a search direction, so each iteration
costs two matrix products with the data (the direction's scores, the new gradient) however many
trial steps the line search takes, and the first step comes from the exact curvature of the loss
along the gradient, which replaces the several evaluations a line search spends growing a tiny
first step.
"""

from __future__ import annotations

import math

import torch
from typing_extensions import Self

from protohead.evaluation.checks import check_features, check_finite_cast, check_labels
from protohead.evaluation.lbfgs import lbfgs

__all__ = ["LogisticRegression"]

_FLOAT_DTYPES = (torch.float32, torch.float64)


class _SoftmaxObjective:
    """Mean-scaled objective and gradient on the flat parameters ``[W (k*d), b' (k)]``.

    Two matrix products with the data per full evaluation: ``(n, d) (d, k)`` for the scores
    and ``(k, n) (n, d)`` for the gradient. Along a search line the scores are affine in the
    step, so :meth:`line` needs one product for the direction's scores, trial steps none, and
    the accepted step one for its gradient; the scores of the new point follow without a
    product (recomputed exactly every ``_REFRESH`` steps to bound round-off).
    """

    _REFRESH = 25

    def __init__(
        self, x: torch.Tensor, labels: torch.Tensor, mu: torch.Tensor, k: int, lam: float
    ) -> None:
        self.x, self.labels, self.mu, self.k, self.lam = x, labels, mu, k, lam
        self.n, self.d = x.shape
        self.rows = torch.arange(self.n, device=x.device)
        self.scores: torch.Tensor | None = None  # (n, k) scores at `self.at`
        self.at: torch.Tensor | None = None
        self.steps = 0

    def split(self, params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        kd = self.k * self.d
        return params[:kd].view(self.k, self.d), params[kd:]

    def logits(self, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """``(x - mu) W^T + b'`` without materialising the centred copy of x: ``(n, k)``."""
        if not bool(weight.any()):  # a cold start: no product with the data needed
            return bias.expand(self.n, self.k).clone()
        return torch.addmm(bias - weight @ self.mu, self.x, weight.t())

    def loss_at(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean cross-entropy and softmax probabilities of ``(n, k)`` scores."""
        lse = torch.logsumexp(logits, dim=1, keepdim=True)
        ce = (lse.squeeze(1) - logits[self.rows, self.labels]).mean()
        return ce, torch.exp(logits - lse)

    def gradient(self, probs: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        residual = probs.clone()
        residual[self.rows, self.labels] -= 1.0
        residual /= self.n
        col = residual.sum(dim=0)
        # r^T x, not (x^T r)^T: the same product, but 10x slower for few classes that way.
        grad_w = residual.t() @ self.x - torch.outer(col, self.mu) + self.lam * weight
        return torch.cat([grad_w.flatten(), col])

    def __call__(self, params: torch.Tensor) -> tuple[float, torch.Tensor]:
        weight, bias = self.split(params)
        logits = self.logits(weight, bias)
        self.scores, self.at = logits, params
        ce, probs = self.loss_at(logits)
        loss = ce + 0.5 * self.lam * weight.pow(2).sum()
        return float(loss), self.gradient(probs, weight)

    def line(self, params: torch.Tensor, direction: torch.Tensor) -> _SoftmaxLine:
        scores = self.scores
        if scores is None or self.at is None or not torch.equal(self.at, params):
            scores = self.logits(*self.split(params))
            self.scores, self.at = scores, params
        return _SoftmaxLine(self, params, direction, scores)


class _SoftmaxLine:
    """:class:`_SoftmaxObjective` along ``params + t * direction`` (a ``LineModel``)."""

    def __init__(
        self,
        objective: _SoftmaxObjective,
        params: torch.Tensor,
        direction: torch.Tensor,
        scores: torch.Tensor,
    ) -> None:
        self.obj, self.params, self.direction, self.scores = objective, params, direction, scores
        weight, _ = objective.split(params)
        d_weight, d_bias = objective.split(direction)
        self.weight, self.d_weight = weight, d_weight
        self.slope = objective.logits(d_weight, d_bias)  # (n, k): scores change per unit t
        self.slope_true = float(self.slope[objective.rows, objective.labels].sum())
        self.w2 = float(weight.pow(2).sum())
        self.wd = float(torch.dot(weight.flatten(), d_weight.flatten()))
        self.d2 = float(d_weight.pow(2).sum())
        self.cached: dict[float, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    def _at(self, t: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Scores, mean cross-entropy and probabilities at step ``t`` (the last two cached)."""
        if t not in self.cached:
            if len(self.cached) >= 2:  # the accepted step is one of the last few tried
                self.cached.pop(next(iter(self.cached)))
            logits = torch.add(self.scores, self.slope, alpha=t)
            self.cached[t] = (logits, *self.obj.loss_at(logits))
        return self.cached[t]

    def value(self, t: float) -> tuple[float, float]:
        _, ce, probs = self._at(t)
        lam, n = self.obj.lam, self.obj.n
        penalty = 0.5 * lam * (self.w2 + 2.0 * t * self.wd + t * t * self.d2)
        derivative = (float((probs * self.slope).sum()) - self.slope_true) / n
        derivative += lam * (self.wd + t * self.d2)
        return float(ce) + penalty, derivative

    def gradient(self, t: float) -> torch.Tensor:
        _, _, probs = self._at(t)
        return self.obj.gradient(probs, self.weight + t * self.d_weight)

    def newton_step(self) -> float:
        _, _, probs = self._at(0.0)
        pz = (probs * self.slope).sum(dim=1)
        curvature = float(((probs * self.slope * self.slope).sum(dim=1) - pz * pz).mean())
        curvature += self.obj.lam * self.d2
        slope = (float(pz.sum()) - self.slope_true) / self.obj.n + self.obj.lam * self.wd
        return -slope / curvature if curvature > 0.0 else 0.0

    def accept(self, t: float) -> None:
        obj = self.obj
        new_params = self.params + t * self.direction  # as the solver computes x + t d
        obj.steps += 1
        if obj.steps % obj._REFRESH == 0:
            obj.scores = obj.logits(*obj.split(new_params))
        else:
            obj.scores = self._at(t)[0]
        obj.at = new_params


class LogisticRegression:
    """Multinomial logistic regression with an L2 penalty on the weights and a free bias.

    Args:
        C: Inverse regularisation strength, ``> 0`` and finite; same meaning as scikit-learn's
            ``LogisticRegression(C=...)`` (see the module docstring for the exact objective).
        max_iter: Maximum number of L-BFGS iterations, ``>= 1``.
        tol: Stop when the largest absolute gradient entry of the (mean-scaled) objective is
            ``<= tol`` (scikit-learn's ``gtol`` criterion, whose default 1e-4 is often too
            loose to reach the optimum's accuracy), or when an iteration lowers, or the next one
            is predicted to lower, the objective by less than ``tol / 100`` relative. ``> 0``.
            For (nearly) separable data at large ``C`` the optimum lies far out along
            directions that hardly change the predictions and the gradient is below ``tol``
            long before; such fits stop early, as scikit-learn's do, with the same accuracy.
        history_size: Number of L-BFGS correction pairs kept, ``>= 1``.
        center: Optimise in mean-centred coordinates (exact; see the module docstring).
        dtype: ``torch.float32`` (default, fastest) or ``torch.float64``.
        device: Where to fit. ``None`` uses the device of ``X`` passed to :meth:`fit`.

    Attributes (after :meth:`fit`):
        coef_: ``(k, d)`` weights, in ``dtype`` on the fit device.
        intercept_: ``(k,)`` biases, in the original (uncentred) coordinates.
        num_classes_: ``k``.
        n_iter_: L-BFGS iterations run.
        n_eval_: Objective and gradient evaluations.
        converged_: ``False`` when ``max_iter`` was reached (or the line search failed) before a
            tolerance was met.
        stop_reason_: ``"gtol"``, ``"ftol"``, ``"max_iter"`` or ``"line_search"``.
        loss_: Final value of the mean-scaled objective.

    Raises:
        ValueError: On an out-of-range argument.
        TypeError: On a wrong ``dtype``.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> y = torch.arange(3).repeat(20)
        >>> centers = torch.tensor([[0.0, 0.0], [4.0, 0.0], [0.0, 4.0]])
        >>> X = centers[y] + torch.randn(60, 2, generator=g)
        >>> clf = LogisticRegression(C=1.0).fit(X, y)
        >>> clf.coef_.shape, clf.intercept_.shape
        (torch.Size([3, 2]), torch.Size([3]))
        >>> clf.score(X, y) > 0.9
        True
    """

    coef_: torch.Tensor
    intercept_: torch.Tensor
    num_classes_: int
    n_iter_: int
    n_eval_: int
    converged_: bool
    stop_reason_: str
    loss_: float

    def __init__(
        self,
        C: float = 1.0,
        *,
        max_iter: int = 1000,
        tol: float = 1e-5,
        history_size: int = 20,
        center: bool = True,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> None:
        # bool is an int subclass, but C=True is a mistake, never a penalty of 1.
        if isinstance(C, bool) or not (isinstance(C, (int, float)) and math.isfinite(C) and C > 0):
            raise ValueError(f"C must be a finite number > 0, got {C!r}")
        if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
            raise ValueError(f"max_iter must be an int >= 1, got {max_iter!r}")
        if isinstance(tol, bool) or not (
            isinstance(tol, (int, float)) and math.isfinite(tol) and tol > 0
        ):
            raise ValueError(f"tol must be a finite number > 0, got {tol!r}")
        if isinstance(history_size, bool) or not isinstance(history_size, int) or history_size < 1:
            raise ValueError(f"history_size must be an int >= 1, got {history_size!r}")
        if dtype not in _FLOAT_DTYPES:
            raise TypeError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
        self.C = float(C)
        self.max_iter = max_iter
        self.tol = float(tol)
        self.history_size = history_size
        self.center = center
        self.dtype = dtype
        self.device = None if device is None else torch.device(device)

    def fit(
        self,
        X: torch.Tensor,
        y: torch.Tensor,
        *,
        num_classes: int | None = None,
        warm_start: LogisticRegression | None = None,
    ) -> Self:
        """Fit on features ``X`` ``(n, d)`` and integer labels ``y`` ``(n,)`` in ``[0, k)``.

        Args:
            X: Training features, floating point, finite.
            y: Training labels.
            num_classes: ``k``; defaults to ``max(y) + 1``. Must exceed every label.
            warm_start: A fitted model with the same ``(k, d)`` whose solution is the starting
                point (used by the regularisation search); it is not modified.

        Returns:
            ``self``.

        Raises:
            TypeError: If ``X`` or ``y`` has the wrong type or dtype.
            ValueError: On shape mismatches, non-finite features (or float64 features that
                overflow a float32 fit), labels outside ``[0, k)`` or a ``warm_start`` of
                another shape.
        """
        check_features(X, "X")
        n, d = X.shape
        check_labels(y, n, "y")
        if n == 0:
            raise ValueError("X must contain at least one sample, got 0")
        device = self.device if self.device is not None else X.device
        x = X.to(device=device, dtype=self.dtype)
        check_finite_cast(x, X, "X")
        labels = y.to(device=device, dtype=torch.long)
        y_min, y_max = int(labels.min()), int(labels.max())
        k = y_max + 1 if num_classes is None else num_classes
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"num_classes must be an int >= 1 or None, got {num_classes!r}")
        if y_min < 0 or y_max >= k:
            raise ValueError(f"y must hold labels in [0, {k}), got range [{y_min}, {y_max}]")

        mu = x.mean(dim=0) if self.center else torch.zeros(d, dtype=self.dtype, device=device)
        params = torch.zeros(k * d + k, dtype=self.dtype, device=device)
        if warm_start is not None:
            if not hasattr(warm_start, "coef_"):
                raise ValueError("warm_start must be a fitted LogisticRegression, got unfitted")
            if tuple(warm_start.coef_.shape) != (k, d):
                raise ValueError(
                    f"warm_start must have coef_ of shape ({k}, {d}), "
                    f"got {tuple(warm_start.coef_.shape)}"
                )
            w0 = warm_start.coef_.to(device=device, dtype=self.dtype)
            b0 = warm_start.intercept_.to(device=device, dtype=self.dtype)
            params[: k * d] = w0.flatten()
            params[k * d :] = b0 + w0 @ mu
        objective = _SoftmaxObjective(x, labels, mu, k, 1.0 / (self.C * n))
        result = lbfgs(
            objective,
            params,
            max_iter=self.max_iter,
            gtol=self.tol,
            ftol=self.tol * 1e-2,
            history_size=self.history_size,
            line_model=objective.line,
        )
        weight = result.x[: k * d].view(k, d)
        self.coef_ = weight.clone()
        self.intercept_ = result.x[k * d :] - weight @ mu
        self.num_classes_ = k
        self.n_iter_ = result.n_iter
        self.n_eval_ = result.n_eval
        self.converged_ = result.converged
        self.stop_reason_ = result.reason
        self.loss_ = result.f
        return self

    def _check_fitted(self) -> None:
        if not hasattr(self, "coef_"):
            raise ValueError("this LogisticRegression is not fitted yet; call fit(X, y) first")

    def decision_function(self, X: torch.Tensor) -> torch.Tensor:
        """Class scores ``(n, d) -> (n, k)`` on the fit device, in the fit dtype.

        Raises:
            ValueError: If not fitted or ``d`` differs from the training features.
            TypeError: If ``X`` is not a floating point tensor.
        """
        self._check_fitted()
        check_features(X, "X")
        if X.shape[1] != self.coef_.shape[1]:
            raise ValueError(
                f"X must have {self.coef_.shape[1]} features as in fit, got {X.shape[1]}"
            )
        x = X.to(device=self.coef_.device, dtype=self.coef_.dtype)
        return torch.addmm(self.intercept_, x, self.coef_.t())

    def predict_proba(self, X: torch.Tensor) -> torch.Tensor:
        """Softmax probabilities ``(n, d) -> (n, k)``."""
        return self.decision_function(X).softmax(dim=1)

    def predict(self, X: torch.Tensor) -> torch.Tensor:
        """Predicted labels ``(n, d) -> (n,)`` (int64, on the fit device)."""
        return self.decision_function(X).argmax(dim=1)

    def score(self, X: torch.Tensor, y: torch.Tensor) -> float:
        """Top-1 accuracy as a fraction in ``[0, 1]``.

        Raises:
            ValueError: If ``y`` does not have one label per row of ``X``.
        """
        check_features(X, "X")
        check_labels(y, X.shape[0], "y")
        if X.shape[0] == 0:
            raise ValueError("X must contain at least one sample, got 0")
        pred = self.predict(X)
        correct = (pred == y.to(pred.device)).sum()
        return float(correct) / X.shape[0]

    def __repr__(self) -> str:
        return (
            f"LogisticRegression(C={self.C!r}, max_iter={self.max_iter}, tol={self.tol!r}, "
            f"center={self.center}, dtype={self.dtype})"
        )
