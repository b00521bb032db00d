"""Regularisation search and the seeded linear probe of the transfer protocol.

Sariyildiz et al., "No Reason for No Supervision" (ICLR 2023) evaluate a frozen backbone by
training an L2-regularised logistic regression on its features, with the regularisation tuned on
a validation split of trainval, refitting on all of trainval and reporting test top-1. This module
implements that protocol:

1. :func:`stratified_split` holds out ``val_fraction`` of trainval per class (seeded), or
   :func:`per_class_split` exactly ``val_per_class`` images per class where the dataset's
   reference split fixes that number (EuroSAT: 540);
2. :func:`refine_search` evaluates ``C`` on a log grid over ``[c_min, c_max]`` and then refines
   around the best value by halving the log-step ``refine_steps`` times; the best ``C`` has the
   highest validation accuracy, and **ties go to the smallest ``C``** (the strongest
   regularisation, i.e. the simplest model);
3. the classifier is refitted on trainval with that ``C`` and scored on test;
4. this repeats for every seed; the accuracies are averaged and turned into log-odds.

Fits along the search are warm-started from the already fitted ``C`` nearest in log-space, and
the coarse grid runs from strong to weak regularisation so that every start is close. A fit that
stops on ``max_iter`` or a failed line search is used as it is, but never silently: it is logged
as a warning, and each seed records whether its final refit converged.
"""

from __future__ import annotations

import logging
import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from protohead import _validation as check
from protohead.evaluation.checks import check_finite_cast
from protohead.evaluation.logreg import LogisticRegression
from protohead.evaluation.metrics import log_odds
from protohead.evaluation.splits import per_class_split, stratified_split

__all__ = ["ProbeResult", "SearchConfig", "SeedResult", "linear_probe", "refine_search"]

logger = logging.getLogger(__name__)

# Exponents are rounded so that a C reached twice (grid and refinement) is evaluated once.
_EXP_DIGITS = 9


@dataclass(frozen=True)
class SearchConfig:
    """Settings of the regularisation search and of every logistic-regression fit.

    Args:
        c_min: Smallest ``C`` tried, ``> 0``.
        c_max: Largest ``C`` tried, ``>= c_min``.
        grid_points: Points of the coarse log grid, ``>= 2`` (``1`` only when
            ``c_min == c_max``).
        refine_steps: Refinement rounds around the best ``C``, ``>= 0``; each halves the
            log10-step and tries the two neighbours of the current best.
        val_fraction: Validation fraction of trainval per class, in ``(0, 1)``.
        max_iter: L-BFGS iteration cap per fit, ``>= 1``.
        tol: Gradient tolerance per fit, ``> 0`` (see :class:`LogisticRegression`).
        dtype: ``torch.float32`` or ``torch.float64``.
        device: Device of the fits; ``None`` keeps the features' device.

    Raises:
        TypeError: If a count is not an int or a bound or fraction is not a real number.
        ValueError: On an out-of-range value.

    Example:
        >>> SearchConfig(c_min=1e-3, c_max=1e3, grid_points=7).refine_steps
        3
    """

    c_min: float = 1e-6
    c_max: float = 1e5
    grid_points: int = 12
    refine_steps: int = 3
    val_fraction: float = 0.2
    max_iter: int = 1000
    tol: float = 1e-5
    dtype: torch.dtype = torch.float32
    device: str | torch.device | None = None

    def __post_init__(self) -> None:
        # Types first: a float count fails late inside range(), a str bound inside math.log10.
        for name in ("grid_points", "refine_steps"):
            check.integer(name, getattr(self, name))
        for name in ("c_min", "c_max", "val_fraction"):
            check.real(name, getattr(self, name))
        check.real_in("c_min", self.c_min, above=0)
        if not (math.isfinite(self.c_max) and self.c_max >= self.c_min):
            raise ValueError(f"c_max must be finite and >= c_min={self.c_min}, got {self.c_max!r}")
        min_points = 1 if self.c_min == self.c_max else 2
        if self.grid_points < min_points:
            raise ValueError(f"grid_points must be >= {min_points}, got {self.grid_points}")
        if self.refine_steps < 0:
            raise ValueError(f"refine_steps must be >= 0, got {self.refine_steps}")
        check.real_in("val_fraction", self.val_fraction, above=0, below=1)
        # Constructing a classifier validates max_iter, tol and dtype with its messages.
        LogisticRegression(max_iter=self.max_iter, tol=self.tol, dtype=self.dtype)


