"""The estimator core against ground truth: closed forms and exact empirical identities."""

import math

import numpy as np
import pytest
import torch as th

from hybrid_pg import (
    lambda_from_moments,
    mixed_variance,
    optimal_lambda,
    pathwise_gradients,
    score_gradients,
)
from hybrid_pg.estimator import excess_variance


def _correlated_pair(rng, B, d, scale_p=1.0, scale_m=2.0, noise=1.0, shift=0.0):
    common = rng.normal(size=(B, d))
    g_p = scale_p * common + noise * rng.normal(size=(B, d)) + shift
    g_m = scale_m * common + noise * rng.normal(size=(B, d)) + shift
    return g_p, g_m


# ------------------------------------------------------------------------------------------------
# per-sample gradients of E f(mu + sigma eps) for a diagonal Gaussian
# ------------------------------------------------------------------------------------------------


def _quadratic_case():
    """f(a) = sum_j w_j (a_j - t_j)^2 with a ~ N(mu, diag sigma^2): E f = sum_j w_j((mu_j - t_j)^2 + sigma_j^2).

    Exact gradient: dmu_j = 2 w_j (mu_j - t_j); dlog_std_j = 2 w_j sigma_j^2.
    Exact per-sample moments of the estimators, per coordinate j, with u = mu - t:
      pathwise dmu  = 2 w (u + s e)                    -> Var = 4 w^2 s^2
      pathwise dlog = 2 w (u + s e) s e               -> Var = 4 w^2 s^2 (u^2 + 2 s^2)
    """
    mu = np.array([0.3, -1.0, 2.0])
    log_std = np.array([0.0, -0.5, 0.4])
    target = np.array([1.0, 0.5, 1.5])
    w = np.array([1.0, 2.0, 0.5])
    return mu, log_std, target, w


def test_both_per_sample_estimators_are_unbiased_for_a_quadratic():
    mu, log_std, target, w = _quadratic_case()
    sigma = np.exp(log_std)
    true_dmu = 2 * w * (mu - target)
    true_dlog = 2 * w * sigma**2
    rng = np.random.default_rng(0)
    B = 200_000
    eps = rng.normal(size=(B, 3))
    a = mu + sigma * eps
    f = (w * (a - target) ** 2).sum(1)
    df_da = 2 * w * (a - target)
    p_mu, p_log = pathwise_gradients(df_da, eps, log_std)
    baseline = float(f.mean())  # a constant baseline keeps the score estimator unbiased up to O(1/B)
    s_mu, s_log = score_gradients(f, eps, log_std, baseline=baseline)
    for est, truth in ((p_mu, true_dmu), (p_log, true_dlog), (s_mu, true_dmu), (s_log, true_dlog)):
        est = est.numpy()
        se = est.std(0, ddof=1) / math.sqrt(B)
        assert np.all(np.abs(est.mean(0) - truth) < 4.5 * se), (est.mean(0), truth, se)


def test_pathwise_per_sample_variance_matches_closed_form():
    mu, log_std, target, w = _quadratic_case()
    sigma, u = np.exp(log_std), mu - target
    rng = np.random.default_rng(1)
    B = 400_000
    eps = rng.normal(size=(B, 3))
    p_mu, p_log = pathwise_gradients(2 * w * (mu + sigma * eps - target), eps, log_std)
    exact_mu = 4 * w**2 * sigma**2
    exact_log = 4 * w**2 * sigma**2 * (u**2 + 2 * sigma**2)
    # the sample variance's SE is sqrt((m4 - s^4) / B); use the empirical 4th central moment
    for est, exact in ((p_mu.numpy(), exact_mu), (p_log.numpy(), exact_log)):
        c = est - est.mean(0)
        se = np.sqrt(((c**4).mean(0) - exact**2) / B)
        assert np.all(np.abs((c**2).mean(0) - exact) < 4.5 * se)


def test_score_gradient_shapes_and_torch_numpy_agree():
    rng = np.random.default_rng(2)
    eps = rng.normal(size=(5, 2))
    f = rng.normal(size=5)
    a_np = score_gradients(f, eps, np.zeros(2))
    a_th = score_gradients(th.as_tensor(f), th.as_tensor(eps), th.zeros(2))
    for x, y in zip(a_np, a_th):
        assert x.shape == (5, 2)
        assert th.allclose(x, y)
    # 1-D eps (d = 1)
    g_mu, g_log = score_gradients(f, eps[:, 0], 0.0)
    assert g_mu.shape == (5,) and th.allclose(g_mu, th.as_tensor(f * eps[:, 0]))
    assert th.allclose(g_log, th.as_tensor(f * (eps[:, 0] ** 2 - 1)))


