"""Aggregate metrics over a few seeds: interquartile mean and (stratified) bootstrap intervals.

These are the reliable-evaluation statistics of Agarwal et al. (NeurIPS 2021): the interquartile
mean (IQM, the mean of the middle 50% of scores: robust to one bad seed, less noisy than the
median) and percentile confidence intervals from a *stratified* bootstrap, which resamples the runs
of each task (stratum) with replacement, independently per task, so every resample keeps the
design's number of runs per task.

Also here: comparisons that never overclaim (:func:`compare`: paired by seed when both groups
ran the same seeds, and no verdict below :data:`MIN_RUNS_FOR_SIGNIFICANCE` runs per group), the
probability of improvement (:func:`probability_of_improvement`), performance profiles
(:func:`performance_profile`) and min-max normalisation for aggregating across envs
(:func:`normalise_min_max`).

rliable: :func:`probability_of_improvement` and :func:`performance_profile` use the ``rliable``
package when it imports (``pip install rliable "pandas<3"``: its import chain fails with pandas 3)
and fall back to the numpy implementation here otherwise (``backend="numpy"`` forces it). Both
compute the same point estimates; their bootstrap intervals differ only by resampling noise (tested).
Conventions follow rliable: the IQM is scipy's 25% trimmed mean (``int(0.25 * n)`` scores cut from
each end) of all scores pooled over tasks, and intervals are percentile intervals of the resampled
statistic.

Every function takes plain sequences or arrays, ignores nothing silently (NaNs are the caller's to
drop; a NaN in the input gives a NaN result) and is deterministic for a given ``seed``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import warnings
from typing import Any, Callable, Iterator, List, Optional, Sequence, Union

import numpy as np

__all__ = [
    "Comparison",
    "DEFAULT_CONFIDENCE",
    "DEFAULT_REPS",
    "Interval",
    "MIN_RUNS_FOR_IQM",
    "MIN_RUNS_FOR_SIGNIFICANCE",
    "SIGNIFICANCE_LEVEL",
    "BelowMinimum",
    "below_minimum_test",
    "bootstrap_difference_ci",
    "cluster_bootstrap",
    "compare",
    "curve_mean_ci",
    "iqm",
    "iqm_is_informative",
    "mean",
    "normalise_min_max",
    "performance_profile",
    "probability_of_improvement",
    "rliable_available",
    "stratified_bootstrap_ci",
    "welch_p_value",
    "wilcoxon_p_value",
]

DEFAULT_REPS = 2000
DEFAULT_CONFIDENCE = 0.95
SIGNIFICANCE_LEVEL = 0.05

#: Fewest runs per group for which :func:`compare` gives a verdict ("too few runs" below). Five is
#: the usual floor in RL reporting, and below it the tools used here cannot support a claim: a
#: percentile bootstrap of n values has only C(2n-1, n) distinct resamples (3 for n = 2, 10 for
#: n = 3, 35 for n = 4), so its "95%" interval is essentially the sample's range and covers far less
#: than 95%; a t-test's p-value then rests entirely on the normality of 2-4 numbers; and the exact
#: two-sided Wilcoxon signed-rank p cannot go below 2 / 2**n (0.25 for n = 3, 0.125 for n = 4). Note
#: that 2 / 2**5 = 0.0625: a paired comparison (CI *and* Wilcoxon required) needs 6 seeds to be
#: called significant at 5%.
MIN_RUNS_FOR_SIGNIFICANCE = 5

#: Fewest scores for which the IQM differs from the mean by definition (``int(0.25 * n) >= 1``).
MIN_RUNS_FOR_IQM = 4

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


def iqm_is_informative(n: int) -> bool:
    """False where the IQM is the mean by definition (n < 4: nothing is trimmed)."""
    return int(0.25 * n) >= 1


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


def cluster_bootstrap(
    strata: Sequence[Sequence[Sequence[Any]]], statistic: Callable[[List[Any]], float], reps: int, rng: np.random.Generator
) -> np.ndarray:
    """The finite values of ``statistic`` over ``reps`` resamples that draw whole clusters with
    replacement, independently within each stratum (``strata``: per stratum, its clusters, each a
    list of records that move together: the checkpoints of one run, the cells of one seed). Records
    of one cluster are not independent, so they are never split; a resample whose statistic is not
    finite is left out (the caller decides how many must remain for an interval)."""
    draws = []
    for _ in range(reps):
        picked: List[Any] = []
        for clusters in strata:
            for i in rng.integers(0, len(clusters), len(clusters)):
                picked.extend(clusters[i])
        value = statistic(picked)
        if math.isfinite(value):
            draws.append(value)
    return np.array(draws, dtype=float)


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
    paired: bool = False,
) -> Interval:
    """``statistic(a) - statistic(b)`` for independent samples, with a percentile bootstrap CI
    (``a`` and ``b`` resampled independently). "Significant" at this level = the CI excludes 0.

    ``paired=True``: ``a[i]`` and ``b[i]`` share seed i; the result is ``statistic(a - b)`` and the
    bootstrap resamples the *pairs*, so the seed-to-seed variation both share cancels, which an
    unpaired comparison would count as noise."""
    _check_confidence(confidence, reps)
    a, b = np.asarray(a, dtype=float).ravel(), np.asarray(b, dtype=float).ravel()
    if a.size == 0 or b.size == 0:
        raise ValueError("both samples need at least one score")
    rng = np.random.default_rng(seed)
    if paired:
        if a.size != b.size:
            raise ValueError(f"paired samples need the same length, got {a.size} and {b.size}")
        low, high = _percentiles(statistic(_resample([a - b], reps, rng)), confidence)
        return Interval(float(statistic(a - b)), float(low), float(high))
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


# ------------------------------------------------------------------------------------------------
# comparisons that never overclaim
# ------------------------------------------------------------------------------------------------


def wilcoxon_p_value(a: ArrayLike, b: ArrayLike) -> float:
    """Two-sided p-value of the Wilcoxon signed-rank test of the paired differences ``a - b``
    (exact for small samples); NaN when undefined (no pairs, or every difference 0)."""
    from scipy import stats

    a, b = np.asarray(a, dtype=float).ravel(), np.asarray(b, dtype=float).ravel()
    if a.size != b.size:
        raise ValueError(f"paired samples need the same length, got {a.size} and {b.size}")
    diffs = a - b
    if diffs.size == 0 or np.all(diffs == 0):
        return math.nan
    return float(stats.wilcoxon(diffs, alternative="two-sided").pvalue)


@dataclasses.dataclass(frozen=True)
class BelowMinimum:
    """How many runs of ``a`` fall below the lowest run of ``b``, and how surprising that is.

    :ivar count: runs of ``a`` strictly below ``min(b)``.
    :ivar p_value: P(count >= observed) when ``a`` and ``b`` are exchangeable (the same distribution):
        1 for a count of 0.
    :ivar expected: the count's mean under exchangeability, ``n_a / (n_b + 1)``.
    """

    count: int
    p_value: float
    expected: float
    n_a: int
    n_b: int


def below_minimum_test(a: ArrayLike, b: ArrayLike) -> BelowMinimum:
    """Is ``a``'s lower tail below ``b``'s by more than noise? An exact, distribution-free test.

    "No run of ``a`` below ``b``'s worst run" is a coin flip when nothing differs: with equal
    distributions the lowest of all runs belongs to ``a`` with probability ``n_a / (n_a + n_b)``.
    The number K of ``a``'s runs below ``min(b)`` is, under exchangeability, the number of ``a``
    labels before the first ``b`` label in a uniformly random ordering, so

        P(K >= k) = prod_{i<k} (n_a - i) / (n_a + n_b - i)

    (for 15 runs each: 0.50 for one run, 0.24 for two, 0.11 for three, 0.050 for four). Ties with
    ``min(b)`` do not count as below. NaN scores raise (the caller drops unfinished runs).
    """
    a, b = np.asarray(a, dtype=float).ravel(), np.asarray(b, dtype=float).ravel()
    if a.size == 0 or b.size == 0:
        raise ValueError("both samples need at least one score")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("below_minimum_test needs finite scores (drop unfinished runs first)")
    count = int(np.sum(a < b.min()))
    p = 1.0
    for i in range(count):
        p *= (a.size - i) / (a.size + b.size - i)
    return BelowMinimum(count=count, p_value=p, expected=a.size / (b.size + 1), n_a=int(a.size), n_b=int(b.size))


@dataclasses.dataclass(frozen=True)
class Comparison:
    """``a`` against ``b``: the difference (of means, or mean of paired differences) with its CI,
    the test's p-value and the verdict.

    ``verdict`` is ``"too few runs"`` when either group has fewer than ``min_runs`` runs (nothing
    is claimed, whatever the CI), else ``"significant"`` when the CI excludes 0 *and* p <
    :data:`SIGNIFICANCE_LEVEL`, else ``"not significant"``.
    """

    diff: Interval
    p_value: float
    test: str  # "wilcoxon" (paired) or "welch" (unpaired)
    paired: bool
    n_a: int
    n_b: int
    verdict: str

    @property
    def significant(self) -> bool:
        return self.verdict == "significant"


def compare(
    a: ArrayLike,
    b: ArrayLike,
    seeds_a: Optional[Sequence[int]] = None,
    seeds_b: Optional[Sequence[int]] = None,
    min_runs: int = MIN_RUNS_FOR_SIGNIFICANCE,
    reps: int = DEFAULT_REPS,
    confidence: float = DEFAULT_CONFIDENCE,
    seed: Optional[int] = 0,
) -> Comparison:
    """Compare two groups of per-run scores.

    Paired when both seed lists are given and hold the same seeds (runs with the same seed share
    the env's random numbers): the pairs are matched by seed, the difference is the mean of the
    paired differences with a paired bootstrap CI, and the test is Wilcoxon's signed-rank.
    Otherwise unpaired: difference of means, the groups resampled independently, Welch's t-test.
    See :data:`MIN_RUNS_FOR_SIGNIFICANCE` for why small groups get no verdict.
    """
    a, b = np.asarray(a, dtype=float).ravel(), np.asarray(b, dtype=float).ravel()
    if a.size == 0 or b.size == 0:
        raise ValueError("both samples need at least one score")
    b_order: Optional[List[int]] = None  # b's scores in a's seed order, when the seeds pair them
    if seeds_a is not None and seeds_b is not None:
        sa, sb = list(seeds_a), list(seeds_b)
        if len(sa) != a.size or len(sb) != b.size:
            raise ValueError("one seed per score is needed")
        if len(set(sa)) == a.size and set(sa) == set(sb):
            position_in_b = {s: i for i, s in enumerate(sb)}
            b_order = [position_in_b[s] for s in sa]
    paired = b_order is not None
    if b_order is not None:
        b = b[b_order]
        diff = bootstrap_difference_ci(a, b, reps=reps, confidence=confidence, seed=seed, paired=True)
        p, test = wilcoxon_p_value(a, b), "wilcoxon"
    else:
        diff = bootstrap_difference_ci(a, b, reps=reps, confidence=confidence, seed=seed)
        p, test = welch_p_value(a, b), "welch"
    if min(a.size, b.size) < min_runs:
        verdict = "too few runs"
    elif diff.excludes(0.0) and p < SIGNIFICANCE_LEVEL:  # NaN p: never significant
        verdict = "significant"
    else:
        verdict = "not significant"
    return Comparison(diff=diff, p_value=p, test=test, paired=paired, n_a=int(a.size), n_b=int(b.size), verdict=verdict)


# ------------------------------------------------------------------------------------------------
# across tasks: normalisation, probability of improvement, performance profiles
# ------------------------------------------------------------------------------------------------


def normalise_min_max(per_task: Sequence[Sequence[ArrayLike]]) -> List[List[np.ndarray]]:
    """Min-max normalise scores per task over every run of every method on that task.

    :param per_task: ``per_task[t][m]``: the scores of method ``m`` on task ``t``.
    :return: the same nesting with ``(x - lo_t) / (hi_t - lo_t)``, ``lo_t`` / ``hi_t`` the lowest
        and highest score of any method on task ``t`` (0.5 everywhere on a task whose scores are all
        equal). So 0 is the worst run on the task and 1 the best: scores become comparable across
        tasks, but they are relative to the methods compared (add or drop one and they move).
    """
    out: List[List[np.ndarray]] = []
    for methods in per_task:
        arrays = [np.asarray(m, dtype=float).ravel() for m in methods]
        pooled = np.concatenate(arrays) if arrays else np.zeros(0)
        lo, hi = (float(np.min(pooled)), float(np.max(pooled))) if pooled.size else (0.0, 1.0)
        span = hi - lo
        out.append([(x - lo) / span if span > 0 else np.full_like(x, 0.5) for x in arrays])
    return out


def rliable_available() -> bool:
    """True when ``rliable`` imports (it does not with pandas 3)."""
    return _rliable() is not None


def _rliable():
    try:
        from rliable import library, metrics
    except Exception:  # ImportError, or pandas 3 breaking its import chain
        return None
    return library, metrics


@contextlib.contextmanager
def _quiet_arch() -> Iterator[None]:
    """rliable passes ``random_state`` to arch, which warns that it is deprecated."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        yield


def _use_rliable(backend: str, strata_sizes: Sequence[int]) -> bool:
    if backend not in ("auto", "rliable", "numpy"):
        raise ValueError(f"backend must be 'auto', 'rliable' or 'numpy', got {backend!r}")
    if backend == "numpy":
        return False
    usable = _rliable() is not None and len(set(strata_sizes)) == 1  # rliable: runs x tasks matrices
    if backend == "rliable" and not usable:
        raise ImportError("rliable is not importable (pip install rliable 'pandas<3'), or the tasks have different numbers of runs")
    return usable


def _matrix(strata: Sequence[np.ndarray]) -> np.ndarray:
    return np.stack([np.asarray(s, dtype=float) for s in strata], axis=1)  # runs x tasks


def _improvement(x: Sequence[np.ndarray], y: Sequence[np.ndarray]) -> float:
    """mean over tasks of P(X > Y) + P(X = Y) / 2 (the Mann-Whitney U statistic / (n m))."""
    probs = []
    for xs, ys in zip(x, y):
        greater = np.mean(xs[:, None] > ys[None, :])
        ties = np.mean(xs[:, None] == ys[None, :])
        probs.append(greater + 0.5 * ties)
    return float(np.mean(probs))


def probability_of_improvement(
    x: Sequence[ArrayLike],
    y: Sequence[ArrayLike],
    reps: int = DEFAULT_REPS,
    confidence: float = DEFAULT_CONFIDENCE,
    seed: Optional[int] = 0,
    backend: str = "auto",
) -> Interval:
    """P(X > Y): the probability that a run of method X beats a run of method Y on the same task
    (ties count half), averaged over tasks, with a stratified bootstrap CI (X's and Y's runs
    resampled independently, within each task). 0.5: no tendency; robust to outliers and to the
    tasks' score scales, so it needs no normalisation.

    :param x: per task, X's scores; ``y`` likewise (same tasks, same order).
    :param backend: ``"auto"`` (rliable when it imports and every task has as many runs as the
        others; else numpy), ``"rliable"`` or ``"numpy"``.
    """
    _check_confidence(confidence, reps)
    xs, ys = [np.asarray(s, dtype=float).ravel() for s in x], [np.asarray(s, dtype=float).ravel() for s in y]
    if len(xs) != len(ys) or not xs or any(s.size == 0 for s in xs + ys):
        raise ValueError("x and y need the same non-empty tasks, each with at least one score")
    if _use_rliable(backend, [s.size for s in xs]) and len({s.size for s in ys}) == 1:
        library, metrics = _rliable()
        with _quiet_arch():
            point, interval = library.get_interval_estimates(
                {"x_y": (_matrix(xs), _matrix(ys))},
                metrics.probability_of_improvement,
                reps=reps,
                confidence_interval_size=confidence,
                random_state=np.random.RandomState(seed),
            )
        low, high = np.ravel(interval["x_y"])
        return Interval(float(point["x_y"]), float(low), float(high))
    rng = np.random.default_rng(seed)
    samples = np.empty(reps)
    for r in range(reps):
        samples[r] = _improvement([s[rng.integers(0, s.size, s.size)] for s in xs], [s[rng.integers(0, s.size, s.size)] for s in ys])
    low, high = _percentiles(samples, confidence)
    return Interval(_improvement(xs, ys), float(low), float(high))


def _profile(strata: Sequence[np.ndarray], taus: np.ndarray) -> np.ndarray:
    """Fraction of runs scoring above each tau, per task, averaged over tasks."""
    return np.mean([np.mean(s[:, None] > taus[None, :], axis=0) for s in strata], axis=0)


def performance_profile(
    scores: Sequence[ArrayLike],
    taus: ArrayLike,
    reps: int = DEFAULT_REPS,
    confidence: float = DEFAULT_CONFIDENCE,
    seed: Optional[int] = 0,
    backend: str = "auto",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Score distribution (rliable's performance profile): for each threshold tau, the fraction of
    runs whose (normalised) score exceeds tau, averaged over tasks, with a pointwise stratified
    bootstrap CI. Returns (profile, low, high), each of ``len(taus)``.

    :param scores: per task, one method's (normalised) scores.
    :param backend: as in :func:`probability_of_improvement`.
    """
    _check_confidence(confidence, reps)
    strata = [np.asarray(s, dtype=float).ravel() for s in scores]
    taus = np.asarray(taus, dtype=float).ravel()
    if not strata or any(s.size == 0 for s in strata):
        raise ValueError("every task needs at least one score")
    if _use_rliable(backend, [s.size for s in strata]):
        library, _ = _rliable()
        with _quiet_arch():
            point, interval = library.get_interval_estimates(
                {"m": _matrix(strata)},
                lambda m: library.score_distributions(m, taus),
                reps=reps,
                confidence_interval_size=confidence,
                random_state=np.random.RandomState(seed),
            )
        return np.asarray(point["m"], dtype=float), np.asarray(interval["m"][0], dtype=float), np.asarray(interval["m"][1], dtype=float)
    rng = np.random.default_rng(seed)
    samples = np.stack([_profile([s[rng.integers(0, s.size, s.size)] for s in strata], taus) for _ in range(reps)])
    low, high = _percentiles(samples, confidence)
    return _profile(strata, taus), low, high
