"""Tests for protohead.evaluation.logreg."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from protohead.evaluation.logreg import LogisticRegression


def gaussian_clusters(
    n_per_class: int, d: int, k: int, spread: float, seed: int, noise_seed: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``k`` Gaussian clusters (means from ``seed``), unit noise (from ``noise_seed``)."""
    means = torch.randn(k, d, generator=torch.Generator().manual_seed(seed)) * spread
    noise = torch.Generator().manual_seed(seed + 1 if noise_seed is None else noise_seed)
    y = torch.arange(k).repeat_interleave(n_per_class)
    x = means[y] + torch.randn(y.numel(), d, generator=noise)
    return x, y


def objective(
    x: torch.Tensor, y: torch.Tensor, w: torch.Tensor, b: torch.Tensor, c: float
) -> float:
    x, w, b = x.double(), w.double(), b.double()
    ce = F.cross_entropy(x @ w.t() + b, y)
    return float(ce + 0.5 / (c * x.shape[0]) * w.pow(2).sum())


@pytest.mark.parametrize("c", [0.01, 1.0])
def test_matches_sklearn_at_same_c(c: float) -> None:
    sklearn_linear = pytest.importorskip("sklearn.linear_model")
    x, y = gaussian_clusters(120, 20, 5, spread=0.7, seed=0)
    x_test, y_test = gaussian_clusters(200, 20, 5, spread=0.7, seed=0, noise_seed=99)
    ours = LogisticRegression(c).fit(x, y)
    ref = sklearn_linear.LogisticRegression(C=c, tol=1e-10, max_iter=10_000)
    ref.fit(x.double().numpy(), y.numpy())
    acc_ours = ours.score(x_test, y_test)
    acc_ref = float(ref.score(x_test.double().numpy(), y_test.numpy()))
    assert abs(acc_ours - acc_ref) <= 0.005
    assert abs(ours.score(x, y) - float(ref.score(x.double().numpy(), y.numpy()))) <= 0.005
    # Same objective: the optimum is the same point, up to float32 round-off.
    w_ref, b_ref = torch.from_numpy(ref.coef_), torch.from_numpy(ref.intercept_)
    f_ours = objective(x, y, ours.coef_, ours.intercept_, c)
    f_ref = objective(x, y, w_ref, b_ref, c)
    assert f_ours == pytest.approx(f_ref, rel=1e-4)
    assert ours.converged_


def test_centering_is_an_exact_reparametrisation() -> None:
    x, y = gaussian_clusters(40, 8, 3, spread=1.0, seed=2)
    x = x + 5.0  # a large feature mean is where centring matters
    centred = LogisticRegression(0.5, dtype=torch.float64, tol=1e-9).fit(x, y)
    plain = LogisticRegression(0.5, dtype=torch.float64, tol=1e-9, center=False).fit(x, y)
    torch.testing.assert_close(centred.coef_, plain.coef_, atol=1e-5, rtol=1e-4)
    logits_c, logits_p = centred.decision_function(x), plain.decision_function(x)
    # Softmax logits are defined up to a per-row shift.
    shifted_c = logits_c - logits_c.mean(1, keepdim=True)
    shifted_p = logits_p - logits_p.mean(1, keepdim=True)
    torch.testing.assert_close(shifted_c, shifted_p, atol=1e-4, rtol=1e-4)


def test_warm_start_reaches_same_optimum_in_fewer_evaluations() -> None:
    x, y = gaussian_clusters(60, 16, 4, spread=0.5, seed=3)
    previous = LogisticRegression(0.1, dtype=torch.float64).fit(x, y)
    cold = LogisticRegression(0.2, dtype=torch.float64, tol=1e-8).fit(x, y)
    warm = LogisticRegression(0.2, dtype=torch.float64, tol=1e-8).fit(x, y, warm_start=previous)
    assert warm.n_eval_ < cold.n_eval_
    assert warm.loss_ == pytest.approx(cold.loss_, rel=1e-8)
    torch.testing.assert_close(warm.coef_, cold.coef_, atol=1e-4, rtol=1e-3)


