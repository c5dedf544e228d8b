"""Aggregate metrics over a few seeds: interquartile mean and (stratified) bootstrap intervals.

These are the reliable-evaluation statistics of Agarwal et al. (NeurIPS 2021): the interquartile
mean (IQM, the mean of the middle 50% of scores: robust to one bad seed, less noisy than the
median) and percentile confidence intervals from a *stratified* bootstrap, which resamples the runs
of each task (stratum) with replacement, independently per task, so every resample keeps the
design's number of runs per task.

Why not the ``rliable`` package: with pandas 3 (installed here) ``from rliable import library``
fails inside its import chain, and the computation is short; so it is implemented here with numpy
(and scipy for Welch's test). Conventions follow rliable: the IQM is scipy's 25% trimmed mean
(``int(0.25 * n)`` scores cut from each end) of all scores pooled over tasks, and intervals are
percentile intervals of the resampled statistic.

Every function takes plain sequences or arrays, ignores nothing silently (NaNs are the caller's to
drop; a NaN in the input gives a NaN result) and is deterministic for a given ``seed``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Optional, Sequence, Union

import numpy as np

__all__ = [
    "DEFAULT_CONFIDENCE",
    "DEFAULT_REPS",
    "Interval",
    "bootstrap_difference_ci",
    "curve_mean_ci",
    "iqm",
    "mean",
    "stratified_bootstrap_ci",
    "welch_p_value",
]

DEFAULT_REPS = 2000
DEFAULT_CONFIDENCE = 0.95

ArrayLike = Union[Sequence[float], np.ndarray]
#: reduces the last axis: (..., n) -> (...)
Statistic = Callable[[np.ndarray], np.ndarray]


@dataclasses.dataclass(frozen=True)
class Interval:
    """A point estimate and its confidence interval ``[low, high]``."""

    point: float
    low: float
    high: float

    def excludes(self, value: float) -> bool:
        """True when ``value`` lies outside ``[low, high]`` (False if the interval is NaN)."""
        return bool(value < self.low or value > self.high)


def mean(x: np.ndarray) -> np.ndarray:
    """Mean over the last axis (a :data:`Statistic`)."""
    return np.mean(np.asarray(x, dtype=float), axis=-1)


def iqm(x: np.ndarray) -> np.ndarray:
    """Interquartile mean over the last axis: sort, cut ``int(0.25 * n)`` values from each end,
    average the rest (scipy's ``trim_mean(x, 0.25)``; for n < 4 nothing is cut, i.e. the mean)."""
    values = np.sort(np.asarray(x, dtype=float), axis=-1)
    n = values.shape[-1]
    if n == 0:
        raise ValueError("iqm of an empty sample")
    cut = int(0.25 * n)
    return np.mean(values[..., cut : n - cut], axis=-1)


def _as_strata(scores: Union[ArrayLike, Sequence[ArrayLike]]) -> list[np.ndarray]:
    """One 1-D array per stratum; a flat sequence of numbers is a single stratum."""
    if isinstance(scores, np.ndarray) and scores.ndim == 1:
        return [scores.astype(float)]
    if isinstance(scores, np.ndarray) and scores.ndim == 2:  # runs x tasks, like rliable
        return [scores[:, j].astype(float) for j in range(scores.shape[1])]
    items = list(scores)
    if items and all(np.ndim(s) == 0 for s in items):
        return [np.asarray(items, dtype=float)]
    return [np.asarray(s, dtype=float).ravel() for s in items]


def _check_confidence(confidence: float, reps: int) -> None:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence!r}")
    if reps < 1:
        raise ValueError(f"reps must be >= 1, got {reps!r}")


def _percentiles(samples: np.ndarray, confidence: float) -> tuple[np.ndarray, np.ndarray]:
    """Lower and upper percentile of ``samples`` along axis 0."""
    tail = 100.0 * (1.0 - confidence) / 2.0
    low, high = np.percentile(samples, [tail, 100.0 - tail], axis=0)
    return low, high


