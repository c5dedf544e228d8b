"""The rule that picks each update's weight lam from the window's moments.

    lam = (Var_M - Cov) / (D + B * beta),     D = Var_P + Var_M - 2 Cov,

where beta is what the rule is willing to believe about ||b||^2, b = E g_P - E g_M (the score
estimator is the unbiased reference), and B the number of samples the update averages:

* ``source="exact"`` (an exact differentiable model): the pathwise estimator is unbiased by
  construction, so beta = 0 and lam is the variance-optimal lam*. A bias estimate would only add
  its noise: with the old rule (beta = max(||b_hat||^2 - D/n, 0)), B times that noise is of the
  order of D, and on the coupled bandit the applied lam sat 0.15 from lam* on average.
* ``source="learned"`` (a critic, or a model whose return bootstraps with the learned value
  head): an undetectable bias is not evidence of no bias. The default (``bias="posterior"``) takes
  beta = E[||b||^2 | b_hat] under a flat prior on b: b_hat ~ N(b, S) gives b | b_hat ~ N(b_hat, S), so

      beta = ||b_hat||^2 + tau,    tau = tr S = trace Var(b_hat).

  The update's MSE, lam^2 ||b||^2 + Var(lam g_P + (1 - lam) g_M) / B, is linear in ||b||^2, so this
  beta makes lam the weight that minimises the *posterior expected* MSE: the Bayes decision, not a
  plug-in. tau is taken from the *long-run* (block) variance of g_P - g_M when the batches carry
  blocks (correlated rollout samples make the per-sample D/n far too small). With no visible bias
  (||b_hat||^2 ~ tau) it charges B * 2 tau: lam ~ lam* / (1 + 2 B tau / D), i.e. lam*/3 on one
  independent rollout, lam*/1.25 on 8, longer with autocorrelated rollouts (tau larger by
  n / n_eff). As the window's data grow, tau -> 0 and beta -> ||b||^2: the MSE-optimal weight.
  ``bias="ucl"`` is more cautious: beta is the *upper confidence limit* of ||b||^2 at level
  ``confidence`` (one-sided normal quantile z),

      beta = max(q, 0) + z sqrt(2 tau^2 + 4 max(q, 0) tau),    q = ||b_hat||^2 - tau,

  (conservative bound tr(S^2) <= tau^2, b' S b <= ||b||^2 tau, exact in one dimension). Both charge
  about the same when no bias is visible (2 tau vs 2.3 tau); with a visible bias the UCL adds
  ~3.3 sqrt(q tau) on top of q, and on the biased coupled bandit it sat 0.057 below the MSE-optimal
  weight on average where the posterior mean is within 0.011 (signed; README, weight study).
* ``bias="point"`` reproduces the old rule (for comparisons); ``bias="none"`` ignores the bias.

The standard error of lam (``lam_se``) is a delete-one-batch jackknife over the window (each
batch is a whole rollout, so the jackknife respects within-rollout correlation); for a single
batch split into parts (the oracle), :func:`oracle_lambdas` jackknifes over the parts.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from functools import reduce
from statistics import NormalDist
from typing import Any, List, Optional, Sequence, Tuple, cast

import torch as th

from hybrid_pg.estimator import (
    DEFAULT_BOUNDS,
    DEFAULT_FALLBACK,
    BatchMoments,
    LambdaEstimate,
    _check_bounds,
    lambda_from_moments,
)

SOURCE_KINDS: Tuple[str, ...] = ("exact", "learned")
#: how a learned source's ||b||^2 enters lam (module docstring); "none" ignores the bias
BIAS_RULES: Tuple[str, ...] = ("posterior", "ucl", "point")
BIAS_MODES: Tuple[str, ...] = BIAS_RULES + ("none",)
#: one-sided 95% normal quantile
DEFAULT_CONFIDENCE_Z: float = 1.645
#: the direction check's default: fall back when the window's point estimate of <E g_P, E g_M> is negative
DEFAULT_DIRECTION_CONFIDENCE: float = 0.5


@dataclass(frozen=True)
class PooledStatistics:
    """Weighted pooled moments of a window (traces), and the noise of its bias estimate.

    :ivar n: Kish effective number of samples, (sum w n)^2 / sum w^2 n.
    :ivar var_path, var_score, cov: pooled within-batch per-sample moments.
    :ivar lr_var_path, lr_var_score, lr_cov: pooled long-run (batch-means) moments (nan without
        blocks in every batch).
    :ivar bias_hat_sq: ||b_hat||^2, b_hat the weighted mean of the batch mean differences.
    :ivar tau: trace Var(b_hat): long-run D / n when blocks exist, else D / n.
    """

    n: float
    dof: float
    var_path: float
    var_score: float
    cov: float
    lr_var_path: float
    lr_var_score: float
    lr_cov: float
    bias_hat_sq: float
    tau: float

    @property
    def has_long_run(self) -> bool:
        return math.isfinite(self.lr_var_path)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def pool(
    batches: Sequence[BatchMoments], weights: Optional[Sequence[float]] = None, trend: bool = False, ages: Optional[Sequence[float]] = None
) -> Optional[PooledStatistics]:
    """Pooled statistics of weighted batches (oldest first); None when there are fewer than 2
    samples' worth. ``trend``: the per-sample moments are extrapolated one batch ahead of the
    newest (:func:`trend_moments`; ``ages``: batches before the one to weight, default K..1)
    instead of pooled at the window's mean age. The bias estimate stays the window's level: a
    trend of the bias vector (tried, shrunk like the moments' slopes) measured worse on the
    biased coupled bandit (mean |lam - lam_mse| 0.084 vs 0.069, seeds 0-2)."""
    if weights is None:
        weights = [1.0] * len(batches)
    if len(weights) != len(batches):
        raise ValueError("one weight per batch is required")
    if not batches:
        return None
    w = [float(x) for x in weights]
    dof = sum(wk * (b.n - 1) for wk, b in zip(w, batches))
    wn = sum(wk * b.n for wk, b in zip(w, batches))
    w2n = sum(wk * wk * b.n for wk, b in zip(w, batches))
    if dof <= 0 or wn <= 0:
        return None
    n_eff = wn * wn / w2n
    var_p = sum(wk * b.ss_path for wk, b in zip(w, batches)) / dof
    var_m = sum(wk * b.ss_score for wk, b in zip(w, batches)) / dof
    cov = sum(wk * b.ss_cross for wk, b in zip(w, batches)) / dof
    lr = (math.nan, math.nan, math.nan)
    if all(b.has_blocks for b in batches):
        bdof = sum(wk * (b.n_blocks - 1) for wk, b in zip(w, batches))
        lr = tuple(sum(wk * getattr(b, a) for wk, b in zip(w, batches)) / bdof for a in ("lr_ss_path", "lr_ss_score", "lr_ss_cross"))
    diff = cast(th.Tensor, sum(wk * b.n * (b.mean_path - b.mean_score) for wk, b in zip(w, batches))) / wn
    d_var = var_p + var_m - 2.0 * cov
    if math.isfinite(lr[0]):
        # a long-run variance below the per-sample one (negative correlation, or noise in a few
        # blocks) is not trusted to shrink the noise floor
        d_var = max(lr[0] + lr[1] - 2.0 * lr[2], d_var)
    bias_hat_sq, tau = float(diff @ diff), max(d_var, 0.0) / n_eff
    if trend:
        var_p, var_m, cov = trend_moments(batches, w, (var_p, var_m, cov), ages)
    return PooledStatistics(
        n=n_eff,
        dof=dof,
        var_path=var_p,
        var_score=var_m,
        cov=cov,
        lr_var_path=lr[0],
        lr_var_score=lr[1],
        lr_cov=lr[2],
        bias_hat_sq=bias_hat_sq,
        tau=tau,
    )


#: fewest batches a trend is fitted on (a line through K points leaves K - 2 residual degrees of
#: freedom for the slope's standard error)
TREND_MIN_BATCHES: int = 4


def trend_moments(
    batches: Sequence[BatchMoments], weights: Sequence[float], level: Tuple[float, float, float], ages: Optional[Sequence[float]] = None
) -> Tuple[float, float, float]:
    """(Var_P, Var_M, Cov) predicted for the batch *after* the newest, from their trend over the window.

    The window's pooled moments estimate the moments at the window's mean age, about W/2 batches
    behind the rollout they weight; while the policy trains (or the env drifts) they lag. Each
    per-sample moment m_k = ss_k / (n_k - 1) of batch k (age a_k = K - k batches before the one to
    weight, newest a = 1) gets a weighted least-squares line in a (weights u_k = w_k (n_k - 1), whose
    weighted mean is exactly the pooled ``level``), and the line is followed from the mean age a_bar
    to a = 0 with its slope shrunk by its signal-to-noise ratio,

        m(0) = level - c s a_bar,    c = max(0, 1 - se(s)^2 / s^2),

    the plug-in of the MSE-optimal factor s^2 / (s^2 + se^2) for adding a noisy slope (se from the
    line's residuals). A slope the window cannot tell from noise is dropped (c = 0: the level);
    a clear one is followed. The prediction is refused (the level returned) with fewer than
    :data:`TREND_MIN_BATCHES` batches; a prediction that is not a valid covariance (a variance < 0
    or |Cov| > sqrt(Var_P Var_M)) is followed only as far as it stays one (:func:`_valid_fraction`).
    """
    shifts = _trend_shifts(
        batches, weights, ages, [[getattr(b, a) / max(b.n - 1, 1) for b in batches] for a in ("ss_path", "ss_score", "ss_cross")]
    )
    if shifts is None or not _is_covariance(*level):
        return level
    step = _valid_fraction(level, shifts)
    return tuple(lev + step * sh for lev, sh in zip(level, shifts))


def _is_covariance(vp: float, vm: float, c: float) -> bool:
    return vp >= 0.0 and vm >= 0.0 and c * c <= vp * vm


def _valid_fraction(level: Tuple[float, float, float], shifts: Sequence[float], iterations: int = 40) -> float:
    """The largest t in [0, 1] with level + t * shifts a valid 2x2 covariance (Var_P, Var_M, Cov).

    The valid set is a convex cone containing the level, so validity along the segment holds on
    [0, t*]: a trend that runs out of it (typically |corr| -> 1 while lam* passes 1, where the
    three linear trends cannot all continue) is followed up to the boundary instead of being
    dropped to the window's lagging level (on the drifting bandit, dropping it cost four updates
    of lam 0.79-0.91 against lam* = 1)."""

    def valid(t: float) -> bool:
        return _is_covariance(*(lev + t * sh for lev, sh in zip(level, shifts)))

    if valid(1.0):
        return 1.0
    lo, hi = 0.0, 1.0
    for _ in range(iterations):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if valid(mid) else (lo, mid)
    return lo


def _trend_shifts(
    batches: Sequence[BatchMoments], weights: Sequence[float], ages: Optional[Sequence[float]], series: Sequence[Sequence[float]]
) -> Optional[list]:
    """For each per-batch series, -c s a_bar: the shrunk weighted-LS line's move from the window's
    mean age to age 0 (see :func:`trend_moments`); None when no trend can be fitted."""
    k = len(batches)
    if k < TREND_MIN_BATCHES:
        return None
    u = [float(w) * (b.n - 1) for w, b in zip(weights, batches)]
    total = sum(u)
    if total <= 0:
        return None
    ages = [float(k - i) for i in range(k)] if ages is None else [float(a) for a in ages]
    a_bar = sum(ui * a for ui, a in zip(u, ages)) / total
    sxx = sum(ui * (a - a_bar) ** 2 for ui, a in zip(u, ages))
    if sxx <= 0:
        return None
    out = []
    for m in series:
        mean = sum(ui * mi for ui, mi in zip(u, m)) / total
        slope = sum(ui * (a - a_bar) * mi for ui, a, mi in zip(u, ages, m)) / sxx
        resid = sum(ui * (mi - mean - slope * (a - a_bar)) ** 2 for ui, a, mi in zip(u, ages, m)) / (k - 2)
        se_sq = resid / sxx
        shrink = max(0.0, 1.0 - se_sq / (slope * slope)) if slope != 0.0 else 0.0
        out.append(-shrink * slope * a_bar)
    return out


def posterior_mean_bias_sq(bias_hat_sq: float, tau: float) -> float:
    """E[||b||^2 | b_hat] under a flat prior on b: b | b_hat ~ N(b_hat, S), so ||b_hat||^2 + tr S."""
    return bias_hat_sq + tau


def bias_upper_confidence_limit(bias_hat_sq: float, tau: float, z: float = DEFAULT_CONFIDENCE_Z) -> float:
    """One-sided upper confidence limit of ||b||^2 from ||b_hat||^2 with trace noise variance tau.

    E ||b_hat||^2 = ||b||^2 + tau; Var ||b_hat||^2 = 2 tr(S^2) + 4 b'Sb <= 2 tau^2 + 4 ||b||^2 tau.
    """
    q = max(bias_hat_sq - tau, 0.0)
    return q + z * math.sqrt(2.0 * tau * tau + 4.0 * q * tau)


class WeightRule:
    """lam from window moments, told what kind of pathwise source it weighs.

    :param source: "exact" (unbiased model: lam = lam*) or "learned" (critic: bias-aware).
    :param bias: "posterior" (default), "ucl", "point" (the old noise-corrected point estimate) or
        "none" (module docstring).
    :param confidence: z of the upper confidence limit (one-sided normal quantile).
    :param long_run: compute the variance part of lam from long-run (block) moments when all
        batches carry blocks (the variance of the rollout *mean*); default False (see README of
        the study: per-sample moments have n - 1 instead of n_blocks - 1 degrees of freedom).
    :param trend: predict the moments one batch ahead of the window's newest from their trend
        (:func:`trend_moments`) instead of using the window's mean-age level (default True).
    :param bounds: clip range for lam; :param fallback: lam when undetermined.
    """

    def __init__(
        self,
        source: str = "learned",
        bias: str = "posterior",
        confidence: float = DEFAULT_CONFIDENCE_Z,
        long_run: bool = False,
        bounds: Optional[Tuple[float, float]] = DEFAULT_BOUNDS,
        fallback: float = DEFAULT_FALLBACK,
        trend: bool = True,
    ) -> None:
        if source not in SOURCE_KINDS:
            raise ValueError(f"source must be one of {SOURCE_KINDS}, got {source!r}")
        if bias not in BIAS_MODES:
            raise ValueError(f"bias must be one of {BIAS_MODES}, got {bias!r}")
        if not (math.isfinite(float(confidence)) and float(confidence) >= 0.0):
            raise ValueError(f"confidence must be a finite z >= 0, got {confidence!r}")
        _check_bounds(bounds)
        self.source, self.bias, self.confidence = source, bias, float(confidence)
        self.long_run, self.bounds, self.fallback = bool(long_run), bounds, float(fallback)
        self.trend = bool(trend)

    def config(self) -> dict[str, Any]:
        return dict(
            source=self.source,
            bias=self.bias,
            confidence=self.confidence,
            long_run=self.long_run,
            bounds=self.bounds,
            fallback=self.fallback,
            trend=self.trend,
        )

    def bias_term(self, stats: PooledStatistics, source: Optional[str] = None) -> float:
        """The ||b||^2 the weight is computed with."""
        source = self.source if source is None else source
        if self.bias == "none" or (source == "exact" and self.bias in ("ucl", "posterior")):
            return 0.0
        if self.bias == "point":
            return max(stats.bias_hat_sq - stats.tau, 0.0)
        if self.bias == "posterior":
            return posterior_mean_bias_sq(stats.bias_hat_sq, stats.tau)
        return bias_upper_confidence_limit(stats.bias_hat_sq, stats.tau, self.confidence)

    def from_statistics(self, stats: Optional[PooledStatistics], batch_size: float, source: Optional[str] = None) -> LambdaEstimate:
        if stats is None:
            return lambda_from_moments(0.0, 0.0, 0.0, n=0, bounds=self.bounds, fallback=self.fallback)
        source = self.source if source is None else source
        beta = self.bias_term(stats, source)
        use_lr = self.long_run and stats.has_long_run
        vp, vm, c = (stats.lr_var_path, stats.lr_var_score, stats.lr_cov) if use_lr else (stats.var_path, stats.var_score, stats.cov)
        est = lambda_from_moments(
            max(vp, 0.0), max(vm, 0.0), c, bias_sq=beta, batch_size=float(batch_size), bounds=self.bounds, n=stats.n, fallback=self.fallback
        )
        if self.bias == "none":  # as before: no bias estimate is reported without bias correction
            return _replace(est, source=source)
        return _replace(est, bias_sq=max(stats.bias_hat_sq - stats.tau, 0.0), bias_sq_used=beta, source=source)

    def __call__(
        self,
        batches: Sequence[BatchMoments],
        weights: Optional[Sequence[float]] = None,
        *,
        batch_size: Optional[float] = None,
        source: Optional[str] = None,
        with_se: bool = True,
    ) -> LambdaEstimate:
        """lam of the weighted batches (B defaults to the newest batch's size), with a jackknife
        standard error over the batches when there are at least 3."""
        if source is not None and source not in SOURCE_KINDS:
            raise ValueError(f"source must be one of {SOURCE_KINDS}, got {source!r}")
        weights = [1.0] * len(batches) if weights is None else list(weights)
        if batches and batch_size is None:
            batch_size = batches[-1].n
        est = self.from_statistics(pool(batches, weights, self.trend), batch_size or 1.0, source)
        if with_se and len(batches) >= 3 and not est.degenerate:
            est = _replace(est, lam_se=self._jackknife(batches, weights, batch_size, source))
        return est

    def _jackknife(self, batches, weights, batch_size, source) -> float:
        loo = []
        for k in range(len(batches)):
            rest = [b for i, b in enumerate(batches) if i != k]
            rw = [w for i, w in enumerate(weights) if i != k]
            ages = [len(batches) - i for i in range(len(batches)) if i != k]
            e = self.from_statistics(pool(rest, rw, self.trend, ages), batch_size, source)
            if e.degenerate:
                return math.nan
            loo.append(e.lam_unclipped)
        return jackknife_se(loo)


def jackknife_se(leave_one_out: Sequence[float]) -> float:
    k = len(leave_one_out)
    if k < 2:
        return math.nan
    mean = sum(leave_one_out) / k
    return math.sqrt((k - 1) / k * sum((x - mean) ** 2 for x in leave_one_out))


def _replace(est: LambdaEstimate, **changes: Any) -> LambdaEstimate:
    return LambdaEstimate(**{**est.as_dict(), **changes})


# ----------------------------------------------------------------------------------------------
# The direction check: does the pathwise gradient point against the score gradient?
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DirectionTest:
    """Does the window's pathwise gradient point against its score gradient, beyond noise?

    :ivar inner: <E g_P, E g_M> estimated from pairs of *different* rollouts of the window,
        sum_{j != k} w_j w_k <p_j, m_k> / sum_{j != k} w_j w_k (p, m: rollout means), so the noise
        that one rollout's two estimates share (their covariance) never enters it.
    :ivar se: its delete-one-rollout jackknife standard error (a rollout's samples are correlated;
        whole rollouts are the independent units).
    :ivar t: inner / se.
    :ivar cos: inner over the same cross-rollout estimates of ||E g_P|| and ||E g_M|| (NaN where
        either is not positive: the window cannot see the gradient's direction).
    :ivar against: P(<E g_P, E g_M> < 0 | the window) exceeds the test's confidence (Student t,
        K - 1 degrees of freedom; see :func:`direction_test`).
    """

    inner: float
    se: float
    t: float
    cos: float
    against: bool
    rollouts: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _cross_inner(gram: th.Tensor, w: th.Tensor) -> Tuple[float, List[float]]:
    """From ``gram[j, k] = <x_j, y_k>``: sum_{j != k} w_j w_k <x_j, y_k> / sum_{j != k} w_j w_k over
    all rollouts, and the same with each rollout left out in turn (the jackknife's values), without
    a loop over the rollouts (needs three rollouts or more for the leave-one-out values)."""
    w_gram, gram_w = gram @ w, w @ gram  # (C w)_i and (C^T w)_i
    diagonal = w * w * gram.diagonal()
    total, diag_sum = float(w @ w_gram), float(diagonal.sum())
    w_sum, w_sq = float(w.sum()), float((w * w).sum())
    full = (total - diag_sum) / (w_sum**2 - w_sq)
    # rollout i left out: its row and column leave w^T C w, its diagonal entry the diagonal's sum
    loo_total = total - w * w_gram - w * gram_w + diagonal
    loo_pairs = (w_sum - w) ** 2 - (w_sq - w * w)
    loo = (loo_total - (diag_sum - diagonal)) / loo_pairs
    return full, [float(x) for x in loo]


def student_t_quantile(z: float, dof: float) -> float:
    """The Student-t(``dof``) quantile at the normal quantile ``z``'s level (0 at the median)."""
    from scipy.special import stdtrit  # the t distribution's inverse CDF; scipy.stats takes twice as long to import

    return float(stdtrit(dof, NormalDist().cdf(z))) if dof > 0 else math.inf


def direction_test(
    batches: Sequence[BatchMoments], weights: Optional[Sequence[float]] = None, confidence: float = DEFAULT_DIRECTION_CONFIDENCE
) -> Optional[DirectionTest]:
    """:class:`DirectionTest` of a window (three rollouts or more, else None).

    Why: the bias-aware rule charges ||E g_P - E g_M||^2 against the update's variance, so where
    the score gradient is very noisy a pathwise gradient pointing the wrong way still gets a large
    weight (the gradient audit measured it on InvertedDoublePendulum near the optimum: the
    advantage head's mean gradient at corrected cosine -0.96 with the true gradient while the rule
    applied 0.81). A sign is far cheaper to establish than a magnitude: when both estimate the
    same gradient, E <g_P, g_M> = ||g||^2 > 0; a pathwise gradient that points against the score
    gradient makes it negative.

    ``against`` says that the probability of a negative inner product, given the window (flat prior,
    Student t with K - 1 degrees of freedom), exceeds ``confidence``: at 0.5 (the default), the
    point estimate is negative. Why not a 95% test: the losses are not symmetric. Falling back to
    the score gradient costs one update its variance reduction; following a wrong-way gradient
    compounds over updates (a bias persists while noise averages out). On InvertedDoublePendulum
    near the optimum t stayed between -1 and 0 for 20 updates before the policy lost the optimum
    (seed 100 of configs/rule_selection_idp.yaml): a 95% test never fires there. Where the
    estimators agree the gradient is strong and t is large (2 to 16 in the same run before the
    optimum), so the check rarely fires; where the true gradient is near 0 (an optimum), an
    unbiased pathwise gradient makes it fire about half the time: the score gradient alone then
    takes those updates, which is what REINFORCE does there."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence!r}")
    k = len(batches)
    if k < 3:
        return None
    w = [1.0] * k if weights is None else [float(x) for x in weights]
    if len(w) != k:
        raise ValueError("one weight per batch is required")
    ps = th.stack([b.mean_path.double() for b in batches])
    ms = th.stack([b.mean_score.double() for b in batches])
    weights_t = th.tensor(w, dtype=th.float64)
    inner, loo = _cross_inner(ps @ ms.T, weights_t)
    se = jackknife_se(loo)
    (norm_p, _), (norm_m, _) = _cross_inner(ps @ ps.T, weights_t), _cross_inner(ms @ ms.T, weights_t)
    cos = inner / math.sqrt(norm_p * norm_m) if norm_p > 0 and norm_m > 0 else math.nan
    t = inner / se if se > 0 else math.nan
    z = NormalDist().inv_cdf(confidence)
    against = bool(se > 0 and inner + student_t_quantile(z, k - 1) * se < 0)
    return DirectionTest(inner=inner, se=se, t=t, cos=max(-1.0, min(1.0, cos)) if math.isfinite(cos) else cos, against=against, rollouts=k)


# ----------------------------------------------------------------------------------------------
# Oracle support
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OracleLambdas:
    """Reference weights of one large batch (see :func:`oracle_lambdas`); *_se are jackknife SEs."""

    lam_var: float  # variance-optimal lam* (unclipped)
    lam_var_se: float
    lam_mse: float  # MSE-optimal weight at batch size B, with the unbiased ||b||^2 point estimate
    lam_mse_se: float
    bias_sq: float  # unbiased estimate ||b_hat||^2 - tau (may be < 0 from noise)
    bias_sq_se: float
    n: int
    n_parts: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def oracle_lambdas(parts: Sequence[BatchMoments], batch_size: float, bounds: Optional[Tuple[float, float]] = None) -> OracleLambdas:
    """Variance- and MSE-optimal lam* of one large batch, given as disjoint contiguous parts.

    :param parts: the batch's moments computed part by part (e.g. each env's trajectory, or
        contiguous chunks of whole episodes: parts long compared with the correlation time); they
        are merged exactly (:meth:`BatchMoments.merge`) for the point estimates, and a
        delete-one-part jackknife gives standard errors that respect within-part correlation.
        One part: point estimates only (SEs nan).
    :param batch_size: B of the MSE criterion (the training update's sample count).
    :param bounds: clip range (None: the raw minimisers).
    """
    if not parts:
        raise ValueError("oracle_lambdas needs at least one part")

    def point(ps: Sequence[BatchMoments]) -> Tuple[float, float, float]:
        merged = reduce(lambda a, b: a.merge(b), ps)
        stats = pool([merged])
        if stats is None:
            return math.nan, math.nan, math.nan
        q = stats.bias_hat_sq - stats.tau
        lv = lambda_from_moments(stats.var_path, stats.var_score, stats.cov, bounds=bounds, n=stats.n)
        lm = lambda_from_moments(
            stats.var_path, stats.var_score, stats.cov, bias_sq=max(q, 0.0), batch_size=float(batch_size), bounds=bounds, n=stats.n
        )
        pick = (lambda e: e.lam_unclipped) if bounds is None else (lambda e: e.lam)
        return pick(lv), pick(lm), q

    full = point(parts)
    ses: Tuple[float, ...] = (math.nan,) * 3
    if len(parts) >= 3:
        loo = [point([p for i, p in enumerate(parts) if i != k]) for k in range(len(parts))]
        ses = tuple(jackknife_se([x[j] for x in loo]) for j in range(3))
    return OracleLambdas(
        lam_var=full[0],
        lam_var_se=ses[0],
        lam_mse=full[1],
        lam_mse_se=ses[1],
        bias_sq=full[2],
        bias_sq_se=ses[2],
        n=sum(p.n for p in parts),
        n_parts=len(parts),
    )


def split_moments(g_path: Any, g_score: Any, labels: Any) -> list[BatchMoments]:
    """One :class:`BatchMoments` per distinct label (contiguous parts), for :func:`oracle_lambdas`."""
    gp = th.as_tensor(g_path, dtype=th.float64)
    gm = th.as_tensor(g_score, dtype=th.float64)
    lab = th.as_tensor(labels).reshape(-1)
    return [BatchMoments.from_samples(gp[lab == u], gm[lab == u]) for u in th.unique(lab)]
