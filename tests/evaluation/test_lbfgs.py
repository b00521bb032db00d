"""Tests for protohead.evaluation.lbfgs."""

from __future__ import annotations

import pytest
import torch

from protohead.evaluation.lbfgs import lbfgs


def quadratic(scale: torch.Tensor, target: torch.Tensor):  # type: ignore[no-untyped-def]
    def fun(x: torch.Tensor) -> tuple[float, torch.Tensor]:
        r = x - target
        return float((scale * r * r).sum()), 2 * scale * r

    return fun


def rosenbrock(x: torch.Tensor) -> tuple[float, torch.Tensor]:
    a, b = x[:-1], x[1:]
    f = (100 * (b - a * a) ** 2 + (1 - a) ** 2).sum()
    g = torch.zeros_like(x)
    g[:-1] = -400 * a * (b - a * a) - 2 * (1 - a)
    g[1:] += 200 * (b - a * a)
    return float(f), g


def test_ill_conditioned_quadratic_converges() -> None:
    scale = torch.logspace(0, 4, 50, dtype=torch.float64)
    target = torch.linspace(-1, 1, 50, dtype=torch.float64)
    result = lbfgs(
        quadratic(scale, target), torch.zeros(50, dtype=torch.float64), gtol=1e-8, ftol=0.0
    )
    assert result.converged and result.reason in ("gtol", "ftol")
    torch.testing.assert_close(result.x, target, atol=1e-6, rtol=0)
    assert result.n_eval >= result.n_iter + 1


def test_rosenbrock_converges_from_standard_start() -> None:
    x0 = torch.tensor([-1.2, 1.0, -1.2, 1.0], dtype=torch.float64)
    result = lbfgs(rosenbrock, x0, gtol=1e-9, ftol=0.0, max_iter=500)
    assert result.converged
    torch.testing.assert_close(result.x, torch.ones(4, dtype=torch.float64), atol=1e-6, rtol=0)
    assert torch.equal(x0, torch.tensor([-1.2, 1.0, -1.2, 1.0], dtype=torch.float64))


def test_first_step_is_used_for_the_first_iteration() -> None:
    scale, target = torch.ones(3, dtype=torch.float64), torch.full((3,), 5.0, dtype=torch.float64)
    calls: list[float] = []

    def exact(x: torch.Tensor, d: torch.Tensor) -> float:
        calls.append(float(d.abs().max()))
        return 0.5  # exact line minimiser of sum (x - t)^2 along -g

    result = lbfgs(quadratic(scale, target), torch.zeros(3, dtype=torch.float64), first_step=exact)
    assert len(calls) == 1
    assert result.n_iter == 1 and result.n_eval == 2
    torch.testing.assert_close(result.x, target)


def test_stops_at_max_iter_and_on_ftol() -> None:
    x0 = torch.tensor([-1.2, 1.0], dtype=torch.float64)
    capped = lbfgs(rosenbrock, x0, max_iter=3, gtol=0.0, ftol=0.0)
    assert capped.reason == "max_iter" and not capped.converged and capped.n_iter == 3
    loose = lbfgs(rosenbrock, x0, gtol=0.0, ftol=1e-2)
    assert loose.reason == "ftol" and loose.converged


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"max_iter": 0}, "max_iter, history_size and max_ls must be >= 1"),
        ({"gtol": -1.0}, "gtol and ftol must be >= 0"),
    ],
)
def test_rejects_bad_options(kwargs: dict[str, float], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        lbfgs(rosenbrock, torch.zeros(2), **kwargs)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"x0 must be a flat \(p,\) tensor, got shape \(2, 2\)"):
        lbfgs(rosenbrock, torch.zeros(2, 2))


def test_line_model_path_reaches_the_same_minimum() -> None:
    from protohead.evaluation.lbfgs import lbfgs

    scale = torch.tensor([1.0, 10.0, 100.0], dtype=torch.float64)
    target = torch.tensor([1.0, -2.0, 3.0], dtype=torch.float64)
    values: list[float] = []

    def fun(x: torch.Tensor) -> tuple[float, torch.Tensor]:
        r = x - target
        return float((scale * r * r).sum()), 2 * scale * r

    class QuadraticLine:
        def __init__(self, x: torch.Tensor, d: torch.Tensor) -> None:
            self.x, self.d = x, d

        def value(self, t: float) -> tuple[float, float]:
            f, g = fun(self.x + t * self.d)
            values.append(t)
            return f, float(torch.dot(g, self.d))

        def gradient(self, t: float) -> torch.Tensor:
            return fun(self.x + t * self.d)[1]

        def newton_step(self) -> float:
            curvature = float((2 * scale * self.d * self.d).sum())
            return -float(torch.dot(fun(self.x)[1], self.d)) / curvature

        def accept(self, t: float) -> None:
            pass

    x0 = torch.zeros(3, dtype=torch.float64)
    plain = lbfgs(fun, x0, gtol=1e-9, ftol=0.0)
    lined = lbfgs(fun, x0, gtol=1e-9, ftol=0.0, line_model=QuadraticLine)
    assert lined.converged and values  # the line model was used
    torch.testing.assert_close(lined.x, plain.x, atol=1e-7, rtol=0)
    torch.testing.assert_close(lined.x, target, atol=1e-7, rtol=0)
