"""A "strongly coupled" scalar problem with every estimator moment in closed form.

**This is OUR RECONSTRUCTION, not the paper's problem.** The source paper (Oden, "Malliavin
Calculus as Stochastic Backpropagation", arXiv 2602.17013) reports up to 35% variance reduction on
a "strongly coupled" synthetic problem and says stronger coupling gives a smaller optimal weight
lam*; only its abstract is available, so the problem below is our guess at what "coupled" means:
the parameter moves both the location *and* the scale of the sampling distribution.

Problem
-------
theta is a scalar, eps ~ N(0, 1) and

    sigma(theta) = exp(alpha * theta)            (alpha = the coupling strength)
    z            = theta + sigma(theta) * eps
    f(z)         = min((z - m)^2, c^2)           (a clipped quadratic; continuous, kink at |z-m| = c)
    J(theta)     = E f(z).

The two unbiased per-sample estimators of dJ/dtheta are

    pathwise  g_P = f'(z) dz/dtheta = f'(z) (1 + alpha sigma eps),  f'(z) = 2 (z - m) 1{|z - m| < c}
    score     g_M = (f(z) - b) dlog p(z | theta)/dtheta = (f(z) - b) (eps / sigma + alpha (eps^2 - 1))

(b a constant baseline). With u = z - m = (theta - m) + sigma eps, the event |u| < c is the
interval eps in [lo, hi] = [(m - c - theta) / sigma, (m + c - theta) / sigma]. Inside it every
quantity is a polynomial in eps; outside, f = c^2 so g_P = 0 and g_M = (c^2 - b) * w(eps) with
w(eps) = eps / sigma + alpha (eps^2 - 1). So each moment is

    E[q(eps) 1{lo<eps<hi}] + E[r(eps)] - E[r(eps) 1{lo<eps<hi}]

with polynomials q, r of degree <= 8, i.e. a linear combination of the truncated standard normal
moments M_k(a, b) = int_a^b x^k phi(x) dx, computed exactly by the recurrence (integration by
parts, phi'(x) = -x phi(x))

    M_0 = Phi(b) - Phi(a),   M_1 = phi(a) - phi(b),   M_k = (k - 1) M_{k-2} - [x^{k-1} phi(x)]_a^b.

The lam*, hybrid variance and variance reduction are then obtained from the closed-form moments by
:func:`hybrid_pg.estimator.lambda_from_moments` (the weight formula lives in one place).

The true gradient is computed independently of the estimators, by differentiating the closed form
J = d^2 M_0 + 2 d sigma M_1 + sigma^2 M_2 + c^2 (1 - M_0) (d = theta - m, M_k = M_k(lo, hi)) with
the chain rule through d, sigma, lo and hi; it must equal E g_P and E g_M (the boundary terms of the
Leibniz rule cancel because f is continuous at |u| = c).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Optional, Tuple, Union

import numpy as np
from numpy.polynomial import polynomial as npoly
from scipy import special

from hybrid_pg.estimator import lambda_from_moments

_MAX_DEGREE = 8  # highest power of eps in any second moment (g_M^2 inside the interval)

RngLike = Union[None, int, np.random.Generator]


# ----------------------------------------------------------------------------------------------
# Truncated standard normal moments
# ----------------------------------------------------------------------------------------------


def _phi(x: float) -> float:
    """Standard normal density; 0 at +-inf."""
    if math.isinf(x):
        return 0.0
    return math.exp(-0.5 * x * x) / math.sqrt(2.0 * math.pi)


def _boundary(x: float, power: int) -> float:
    """x^power phi(x), with the limit 0 at x = +-inf."""
    if math.isinf(x):
        return 0.0
    return (x**power) * _phi(x)


def _normal_mass(a: float, b: float) -> float:
    """Phi(b) - Phi(a), computed on the side of the distribution that keeps precision."""
    if a >= 0.0:  # both in the upper tail: difference of survival functions
        return float(special.ndtr(-a) - special.ndtr(-b))
    return float(special.ndtr(b) - special.ndtr(a))


def truncated_normal_moments(a: float, b: float, kmax: int = _MAX_DEGREE) -> np.ndarray:
    """M_k(a, b) = int_a^b x^k phi(x) dx for k = 0..kmax (phi the standard normal density).

    Recurrence (integration by parts with phi'(x) = -x phi(x)):
    M_0 = Phi(b) - Phi(a), M_1 = phi(a) - phi(b), M_k = (k - 1) M_{k-2} - (b^{k-1} phi(b) - a^{k-1} phi(a)).
    Infinite limits are allowed (x^k phi(x) -> 0); a > b gives the negated integral.

    :raises ValueError: if a limit is NaN or kmax is negative.
    """
    a, b = float(a), float(b)
    if math.isnan(a) or math.isnan(b):
        raise ValueError(f"integration limits must not be NaN, got a={a}, b={b}")
    if int(kmax) != kmax or kmax < 0:
        raise ValueError(f"kmax must be a non-negative integer, got {kmax!r}")
    kmax = int(kmax)
    if a > b:
        return -truncated_normal_moments(b, a, kmax)
    out = np.zeros(kmax + 1)
    out[0] = _normal_mass(a, b)
    if kmax >= 1:
        out[1] = _phi(a) - _phi(b)
    for k in range(2, kmax + 1):
        out[k] = (k - 1) * out[k - 2] - (_boundary(b, k - 1) - _boundary(a, k - 1))
    return out


def _expect(coefs: np.ndarray, moments: np.ndarray) -> float:
    """sum_k coefs[k] * moments[k]: E[p(eps) 1{eps in [a, b]}] for p with those coefficients."""
    coefs = np.asarray(coefs, dtype=float)
    if coefs.size > moments.size:
        raise AssertionError("polynomial degree exceeds the available moments")  # internal bug
    return float(np.dot(coefs, moments[: coefs.size]))


_FULL_MOMENTS = truncated_normal_moments(-math.inf, math.inf, _MAX_DEGREE)  # E eps^k = (k-1)!! / 0


# ----------------------------------------------------------------------------------------------
# Validation and basic quantities
# ----------------------------------------------------------------------------------------------


def _finite(name: str, value: Any) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be a real number, got {value!r}") from exc
    if not math.isfinite(v):
        raise ValueError(f"{name} must be finite, got {v}")
    return v


def _check(theta: Any, alpha: Any, m: Any, c: Any, baseline: Any = None) -> Tuple[float, ...]:
    theta, alpha, m, c = (_finite(k, v) for k, v in (("theta", theta), ("alpha", alpha), ("m", m), ("c", c)))
    if c <= 0.0:
        raise ValueError(f"c (the clipping radius) must be > 0, got {c}")
    b = 0.0 if baseline is None else _finite("baseline", baseline)
    try:
        sigma = math.exp(alpha * theta)
    except OverflowError as exc:
        raise ValueError(f"sigma = exp(alpha * theta) overflows for alpha={alpha}, theta={theta}") from exc
    if sigma <= 0.0 or not math.isfinite(sigma):
        raise ValueError(f"sigma = exp(alpha * theta) = {sigma} is not a positive finite number")
    return theta, alpha, m, c, b, sigma


def sigma_of(theta: float, alpha: float) -> float:
    """sigma(theta) = exp(alpha * theta)."""
    return _check(theta, alpha, 0.0, 1.0)[-1]


def interval(theta: float, alpha: float, m: float = 0.0, c: float = 1.0) -> Tuple[float, float]:
    """[lo, hi]: the eps-interval on which |z - m| < c (the unclipped part of f)."""
    theta, alpha, m, c, _, sigma = _check(theta, alpha, m, c)
    return (m - c - theta) / sigma, (m + c - theta) / sigma


def expected_objective(theta: float, alpha: float, m: float = 0.0, c: float = 1.0) -> float:
    """J(theta) = E min((z - m)^2, c^2) = d^2 M_0 + 2 d sigma M_1 + sigma^2 M_2 + c^2 (1 - M_0).

    (d = theta - m, M_k = M_k(lo, hi).) Also the "mean reward" baseline b = E f(z).
    """
    theta, alpha, m, c, _, sigma = _check(theta, alpha, m, c)
    lo, hi = (m - c - theta) / sigma, (m + c - theta) / sigma
    M = truncated_normal_moments(lo, hi, 2)
    d = theta - m
    return float(d * d * M[0] + 2.0 * d * sigma * M[1] + sigma * sigma * M[2] + c * c * (1.0 - M[0]))


def true_gradient(theta: float, alpha: float, m: float = 0.0, c: float = 1.0) -> float:
    """dJ/dtheta by the chain rule on the closed form of :func:`expected_objective`.

    With J = (d^2 - c^2) M_0 + 2 d s M_1 + s^2 M_2 + c^2, dd/dtheta = 1, ds/dtheta = alpha s,
    dM_k/dtheta = hi^k phi(hi) dhi/dtheta - lo^k phi(lo) dlo/dtheta and
    dlo/dtheta = -1/s - alpha lo (same for hi). Computed without the estimators' polynomials, so
    agreement with E g_P and E g_M is a real check.
    """
    theta, alpha, m, c, _, s = _check(theta, alpha, m, c)
    d = theta - m
    lo, hi = (m - c - theta) / s, (m + c - theta) / s
    M = truncated_normal_moments(lo, hi, 2)
    ds = alpha * s
    dlo, dhi = -1.0 / s - alpha * lo, -1.0 / s - alpha * hi
    dM = [_boundary(hi, k) * dhi - _boundary(lo, k) * dlo for k in range(3)]
    explicit = 2.0 * d * M[0] + 2.0 * (s + d * ds) * M[1] + 2.0 * s * ds * M[2]
    through_limits = (d * d - c * c) * dM[0] + 2.0 * d * s * dM[1] + s * s * dM[2]
    return float(explicit + through_limits)


# ----------------------------------------------------------------------------------------------
# Closed-form moments of the two estimators
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CoupledMoments:
    """Exact moments of the pathwise and score estimators for one setting.

    :ivar sigma: exp(alpha * theta).
    :ivar lo, hi: the eps-interval where f is unclipped.
    :ivar objective: J(theta) = E f(z).
    :ivar true_grad: dJ/dtheta from :func:`true_gradient`.
    :ivar mean_path, mean_score: E g_P, E g_M (both equal true_grad).
    :ivar var_path, var_score, cov: Var g_P, Var g_M, Cov(g_P, g_M) (per sample).
    :ivar lam_star: the unclipped variance-optimal weight (Var_M - Cov) / Var(g_P - g_M).
    :ivar lam: the weight at ``bounds`` (equal to lam_star when bounds is None).
    :ivar var_hybrid: Var(lam g_P + (1 - lam) g_M) at ``lam``.
    :ivar variance_reduction: 1 - var_hybrid / min(var_path, var_score).
    :ivar corr: Cov / sqrt(Var_P Var_M).
    """

    theta: float
    alpha: float
    m: float
    c: float
    baseline: float
    sigma: float
    lo: float
    hi: float
    objective: float
    true_grad: float
    mean_path: float
    mean_score: float
    var_path: float
    var_score: float
    cov: float
    lam_star: float
    lam: float
    var_hybrid: float
    variance_reduction: float
    corr: float
    bounds: Optional[Tuple[float, float]] = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def estimator_polynomials(
    theta: float, alpha: float, m: float = 0.0, c: float = 1.0, baseline: Optional[float] = None
) -> dict[str, np.ndarray]:
    """Coefficients (increasing powers of eps) of the estimators on each piece.

    ``path_in``: g_P inside [lo, hi] (g_P = 0 outside); ``score_in``: g_M inside;
    ``score_out``: g_M outside (= (c^2 - b) w(eps)).
    """
    theta, alpha, m, c, b, s = _check(theta, alpha, m, c, baseline)
    d = theta - m
    u = np.array([d, s])  # z - m
    w = np.array([-alpha, 1.0 / s, alpha])  # dlog p / dtheta
    path_in = 2.0 * npoly.polymul(u, np.array([1.0, alpha * s]))
    f_in = npoly.polymul(u, u)
    score_in = npoly.polymul(npoly.polysub(f_in, np.array([b])), w)
    score_out = (c * c - b) * w
    return {"path_in": path_in, "score_in": score_in, "score_out": score_out}


def coupled_moments(
    theta: float,
    alpha: float,
    m: float = 0.0,
    c: float = 1.0,
    baseline: Optional[float] = None,
    *,
    bounds: Optional[Tuple[float, float]] = None,
) -> CoupledMoments:
    """Every first and second moment of (g_P, g_M) in closed form, and lam*, var_hybrid, reduction.

    :param baseline: constant subtracted from f in the score estimator (None = 0). Use
        :func:`expected_objective` for the mean-reward baseline.
    :param bounds: clip range passed to :func:`hybrid_pg.estimator.lambda_from_moments`; the
        default None gives the exact minimiser lam*.
    """
    theta, alpha, m, c, b, s = _check(theta, alpha, m, c, baseline)
    lo, hi = (m - c - theta) / s, (m + c - theta) / s
    Mi = truncated_normal_moments(lo, hi, _MAX_DEGREE)
    polys = estimator_polynomials(theta, alpha, m, c, b)
    p_in, q_in, q_out = polys["path_in"], polys["score_in"], polys["score_out"]

    def piecewise(inside: np.ndarray, outside: Optional[np.ndarray]) -> float:
        value = _expect(inside, Mi)
        if outside is not None:
            value += _expect(outside, _FULL_MOMENTS) - _expect(outside, Mi)
        return value

    mean_p = piecewise(p_in, None)
    mean_m = piecewise(q_in, q_out)
    second_p = piecewise(npoly.polymul(p_in, p_in), None)
    second_m = piecewise(npoly.polymul(q_in, q_in), npoly.polymul(q_out, q_out))
    cross = piecewise(npoly.polymul(p_in, q_in), None)  # g_P = 0 outside
    var_p = max(second_p - mean_p * mean_p, 0.0)
    var_m = max(second_m - mean_m * mean_m, 0.0)
    cov = cross - mean_p * mean_m

    raw = lambda_from_moments(var_p, var_m, cov, bounds=None)
    est = raw if bounds is None else lambda_from_moments(var_p, var_m, cov, bounds=bounds)
    return CoupledMoments(
        theta=theta,
        alpha=alpha,
        m=m,
        c=c,
        baseline=b,
        sigma=s,
        lo=lo,
        hi=hi,
        objective=expected_objective(theta, alpha, m, c),
        true_grad=true_gradient(theta, alpha, m, c),
        mean_path=mean_p,
        mean_score=mean_m,
        var_path=var_p,
        var_score=var_m,
        cov=cov,
        lam_star=raw.lam_unclipped,
        lam=est.lam,
        var_hybrid=est.var_hybrid,
        variance_reduction=est.variance_reduction,
        corr=est.corr,
        bounds=None if bounds is None else (float(bounds[0]), float(bounds[1])),
    )


# ----------------------------------------------------------------------------------------------
# Sampling
# ----------------------------------------------------------------------------------------------


def _generator(rng: RngLike) -> np.random.Generator:
    if isinstance(rng, np.random.Generator):
        return rng
    if rng is None or (isinstance(rng, (int, np.integer)) and not isinstance(rng, bool)):
        return np.random.default_rng(rng)
    raise ValueError(f"rng must be a numpy Generator, an int seed or None, got {type(rng).__name__}")


def _batch_size(B: Any) -> int:
    if isinstance(B, bool) or not isinstance(B, (int, np.integer)):
        raise ValueError(f"B must be an integer >= 1, got {B!r}")
    if B < 1:
        raise ValueError(f"B must be >= 1, got {B}")
    return int(B)


def gradients_from_eps(
    theta: float,
    alpha: float,
    eps: np.ndarray,
    m: float = 0.0,
    c: float = 1.0,
    baseline: Optional[float] = None,
) -> Tuple[np.ndarray, np.ndarray]:
    """(g_P, g_M) for given standard-normal draws ``eps`` (paired sample by sample)."""
    theta, alpha, m, c, b, s = _check(theta, alpha, m, c, baseline)
    eps = np.asarray(eps, dtype=float)
    if not np.all(np.isfinite(eps)):
        raise ValueError("eps must be finite")
    u = (theta - m) + s * eps
    inside = np.abs(u) < c
    f = np.where(inside, u * u, c * c)
    fprime = np.where(inside, 2.0 * u, 0.0)
    g_path = fprime * (1.0 + alpha * s * eps)
    g_score = (f - b) * (eps / s + alpha * (eps * eps - 1.0))
    return g_path, g_score


def sample_gradients(
    theta: float,
    alpha: float,
    B: int,
    m: float = 0.0,
    c: float = 1.0,
    baseline: Optional[float] = None,
    rng: RngLike = None,
) -> Tuple[np.ndarray, np.ndarray]:
    """Draw B paired per-sample gradients (g_path, g_score), each a float array of shape (B,).

    :param rng: a numpy Generator (used in place), an int seed, or None (fresh entropy).
    :raises ValueError: on non-finite parameters, c <= 0, B < 1 or a bad rng.
    """
    _check(theta, alpha, m, c, baseline)
    B = _batch_size(B)
    eps = _generator(rng).standard_normal(B)
    return gradients_from_eps(theta, alpha, eps, m, c, baseline)


# ----------------------------------------------------------------------------------------------
# A biased pathwise source with a closed-form MSE-optimal weight
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BiasedCoupledMoments:
    """Exact moments when the pathwise term uses a mis-specified model f~(z) = f(z) + kappa z.

    g_P~ = f~'(z) dz/dtheta = g_P + kappa (1 + alpha sigma eps), so the bias is exactly
    b = E g_P~ - E g_M = kappa (E[1 + alpha sigma eps] = 1), and for a batch of B samples the
    MSE-optimal weight is lam_mse = (Var_M - Cov~) / (D~ + B kappa^2), D~ = Var(g_P~ - g_M).

    :ivar lam_var: the variance-optimal weight of the biased pair (what a bias-blind rule gives).
    """

    kappa: float
    batch_size: float
    bias: float
    var_path: float
    var_score: float
    cov: float
    lam_var: float
    lam_mse: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def biased_coupled_moments(
    theta: float, alpha: float, kappa: float, batch_size: float, m: float = 0.0, c: float = 1.0, baseline: Optional[float] = None
) -> BiasedCoupledMoments:
    """Closed-form moments, bias and MSE-optimal lam of the coupled problem with a biased model."""
    kappa = _finite("kappa", kappa)
    batch_size = _finite("batch_size", batch_size)
    if batch_size <= 0:
        raise ValueError(f"batch_size must be > 0, got {batch_size}")
    theta, alpha, m, c, b, s = _check(theta, alpha, m, c, baseline)
    lo, hi = (m - c - theta) / s, (m + c - theta) / s
    Mi = truncated_normal_moments(lo, hi, _MAX_DEGREE)
    polys = estimator_polynomials(theta, alpha, m, c, b)
    extra = kappa * np.array([1.0, alpha * s])  # kappa dz/dtheta, everywhere
    p_in, p_out = npoly.polyadd(polys["path_in"], extra), extra
    q_in, q_out = polys["score_in"], polys["score_out"]

    def piecewise(inside: np.ndarray, outside: np.ndarray) -> float:
        return _expect(inside, Mi) + _expect(outside, _FULL_MOMENTS) - _expect(outside, Mi)

    mean_p, mean_m = piecewise(p_in, p_out), piecewise(q_in, q_out)
    var_p = max(piecewise(npoly.polymul(p_in, p_in), npoly.polymul(p_out, p_out)) - mean_p**2, 0.0)
    var_m = max(piecewise(npoly.polymul(q_in, q_in), npoly.polymul(q_out, q_out)) - mean_m**2, 0.0)
    cov = piecewise(npoly.polymul(p_in, q_in), npoly.polymul(p_out, q_out)) - mean_p * mean_m
    bias = mean_p - mean_m
    lam_var = lambda_from_moments(var_p, var_m, cov, bounds=None).lam_unclipped
    lam_mse = lambda_from_moments(var_p, var_m, cov, bias_sq=bias * bias, batch_size=batch_size, bounds=None).lam_unclipped
    return BiasedCoupledMoments(kappa, batch_size, bias, var_p, var_m, cov, lam_var, lam_mse)


def sample_biased_gradients(
    theta: float, alpha: float, kappa: float, B: int, m: float = 0.0, c: float = 1.0, baseline: Optional[float] = None, rng: RngLike = None
) -> Tuple[np.ndarray, np.ndarray]:
    """B paired samples (g_P~, g_M) of :func:`biased_coupled_moments`'s problem."""
    theta, alpha, m, c, b, s = _check(theta, alpha, m, c, baseline)
    B = _batch_size(B)
    eps = _generator(rng).standard_normal(B)
    g_path, g_score = gradients_from_eps(theta, alpha, eps, m, c, baseline)
    return g_path + _finite("kappa", kappa) * (1.0 + alpha * s * eps), g_score