def test_predict_proba_score_shapes_and_dtypes() -> None:
    x, y = gaussian_clusters(10, 4, 3, spread=3.0, seed=4)
    for dtype in (torch.float32, torch.float64):
        clf = LogisticRegression(1.0, dtype=dtype).fit(x, y)
        assert clf.coef_.shape == (3, 4) and clf.intercept_.shape == (3,)
        assert clf.coef_.dtype == dtype
        proba = clf.predict_proba(x)
        assert proba.shape == (30, 3)
        torch.testing.assert_close(proba.sum(1), torch.ones(30, dtype=dtype))
        assert clf.predict(x).dtype == torch.int64
        assert clf.score(x, y) > 0.9
        assert clf.num_classes_ == 3


def test_num_classes_can_exceed_observed_labels() -> None:
    x, y = gaussian_clusters(10, 4, 2, spread=3.0, seed=5)
    clf = LogisticRegression().fit(x, y, num_classes=4)
    assert clf.coef_.shape == (4, 4)
    assert set(clf.predict(x).tolist()) <= {0, 1}


def test_inputs_are_not_modified() -> None:
    x, y = gaussian_clusters(10, 4, 2, spread=1.0, seed=6)
    x_copy, y_copy = x.clone(), y.clone()
    previous = LogisticRegression(0.3).fit(x, y)
    coef = previous.coef_.clone()
    LogisticRegression(1.0).fit(x, y, warm_start=previous)
    assert torch.equal(x, x_copy) and torch.equal(y, y_copy)
    assert torch.equal(previous.coef_, coef)


def test_max_iter_reports_not_converged() -> None:
    x, y = gaussian_clusters(30, 10, 3, spread=0.5, seed=7)
    clf = LogisticRegression(100.0, max_iter=2, tol=1e-12).fit(x, y)
    assert clf.n_iter_ == 2
    assert not clf.converged_
    assert clf.stop_reason_ == "max_iter"


@settings(max_examples=15, deadline=None)
@given(
    c=st.floats(min_value=1e-3, max_value=1e2),
    seed=st.integers(min_value=0, max_value=10_000),
)
def test_solution_beats_perturbations(c: float, seed: int) -> None:
    x, y = gaussian_clusters(8, 5, 3, spread=1.0, seed=seed)
    clf = LogisticRegression(c, dtype=torch.float64, tol=1e-9).fit(x, y)
    best = objective(x, y, clf.coef_, clf.intercept_, c)
    assert best <= math.log(3) + 1e-9  # never worse than the all-zero start
    g = torch.Generator().manual_seed(seed)
    for _ in range(3):
        dw = torch.randn(clf.coef_.shape, generator=g, dtype=torch.float64) * 1e-2
        db = torch.randn(clf.intercept_.shape, generator=g, dtype=torch.float64) * 1e-2
        assert best <= objective(x, y, clf.coef_ + dw, clf.intercept_ + db, c) + 1e-10


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"C": 0.0}, ValueError, r"C must be a real number > 0, got 0\.0"),
        ({"C": float("inf")}, ValueError, r"C must be finite, got inf"),
        ({"C": True}, TypeError, "C must be a real number, got bool True"),
        ({"tol": True}, TypeError, "tol must be a real number, got bool True"),
        ({"max_iter": 0}, ValueError, "max_iter must be an int >= 1, got 0"),
        ({"tol": -1.0}, ValueError, r"tol must be a real number > 0, got \-1\.0"),
        ({"history_size": 0}, ValueError, "history_size must be an int >= 1"),
        ({"dtype": torch.float16}, TypeError, "dtype must be torch.float32 or torch.float64"),
    ],
)
def test_constructor_rejects_bad_arguments(
    kwargs: dict[str, object], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        LogisticRegression(**kwargs)  # type: ignore[arg-type]


def test_fit_rejects_bad_inputs() -> None:
    x, y = torch.randn(6, 3), torch.tensor([0, 1, 2, 0, 1, 2])
    clf = LogisticRegression()
    with pytest.raises(TypeError, match="X must be a torch.Tensor, got list"):
        clf.fit([[0.0]], y)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"X must have shape \(n, d\), got shape \(6,\)"):
        clf.fit(torch.randn(6), y)
    with pytest.raises(TypeError, match="X must be a floating point tensor"):
        clf.fit(torch.ones(6, 3, dtype=torch.long), y)
    with pytest.raises(TypeError, match="y must be an integer tensor, got dtype torch.float32"):
        clf.fit(x, y.float())
    with pytest.raises(ValueError, match=r"y must have shape \(6,\)"):
        clf.fit(x, y[:5])
    with pytest.raises(ValueError, match="X must contain only finite values"):
        clf.fit(torch.full((6, 3), float("nan")), y)
    huge = torch.full((6, 3), 1e39, dtype=torch.float64)  # finite, beyond float32's 3.4e38
    with pytest.raises(
        ValueError,
        match=r"X must fit in torch.float32 \(\|value\| <= 3.403e\+38\), got finite "
        r"values up to 1e\+39 that overflow it; fit in torch.float64",
    ):
        clf.fit(huge, y)
    assert LogisticRegression(dtype=torch.float64).fit(huge, y).coef_.dtype == torch.float64
    with pytest.raises(ValueError, match=r"y must hold labels in \[0, 2\), got range \[0, 2\]"):
        clf.fit(x, y, num_classes=2)
    with pytest.raises(ValueError, match=r"y must hold labels in \[0, 3\), got range \[-1, 2\]"):
        clf.fit(x, torch.tensor([-1, 1, 2, 0, 1, 2]))
    with pytest.raises(ValueError, match="not fitted yet"):
        clf.predict(x)
    fitted = LogisticRegression().fit(x, y)
    with pytest.raises(ValueError, match="X must have 3 features as in fit, got 4"):
        fitted.predict(torch.randn(2, 4))
    with pytest.raises(ValueError, match=r"warm_start must have coef_ of shape \(4, 3\)"):
        LogisticRegression().fit(x, y, num_classes=4, warm_start=fitted)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_fits_on_gpu_like_on_cpu() -> None:
    x, y = gaussian_clusters(50, 16, 4, spread=0.6, seed=8)
    cpu = LogisticRegression(0.5, dtype=torch.float64, tol=1e-9).fit(x, y)
    gpu = LogisticRegression(0.5, dtype=torch.float64, tol=1e-9, device="cuda").fit(x, y)
    assert gpu.coef_.device.type == "cuda"
    assert gpu.loss_ == pytest.approx(cpu.loss_, rel=1e-7)
    assert gpu.score(x, y) == cpu.score(x, y)


