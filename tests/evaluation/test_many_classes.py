"""The linear probe with many classes: row blocks bound the memory, results do not change.

iNaturalist 2018 has 8,142 classes and 437,513 training images; whole-matrix ``(n, k)``
temporaries would need about ten 14 GB matrices. These tests run the same code at reduced size
on the CPU.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from protohead.evaluation import softmax
from protohead.evaluation.logreg import LogisticRegression
from protohead.evaluation.search import SearchConfig, linear_probe


def clusters(
    n_per_class: int, d: int, k: int, seed: int, spread: float = 0.8
) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(k, d, generator=g) * spread
    y = torch.arange(k).repeat_interleave(n_per_class)
    return torch.relu(means[y] + torch.randn(y.numel(), d, generator=g)), y


class OutputShapes(TorchDispatchMode):
    """Records ``(op name, output shape)`` of every tensor an operator returns."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[str, tuple[int, ...]]] = []

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        outputs = out if isinstance(out, (tuple, list)) else (out,)
        for tensor in outputs:
            if isinstance(tensor, torch.Tensor):
                self.seen.append((func.overloadpacket.__name__, tuple(tensor.shape)))
        return out


def test_row_blocks_give_the_same_fit() -> None:
    x, y = clusters(12, 6, 5, seed=0)
    whole = LogisticRegression(0.7, dtype=torch.float64, tol=1e-9).fit(x, y)
    assert len(softmax.SoftmaxObjective(x, y, x.mean(0), 5, 0.1).blocks) == 1
    for rows in (1, 7, 59):
        blocked = LogisticRegression(0.7, dtype=torch.float64, tol=1e-9, chunk_rows=rows).fit(x, y)
        torch.testing.assert_close(blocked.coef_, whole.coef_, rtol=1e-6, atol=1e-8)
        torch.testing.assert_close(blocked.intercept_, whole.intercept_, rtol=1e-6, atol=1e-8)
        assert blocked.loss_ == pytest.approx(whole.loss_, rel=1e-12)
        assert torch.equal(blocked.predict(x), whole.predict(x))
    with pytest.raises(ValueError, match=r"chunk_rows must be an int >= 1, got 0"):
        LogisticRegression(chunk_rows=0)


def test_no_operator_forms_an_n_by_k_temporary() -> None:
    n_per_class, d, k, rows = 12, 5, 7, 8  # n = 84 training rows, blocks of 8
    x, y = clusters(n_per_class, d, k, seed=1)
    n = x.shape[0]
    clf = LogisticRegression(2.0, chunk_rows=rows, tol=1e-7)
    with OutputShapes() as recorder:
        clf.fit(x, y)
        clf.score(x, y)
    assert clf.n_iter_ > 5  # enough line searches, Newton steps and accepts to exercise
    full = [(name, shape) for name, shape in recorder.seen if shape == (n, k)]
    # The (n, k) matrices are only the kept scores: made by addmm (a product with the data),
    # by clone/expand (a cold start) and updated in place (add_, addmm into a block, copy_).
    assert {name for name, _ in full} <= {"addmm", "clone", "expand", "add_", "copy_"}, full
    wide = [
        (name, shape) for name, shape in recorder.seen
        if len(shape) == 2 and shape[1] == k and rows < shape[0] < n
    ]  # fmt: skip
    assert wide == []  # every other (r, k) temporary is one block


def test_probe_over_a_thousand_classes_in_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    """iNaturalist 2019's 1,010 classes, 4 training and 2 test images each, on the CPU."""
    k = 1010
    x, y = clusters(6, 32, k, seed=2, spread=3.0)
    test = torch.arange(x.shape[0]) % 6 >= 4
    config = SearchConfig(c_min=1e-1, c_max=1e2, grid_points=3, refine_steps=0, max_iter=60)
    args = (x[~test], y[~test], x[test], y[test])
    whole = linear_probe(*args, seeds=(0,), config=config, num_classes=k)
    # 100 rows a block: the 3,030 search rows, 4,040 refit rows and 2,020 test rows in 31-41 blocks.
    monkeypatch.setattr(softmax, "DEFAULT_CHUNK_ELEMENTS", 100 * k)
    blocked = linear_probe(*args, seeds=(0,), config=config, num_classes=k)
    assert blocked.seeds[0].best_c == whole.seeds[0].best_c
    assert blocked.accuracy == pytest.approx(whole.accuracy, abs=1 / 2020)
    assert whole.accuracy > 0.5  # chance is 0.1 %