# ------------------------------------------------------------------------------------------------
# optimal_lambda: exact identities on the empirical moments
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("d", [1, 7])
def test_unclipped_lambda_is_the_argmin_of_the_empirical_variance(d):
    rng = np.random.default_rng(3 + d)
    g_p, g_m = _correlated_pair(rng, 500, d)
    est = optimal_lambda(g_p, g_m, bounds=None)

    def empirical_var(lam):
        mix = lam * g_p + (1 - lam) * g_m
        return float(((mix - mix.mean(0)) ** 2).sum(1).sum() / (len(mix) - 1))

    # brute force, straight from the samples: a coarse grid, then a fine one around its best point
    coarse = np.linspace(-1.0, 2.0, 301)
    best = coarse[np.argmin([empirical_var(x) for x in coarse])]
    fine_grid = np.linspace(best - 0.01, best + 0.01, 2001)
    fine = fine_grid[np.argmin([empirical_var(x) for x in fine_grid])]
    assert abs(est.lam - fine) <= 1e-5 + 1e-12
    # the predicted variance of the mix is the empirical variance of the mixed samples, exactly
    assert est.var_hybrid == pytest.approx(empirical_var(est.lam), rel=1e-10)
    assert est.var_hybrid <= min(est.var_path, est.var_score) + 1e-12
    assert est.variance_reduction == pytest.approx(1 - est.var_hybrid / min(est.var_path, est.var_score))


def test_one_dimensional_input_means_d_equals_one():
    rng = np.random.default_rng(4)
    g_p, g_m = _correlated_pair(rng, 300, 1)
    a = optimal_lambda(g_p[:, 0], g_m[:, 0])
    b = optimal_lambda(g_p, g_m)
    assert a == b


def test_trace_form_is_the_sum_over_coordinates():
    rng = np.random.default_rng(5)
    g_p, g_m = _correlated_pair(rng, 400, 3)
    est = optimal_lambda(g_p, g_m, bounds=None)
    per = [optimal_lambda(g_p[:, j], g_m[:, j], bounds=None) for j in range(3)]
    assert est.var_path == pytest.approx(sum(p.var_path for p in per))
    assert est.var_score == pytest.approx(sum(p.var_score for p in per))
    assert est.cov == pytest.approx(sum(p.cov for p in per))
    assert est.var_path == pytest.approx(np.var(g_p, axis=0, ddof=1).sum())


def test_clipping_to_bounds_and_reduction_never_negative_inside_unit_interval():
    rng = np.random.default_rng(6)
    # g_m is g_p plus independent noise: lam* > 1 impossible, lam* close to 1
    base = rng.normal(size=(1000, 2))
    est = optimal_lambda(base * 1.0, base * 1.0 + 0.5 * rng.normal(size=(1000, 2)) + 3 * base)
    assert 0.0 <= est.lam <= 1.0
    raw = optimal_lambda(2 * base, base + 0.01 * rng.normal(size=(1000, 2)), bounds=None)
    clipped = optimal_lambda(2 * base, base + 0.01 * rng.normal(size=(1000, 2)))
    assert raw.lam < 0 and clipped.lam == 0.0
    narrow = optimal_lambda(2 * base, base, bounds=(0.2, 0.3))
    assert narrow.lam == 0.2


def test_known_population_lambda_is_recovered_and_error_shrinks_with_batch_size():
    # g_P = X, g_M = X + Y with X ~ N(0, 1), Y ~ N(0, 4) independent:
    # Var_P = 1, Var_M = 5, Cov = 1 -> lam* = (5 - 1) / (1 + 5 - 2) = 1 (use bounds=None)
    # Use g_M = 2X + Y instead: Var_M = 8, Cov = 2, D = 1 + 8 - 4 = 5, lam* = 6/5 -> bounds None
    # and g_M = X/2 + Y: Var_M = 4.25, Cov = .5, D = 4.25, lam* = 3.75 / 4.25
    lam_star = 3.75 / 4.25
    rng = np.random.default_rng(7)
    errs = {}
    for B in (100, 10_000):
        e = []
        for _ in range(40):
            x, y = rng.normal(size=B), 2 * rng.normal(size=B)
            e.append((optimal_lambda(x, x / 2 + y).lam - lam_star) ** 2)
        errs[B] = np.mean(e)
    assert errs[10_000] < errs[100] / 20  # O(1/B): 100x more samples, ~100x smaller MSE
    x, y = rng.normal(size=200_000), 2 * rng.normal(size=200_000)
    assert optimal_lambda(x, x / 2 + y).lam == pytest.approx(lam_star, abs=0.01)
    exact = lambda_from_moments(1.0, 4.25, 0.5)
    assert exact.lam == pytest.approx(lam_star)
    assert exact.var_hybrid == pytest.approx((1.0 * 4.25 - 0.25) / 4.25)