def test_finiteness_check_is_exact_even_when_the_sum_overflows() -> None:
    from protohead.evaluation.checks import all_finite as _all_finite

    huge = torch.full((4, 3), 1e308, dtype=torch.float64)  # finite, but sums to inf
    assert _all_finite(huge)
    assert _all_finite(torch.full((1000, 10), 3e38))  # the float32 sum overflows to inf
    for bad in (float("nan"), float("inf"), -float("inf")):
        x = torch.ones(5, 2)
        x[3, 1] = bad
        assert not _all_finite(x)
        assert not _all_finite(x.double())


def test_line_model_matches_full_evaluations_along_the_line() -> None:
    from protohead.evaluation.softmax import SoftmaxObjective

    g = torch.Generator().manual_seed(0)
    n, d, k = 40, 6, 4
    x = torch.randn(n, d, generator=g, dtype=torch.float64) + 2.0
    labels = torch.randint(0, k, (n,), generator=g)
    objective = SoftmaxObjective(x, labels, x.mean(0), k, lam=0.05)
    params = torch.randn(k * d + k, generator=g, dtype=torch.float64)
    direction = torch.randn(k * d + k, generator=g, dtype=torch.float64)
    line = objective.line(params, direction)
    for t in (0.0, 0.3, 1.7):
        f_full, g_full = objective(params + t * direction)
        f_line, slope = line.value(t)
        assert f_line == pytest.approx(f_full, rel=1e-12)
        assert slope == pytest.approx(float(torch.dot(g_full, direction)), rel=1e-10)
        torch.testing.assert_close(line.gradient(t), g_full, rtol=1e-10, atol=1e-12)
    # The Newton step minimises the quadratic model: the slope there is ~0 for small steps.
    t_newton = line.newton_step()
    assert t_newton > 0.0
    line = objective.line(params, direction)
    line.accept(0.5)  # the objective's scores move to the new point without a product
    torch.testing.assert_close(
        objective.scores, objective.logits(*objective.split(params + 0.5 * direction))
    )
