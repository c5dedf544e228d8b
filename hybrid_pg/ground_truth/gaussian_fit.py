"""The "seed question": the gradient of a sum of squares under a Gaussian, in closed form.

Data x_1..x_n, parameters (mu, sigma) (sigma itself, not log sigma), y = mu + sigma * eps with
eps ~ N(0, 1), and

    f(y) = sum_i (y - x_i)^2,        E f(y) = n sigma^2 + sum_i (mu - x_i)^2.

Notation used throughout: D = sum_i (mu - x_i) = n (mu - xbar), Q = sum_i (mu - x_i)^2, and for a
constant baseline b (0 if none)

    f(y) - b = a0 + a1 eps + a2 eps^2,   a0 = Q - b,  a1 = 2 sigma D,  a2 = n sigma^2,
    f'(y)    = 2 D + 2 n sigma eps.

The estimators of grad E f = (2 D, 2 n sigma) are polynomials in eps:

    pathwise  g_P = f'(y) * dy/d(mu, sigma) = (f'(y), f'(y) eps)
    score     g_M = (f(y) - b) * dlog N(y; mu, sigma^2)/d(mu, sigma)
                  = ((f - b) eps / sigma, (f - b) (eps^2 - 1) / sigma)

so their exact moments follow from the Gaussian moments E eps^{2k} = (2k - 1)!!, E eps^{odd} = 0.
:func:`exact_moments` writes the results out by hand; :func:`exact_covariance_matrix` computes the
whole 4 x 4 covariance by polynomial arithmetic, an independent route to the same numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional, Tuple, Union

import numpy as np
from numpy.polynomial import polynomial as npoly

RngLike = Union[None, int, np.random.Generator]


# ----------------------------------------------------------------------------------------------
# Validation
# ----------------------------------------------------------------------------------------------


def _data(x: Any) -> np.ndarray:
    arr = np.asarray(x, dtype=float).reshape(-1)
    if arr.size == 0:
        raise ValueError("x must contain at least one data point")
    if not np.all(np.isfinite(arr)):
        raise ValueError("x must be finite")
    return arr


def _params(mu: Any, sigma: Any, baseline: Any = None) -> Tuple[float, float, float]:
    vals = []
    for name, v in (("mu", mu), ("sigma", sigma), ("baseline", 0.0 if baseline is None else baseline)):
        try:
            fv = float(v)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{name} must be a real number, got {v!r}") from exc
        if not math.isfinite(fv):
            raise ValueError(f"{name} must be finite, got {fv}")
        vals.append(fv)
    if vals[1] <= 0.0:
        raise ValueError(f"sigma must be > 0, got {vals[1]}")
    return vals[0], vals[1], vals[2]


def _generator(rng: RngLike) -> np.random.Generator:
    if isinstance(rng, np.random.Generator):
        return rng
    if rng is None or (isinstance(rng, (int, np.integer)) and not isinstance(rng, bool)):
        return np.random.default_rng(rng)
    raise ValueError(f"rng must be a numpy Generator, an int seed or None, got {type(rng).__name__}")


def _batch_size(B: Any) -> int:
    if isinstance(B, bool) or not isinstance(B, (int, np.integer)) or B < 1:
        raise ValueError(f"B must be an integer >= 1, got {B!r}")
    return int(B)


def _coefficients(mu: float, x: np.ndarray) -> Tuple[int, float, float]:
    n = x.size
    diff = mu - x
    return n, float(diff.sum()), float(diff @ diff)  # n, D, Q


# ----------------------------------------------------------------------------------------------
# Objective and exact gradient
# ----------------------------------------------------------------------------------------------


def expected_objective(mu: float, sigma: float, x: Any) -> float:
    """E f(mu + sigma eps) = n sigma^2 + sum_i (mu - x_i)^2."""
    x = _data(x)
    mu, sigma, _ = _params(mu, sigma)
    return float(x.size * sigma * sigma + np.sum((mu - x) ** 2))


def exact_gradient(mu: float, sigma: float, x: Any) -> np.ndarray:
    """(dE/dmu, dE/dsigma) = (2 sum_i (mu - x_i), 2 n sigma)."""
    x = _data(x)
    mu, sigma, _ = _params(mu, sigma)
    return np.array([2.0 * np.sum(mu - x), 2.0 * x.size * sigma])


# ----------------------------------------------------------------------------------------------
# Per-sample estimators
# ----------------------------------------------------------------------------------------------


def gradients_from_eps(mu: float, sigma: float, x: Any, eps: Any, baseline: Optional[float] = None) -> Tuple[np.ndarray, np.ndarray]:
    """Pathwise and score samples for given noise, each of shape (B, 2): columns (d/dmu, d/dsigma)."""
    x = _data(x)
    mu, sigma, b = _params(mu, sigma, baseline)
    eps = np.asarray(eps, dtype=float).reshape(-1)
    if not np.all(np.isfinite(eps)):
        raise ValueError("eps must be finite")
    y = mu + sigma * eps
    n, xsum, xsq = x.size, float(x.sum()), float(x @ x)
    f = n * y * y - 2.0 * xsum * y + xsq  # sum_i (y - x_i)^2 without a (B, n) array
    fprime = 2.0 * (n * y - xsum)
    g_path = np.stack([fprime, fprime * eps], axis=1)
    centred = f - b
    g_score = np.stack([centred * eps / sigma, centred * (eps * eps - 1.0) / sigma], axis=1)
    return g_path, g_score


def sample_gradients(
    mu: float, sigma: float, x: Any, B: int, rng: RngLike = None, baseline: Optional[float] = None
) -> Tuple[np.ndarray, np.ndarray]:
    """B paired samples (g_path, g_score), each (B, 2) with columns (d/dmu, d/dsigma)."""
    x = _data(x)
    _params(mu, sigma, baseline)
    B = _batch_size(B)
    eps = _generator(rng).standard_normal(B)
    return gradients_from_eps(mu, sigma, x, eps, baseline)


def pathwise_samples(mu: float, sigma: float, x: Any, B: int, rng: RngLike = None) -> np.ndarray:
    """B pathwise samples (f'(y), f'(y) eps), shape (B, 2)."""
    return sample_gradients(mu, sigma, x, B, rng)[0]


def score_samples(mu: float, sigma: float, x: Any, B: int, rng: RngLike = None, baseline: Optional[float] = None) -> np.ndarray:
    """B score samples ((f - b) eps / sigma, (f - b)(eps^2 - 1) / sigma), shape (B, 2)."""
    return sample_gradients(mu, sigma, x, B, rng, baseline)[1]


# ----------------------------------------------------------------------------------------------
# Exact moments
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GaussianFitMoments:
    """Exact per-sample moments; arrays are per coordinate (mu, sigma).

    :ivar mean: the true gradient (2 D, 2 n sigma) = E g_P = E g_M.
    :ivar var_path, var_score: per-coordinate variances.
    :ivar cov_path_score: per-coordinate Cov(g_P[j], g_M[j]).
    :ivar cov_path_mu_sigma: Cov(g_P[mu], g_P[sigma]).
    """

    mean: np.ndarray
    var_path: np.ndarray
    var_score: np.ndarray
    cov_path_score: np.ndarray
    cov_path_mu_sigma: float


def exact_moments(mu: float, sigma: float, x: Any, baseline: Optional[float] = None) -> GaussianFitMoments:
    """Closed-form per-sample (co)variances, derived by hand.

    With a0 = Q - b, a1 = 2 sigma D, a2 = n sigma^2 and E eps^2 = 1, E eps^4 = 3, E eps^6 = 15,
    E eps^8 = 105 (odd moments 0):

    pathwise, mu:     g = 2D + 2 n sigma eps                      Var = 4 n^2 sigma^2
    pathwise, sigma:  g = 2D eps + 2 n sigma eps^2                Var = 4 D^2 + 8 n^2 sigma^2
                      (eps and eps^2 - 1 are uncorrelated; Var eps^2 = 2)
    Cov(P_mu, P_sigma) = E[2 n sigma eps (2D eps + 2 n sigma (eps^2 - 1))] = 4 n sigma D

    score, mu:  sigma g = a0 eps + a1 eps^2 + a2 eps^3, mean a1, second moment
                a0^2 + 3 a1^2 + 15 a2^2 + 6 a0 a2, so
                Var = (a0^2 + 2 a1^2 + 15 a2^2 + 6 a0 a2) / sigma^2
                    = a0^2 / sigma^2 + 8 D^2 + 15 n^2 sigma^2 + 6 n a0
    score, sigma: sigma g = (a0 + a1 eps + a2 eps^2)(eps^2 - 1); E(eps^2-1)^2 = 2,
                E eps^2 (eps^2-1)^2 = 10, E eps^4 (eps^2-1)^2 = 78, mean 2 a2, so
                Var = (2 a0^2 + 10 a1^2 + 74 a2^2 + 20 a0 a2) / sigma^2
                    = 2 a0^2 / sigma^2 + 40 D^2 + 74 n^2 sigma^2 + 20 n a0
    Cov(P_mu, M_mu)       = E[2 n sigma eps (a0 eps + a1 eps^2 + a2 eps^3)] / sigma = 2 n (a0 + 3 a2)
    Cov(P_sigma, M_sigma) = (4 D a1 + 4 n sigma a0 + 24 n sigma a2) / sigma - (2 n sigma)^2
                          = 8 D^2 + 4 n a0 + 20 n a2

    Pathwise always wins here, for any baseline: a0^2 + 6 a0 a2 + 15 a2^2 = (a0 + 3 a2)^2 + 6 a2^2
    gives Var_M[mu] >= 6 n^2 sigma^2 + 8 D^2 > 4 n^2 sigma^2, and
    2 a0^2 + 20 a0 a2 + 74 a2^2 = 2 (a0 + 5 a2)^2 + 24 a2^2 gives
    Var_M[sigma] >= 24 n^2 sigma^2 + 40 D^2 > 4 D^2 + 8 n^2 sigma^2.
    """
    x = _data(x)
    mu, sigma, b = _params(mu, sigma, baseline)
    n, D, Q = _coefficients(mu, x)
    a0, a2 = Q - b, n * sigma * sigma
    var_path = np.array([4.0 * n * n * sigma * sigma, 4.0 * D * D + 8.0 * n * n * sigma * sigma])
    var_score = np.array(
        [
            a0 * a0 / sigma**2 + 8.0 * D * D + 15.0 * n * n * sigma**2 + 6.0 * n * a0,
            2.0 * a0 * a0 / sigma**2 + 40.0 * D * D + 74.0 * n * n * sigma**2 + 20.0 * n * a0,
        ]
    )
    cov_ps = np.array([2.0 * n * (a0 + 3.0 * a2), 8.0 * D * D + 4.0 * n * a0 + 20.0 * n * a2])
    return GaussianFitMoments(
        mean=np.array([2.0 * D, 2.0 * n * sigma]),
        var_path=var_path,
        var_score=var_score,
        cov_path_score=cov_ps,
        cov_path_mu_sigma=4.0 * n * sigma * D,
    )


def _gaussian_expectation(coefs: np.ndarray) -> float:
    """E p(eps) for eps ~ N(0, 1): sum over even k of coefs[k] (k - 1)!!."""
    total, double_fact = 0.0, 1.0  # (k - 1)!! for k = 0
    for k, a in enumerate(np.asarray(coefs, dtype=float)):
        if k % 2 == 0:
            if k > 0:
                double_fact *= k - 1
            total += a * double_fact
    return float(total)


def exact_covariance_matrix(mu: float, sigma: float, x: Any, baseline: Optional[float] = None) -> Tuple[np.ndarray, np.ndarray]:
    """(mean, cov) of the 4-vector (P_mu, P_sigma, M_mu, M_sigma) by polynomial arithmetic in eps.

    Independent of the hand-derived formulas of :func:`exact_moments`.
    """
    x = _data(x)
    mu, sigma, b = _params(mu, sigma, baseline)
    n, D, Q = _coefficients(mu, x)
    fprime = np.array([2.0 * D, 2.0 * n * sigma])
    centred = np.array([Q - b, 2.0 * sigma * D, n * sigma * sigma])
    polys = [
        fprime,
        npoly.polymul(fprime, [0.0, 1.0]),
        npoly.polymul(centred, [0.0, 1.0 / sigma]),
        npoly.polymul(centred, [-1.0 / sigma, 0.0, 1.0 / sigma]),
    ]
    mean = np.array([_gaussian_expectation(p) for p in polys])
    cov = np.empty((4, 4))
    for i, p in enumerate(polys):
        for j, q in enumerate(polys):
            cov[i, j] = _gaussian_expectation(npoly.polymul(p, q)) - mean[i] * mean[j]
    return mean, cov


# ----------------------------------------------------------------------------------------------
# Fitting the spread: E f versus the likelihood
# ----------------------------------------------------------------------------------------------


def maximum_likelihood(x: Any) -> Tuple[float, float]:
    """Maximum-likelihood (mu, sigma) of N(mu, sigma^2) for the data: (xbar, sqrt(mean (x - xbar)^2)).

    Why not minimise E f? E f(y) = n sigma^2 + sum_i (mu - x_i)^2 is minimised at mu = xbar and
    sigma = 0: f scores a single draw y by its squared distance to the data, and any spread in y
    only adds n sigma^2 to that distance. The objective rewards putting all the mass at the mean;
    it is a criterion for one good point, not for a fitted spread, so gradient descent on it
    drives sigma -> 0 whatever the data.

    The spread is fitted by maximising the expected log-likelihood of the data under the model,
    (1/n) sum_i log N(x_i; mu, sigma^2) = -log sigma - (1/(2 n sigma^2)) sum_i (x_i - mu)^2 + const,
    which is the same as minimising KL(p_data || N(mu, sigma^2)) (they differ by the data's entropy,
    a constant). Setting the derivatives to zero gives mu = xbar and
    sigma^2 = (1/n) sum_i (x_i - xbar)^2 (the 1/n sample variance). Here the 1/sigma^2 weighting
    of the squared error and the log sigma normaliser balance each other; E f has neither.
    """
    x = _data(x)
    mu = float(x.mean())
    return mu, float(math.sqrt(np.mean((x - mu) ** 2)))


def expected_nll(mu: float, sigma: float, x: Any) -> float:
    """Average negative log-likelihood -(1/n) sum_i log N(x_i; mu, sigma^2), minimised by the MLE."""
    x = _data(x)
    mu, sigma, _ = _params(mu, sigma)
    return float(math.log(sigma) + 0.5 * math.log(2.0 * math.pi) + np.mean((x - mu) ** 2) / (2.0 * sigma * sigma))


def nll_pathwise_samples(mu: float, sigma: float, x: Any, B: int, rng: RngLike = None) -> np.ndarray:
    """Unbiased pathwise samples of grad :func:`expected_nll`, shape (B, 2), using draws y = mu + sigma eps.

    Because E f(y) = n sigma^2 + sum_i (mu - x_i)^2, the average NLL is itself an expectation over
    the same y: NLL = E_eps[log sigma + f(mu + sigma eps) / (2 n sigma^2)] + (log(2 pi) - 1) / 2.
    Differentiating the integrand through y (and through its explicit sigma) gives the pathwise
    samples  d/dmu = f'(y) / (2 n sigma^2),
             d/dsigma = 1 / sigma + f'(y) eps / (2 n sigma^2) - f(y) / (n sigma^3).
    """
    x = _data(x)
    mu, sigma, _ = _params(mu, sigma)
    B = _batch_size(B)
    eps = _generator(rng).standard_normal(B)
    n = x.size
    y = mu + sigma * eps
    f = n * y * y - 2.0 * x.sum() * y + x @ x
    fprime = 2.0 * (n * y - x.sum())
    d_mu = fprime / (2.0 * n * sigma**2)
    d_sigma = 1.0 / sigma + fprime * eps / (2.0 * n * sigma**2) - f / (n * sigma**3)
    return np.stack([d_mu, d_sigma], axis=1)