def _resample(strata: Sequence[np.ndarray], reps: int, rng: np.random.Generator) -> np.ndarray:
    """(reps, total runs): each row resamples every stratum with replacement, then concatenates."""
    parts = [s[rng.integers(0, s.size, size=(reps, s.size))] for s in strata]
    return np.concatenate(parts, axis=1)


def stratified_bootstrap_ci(
    scores: Union[ArrayLike, Sequence[ArrayLike]],
    statistic: Statistic = mean,
    reps: int = DEFAULT_REPS,
    confidence: float = DEFAULT_CONFIDENCE,
    seed: Optional[int] = 0,
) -> Interval:
    """``statistic`` of all scores pooled, with a percentile CI from a stratified bootstrap.

    :param scores: one stratum (a 1-D sequence of per-run scores), a list of strata (one per task;
        lengths may differ) or a (runs x tasks) array.
    :param statistic: reduces the last axis, e.g. :func:`mean` or :func:`iqm`.
    :param reps: bootstrap resamples.
    :param confidence: coverage of the interval.
    :param seed: seed of the resampling generator (None: fresh entropy).
    """
    _check_confidence(confidence, reps)
    strata = _as_strata(scores)
    if not strata or any(s.size == 0 for s in strata):
        raise ValueError("every stratum needs at least one score")
    point = float(statistic(np.concatenate(strata)))
    samples = statistic(_resample(strata, reps, np.random.default_rng(seed)))
    low, high = _percentiles(samples, confidence)
    return Interval(point, float(low), float(high))


def bootstrap_difference_ci(
    a: ArrayLike,
    b: ArrayLike,
    statistic: Statistic = mean,
    reps: int = DEFAULT_REPS,
    confidence: float = DEFAULT_CONFIDENCE,
    seed: Optional[int] = 0,
) -> Interval:
    """``statistic(a) - statistic(b)`` for independent samples, with a percentile bootstrap CI
    (``a`` and ``b`` resampled independently). "Significant" at this level = the CI excludes 0."""
    _check_confidence(confidence, reps)
    a, b = np.asarray(a, dtype=float).ravel(), np.asarray(b, dtype=float).ravel()
    if a.size == 0 or b.size == 0:
        raise ValueError("both samples need at least one score")
    rng = np.random.default_rng(seed)
    diffs = statistic(_resample([a], reps, rng)) - statistic(_resample([b], reps, rng))
    low, high = _percentiles(diffs, confidence)
    return Interval(float(statistic(a) - statistic(b)), float(low), float(high))


def welch_p_value(a: ArrayLike, b: ArrayLike) -> float:
    """Two-sided p-value of Welch's t-test (unequal variances) for equal means; NaN when it is
    undefined (fewer than two scores in a sample, or both samples constant)."""
    from scipy import stats

    a, b = np.asarray(a, dtype=float).ravel(), np.asarray(b, dtype=float).ravel()
    if a.size < 2 or b.size < 2 or (np.ptp(a) == 0 and np.ptp(b) == 0):
        return math.nan
    return float(stats.ttest_ind(a, b, equal_var=False).pvalue)


def curve_mean_ci(
    curves: np.ndarray,
    reps: int = DEFAULT_REPS,
    confidence: float = DEFAULT_CONFIDENCE,
    seed: Optional[int] = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pointwise mean over runs of ``curves`` (runs x points) and its bootstrap CI: whole runs are
    resampled, so the band reflects seed-to-seed variation. Returns (mean, low, high), each of
    length ``points``."""
    _check_confidence(confidence, reps)
    curves = np.asarray(curves, dtype=float)
    if curves.ndim != 2 or curves.shape[0] == 0:
        raise ValueError(f"curves must be a non-empty (runs x points) array, got shape {curves.shape}")
    rng = np.random.default_rng(seed)
    rows = rng.integers(0, curves.shape[0], size=(reps, curves.shape[0]))
    means = curves[rows].mean(axis=1)  # (reps, points)
    low, high = _percentiles(means, confidence)
    return curves.mean(axis=0), low, high