# ------------------------------------------------------------------------------------------------
# bias-aware weight
# ------------------------------------------------------------------------------------------------


def test_bias_correction_lowers_lambda_for_a_known_bias_and_minimises_mse():
    """g_P is a low-variance estimator with a known bias; g_M is unbiased but noisy.

    The batch-gradient MSE lam^2 b^2 + Var(lam)/B is minimised by the bias-aware rule; check it against
    a grid evaluation of the exact MSE using population moments.
    """
    truth, bias, B = 1.0, 0.3, 64
    var_p, var_m, cov = 0.1, 4.0, 0.2
    exact = lambda_from_moments(var_p, var_m, cov, bias_sq=bias**2, batch_size=B)
    grid = np.linspace(0, 1, 100001)
    mse = grid**2 * bias**2 + np.array([mixed_variance(x, var_p, var_m, cov) for x in grid]) / B
    assert exact.lam == pytest.approx(grid[mse.argmin()], abs=2e-5)
    plain = lambda_from_moments(var_p, var_m, cov)
    assert exact.lam < plain.lam

    # from samples: the noise-corrected ||b||^2 estimate recovers b^2
    rng = np.random.default_rng(8)
    n = 200_000
    z = rng.normal(size=n)
    g_p = truth + bias + math.sqrt(var_p) * z
    g_m = truth + (cov / math.sqrt(var_p)) * z + math.sqrt(var_m - cov**2 / var_p) * rng.normal(size=n)
    est = optimal_lambda(g_p, g_m, bias_correction=True, batch_size=B)
    se_bias = math.sqrt((var_p + var_m - 2 * cov) / n)
    assert est.bias_sq == pytest.approx(bias**2, abs=4 * 2 * bias * se_bias + 1e-4)
    assert est.lam == pytest.approx(exact.lam, abs=0.01)


def test_bias_estimate_is_floored_at_zero_for_unbiased_estimators():
    rng = np.random.default_rng(9)
    floors = 0
    for _ in range(20):
        x = rng.normal(size=200)
        est = optimal_lambda(x + 0.1 * rng.normal(size=200), x + rng.normal(size=200), bias_correction=True)
        assert est.bias_sq >= 0.0
        floors += est.bias_sq == 0.0
    assert floors >= 5  # ||b_hat||^2 is below its noise term about half the time when b = 0


# ------------------------------------------------------------------------------------------------
# degenerate and bad input
# ------------------------------------------------------------------------------------------------


def test_fewer_than_two_samples_is_degenerate_and_returns_the_fallback():
    est = optimal_lambda([1.0], [2.0])
    assert est.degenerate and est.lam == 0.0 and "fewer than 2" in est.reason
    assert math.isnan(est.lam_unclipped)
    assert optimal_lambda([1.0], [2.0], fallback=0.5).lam == 0.5


def test_identical_estimators_up_to_a_constant_are_degenerate():
    x = np.random.default_rng(10).normal(size=(50, 2))
    est = optimal_lambda(x, x + 3.0)
    assert est.degenerate and "every lam is equivalent" in est.reason
    zero = optimal_lambda(np.zeros(10), np.zeros(10))
    assert zero.degenerate and zero.variance_reduction == 0.0


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_input_raises(bad):
    g = np.ones((10, 2))
    g[3, 1] = bad
    with pytest.raises(ValueError, match="g_path contains 1 non-finite"):
        optimal_lambda(g, np.ones((10, 2)))
    with pytest.raises(ValueError, match="g_score"):
        optimal_lambda(np.ones((10, 2)), g)


def test_mismatched_shapes_and_bad_bounds_raise():
    with pytest.raises(ValueError, match="same shape"):
        optimal_lambda(np.ones((10, 2)), np.ones((10, 3)))
    with pytest.raises(ValueError, match="lo <= hi"):
        optimal_lambda(np.ones(10), np.ones(10), bounds=(1.0, 0.0))
    with pytest.raises(ValueError, match="finite"):
        optimal_lambda(np.ones(10), np.ones(10), bounds=(0.0, np.inf))
    with pytest.raises(ValueError, match="scalar"):
        optimal_lambda(1.0, 2.0)
    with pytest.raises(ValueError, match="non-negative"):
        lambda_from_moments(-1.0, 1.0, 0.0)


def test_excess_variance_is_exact():
    var_p, var_m, cov = 1.0, 3.0, 0.4
    star = lambda_from_moments(var_p, var_m, cov, bounds=None).lam
    for lam in (0.0, 0.3, 1.0):
        direct = mixed_variance(lam, var_p, var_m, cov) - mixed_variance(star, var_p, var_m, cov)
        assert excess_variance(lam, star, var_p, var_m, cov) == pytest.approx(direct)
