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

Memory, for many classes. A fit keeps the features ``(n, d)``, the scores at the current point
and the direction's scores (two ``(n, k)`` matrices, updated in place), and the L-BFGS history
(``2 * history_size`` vectors of ``k * d + k``); log-sum-exp, probabilities and residuals are
formed ``chunk_rows`` rows at a time. iNaturalist 2018's refit on 437,513 x 2048 float32
features with 8,142 classes: 3.6 GB of features, 2 x 14.2 GB of scores, 2.7 GB of history,
about 1 GB of blocks and a few 67 MB parameter vectors, about 36 GB in all, where whole-matrix
temporaries would have needed about ten ``(n, k)`` matrices (140 GB).
"""

from __future__ import annotations

import torch
from typing_extensions import Self

from protohead import _validation as check
from protohead.evaluation import softmax
from protohead.evaluation.checks import check_features, check_finite_cast, check_labels
from protohead.evaluation.lbfgs import lbfgs
from protohead.evaluation.softmax import SoftmaxObjective

__all__ = ["LogisticRegression"]

_FLOAT_DTYPES = (torch.float32, torch.float64)


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
        chunk_rows: Rows per block of the ``(rows, k)`` temporaries of the fit and of
            :meth:`predict`, ``>= 1``; ``None`` takes as many as fit in
            :data:`~protohead.evaluation.softmax.DEFAULT_CHUNK_ELEMENTS` entries. Results do
            not depend on it beyond round-off; it bounds memory for many classes (see the
            module docstring).

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
        chunk_rows: int | None = None,
    ) -> None:
        # bool is an int subclass, but C=True is a mistake, never a penalty of 1: check rejects it.
        C = check.real_in("C", C, above=0)
        max_iter = check.integer("max_iter", max_iter, minimum=1)
        tol = check.real_in("tol", tol, above=0)
        history_size = check.integer("history_size", history_size, minimum=1)
        if dtype not in _FLOAT_DTYPES:
            raise TypeError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
        if chunk_rows is not None:
            chunk_rows = check.integer("chunk_rows", chunk_rows, minimum=1)
        self.C = float(C)
        self.max_iter = max_iter
        self.tol = float(tol)
        self.history_size = history_size
        self.center = center
        self.dtype = dtype
        self.device = None if device is None else torch.device(device)
        self.chunk_rows = chunk_rows

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
        k = check.integer("num_classes", k, minimum=1)
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
        objective = SoftmaxObjective(x, labels, mu, k, 1.0 / (self.C * n), self.chunk_rows)
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
        """Predicted labels ``(n, d) -> (n,)`` (int64, on the fit device).

        Scored in blocks of rows, so that no ``(n, k)`` matrix is formed for many classes.
        """
        self._check_fitted()
        k = self.coef_.shape[0]
        rows = self.chunk_rows or softmax.block_rows(k)
        parts = [self.decision_function(block).argmax(dim=1) for block in X.split(rows)]
        if not parts:  # zero rows: decision_function checks the shape
            return self.decision_function(X).argmax(dim=1)
        return torch.cat(parts)

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
            f"center={self.center}, dtype={self.dtype}, chunk_rows={self.chunk_rows})"
        )
