"""The softmax objective of the logistic regression, and its restriction to a search line.

The loss and gradient of :class:`~protohead.evaluation.logreg.LogisticRegression` written out
(no autograd), evaluated in blocks of rows so that a fit with many classes never forms more
than the two ``(n, k)`` score matrices it keeps (see the memory note of
:mod:`~protohead.evaluation.logreg`). The line model lets L-BFGS try steps without a product
with the data: the scores are affine along a search direction.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

__all__ = ["DEFAULT_CHUNK_ELEMENTS", "SoftmaxLine", "SoftmaxObjective", "block_rows"]

DEFAULT_CHUNK_ELEMENTS = 2**26
"""Entries of an ``(n, k)`` temporary per block of rows when ``chunk_rows`` is not given:
64 Mi (256 MiB in float32), so the block temporaries stay small next to the two ``(n, k)``
score matrices the solver keeps."""


def block_rows(k: int) -> int:
    """Rows per block of ``(rows, k)`` temporaries: :data:`DEFAULT_CHUNK_ELEMENTS` entries.

    Example:
        >>> block_rows(8142), block_rows(10)
        (8242, 6710886)
    """
    return max(1, DEFAULT_CHUNK_ELEMENTS // max(k, 1))


class SoftmaxObjective:
    """Mean-scaled objective and gradient on the flat parameters ``[W (k*d), b' (k)]``.

    Two matrix products with the data per full evaluation: ``(n, d) (d, k)`` for the scores
    and ``(k, n) (n, d)`` for the gradient. Along a search line the scores are affine in the
    step, so :meth:`line` needs one product for the direction's scores, trial steps none, and
    the accepted step one for its gradient; the scores of the new point follow without a
    product (recomputed exactly every ``_REFRESH`` steps to bound round-off).

    Memory: the scores at the current point and, along a line, the direction's scores are kept,
    two ``(n, k)`` matrices; everything else (log-sum-exp, probabilities, residuals) is
    computed in blocks of ``chunk_rows`` rows, ``(chunk_rows, k)`` at a time. For iNaturalist
    2018 (350,000 training rows of the search, 8,142 classes) in float32 that is 2 x 11.4 GB
    plus blocks of 256 MiB, where whole-matrix temporaries would need ten such matrices.
    """

    _REFRESH = 25

    def __init__(
        self,
        x: torch.Tensor,
        labels: torch.Tensor,
        mu: torch.Tensor,
        k: int,
        lam: float,
        chunk_rows: int | None = None,
    ) -> None:
        self.x, self.labels, self.mu, self.k, self.lam = x, labels, mu, k, lam
        self.n, self.d = x.shape
        rows = block_rows(k) if chunk_rows is None else chunk_rows
        self.blocks = [slice(i, min(i + rows, self.n)) for i in range(0, self.n, rows)]
        self.scores: torch.Tensor | None = None  # (n, k) scores at `self.at`
        self.at: torch.Tensor | None = None
        self.steps = 0

    def split(self, params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        kd = self.k * self.d
        return params[:kd].view(self.k, self.d), params[kd:]

    def logits(
        self, weight: torch.Tensor, bias: torch.Tensor, out: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``(x - mu) W^T + b'`` without materialising the centred copy of x: ``(n, k)``.

        Written into ``out`` (block by block, no second ``(n, k)`` buffer) when given.
        """
        if not bool(weight.any()):  # a cold start: no product with the data needed
            if out is None:
                return bias.expand(self.n, self.k).clone()
            return out.copy_(bias.expand(self.n, self.k))
        shift = bias - weight @ self.mu
        if out is None:
            return torch.addmm(shift, self.x, weight.t())
        for rows in self.blocks:
            torch.addmm(shift, self.x[rows], weight.t(), out=out[rows])
        return out

    def _block(self, scores: torch.Tensor, rows: slice) -> tuple[torch.Tensor, torch.Tensor]:
        """Cross-entropy sum and softmax probabilities ``(r, k)`` of a block of scores."""
        lse = torch.logsumexp(scores, dim=1, keepdim=True)
        ce = (lse - scores.gather(1, self.labels[rows, None])).sum()
        return ce, torch.exp(scores - lse)

    def loss_and_gradient(
        self, scores_of: Callable[[slice], torch.Tensor], weight: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean cross-entropy and gradient at ``weight``, whose scores ``scores_of(rows)``
        gives block by block (only one ``(r, k)`` block of temporaries lives at a time)."""
        ce = weight.new_zeros(())
        grad_w = torch.zeros_like(weight)
        col = weight.new_zeros(self.k)
        for rows in self.blocks:
            block_ce, residual = self._block(scores_of(rows), rows)
            ce += block_ce
            labels = self.labels[rows, None]
            residual.scatter_add_(1, labels, residual.new_full(labels.shape, -1.0))
            col += residual.sum(dim=0)
            # r^T x, not (x^T r)^T: the same product, but 10x slower for few classes that way.
            grad_w.addmm_(residual.t(), self.x[rows])
        ce /= self.n
        col /= self.n
        grad_w /= self.n
        grad_w += self.lam * weight - torch.outer(col, self.mu)
        return ce, torch.cat([grad_w.flatten(), col])

    def __call__(self, params: torch.Tensor) -> tuple[float, torch.Tensor]:
        weight, bias = self.split(params)
        self.scores = None  # frees the old (n, k) scores before the new ones are allocated
        logits = self.logits(weight, bias)
        self.scores, self.at = logits, params
        ce, grad = self.loss_and_gradient(logits.__getitem__, weight)
        loss = ce + 0.5 * self.lam * weight.pow(2).sum()
        return float(loss), grad

    def line(self, params: torch.Tensor, direction: torch.Tensor) -> SoftmaxLine:
        scores = self.scores
        if scores is None or self.at is None or not torch.equal(self.at, params):
            self.scores = None
            scores = self.logits(*self.split(params))
            self.scores, self.at = scores, params
        return SoftmaxLine(self, params, direction, scores)


class SoftmaxLine:
    """:class:`SoftmaxObjective` along ``params + t * direction`` (a ``LineModel``).

    Holds the direction's scores ``(n, k)`` (the slope of the scores in ``t``); the scores at
    a trial step are formed block by block, never as a whole ``(n, k)`` matrix.
    """

    def __init__(
        self,
        objective: SoftmaxObjective,
        params: torch.Tensor,
        direction: torch.Tensor,
        scores: torch.Tensor,
    ) -> None:
        self.obj, self.params, self.direction, self.scores = objective, params, direction, scores
        weight, _ = objective.split(params)
        d_weight, d_bias = objective.split(direction)
        self.weight, self.d_weight = weight, d_weight
        slope = objective.logits(d_weight, d_bias)  # (n, k): scores change per unit t
        self.slope: torch.Tensor | None = slope
        self.slope_true = float(slope.gather(1, objective.labels[:, None]).sum())
        self.w2 = float(weight.pow(2).sum())
        self.wd = float(torch.dot(weight.flatten(), d_weight.flatten()))
        self.d2 = float(d_weight.pow(2).sum())

    def _at(self, t: float, rows: slice) -> torch.Tensor:
        """The scores at step ``t`` of a block of rows, ``(r, k)``."""
        assert self.slope is not None, "the line was used after accept()"
        return torch.add(self.scores[rows], self.slope[rows], alpha=t)

    def value(self, t: float) -> tuple[float, float]:
        assert self.slope is not None, "the line was used after accept()"
        lam, n = self.obj.lam, self.obj.n
        ce = self.scores.new_zeros(())
        expected_slope = self.scores.new_zeros(())
        for rows in self.obj.blocks:
            block_ce, probs = self.obj._block(self._at(t, rows), rows)
            ce += block_ce
            expected_slope += (probs * self.slope[rows]).sum()
        penalty = 0.5 * lam * (self.w2 + 2.0 * t * self.wd + t * t * self.d2)
        derivative = (float(expected_slope) - self.slope_true) / n + lam * (self.wd + t * self.d2)
        return float(ce) / n + penalty, derivative

    def gradient(self, t: float) -> torch.Tensor:
        weight = self.weight + t * self.d_weight
        return self.obj.loss_and_gradient(lambda rows: self._at(t, rows), weight)[1]

    def newton_step(self) -> float:
        assert self.slope is not None, "the line was used after accept()"
        pz_sum = self.scores.new_zeros(())
        curvature_sum = self.scores.new_zeros(())
        for rows in self.obj.blocks:
            direction_scores = self.slope[rows]
            _, probs = self.obj._block(self.scores[rows], rows)
            weighted = probs * direction_scores
            pz = weighted.sum(dim=1)
            pz_sum += pz.sum()
            curvature_sum += ((weighted * direction_scores).sum(dim=1) - pz * pz).sum()
        n = self.obj.n
        curvature = float(curvature_sum) / n + self.obj.lam * self.d2
        slope = (float(pz_sum) - self.slope_true) / n + self.obj.lam * self.wd
        return -slope / curvature if curvature > 0.0 else 0.0

    def accept(self, t: float) -> None:
        """Move the objective to ``params + t * direction``; the line is spent afterwards."""
        assert self.slope is not None, "accept() was called twice"
        obj = self.obj
        new_params = self.params + t * self.direction  # as the solver computes x + t d
        obj.steps += 1
        if obj.steps % obj._REFRESH == 0:
            obj.logits(*obj.split(new_params), out=self.scores)  # exact, in place
        else:
            self.scores.add_(self.slope, alpha=t)  # in place: no third (n, k) matrix
        obj.scores, obj.at = self.scores, new_params
        self.slope = None  # the direction's scores are not needed any more: free them now