@dataclass(frozen=True)
class SeedResult:
    """Outcome of the protocol for one seed.

    Attributes:
        seed: Seed of the train/val split.
        best_c: Selected ``C``.
        val_accuracy: Validation accuracy at ``best_c`` (fraction).
        test_accuracy: Test top-1 of the trainval refit at ``best_c`` (fraction).
        trials: ``(C, val_accuracy)`` pairs in evaluation order.
        converged: Whether the trainval refit met its tolerance (``converged_``).
        stop_reason: Why the refit stopped (``stop_reason_``: ``"gtol"``, ``"ftol"``,
            ``"max_iter"`` or ``"line_search"``).

    Example:
        >>> result = SeedResult(0, best_c=1.0, val_accuracy=0.9, test_accuracy=0.88,
        ...                     trials=((1.0, 0.9),))
        >>> result.converged, result.stop_reason
        (True, 'gtol')
    """

    seed: int
    best_c: float
    val_accuracy: float
    test_accuracy: float
    trials: tuple[tuple[float, float], ...]
    converged: bool = True
    stop_reason: str = "gtol"


@dataclass(frozen=True)
class ProbeResult:
    """Seed-averaged linear-probe result.

    Attributes:
        seeds: One :class:`SeedResult` per seed, in the order given.
        accuracy: Mean test top-1 over seeds (fraction).
        accuracy_std: Population standard deviation of the per-seed test top-1.
        log_odds: :func:`~protohead.evaluation.metrics.log_odds` of ``accuracy``.

    Example:
        >>> ProbeResult(seeds=(), accuracy=0.5, accuracy_std=0.0, log_odds=0.0).log_odds
        0.0
    """

    seeds: tuple[SeedResult, ...]
    accuracy: float
    accuracy_std: float
    log_odds: float


def refine_search(
    score: Callable[[float], float], config: SearchConfig | None = None
) -> tuple[float, float, tuple[tuple[float, float], ...]]:
    """Maximise ``score(C)`` over a log grid refined around its best point.

    Args:
        score: Validation accuracy (any comparable number) of a given ``C``; called once per
            distinct ``C``, coarse grid in increasing order first.
        config: Grid settings; only ``c_min``, ``c_max``, ``grid_points`` and
            ``refine_steps`` are used. Defaults to :class:`SearchConfig()`.

    Returns:
        ``(best_c, best_score, trials)``; the best has the highest score and, among equal
        scores, the smallest ``C``; ``trials`` lists ``(C, score)`` in evaluation order.

    Example:
        >>> cfg = SearchConfig(c_min=1e-2, c_max=1e2, grid_points=5, refine_steps=2)
        >>> best, value, trials = refine_search(lambda c: -abs(math.log10(c) - 0.5), cfg)
        >>> round(best, 3), len(trials)
        (3.162, 9)
    """
    cfg = SearchConfig() if config is None else config
    lo, hi = math.log10(cfg.c_min), math.log10(cfg.c_max)
    tried: dict[float, float] = {}
    trials: list[tuple[float, float]] = []

    def visit(exponent: float) -> None:
        key = round(exponent, _EXP_DIGITS)
        if key in tried or key < round(lo, _EXP_DIGITS) or key > round(hi, _EXP_DIGITS):
            return
        c = 10.0**key
        value = score(c)
        tried[key] = value
        trials.append((c, value))

    def best_key() -> float:
        # Highest score first, then the smallest exponent: ties go to the strongest penalty.
        return min(tried, key=lambda e: (-tried[e], e))

    if cfg.grid_points == 1:
        visit(lo)
        step = 0.0
    else:
        step = (hi - lo) / (cfg.grid_points - 1)
        for i in range(cfg.grid_points):
            visit(lo + i * step)
    for _ in range(cfg.refine_steps):
        step /= 2.0
        center = best_key()
        visit(center - step)
        visit(center + step)
    best = best_key()
    return 10.0**best, tried[best], tuple(trials)


