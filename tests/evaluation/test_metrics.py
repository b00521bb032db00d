"""Tests for protohead.evaluation.metrics."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protohead.evaluation.metrics import LOG_ODDS_EPS, log_odds


def test_log_odds_at_half_zero_and_one() -> None:
    assert log_odds(0.5) == 0.0
    bound = math.log((1 - LOG_ODDS_EPS) / LOG_ODDS_EPS)
    assert log_odds(1.0) == pytest.approx(bound)
    assert log_odds(0.0) == pytest.approx(-bound)
    assert LOG_ODDS_EPS == 1e-4
    assert log_odds(1.0) == pytest.approx(9.21024, abs=1e-5)


def test_clipping_follows_eps() -> None:
    assert log_odds(1.0, eps=0.01) == pytest.approx(math.log(99))
    assert log_odds(0.999, eps=0.01) == log_odds(1.0, eps=0.01)
    assert log_odds(0.9) == pytest.approx(math.log(9))


@given(st.floats(min_value=0.0, max_value=1.0))
def test_antisymmetric_and_bounded(p: float) -> None:
    assert log_odds(1.0 - p) == pytest.approx(-log_odds(p), abs=1e-6)
    assert abs(log_odds(p)) <= log_odds(1.0) + 1e-12


@given(st.floats(min_value=0.0, max_value=1.0), st.floats(min_value=0.0, max_value=1.0))
def test_monotonic(a: float, b: float) -> None:
    p, q = sorted((a, b))  # every example is checked, whichever order it was drawn in
    assert log_odds(p) <= log_odds(q)


@pytest.mark.parametrize("bad", [73.5, -0.1, 1.0001, float("nan")])
def test_rejects_accuracy_outside_unit_interval(bad: float) -> None:
    match = r"must be finite, got nan" if bad != bad else r"must be a fraction in \[0, 1\] .*got "
    with pytest.raises(ValueError, match=f"accuracy {match}"):
        log_odds(bad)


def test_rejects_bad_types_and_eps() -> None:
    with pytest.raises(TypeError, match="accuracy must be a real number, got str"):
        log_odds("0.5")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="accuracy must be a real number, got bool"):
        log_odds(True)
    with pytest.raises(ValueError, match=r"eps must be a real number in \(0, 0\.5\), got 0\.5"):
        log_odds(0.3, eps=0.5)
