"""The hybrid policy-gradient estimator: the math, in one place.

For a diagonal Gaussian a = mu + sigma * eps, eps ~ N(0, I), sigma = exp(log_std), the gradient of
E[f(a)] with respect to (mu, log_std) has two unbiased per-sample estimators, both consequences of
the Gaussian integration-by-parts (Stein / Malliavin) identity E[f'(a)] = E[f(a) eps] / sigma:

    pathwise (reparameterised)      g_P = df/da * da/dtheta
        d/dmu      = f'(a)
        d/dlog_std = f'(a) * sigma * eps
    score (likelihood ratio,        g_M = (f(a) - b) * dlog pi(a)/dtheta
           Malliavin weight)
        d/dmu      = (f(a) - b) * eps / sigma
        d/dlog_std = (f(a) - b) * (eps^2 - 1)

Any mix g_H = lam * g_P + (1 - lam) * g_M is unbiased when both are. With the trace moments

    Var_P = E||g_P - E g_P||^2,   Var_M = E||g_M - E g_M||^2,   Cov = E<g_P - E g_P, g_M - E g_M>

the per-sample variance of the mix is the quadratic

    Var(lam) = lam^2 Var_P + (1 - lam)^2 Var_M + 2 lam (1 - lam) Cov
             = Var_M - 2 lam (Var_M - Cov) + lam^2 D,         D = Var_P + Var_M - 2 Cov = Var(g_P - g_M)

minimised at lam* = (Var_M - Cov) / D, where Var(lam*) = (Var_P Var_M - Cov^2) / D.

When the pathwise estimator is biased (a learned critic), the quantity to minimise is the mean
squared error of the *batch* gradient over B samples, lam^2 ||b||^2 + Var(lam) / B, with
b = E g_P - E g_M (the score estimator is the unbiased reference), which gives

    lam_mse = (Var_M - Cov) / (D + B ||b||^2).

||b||^2 is estimated without its noise term: ||b_hat||^2 - D / n_eff, floored at 0.

Everything below works on float64 torch tensors; numpy arrays are accepted and converted.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Optional, Sequence, Tuple, Union, cast

import numpy as np
import torch as th

ArrayLike = Union[th.Tensor, np.ndarray, Sequence[float], float]

#: Default range for lam. Var(lam) is convex, so on [0, 1] it never exceeds max(Var_P, Var_M)
#: whatever the true moments are; outside [0, 1] the mix extrapolates, and with estimated moments
#: (and a possibly biased pathwise term) an extrapolated weight can be far worse than either
#: estimator alone. Users who want the raw minimiser pass ``bounds=None``.
DEFAULT_BOUNDS: Tuple[float, float] = (0.0, 1.0)

#: Weight returned for degenerate input. lam = 0 is the pure score (REINFORCE) estimator, the one
#: that stays unbiased for the true objective in RL (the pathwise term is only as good as its critic
#: or model), so it is the safe answer when the data cannot tell the estimators apart.
DEFAULT_FALLBACK: float = 0.0

# Relative size below which D = Var(g_P - g_M) counts as zero: the two estimators then differ by a
# constant and every lam has the same variance.
_DEGENERATE_RTOL = 1e-12


# ----------------------------------------------------------------------------------------------
# Per-sample gradients with respect to (mean, log_std) of a diagonal Gaussian
# ----------------------------------------------------------------------------------------------


def _as_tensor(x: ArrayLike, name: str, dtype: Optional[th.dtype] = th.float64) -> th.Tensor:
    t = x if isinstance(x, th.Tensor) else th.as_tensor(np.asarray(x))
    if dtype is not None:
        return t.to(dtype)
    return t if t.is_floating_point() else t.to(th.float64)


def _check_finite(t: th.Tensor, name: str) -> None:
    if not bool(th.isfinite(t).all()):
        n_bad = int((~th.isfinite(t)).sum())
        raise ValueError(f"{name} contains {n_bad} non-finite value(s) (NaN or inf)")


def pathwise_gradients(df_da: ArrayLike, eps: ArrayLike, log_std: ArrayLike) -> Tuple[th.Tensor, th.Tensor]:
    """Per-sample reparameterised gradients of f(mu + sigma * eps) w.r.t. (mean, log_std).

    :param df_da: df/da at each sample, shape (B, d) (or (B,) for d = 1).
    :param eps: the standard-normal noise that produced each sample, same shape.
    :param log_std: log sigma, broadcastable to (B, d).
    :return: (grad_mean, grad_log_std), each (B, d): f'(a) and f'(a) * sigma * eps.
    """
    df_da, eps = _as_tensor(df_da, "df_da", None), _as_tensor(eps, "eps", None)
    sigma = th.exp(_as_tensor(log_std, "log_std", None).to(eps.dtype))
    return df_da, df_da * sigma * eps


def score_gradients(f: ArrayLike, eps: ArrayLike, log_std: ArrayLike, baseline: ArrayLike = 0.0) -> Tuple[th.Tensor, th.Tensor]:
    """Per-sample score-function (Malliavin-weight) gradients w.r.t. (mean, log_std).

    :param f: f(a) at each sample, shape (B,).
    :param eps: the noise of each sample, shape (B, d) (or (B,) for d = 1).
    :param log_std: log sigma, broadcastable to (B, d).
    :param baseline: subtracted from f; a constant (or anything independent of eps) keeps the
        estimator unbiased.
    :return: (grad_mean, grad_log_std), each (B, d): (f - b) eps / sigma and (f - b)(eps^2 - 1).
    """
    eps = _as_tensor(eps, "eps", None)
    f = _as_tensor(f, "f", eps.dtype)
    centred = f - _as_tensor(baseline, "baseline", eps.dtype)
    if eps.dim() > 1:
        centred = centred.reshape(-1, *([1] * (eps.dim() - 1)))
    sigma = th.exp(_as_tensor(log_std, "log_std", None).to(eps.dtype))
    return centred * eps / sigma, centred * (eps * eps - 1.0)


# ----------------------------------------------------------------------------------------------
# Moments and the weight
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LambdaEstimate:
    """Result of :func:`optimal_lambda` (and of :meth:`WindowedLambda.estimate`).

    All variances are traces (sums over the gradient's coordinates) of per-sample covariances.

    :ivar lam: the weight to apply (clipped to ``bounds``; the fallback if ``degenerate``).
    :ivar lam_unclipped: the raw minimiser (nan if degenerate).
    :ivar var_path: Var_P.
    :ivar var_score: Var_M.
    :ivar cov: Cov(g_P, g_M).
    :ivar var_hybrid: predicted per-sample variance of lam * g_P + (1 - lam) * g_M at ``lam``.
    :ivar variance_reduction: 1 - var_hybrid / min(var_path, var_score) (0 when that minimum is 0).
    :ivar corr: cov / sqrt(var_path * var_score) (0 when either is 0).
    :ivar bias_sq: noise-corrected estimate of ||E g_P - E g_M||^2 (0 without bias correction data).
    :ivar n: number of samples behind the moments (the effective sample size for weighted windows).
    :ivar degenerate: True when the data cannot determine lam (n < 2 or D == 0).
    :ivar reason: why it is degenerate ('' otherwise).
    :ivar lam_se: standard error of lam_unclipped (nan when unknown).
    :ivar bias_sq_used: the ||b||^2 in the denominator (bias_sq, or its upper confidence limit).
    :ivar source: the pathwise source kind the rule was told ('' for the plain functions).
    """

    lam: float
    lam_unclipped: float
    var_path: float
    var_score: float
    cov: float
    var_hybrid: float
    variance_reduction: float
    corr: float
    bias_sq: float
    n: float
    degenerate: bool = False
    reason: str = ""
    #: standard error of ``lam_unclipped`` (jackknife over the window's batches, or over blocks);
    #: nan when it cannot be estimated (fewer than 3 batches/blocks)
    lam_se: float = math.nan
    #: the ||b||^2 the weight was computed with (the upper confidence limit for a learned source)
    bias_sq_used: float = 0.0
    #: "exact" or "learned" when produced by :class:`hybrid_pg.weight_rule.WeightRule`
    source: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def mixed_variance(lam: float, var_path: float, var_score: float, cov: float) -> float:
    """Var(lam) = lam^2 Var_P + (1 - lam)^2 Var_M + 2 lam (1 - lam) Cov."""
    return lam * lam * var_path + (1.0 - lam) ** 2 * var_score + 2.0 * lam * (1.0 - lam) * cov


def excess_variance(lam: float, lam_star: float, var_path: float, var_score: float, cov: float) -> float:
    """Var(lam) - Var(lam*) = (lam - lam*)^2 Var(g_P - g_M): the exact price of a wrong weight."""
    return (lam - lam_star) ** 2 * (var_path + var_score - 2.0 * cov)


def lambda_from_moments(
    var_path: float,
    var_score: float,
    cov: float,
    *,
    bias_sq: float = 0.0,
    batch_size: float = 1.0,
    bounds: Optional[Tuple[float, float]] = DEFAULT_BOUNDS,
    n: float = math.inf,
    fallback: float = DEFAULT_FALLBACK,
) -> LambdaEstimate:
    """The (bias-aware) optimal weight from the trace moments.

    lam = (Var_M - Cov) / (D + batch_size * bias_sq), D = Var_P + Var_M - 2 Cov. With
    ``bias_sq = 0`` this is the variance-optimal lam*.

    :param bias_sq: estimate of ||E g_P - E g_M||^2 (already noise-corrected).
    :param batch_size: number of samples in the batch gradient the weight is applied to.
    :param bounds: (lo, hi) clip range or None for the raw minimiser.
    :param n: number of samples behind the moments (only reported, and n < 2 is degenerate).
    :param fallback: the weight returned when lam is undetermined.
    """
    _check_bounds(bounds)
    values = dict(var_path=var_path, var_score=var_score, cov=cov, bias_sq=bias_sq)
    for key, value in values.items():
        if not math.isfinite(value):
            raise ValueError(f"{key} must be finite, got {value}")
    if var_path < 0 or var_score < 0 or bias_sq < 0:
        raise ValueError("variances and bias_sq must be non-negative")
    denom_var = var_path + var_score - 2.0 * cov
    scale = max(var_path, var_score, abs(cov))
    corr = cov / math.sqrt(var_path * var_score) if var_path > 0 and var_score > 0 else 0.0

    reason = ""
    if n < 2:
        reason = f"fewer than 2 samples (n={n:g})"
    elif denom_var <= _DEGENERATE_RTOL * scale or scale == 0.0:
        reason = "Var(g_P - g_M) = 0: the estimators differ by a constant, every lam is equivalent"
    if reason:
        lam, lam_raw = float(fallback), math.nan
    else:
        lam_raw = (var_score - cov) / (denom_var + batch_size * bias_sq)
        lam = lam_raw if bounds is None else min(max(lam_raw, bounds[0]), bounds[1])

    var_hybrid = max(mixed_variance(lam, var_path, var_score, cov), 0.0)
    best_single = min(var_path, var_score)
    reduction = 1.0 - var_hybrid / best_single if best_single > 0 else 0.0
    return LambdaEstimate(
        lam=float(lam),
        lam_unclipped=float(lam_raw),
        var_path=float(var_path),
        var_score=float(var_score),
        cov=float(cov),
        var_hybrid=float(var_hybrid),
        variance_reduction=float(reduction),
        corr=float(corr),
        bias_sq=float(bias_sq),
        n=float(n),
        degenerate=bool(reason),
        reason=reason,
    )


def _check_bounds(bounds: Optional[Tuple[float, float]]) -> None:
    if bounds is None:
        return
    if len(bounds) != 2 or not all(math.isfinite(float(b)) for b in bounds):
        raise ValueError(f"bounds must be a pair of finite numbers (lo, hi) or None, got {bounds!r}")
    if bounds[0] > bounds[1]:
        raise ValueError(f"bounds must satisfy lo <= hi, got {bounds!r}")


def as_sample_matrix(g: ArrayLike, name: str) -> th.Tensor:
    """(B,) -> (B, 1); (B, ...) -> (B, d) in float64, rejecting non-finite values."""
    t = _as_tensor(g, name, th.float64)
    if t.dim() == 0:
        raise ValueError(f"{name} must have a leading sample dimension, got a scalar")
    t = t.reshape(t.shape[0], -1) if t.dim() > 1 else t.reshape(-1, 1)
    _check_finite(t, name)
    return t


@dataclass(frozen=True)
class BatchMoments:
    """Sufficient statistics of one batch of paired per-sample gradients.

    Sums of squares are centred on this batch's own means (within-batch), so pooling batches
    never counts the movement of the mean between batches as noise.
    """

    n: int
    mean_path: th.Tensor  # (d,)
    mean_score: th.Tensor  # (d,)
    ss_path: float  # sum_i ||g_P,i - mean_P||^2
    ss_score: float  # sum_i ||g_M,i - mean_M||^2
    ss_cross: float  # sum_i <g_P,i - mean_P, g_M,i - mean_M>
    # Batch-means (block) statistics, for correlated samples (a rollout's steps share trajectories
    # and overlapping GAE sums): the samples are cut into n_blocks contiguous blocks j of L_j
    # samples with block means ybar_j, and lr_ss_X = sum_j L_j <ybar_j - mean, ybar'_j - mean'>.
    # lr_ss_X / (n_blocks - 1) estimates the long-run (autocovariance-summed) variance, which is
    # n times the variance of the batch mean. n_blocks = 0: no block information.
    n_blocks: int = 0
    lr_ss_path: float = 0.0
    lr_ss_score: float = 0.0
    lr_ss_cross: float = 0.0

    @classmethod
    def from_samples(cls, g_path: ArrayLike, g_score: ArrayLike, blocks: Optional[ArrayLike] = None) -> "BatchMoments":
        """Moments of paired samples; ``blocks`` (one integer label per sample, contiguous blocks,
        see :func:`hybrid_pg.correlation.block_ids`) adds the batch-means statistics."""
        gp = as_sample_matrix(g_path, "g_path")
        gm = as_sample_matrix(g_score, "g_score")
        if gp.shape != gm.shape:
            raise ValueError(f"g_path and g_score must have the same shape, got {tuple(gp.shape)} and {tuple(gm.shape)}")
        mp, mm = gp.mean(0), gm.mean(0)
        cp, cm = gp - mp, gm - mm
        extra = {}
        if blocks is not None:
            extra = block_statistics(cp, cm, blocks)
        return cls(
            n=int(gp.shape[0]),
            mean_path=mp.cpu(),
            mean_score=mm.cpu(),
            ss_path=float((cp * cp).sum()),
            ss_score=float((cm * cm).sum()),
            ss_cross=float((cp * cm).sum()),
            **extra,
        )

    @property
    def has_blocks(self) -> bool:
        return self.n_blocks >= 2

    @classmethod
    def concat(cls, parts: Sequence["BatchMoments"]) -> "BatchMoments":
        """Moments of the concatenated coordinates of the same samples (e.g. parameter groups).

        Trace moments add over coordinates, so the whole gradient's moments are the groups' sums.
        """
        if not parts or len({p.n for p in parts}) != 1:
            raise ValueError("concat needs at least one part, all over the same samples")
        return cls(
            n=parts[0].n,
            mean_path=th.cat([p.mean_path for p in parts]),
            mean_score=th.cat([p.mean_score for p in parts]),
            ss_path=sum(p.ss_path for p in parts),
            ss_score=sum(p.ss_score for p in parts),
            ss_cross=sum(p.ss_cross for p in parts),
            n_blocks=parts[0].n_blocks if len({p.n_blocks for p in parts}) == 1 else 0,
            lr_ss_path=sum(p.lr_ss_path for p in parts),
            lr_ss_score=sum(p.lr_ss_score for p in parts),
            lr_ss_cross=sum(p.lr_ss_cross for p in parts),
        )

    def merge(self, other: "BatchMoments") -> "BatchMoments":
        """Moments of the union of two disjoint chunks of the *same* batch (Chan et al.'s update).

        The sums of squares about the joint mean add the between-chunk term
        n_a n_b / (n_a + n_b) * <delta_P, delta_M>, so chunked computation equals one pass exactly.
        """
        n = self.n + other.n
        dp, dm = other.mean_path - self.mean_path, other.mean_score - self.mean_score
        k = self.n * other.n / n
        return BatchMoments(
            n=n,
            mean_path=self.mean_path + dp * (other.n / n),
            mean_score=self.mean_score + dm * (other.n / n),
            ss_path=self.ss_path + other.ss_path + k * float(dp @ dp),
            ss_score=self.ss_score + other.ss_score + k * float(dm @ dm),
            ss_cross=self.ss_cross + other.ss_cross + k * float(dp @ dm),
            # blocks never straddle chunks, and sum_j L_j = n, so the same Chan term applies; both
            # chunks need blocks, else the merged batch has none
            n_blocks=self.n_blocks + other.n_blocks if self.n_blocks > 0 and other.n_blocks > 0 else 0,
            lr_ss_path=self.lr_ss_path + other.lr_ss_path + k * float(dp @ dp),
            lr_ss_score=self.lr_ss_score + other.lr_ss_score + k * float(dm @ dm),
            lr_ss_cross=self.lr_ss_cross + other.lr_ss_cross + k * float(dp @ dm),
        )


def block_statistics(centred_path: th.Tensor, centred_score: th.Tensor, blocks: ArrayLike) -> dict:
    """Batch-means sums of already-centred samples (N, d): n_blocks and lr_ss_* of BatchMoments.

    sum_j L_j <ybar_j, ybar'_j> = sum_j <S_j, S'_j> / L_j with S_j the block sums (centred samples,
    so the block means are already about the batch mean).
    """
    labels = th.as_tensor(np.asarray(blocks)).to(th.long).reshape(-1)
    if labels.shape[0] != centred_path.shape[0]:
        raise ValueError(f"one block label per sample is required, got {labels.shape[0]} for {centred_path.shape[0]} samples")
    _, inverse, counts = th.unique(labels, return_inverse=True, return_counts=True)
    k = int(counts.shape[0])
    sums_p = th.zeros(k, centred_path.shape[1], dtype=th.float64).index_add_(0, inverse, centred_path.double().cpu())
    sums_m = th.zeros(k, centred_score.shape[1], dtype=th.float64).index_add_(0, inverse, centred_score.double().cpu())
    inv_len = 1.0 / counts.double()
    return dict(
        n_blocks=k,
        lr_ss_path=float(((sums_p * sums_p).sum(1) * inv_len).sum()),
        lr_ss_score=float(((sums_m * sums_m).sum(1) * inv_len).sum()),
        lr_ss_cross=float(((sums_p * sums_m).sum(1) * inv_len).sum()),
    )


def pooled_estimate(
    batches: Sequence[BatchMoments],
    weights: Optional[Sequence[float]] = None,
    *,
    bias_correction: bool = False,
    batch_size: Optional[float] = None,
    bounds: Optional[Tuple[float, float]] = DEFAULT_BOUNDS,
    fallback: float = DEFAULT_FALLBACK,
) -> LambdaEstimate:
    """lam from the pooled within-batch moments of several batches.

    Each sample of batch k carries weight w_k. Var_X = sum_k w_k ss_X,k / sum_k w_k (n_k - 1) (the
    pooled within-batch covariance; with one batch and w = 1 it is the usual unbiased estimate).
    The bias b = E g_P - E g_M is the weighted mean of the per-batch mean differences; its noise
    variance is D / n_eff with n_eff the Kish effective sample size (sum w n)^2 / sum w^2 n.

    :param batch_size: B in the bias-aware rule; defaults to the newest batch's size.
    """
    if weights is None:
        weights = [1.0] * len(batches)
    if len(weights) != len(batches):
        raise ValueError("one weight per batch is required")
    if not batches:
        return lambda_from_moments(0.0, 0.0, 0.0, n=0, bounds=bounds, fallback=fallback)
    w = [float(x) for x in weights]
    dof = sum(wk * (b.n - 1) for wk, b in zip(w, batches))
    wn = sum(wk * b.n for wk, b in zip(w, batches))
    n_eff = wn * wn / sum(wk * wk * b.n for wk, b in zip(w, batches)) if wn > 0 else 0.0
    if dof <= 0:
        return lambda_from_moments(0.0, 0.0, 0.0, n=min(n_eff, 1.0), bounds=bounds, fallback=fallback)
    var_p = sum(wk * b.ss_path for wk, b in zip(w, batches)) / dof
    var_m = sum(wk * b.ss_score for wk, b in zip(w, batches)) / dof
    cov = sum(wk * b.ss_cross for wk, b in zip(w, batches)) / dof
    bias_sq = 0.0
    if bias_correction:
        diff = cast(th.Tensor, sum(wk * b.n * (b.mean_path - b.mean_score) for wk, b in zip(w, batches))) / wn
        noise = (var_p + var_m - 2.0 * cov) / n_eff
        bias_sq = max(float(diff @ diff) - noise, 0.0)
    return lambda_from_moments(
        var_p,
        var_m,
        cov,
        bias_sq=bias_sq,
        batch_size=float(batches[-1].n if batch_size is None else batch_size),
        bounds=bounds,
        n=n_eff,
        fallback=fallback,
    )


def optimal_lambda(
    g_path: ArrayLike,
    g_score: ArrayLike,
    *,
    bounds: Optional[Tuple[float, float]] = DEFAULT_BOUNDS,
    bias_correction: bool = False,
    batch_size: Optional[float] = None,
    fallback: float = DEFAULT_FALLBACK,
) -> LambdaEstimate:
    """Variance-optimal (or MSE-optimal) weight of g_H = lam g_P + (1 - lam) g_M from samples.

    :param g_path: per-sample pathwise gradients, shape (B, d) or (B,) (d = 1).
    :param g_score: per-sample score gradients, same shape, paired with ``g_path`` sample by sample.
    :param bounds: clip range for lam; default (0, 1) (see :data:`DEFAULT_BOUNDS`); None = unclipped,
        in which case ``lam`` is the exact minimiser of the empirical variance of the mix.
    :param bias_correction: minimise the MSE of the batch gradient, treating the score estimator as
        unbiased and E g_P - E g_M as the pathwise bias.
    :param batch_size: B of the bias-aware rule (default: the number of samples given).
    :param fallback: weight returned, with ``degenerate=True``, when B < 2 or Var(g_P - g_M) = 0.
    :raises ValueError: on NaN/inf input, mismatched shapes or invalid bounds.
    """
    return pooled_estimate(
        [BatchMoments.from_samples(g_path, g_score)],
        bias_correction=bias_correction,
        batch_size=batch_size,
        bounds=bounds,
        fallback=fallback,
    )