def _nearest(models: dict[float, LogisticRegression], c: float) -> LogisticRegression | None:
    if not models:
        return None
    target = math.log10(c)
    return models[min(models, key=lambda k: (abs(math.log10(k) - target), k))]


def _check_pair(features: torch.Tensor, labels: torch.Tensor, name: str) -> None:
    if not isinstance(features, torch.Tensor) or not isinstance(labels, torch.Tensor):
        raise TypeError(f"{name} features and labels must be torch.Tensors")
    if features.ndim != 2 or labels.ndim != 1 or features.shape[0] != labels.shape[0]:
        raise ValueError(
            f"{name} features must be (n, d) and labels (n,), got shapes "
            f"{tuple(features.shape)} and {tuple(labels.shape)}"
        )


def linear_probe(
    trainval_features: torch.Tensor,
    trainval_labels: torch.Tensor,
    test_features: torch.Tensor,
    test_labels: torch.Tensor,
    *,
    seeds: Sequence[int] = (0,),
    config: SearchConfig | None = None,
    num_classes: int | None = None,
    val_per_class: int | None = None,
    name: str | None = None,
) -> ProbeResult:
    """Run the tuned linear-probe protocol for each seed and average the test accuracy.

    Shapes: features ``(n, d)``, labels ``(n,)`` with values in ``[0, num_classes)``.

    Args:
        trainval_features: Features of trainval (searched on and refitted on).
        trainval_labels: Labels of trainval.
        test_features: Features of the test split (``d`` as trainval).
        test_labels: Labels of the test split.
        seeds: Seeds of the train/val splits, at least one, distinct. The fits themselves are
            deterministic, so seeds differ only through the split.
        config: Search and fit settings; defaults to :class:`SearchConfig()`.
        num_classes: Number of classes; defaults to ``max(trainval_labels) + 1``.
        val_per_class: Validate on exactly this many trainval samples per class
            (:func:`per_class_split`, e.g. EuroSAT's 540, see
            :attr:`TransferDataset.val_per_class <protohead.evaluation.pairs.TransferDataset>`);
            ``None`` holds out ``config.val_fraction`` per class (:func:`stratified_split`).
        name: Dataset name for the log messages (e.g. unconverged fits).

    Returns:
        A :class:`ProbeResult`.

    Raises:
        TypeError: If an input is not a tensor.
        ValueError: On shape mismatches, an empty or repeated ``seeds``, a class with too few
            trainval samples for the validation split, a test label without a class, or
            features that are not finite in ``config.dtype``.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> y = torch.arange(3).repeat(30)
        >>> x = 3.0 * torch.eye(3)[y] + torch.randn(90, 3, generator=g)
        >>> cfg = SearchConfig(c_min=1e-3, c_max=1e1, grid_points=3, refine_steps=1)
        >>> result = linear_probe(x[:60], y[:60], x[60:], y[60:], seeds=(0, 1), config=cfg)
        >>> len(result.seeds), result.accuracy > 0.8
        (2, True)
    """
    cfg = SearchConfig() if config is None else config
    _check_pair(trainval_features, trainval_labels, "trainval")
    _check_pair(test_features, test_labels, "test")
    if test_features.shape[1] != trainval_features.shape[1]:
        raise ValueError(
            f"test features must have d={trainval_features.shape[1]} as trainval, "
            f"got {test_features.shape[1]}"
        )
    seed_list = list(seeds)
    if not seed_list or len(set(seed_list)) != len(seed_list):
        raise ValueError(f"seeds must be a non-empty sequence of distinct ints, got {seed_list}")
    k = int(trainval_labels.max()) + 1 if num_classes is None else num_classes
    if test_labels.numel() and (int(test_labels.min()) < 0 or int(test_labels.max()) >= k):
        raise ValueError(f"test labels must be in [0, {k}), got a label outside")

    device = torch.device(cfg.device) if cfg.device is not None else trainval_features.device
    x_all = trainval_features.to(device=device, dtype=cfg.dtype)
    y_all = trainval_labels.to(device=device, dtype=torch.long)
    x_test = test_features.to(device=device, dtype=cfg.dtype)
    y_test = test_labels.to(device=device, dtype=torch.long)
    # Checked after the cast: finite float64 features can overflow a float32 fit.
    check_finite_cast(x_all, trainval_features, "trainval features")
    check_finite_cast(x_test, test_features, "test features")
    label = "linear probe" if name is None else name

    def make(c: float) -> LogisticRegression:
        return LogisticRegression(c, max_iter=cfg.max_iter, tol=cfg.tol, dtype=cfg.dtype)

    refits: dict[float, tuple[float, LogisticRegression]] = {}
    results: list[SeedResult] = []
    for seed in seed_list:
        if val_per_class is None:
            train_idx, val_idx = stratified_split(
                trainval_labels.cpu(), val_fraction=cfg.val_fraction, seed=seed
            )
        else:
            train_idx, val_idx = per_class_split(
                trainval_labels.cpu(), per_class=val_per_class, seed=seed
            )
        train_idx, val_idx = train_idx.to(device), val_idx.to(device)
        x_train, y_train = x_all[train_idx], y_all[train_idx]
        x_val, y_val = x_all[val_idx], y_all[val_idx]
        fitted: dict[float, LogisticRegression] = {}
        unconverged: list[str] = []

        def score(
            c: float,
            x_train: torch.Tensor = x_train,
            y_train: torch.Tensor = y_train,
            x_val: torch.Tensor = x_val,
            y_val: torch.Tensor = y_val,
            fitted: dict[float, LogisticRegression] = fitted,
            unconverged: list[str] = unconverged,
        ) -> float:
            clf = make(c).fit(x_train, y_train, num_classes=k, warm_start=_nearest(fitted, c))
            fitted[c] = clf
            if not clf.converged_:
                unconverged.append(f"C={c:.3g}: {clf.stop_reason_}")
            return clf.score(x_val, y_val)

        best_c, val_acc, trials = refine_search(score, cfg)
        if unconverged:
            # One line per seed, not per fit: a too small max_iter would flood the log.
            logger.warning(
                "%s, seed %d: %d of %d search fits did not converge (%s); raise max_iter",
                label,
                seed,
                len(unconverged),
                len(trials),
                ", ".join(unconverged),
            )
        if best_c not in refits:
            clf = make(best_c).fit(x_all, y_all, num_classes=k, warm_start=fitted[best_c])
            refits[best_c] = (clf.score(x_test, y_test), clf)
            if not clf.converged_:
                logger.warning(
                    "%s, seed %d: the final fit at C=%.3g did not converge (stop reason %s after "
                    "%d iterations); its test accuracy is that of an unfinished fit, raise "
                    "max_iter",
                    label,
                    seed,
                    best_c,
                    clf.stop_reason_,
                    clf.n_iter_,
                )
        test_acc, final = refits[best_c]
        logger.info(
            "%s, seed %d: best C=%.3g (val %.2f%%), test top-1 %.2f%%",
            label,
            seed,
            best_c,
            100 * val_acc,
            100 * test_acc,
        )
        results.append(
            SeedResult(
                seed, best_c, val_acc, test_acc, trials, final.converged_, final.stop_reason_
            )
        )

    accuracies = [r.test_accuracy for r in results]
    mean = statistics.fmean(accuracies)
    return ProbeResult(
        seeds=tuple(results),
        accuracy=mean,
        accuracy_std=statistics.pstdev(accuracies),
        log_odds=log_odds(min(max(mean, 0.0), 1.0)),
    )
