"""Closed-form ground truth against Monte Carlo: the Gaussian-fit ("seed question") problem and our
reconstruction of the paper's strongly coupled problem.

Every tolerance is a number of standard errors computed from the closed-form variances or from the
samples' own fourth moments, never a hand-picked constant; all random draws are seeded.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import integrate, stats

from hybrid_pg import optimal_lambda
from hybrid_pg.ground_truth import coupled as cp
from hybrid_pg.ground_truth import gaussian_fit as gf

N_SE = 4.0  # tolerance in standard errors for every Monte Carlo comparison

X_DATA = np.array([-1.2, 0.3, 0.8, 1.9, 2.4, 3.1, 0.0, 1.1])
GF_SETTINGS = [(0.3, 0.7, None), (1.5, 1.2, 5.0), (-1.0, 0.2, None), (1.05, 2.0, 20.0)]

# (theta, alpha, m, c, baseline); "mean" = the mean-reward baseline E f(z)
CP_SETTINGS = [
    (0.5, 1.0, 0.0, 1.0, None),
    (0.5, 2.0, 0.0, 1.0, None),
    (0.2, 0.0, 0.0, 1.0, None),
    (-0.3, 1.5, 0.5, 0.7, 0.4),
    (1.0, 0.5, -1.0, 2.0, "mean"),
    (0.0, 2.5, 1.0, 0.5, "mean"),
]


def _baseline(theta, alpha, m, c, baseline):
    return cp.expected_objective(theta, alpha, m, c) if baseline == "mean" else baseline


def _var_se(g: np.ndarray) -> float:
    """Standard error of the sample variance: sqrt((m4 - s^4) / N) with m4 from the samples."""
    centred = g - g.mean()
    s2 = float(np.mean(centred**2))
    return math.sqrt(max(float(np.mean(centred**4)) - s2 * s2, 0.0) / g.size)


def _cov_se(a: np.ndarray, b: np.ndarray) -> float:
    prod = (a - a.mean()) * (b - b.mean())
    return float(prod.std() / math.sqrt(a.size))


# ----------------------------------------------------------------------------------------------
# Gaussian fit
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mu,sigma,baseline", GF_SETTINGS)
def test_gaussian_fit_hand_formulas_match_polynomial_route(mu, sigma, baseline):
    hand = gf.exact_moments(mu, sigma, X_DATA, baseline)
    mean, cov = gf.exact_covariance_matrix(mu, sigma, X_DATA, baseline)
    np.testing.assert_allclose(mean, np.concatenate([hand.mean, hand.mean]), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(np.diag(cov), np.concatenate([hand.var_path, hand.var_score]), rtol=1e-12)
    np.testing.assert_allclose([cov[0, 2], cov[1, 3]], hand.cov_path_score, rtol=1e-12)
    assert cov[0, 1] == pytest.approx(hand.cov_path_mu_sigma, rel=1e-12, abs=1e-12)


@pytest.mark.parametrize("mu,sigma", [(0.3, 0.7), (-1.0, 0.2), (2.0, 1.5)])
def test_gaussian_fit_exact_gradient_is_derivative_of_objective(mu, sigma):
    h = 1e-6
    fd = [
        (gf.expected_objective(mu + h, sigma, X_DATA) - gf.expected_objective(mu - h, sigma, X_DATA)) / (2 * h),
        (gf.expected_objective(mu, sigma + h, X_DATA) - gf.expected_objective(mu, sigma - h, X_DATA)) / (2 * h),
    ]
    np.testing.assert_allclose(gf.exact_gradient(mu, sigma, X_DATA), fd, rtol=1e-7, atol=1e-6)


@pytest.mark.parametrize("mu,sigma,baseline", GF_SETTINGS)
def test_gaussian_fit_monte_carlo_matches_closed_form(mu, sigma, baseline):
    B = 200_000
    g_path, g_score = gf.sample_gradients(mu, sigma, X_DATA, B, rng=np.random.default_rng(11), baseline=baseline)
    exact = gf.exact_moments(mu, sigma, X_DATA, baseline)
    for name, g, var in (("path", g_path, exact.var_path), ("score", g_score, exact.var_score)):
        se_mean = np.sqrt(var / B)  # from the closed-form variance
        err = np.abs(g.mean(0) - exact.mean)
        assert np.all(err < N_SE * se_mean), f"{name} mean off: {err} vs SE {se_mean}"
        for j in range(2):
            assert abs(g[:, j].var() - var[j]) < N_SE * _var_se(g[:, j]), f"{name}[{j}] variance"
    for j in range(2):
        mc_cov = float(np.mean((g_path[:, j] - g_path[:, j].mean()) * (g_score[:, j] - g_score[:, j].mean())))
        assert abs(mc_cov - exact.cov_path_score[j]) < N_SE * _cov_se(g_path[:, j], g_score[:, j])
    mc_cov01 = float(np.cov(g_path[:, 0], g_path[:, 1], bias=True)[0, 1])
    assert abs(mc_cov01 - exact.cov_path_mu_sigma) < N_SE * _cov_se(g_path[:, 0], g_path[:, 1])


@pytest.mark.parametrize("mu,sigma,baseline", GF_SETTINGS + [(1.05, 0.05, None), (-3.0, 4.0, None)])
def test_gaussian_fit_pathwise_has_lower_variance(mu, sigma, baseline):
    exact = gf.exact_moments(mu, sigma, X_DATA, baseline)
    assert np.all(exact.var_path < exact.var_score)
    g_path, g_score = gf.sample_gradients(mu, sigma, X_DATA, 20_000, rng=3, baseline=baseline)
    assert np.all(g_path.var(0) < g_score.var(0))


def test_gaussian_fit_mle_and_nll_gradient():
    mu_hat, sigma_hat = gf.maximum_likelihood(X_DATA)
    assert mu_hat == pytest.approx(X_DATA.mean())
    assert sigma_hat**2 == pytest.approx(np.var(X_DATA))  # 1/n convention
    # the MLE is a stationary point of the average NLL, and a minimum along sigma
    h = 1e-5
    d_sigma = (gf.expected_nll(mu_hat, sigma_hat + h, X_DATA) - gf.expected_nll(mu_hat, sigma_hat - h, X_DATA)) / (2 * h)
    assert abs(d_sigma) < 1e-6
    assert gf.expected_nll(mu_hat, 0.8 * sigma_hat, X_DATA) > gf.expected_nll(mu_hat, sigma_hat, X_DATA)
    # while E f keeps falling as sigma shrinks
    assert gf.expected_objective(mu_hat, 0.1 * sigma_hat, X_DATA) < gf.expected_objective(mu_hat, sigma_hat, X_DATA)
    # the pathwise NLL gradient samples are unbiased (SE from the samples)
    mu, sigma, B = 0.2, 0.9, 200_000
    g = gf.nll_pathwise_samples(mu, sigma, X_DATA, B, rng=5)
    fd = [
        (gf.expected_nll(mu + h, sigma, X_DATA) - gf.expected_nll(mu - h, sigma, X_DATA)) / (2 * h),
        (gf.expected_nll(mu, sigma + h, X_DATA) - gf.expected_nll(mu, sigma - h, X_DATA)) / (2 * h),
    ]
    assert np.all(np.abs(g.mean(0) - fd) < N_SE * g.std(0) / math.sqrt(B) + 1e-6)


def test_gaussian_fit_bad_input():
    with pytest.raises(ValueError):
        gf.exact_moments(0.0, 0.0, X_DATA)
    with pytest.raises(ValueError):
        gf.exact_moments(0.0, -1.0, X_DATA)
    with pytest.raises(ValueError):
        gf.exact_gradient(float("nan"), 1.0, X_DATA)
    with pytest.raises(ValueError):
        gf.expected_objective(0.0, 1.0, [])
    with pytest.raises(ValueError):
        gf.sample_gradients(0.0, 1.0, [1.0, float("inf")], 10)
    with pytest.raises(ValueError):
        gf.sample_gradients(0.0, 1.0, X_DATA, 0)
    with pytest.raises(ValueError):
        gf.sample_gradients(0.0, 1.0, X_DATA, 10, baseline=float("nan"))
    with pytest.raises(ValueError):
        gf.maximum_likelihood([])


# ----------------------------------------------------------------------------------------------
# Truncated normal moments
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "a,b",
    [(-1.0, 2.0), (0.5, 3.0), (-3.0, -1.0), (-math.inf, 1.0), (0.3, math.inf), (-math.inf, math.inf), (4.0, 6.0)],
)
def test_truncated_moments_match_quadrature(a, b):
    M = cp.truncated_normal_moments(a, b, 8)
    for k in range(9):
        ref, abserr = integrate.quad(lambda x, k=k: x**k * stats.norm.pdf(x), a, b, epsabs=1e-13, epsrel=1e-12)
        assert M[k] == pytest.approx(ref, rel=1e-9, abs=1e-12 + 10 * abserr), f"k={k}"


def test_truncated_moments_full_line_are_gaussian_moments():
    M = cp.truncated_normal_moments(-math.inf, math.inf, 8)
    np.testing.assert_allclose(M, [1, 0, 1, 0, 3, 0, 15, 0, 105], atol=1e-12)
    np.testing.assert_allclose(cp.truncated_normal_moments(2.0, -1.0, 4), -cp.truncated_normal_moments(-1.0, 2.0, 4))


# ----------------------------------------------------------------------------------------------
# Coupled problem
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("theta,alpha,m,c,baseline", CP_SETTINGS)
def test_coupled_closed_form_means_are_the_true_gradient(theta, alpha, m, c, baseline):
    b = _baseline(theta, alpha, m, c, baseline)
    mo = cp.coupled_moments(theta, alpha, m, c, b)
    # the chain-rule gradient equals a finite difference of the closed-form objective ...
    h = 1e-6
    fd = (cp.expected_objective(theta + h, alpha, m, c) - cp.expected_objective(theta - h, alpha, m, c)) / (2 * h)
    assert mo.true_grad == pytest.approx(fd, rel=1e-6, abs=1e-8)
    # ... and both estimator means (a different computation) equal it
    assert mo.mean_path == pytest.approx(mo.true_grad, rel=1e-9, abs=1e-12)
    assert mo.mean_score == pytest.approx(mo.true_grad, rel=1e-9, abs=1e-12)
    # the closed-form objective equals numerical integration of f
    s = mo.sigma
    J_quad = integrate.quad(lambda e: min((theta + s * e - m) ** 2, c * c) * stats.norm.pdf(e), -np.inf, np.inf, points=None, limit=200)[0]
    assert mo.objective == pytest.approx(J_quad, rel=1e-7)


@pytest.mark.parametrize("theta,alpha,m,c,baseline", CP_SETTINGS)
def test_coupled_monte_carlo_matches_closed_form(theta, alpha, m, c, baseline):
    b = _baseline(theta, alpha, m, c, baseline)
    mo = cp.coupled_moments(theta, alpha, m, c, b)
    B = 400_000
    gp, gm = cp.sample_gradients(theta, alpha, B, m, c, b, rng=np.random.default_rng(7))
    assert gp.shape == gm.shape == (B,)
    assert abs(gp.mean() - mo.true_grad) < N_SE * math.sqrt(mo.var_path / B)
    assert abs(gm.mean() - mo.true_grad) < N_SE * math.sqrt(mo.var_score / B)
    assert abs(gp.var() - mo.var_path) < N_SE * _var_se(gp)
    assert abs(gm.var() - mo.var_score) < N_SE * _var_se(gm)
    mc_cov = float(np.mean((gp - gp.mean()) * (gm - gm.mean())))
    assert abs(mc_cov - mo.cov) < N_SE * _cov_se(gp, gm)
    # the hybrid at lam* has the predicted (smaller) variance
    gh = mo.lam_star * gp + (1 - mo.lam_star) * gm
    assert abs(gh.var() - mo.var_hybrid) < N_SE * _var_se(gh)
    assert mo.var_hybrid <= min(mo.var_path, mo.var_score) + 1e-12


def test_coupled_bounds_are_passed_to_lambda_from_moments():
    inside = (0.5, 1.0, 0.0, 1.0, None)
    outside = (-1.0, 1.0, 0.0, 0.5, 0.5)  # Cov > Var_P here, so lam* > 1
    raw, clipped = cp.coupled_moments(*inside), cp.coupled_moments(*inside, bounds=(0.0, 1.0))
    assert 0.0 < raw.lam_star < 1.0 and raw.lam == raw.lam_star == pytest.approx(clipped.lam)
    raw, clipped = cp.coupled_moments(*outside), cp.coupled_moments(*outside, bounds=(0.0, 1.0))
    assert raw.cov > raw.var_path and raw.lam_star > 1.0 and raw.lam == raw.lam_star
    assert clipped.lam == 1.0 and clipped.lam_star == raw.lam_star
    assert clipped.var_hybrid == pytest.approx(raw.var_path) and clipped.var_hybrid > raw.var_hybrid


@pytest.mark.parametrize("theta,alpha,m,c,baseline", [CP_SETTINGS[0], CP_SETTINGS[3], CP_SETTINGS[4]])
def test_closed_form_lambda_matches_optimal_lambda_on_large_sample(theta, alpha, m, c, baseline):
    b = _baseline(theta, alpha, m, c, baseline)
    mo = cp.coupled_moments(theta, alpha, m, c, b)
    N = 1_000_000
    gp, gm = cp.sample_gradients(theta, alpha, N, m, c, b, rng=np.random.default_rng(2024))
    est = optimal_lambda(gp, gm, bounds=None)
    # delta method: lam_hat - lam* ~ mean of psi = -(x - y)(lam* x + (1 - lam*) y) / D, x, y centred
    x, y = gp - mo.mean_path, gm - mo.mean_score
    D = mo.var_path + mo.var_score - 2 * mo.cov
    psi = -(x - y) * (mo.lam_star * x + (1 - mo.lam_star) * y) / D
    se = float(psi.std() / math.sqrt(N))
    assert se < 0.01  # the comparison is sharp enough to mean something
    assert abs(est.lam - mo.lam_star) < N_SE * se, (est.lam, mo.lam_star, se)


def test_lambda_hat_converges_with_batch_size():
    theta, alpha = 0.5, 1.0
    lam_star = cp.coupled_moments(theta, alpha).lam_star
    rng = np.random.default_rng(99)
    errors = {}
    for B in (1_000, 100_000):
        errs = [abs(optimal_lambda(*cp.sample_gradients(theta, alpha, B, rng=rng), bounds=None).lam - lam_star) for _ in range(20)]
        errors[B] = float(np.mean(errs))
    # the error scales like 1/sqrt(B): a factor ~10 here; ask for at least 3
    assert errors[100_000] < errors[1_000] / 3.0, errors


def test_coupled_bad_input():
    with pytest.raises(ValueError):
        cp.coupled_moments(float("nan"), 1.0)
    with pytest.raises(ValueError):
        cp.coupled_moments(0.5, float("inf"))
    with pytest.raises(ValueError):
        cp.coupled_moments(0.5, 1.0, c=0.0)
    with pytest.raises(ValueError):
        cp.coupled_moments(0.5, 1.0, c=-1.0)
    with pytest.raises(ValueError):
        cp.coupled_moments(0.5, 1.0, baseline=float("nan"))
    with pytest.raises(ValueError):
        cp.coupled_moments(1000.0, 1000.0)  # sigma overflows
    with pytest.raises(ValueError):
        cp.sample_gradients(0.5, 1.0, 0)
    with pytest.raises(ValueError):
        cp.sample_gradients(0.5, 1.0, 2.5)
    with pytest.raises(ValueError):
        cp.sample_gradients(0.5, 1.0, 10, c=0.0)
    with pytest.raises(ValueError):
        cp.sample_gradients(0.5, 1.0, 10, rng="seed")
    with pytest.raises(ValueError):
        cp.truncated_normal_moments(float("nan"), 1.0)
    with pytest.raises(ValueError):
        cp.truncated_normal_moments(0.0, 1.0, -1)
