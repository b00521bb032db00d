"""Tests for protohead.evaluation.search."""

from __future__ import annotations

import logging
import math

import pytest
import torch

import protohead.evaluation.search as search_module
from protohead.evaluation.logreg import LogisticRegression
from protohead.evaluation.metrics import log_odds
from protohead.evaluation.report import DatasetResult
from protohead.evaluation.search import SearchConfig, linear_probe, refine_search
from protohead.evaluation.splits import stratified_split


def clusters(n: int, d: int, k: int, spread: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    means = torch.randn(k, d, generator=torch.Generator().manual_seed(0)) * spread
    y = torch.arange(n) % k
    return means[y] + torch.randn(n, d, generator=torch.Generator().manual_seed(seed)), y


def test_refine_search_finds_peak_between_grid_points() -> None:
    config = SearchConfig(c_min=1e-6, c_max=1e5, grid_points=12, refine_steps=4)
    best, value, trials = refine_search(lambda c: -abs(math.log10(c) - 0.3), config)
    assert abs(math.log10(best) - 0.3) <= 1.0 / 16 + 1e-9
    assert value == max(v for _, v in trials)
    cs = [c for c, _ in trials]
    assert len(cs) == len({round(math.log10(c), 6) for c in cs}), "a C was evaluated twice"
    assert all(1e-6 * (1 - 1e-9) <= c <= 1e5 * (1 + 1e-9) for c in cs)
    assert cs[:12] == sorted(cs[:12]), "coarse grid runs from strong to weak regularisation"


def test_refine_search_ties_go_to_smallest_c() -> None:
    config = SearchConfig(c_min=1e-3, c_max=1e3, grid_points=7, refine_steps=2)
    best, value, trials = refine_search(lambda c: 1.0 if c >= 0.1 else 0.5, config)
    assert value == 1.0
    assert best == min(c for c, v in trials if v == 1.0)
    assert best < 0.1 * 1.0001 or math.isclose(best, 0.1, rel_tol=1e-9)


def test_refine_search_stays_inside_bounds_and_single_point() -> None:
    config = SearchConfig(c_min=1e-2, c_max=1e2, grid_points=3, refine_steps=3)
    best, _, trials = refine_search(lambda c: c, config)  # increasing: best at the upper bound
    assert best == pytest.approx(1e2)
    assert all(c <= 1e2 * (1 + 1e-9) for c, _ in trials)
    single = SearchConfig(c_min=0.5, c_max=0.5, grid_points=1, refine_steps=2)
    best, _, trials = refine_search(lambda c: 0.0, single)
    assert best == pytest.approx(0.5) and len(trials) == 1


def test_linear_probe_picks_argmax_validation_c_and_averages_seeds() -> None:
    x, y = clusters(300, 10, 4, spread=0.5, seed=1)
    x_test, y_test = clusters(200, 10, 4, spread=0.5, seed=2)
    config = SearchConfig(c_min=1e-4, c_max=1e2, grid_points=7, refine_steps=2)
    result = linear_probe(x, y, x_test, y_test, seeds=(0, 1, 2), config=config)
    assert [s.seed for s in result.seeds] == [0, 1, 2]
    for seed in result.seeds:
        best_value = max(v for _, v in seed.trials)
        winners = [c for c, v in seed.trials if v == best_value]
        assert seed.best_c == min(winners)
        assert seed.val_accuracy == best_value
        # The reported validation accuracy is that of a classifier fitted at best_c.
        train_idx, val_idx = stratified_split(y, seed=seed.seed)
        clf = LogisticRegression(seed.best_c).fit(x[train_idx], y[train_idx], num_classes=4)
        assert abs(clf.score(x[val_idx], y[val_idx]) - seed.val_accuracy) <= 1.5 / len(val_idx)
        # Test accuracy is the trainval refit at best_c.
        refit = LogisticRegression(seed.best_c).fit(x, y, num_classes=4)
        assert abs(refit.score(x_test, y_test) - seed.test_accuracy) <= 1.5 / len(y_test)
    accuracies = [s.test_accuracy for s in result.seeds]
    assert result.accuracy == pytest.approx(sum(accuracies) / 3)
    assert result.log_odds == pytest.approx(log_odds(result.accuracy))
    assert result.accuracy > 0.6


def test_linear_probe_rejects_bad_inputs() -> None:
    x, y = clusters(40, 3, 2, spread=1.0, seed=0)
    with pytest.raises(ValueError, match="seeds must be a non-empty sequence of distinct ints"):
        linear_probe(x, y, x, y, seeds=(1, 1))
    with pytest.raises(ValueError, match="seeds must be a non-empty"):
        linear_probe(x, y, x, y, seeds=())
    with pytest.raises(ValueError, match="test features must have d=3 as trainval, got 4"):
        linear_probe(x, y, torch.randn(5, 4), y[:5])
    with pytest.raises(ValueError, match=r"trainval features must be \(n, d\) and labels \(n,\)"):
        linear_probe(x, y[:3], x, y)
    with pytest.raises(ValueError, match=r"test labels must be in \[0, 2\)"):
        linear_probe(x, y, x[:2], torch.tensor([0, 5]))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"c_min": 0.0}, r"c_min must be a real number > 0, got 0\.0"),
        ({"c_min": 1.0, "c_max": 0.5}, "c_max must be finite and >= c_min=1.0, got 0.5"),
        ({"grid_points": 1}, "grid_points must be >= 2, got 1"),
        ({"refine_steps": -1}, "refine_steps must be >= 0, got -1"),
        (
            {"val_fraction": 0.0},
            r"val_fraction must be a real number in \(0, 1\), got 0\.0",
        ),
        ({"max_iter": 0}, "max_iter must be an int >= 1, got 0"),
    ],
)
def test_search_config_validation(kwargs: dict[str, float], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        SearchConfig(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"grid_points": 2.5}, r"grid_points must be an int, got float 2\.5"),
        ({"refine_steps": 1.5}, r"refine_steps must be an int, got float 1\.5"),
        ({"grid_points": True}, r"grid_points must be an int, got bool True"),
        ({"c_min": "1"}, r"c_min must be a real number, got str '1'"),
        ({"c_max": None}, r"c_max must be a real number, got NoneType None"),
        ({"val_fraction": "0.2"}, r"val_fraction must be a real number, got str '0\.2'"),
    ],
)
def test_search_config_rejects_wrong_types(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(TypeError, match=match):
        SearchConfig(**kwargs)  # type: ignore[arg-type]


def test_unconverged_fits_are_logged_and_recorded(caplog: pytest.LogCaptureFixture) -> None:
    x, y = clusters(120, 6, 3, spread=0.7, seed=1)
    tiny = SearchConfig(c_min=1e-2, c_max=1e2, grid_points=3, refine_steps=0, max_iter=1)
    with caplog.at_level(logging.WARNING, logger="protohead.evaluation.search"):
        result = linear_probe(x, y, x, y, seeds=(0,), config=tiny, name="toyset")
    (seed,) = result.seeds
    assert (seed.converged, seed.stop_reason) == (False, "max_iter")
    assert "toyset, seed 0: 3 of 3 search fits did not converge (C=0.01: max_iter" in caplog.text
    assert f"toyset, seed 0: the final fit at C={seed.best_c:.3g} did not converge" in caplog.text
    entry = DatasetResult.from_probe("toyset", result, num_trainval=9, num_test=9, num_classes=3)
    assert entry.converged is False and entry.stop_reasons == ("max_iter",)

    caplog.clear()
    enough = SearchConfig(c_min=1e-2, c_max=1e2, grid_points=3, refine_steps=0)
    with caplog.at_level(logging.WARNING, logger="protohead.evaluation.search"):
        result = linear_probe(x, y, x, y, seeds=(0,), config=enough, name="toyset")
    assert result.seeds[0].converged and "did not converge" not in caplog.text
    entry = DatasetResult.from_probe("toyset", result, num_trainval=9, num_test=9, num_classes=3)
    assert entry.converged is True and entry.stop_reasons[0] in ("gtol", "ftol")


def test_val_per_class_uses_a_fixed_number_per_class(monkeypatch: pytest.MonkeyPatch) -> None:
    x, y = clusters(90, 4, 3, spread=1.0, seed=0)
    seen: list[list[int]] = []
    real = search_module.per_class_split

    def spy(labels: torch.Tensor, **kwargs: int) -> tuple[torch.Tensor, torch.Tensor]:
        train_idx, val_idx = real(labels, **kwargs)
        seen.append(torch.bincount(labels[val_idx]).tolist())
        return train_idx, val_idx

    monkeypatch.setattr(search_module, "per_class_split", spy)
    cfg = SearchConfig(c_min=1e-2, c_max=1e2, grid_points=3, refine_steps=0)
    linear_probe(x, y, x, y, seeds=(0, 1), config=cfg, val_per_class=7)
    assert seen == [[7, 7, 7], [7, 7, 7]]  # not the default 20% (6 per class)
    linear_probe(x, y, x, y, seeds=(0,), config=cfg)
    assert len(seen) == 2, "without val_per_class the stratified split is used"
    with pytest.raises(ValueError, match="every class needs more than per_class=30 samples"):
        linear_probe(x, y, x, y, config=cfg, val_per_class=30)


def test_float64_features_that_overflow_float32_are_named() -> None:
    x, y = clusters(40, 3, 2, spread=1.0, seed=0)
    huge = x.double() * 1e39
    with pytest.raises(ValueError, match="trainval features must fit in torch.float32"):
        linear_probe(huge, y, x, y)
    with pytest.raises(ValueError, match="test features must contain only finite values"):
        linear_probe(x, y, torch.full_like(x, float("nan")), y)
