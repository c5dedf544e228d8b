"""Closed-form ground truth of the coupled bandit env (:mod:`hybrid_pg_envs.coupled_bandit`).

Every first and second moment of a Gaussian policy's (mu, log_std) gradients on the bandit, and lam*
from them (see the env module's docstring for the problem and the metric ``W``). It lives in the
library, not beside the env, because it uses the estimator (``lambda_from_moments``): the env layer
depends on gymnasium, numpy and torch only.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Optional, Sequence, Tuple, Union

import numpy as np
from numpy.polynomial import polynomial as npoly
from scipy import special

from hybrid_pg.estimator import lambda_from_moments
from hybrid_pg.ground_truth.coupled import truncated_normal_moments
from hybrid_pg_envs.coupled_bandit import DEFAULT_ACTION_BOUND, _finite


@dataclass(frozen=True)
class BanditMoments:
    """Exact moments of the per-sample gradients w.r.t. (mu, log_std) (reward units).

    :ivar expected_reward: E r = -E min((z - m)^2, c^2).
    :ivar grad: d E r / d(mu, log_std), from the pathwise mean; ``grad_score`` from the score mean
        (they agree: both estimators are unbiased).
    :ivar cov_path, cov_score, cross: 2x2 Cov(g_P), Cov(g_M), Cov(g_P, g_M) (row: g_P component).
    :ivar var_path, var_score, cov: their traces against ``metric``.
    :ivar lam_star: the unclipped variance-optimal weight; ``lam``: at ``bounds`` (= lam_star if None).
    :ivar clip_mass: P(|z| > action_bound), the mass the env's clipping changes (the closed form
        ignores it; keep it negligible).
    """

    mu: float
    log_std: float
    sigma: float
    m: float
    c: float
    baseline: float
    expected_reward: float
    grad: Tuple[float, float]
    grad_score: Tuple[float, float]
    cov_path: Tuple[Tuple[float, float], Tuple[float, float]]
    cov_score: Tuple[Tuple[float, float], Tuple[float, float]]
    cross: Tuple[Tuple[float, float], Tuple[float, float]]
    metric: Tuple[Tuple[float, float], Tuple[float, float]]
    var_path: float
    var_score: float
    cov: float
    lam_star: float
    lam: float
    var_hybrid: float
    variance_reduction: float
    corr: float
    clip_mass: float
    bounds: Optional[Tuple[float, float]] = None

    def as_dict(self) -> dict:
        return asdict(self)


def _metric(metric: Any) -> np.ndarray:
    if metric is None:
        return np.eye(2)
    W = np.asarray(metric, dtype=np.float64)
    if W.shape == (2,):
        W = np.diag(W)
    if W.shape != (2, 2) or not np.all(np.isfinite(W)):
        raise ValueError(f"metric must be None, 2 weights or a 2x2 matrix of finite numbers, got {metric!r}")
    if not np.allclose(W, W.T) or np.linalg.eigvalsh(W).min() < -1e-12 * max(1.0, np.abs(W).max()):
        raise ValueError(f"metric must be symmetric positive semi-definite, got {W.tolist()}")
    if not np.any(W):
        raise ValueError("metric must not be zero")
    return W


def _tuple2(a: np.ndarray) -> Tuple[Tuple[float, float], Tuple[float, float]]:
    return (float(a[0, 0]), float(a[0, 1])), (float(a[1, 0]), float(a[1, 1]))


def expected_reward(policy_mean: float, policy_log_std: float, m: float = 0.0, c: float = 1.0) -> float:
    """E r for z ~ N(mu, sigma^2): -(E[u^2 1{|u| < c}] + c^2 P(|u| >= c)), u = z - m."""

    mu, log_std, m, c = _check_args(policy_mean, policy_log_std, m, c)
    s = math.exp(log_std)
    d = mu - m
    M = truncated_normal_moments((-c - d) / s, (c - d) / s, 2)
    return -float(d * d * M[0] + 2 * d * s * M[1] + s * s * M[2] + c * c * (1.0 - M[0]))


def _check_args(mu: Any, log_std: Any, m: Any, c: Any) -> Tuple[float, float, float, float]:
    mu, log_std, m = _finite("policy_mean", mu), _finite("policy_log_std", log_std), _finite("m", m)
    c = _finite("c", c, positive=True)
    if not -50.0 < log_std < 50.0:
        raise ValueError(f"policy_log_std must lie in (-50, 50), got {log_std}")
    return mu, log_std, m, c


def bandit_moments(
    policy_mean: float,
    policy_log_std: float,
    m: float = 0.0,
    c: float = 1.0,
    baseline: Union[str, float, None] = "mean",
    *,
    metric: Any = None,
    bounds: Optional[Tuple[float, float]] = None,
    action_bound: float = DEFAULT_ACTION_BOUND,
) -> BanditMoments:
    """Every first and second moment of the (mu, log_std) gradients in closed form, and lam*.

    :param baseline: ``"mean"`` (E r), None (0) or a number, in reward units.
    :param metric: None (identity), 2 weights, or a 2x2 PSD matrix W (see the module docstring).
    :param bounds: clip range for ``lam`` (None: lam = lam_star).
    :param action_bound: only for ``clip_mass``.
    """

    mu, log_std, m, c = _check_args(policy_mean, policy_log_std, m, c)
    W = _metric(metric)
    s = math.exp(log_std)
    d = mu - m
    reward_mean = expected_reward(mu, log_std, m, c)
    if isinstance(baseline, str):
        if baseline != "mean":
            raise ValueError(f"baseline must be 'mean', None or a number, got {baseline!r}")
        b_reward = reward_mean
    else:
        b_reward = 0.0 if baseline is None else _finite("baseline", baseline)
    b = -b_reward  # f = -r: the baseline in units of f

    lo, hi = (-c - d) / s, (c - d) / s
    inside = truncated_normal_moments(lo, hi, 8)
    full = truncated_normal_moments(-math.inf, math.inf, 8)

    def e_in(p: np.ndarray) -> float:
        return float(np.dot(p, inside[: len(p)]))

    def e_full(p: np.ndarray) -> float:
        return float(np.dot(p, full[: len(p)]))

    u = np.array([d, s])
    f_in = npoly.polymul(u, u)
    path = [2.0 * u, npoly.polymul(2.0 * u, np.array([0.0, s]))]  # f'(z) * dz/d(mu, log_std)
    w = [np.array([0.0, 1.0 / s]), np.array([-1.0, 0.0, 1.0])]  # dlog p / d(mu, log_std)
    score_in = [npoly.polymul(npoly.polysub(f_in, np.array([b])), wk) for wk in w]
    score_out = [(c * c - b) * wk for wk in w]

    def e_score(p_in: np.ndarray, p_out: np.ndarray) -> float:
        return e_in(p_in) + e_full(p_out) - e_in(p_out)

    mean_p = np.array([e_in(p) for p in path])
    mean_s = np.array([e_score(score_in[k], score_out[k]) for k in range(2)])
    second_p = np.array([[e_in(npoly.polymul(path[j], path[k])) for k in range(2)] for j in range(2)])
    second_s = np.array(
        [[e_score(npoly.polymul(score_in[j], score_in[k]), npoly.polymul(score_out[j], score_out[k])) for k in range(2)] for j in range(2)]
    )
    second_x = np.array([[e_in(npoly.polymul(path[j], score_in[k])) for k in range(2)] for j in range(2)])  # g_P = 0 outside
    cov_p = second_p - np.outer(mean_p, mean_p)
    cov_s = second_s - np.outer(mean_s, mean_s)
    cross = second_x - np.outer(mean_p, mean_s)

    var_p = max(float(np.sum(W * cov_p)), 0.0)
    var_s = max(float(np.sum(W * cov_s)), 0.0)
    cov = float(np.sum(W * cross))  # tr(W cross) for symmetric W
    raw = lambda_from_moments(var_p, var_s, cov, bounds=None)
    est = raw if bounds is None else lambda_from_moments(var_p, var_s, cov, bounds=bounds)
    bound = _finite("action_bound", action_bound, positive=True)
    clip_mass = float(special.ndtr((-bound - mu) / s) + special.ndtr((mu - bound) / s))
    return BanditMoments(
        mu=mu,
        log_std=log_std,
        sigma=s,
        m=m,
        c=c,
        baseline=b_reward,
        expected_reward=reward_mean,
        grad=(-float(mean_p[0]), -float(mean_p[1])),
        grad_score=(-float(mean_s[0]), -float(mean_s[1])),
        cov_path=_tuple2(cov_p),
        cov_score=_tuple2(cov_s),
        cross=_tuple2(cross),
        metric=_tuple2(W),
        var_path=var_p,
        var_score=var_s,
        cov=cov,
        lam_star=raw.lam_unclipped,
        lam=est.lam,
        var_hybrid=est.var_hybrid,
        variance_reduction=est.variance_reduction,
        corr=est.corr,
        clip_mass=clip_mass,
        bounds=None if bounds is None else (float(bounds[0]), float(bounds[1])),
    )


def oracle_lambda(
    policy_mean: float,
    policy_log_std: float,
    m: float = 0.0,
    c: float = 1.0,
    baseline: Union[str, float, None] = "mean",
    *,
    metric: Any = None,
    bounds: Optional[Tuple[float, float]] = None,
) -> float:
    """The closed-form lam* for the Gaussian policy N(policy_mean, exp(policy_log_std)^2) on the
    bandit with target ``m`` and clip ``c`` (clipped to ``bounds`` if given); see :func:`bandit_moments`."""
    return bandit_moments(policy_mean, policy_log_std, m, c, baseline, metric=metric, bounds=bounds).lam


def per_sample_gradients(
    policy_mean: float,
    policy_log_std: float,
    eps: Union[Sequence[float], np.ndarray],
    m: float = 0.0,
    c: float = 1.0,
    baseline: float = 0.0,
) -> Tuple[np.ndarray, np.ndarray]:
    """(g_P, g_M) per sample, each of shape (N, 2) (columns: mu, log_std), in reward units, for
    given standard-normal draws ``eps`` (baseline a number, reward units). For Monte Carlo checks."""
    mu, log_std, m, c = _check_args(policy_mean, policy_log_std, m, c)
    eps = np.asarray(eps, dtype=np.float64)
    s = math.exp(log_std)
    uu = mu - m + s * eps
    inside = np.abs(uu) < c
    r = -np.where(inside, uu * uu, c * c)
    drdz = np.where(inside, -2.0 * uu, 0.0)
    g_path = np.stack([drdz, drdz * s * eps], axis=-1)
    adv = r - float(baseline)
    g_score = np.stack([adv * eps / s, adv * (eps * eps - 1.0)], axis=-1)
    return g_path, g_score


__all__ = [
    "BanditMoments",
    "bandit_moments",
    "expected_reward",
    "oracle_lambda",
    "per_sample_gradients",
]
