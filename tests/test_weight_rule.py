"""WeightRule, block statistics and the oracle's reference weights (ground truth: closed forms)."""

import math

import numpy as np
import pytest
import torch as th

from hybrid_pg.correlation import block_ids, effective_sample_size, long_run_variance, standard_error_of_mean
from hybrid_pg.estimator import BatchMoments
from hybrid_pg.ground_truth.coupled import (
    biased_coupled_moments,
    coupled_moments,
    expected_objective,
    sample_biased_gradients,
)
from hybrid_pg.weight_rule import (
    WeightRule,
    bias_upper_confidence_limit,
    oracle_lambdas,
    pool,
    posterior_mean_bias_sq,
    split_moments,
)
from hybrid_pg.window import WindowedLambda

th.set_num_threads(1)
THETA, ALPHA = 0.3, 1.0
BASE = expected_objective(THETA, ALPHA)
B = 1024


def _window(rule_kwargs, kappa, n_batches, seed, window=16):
    rng = np.random.default_rng(seed)
    win = WindowedLambda(window=window, bias_correction=True, bounds=None, **rule_kwargs)
    for _ in range(n_batches):
        win.add(BatchMoments.from_samples(*sample_biased_gradients(THETA, ALPHA, kappa, B, baseline=BASE, rng=rng)))
    return win


def test_biased_ground_truth_matches_sampling():
    truth = biased_coupled_moments(THETA, ALPHA, 0.05, B, baseline=BASE)
    gp, gm = sample_biased_gradients(THETA, ALPHA, 0.05, 400_000, baseline=BASE, rng=1)
    assert abs((gp.mean() - gm.mean()) - truth.bias) < 4 * math.sqrt(np.var(gp - gm) / len(gp))
    assert gp.var() == pytest.approx(truth.var_path, rel=0.02)
    assert np.cov(gp, gm)[0, 1] == pytest.approx(truth.cov, rel=0.03)
    # kappa = 0 is the exact problem: both weights are lam*
    exact = biased_coupled_moments(THETA, ALPHA, 0.0, B, baseline=BASE)
    assert exact.lam_mse == pytest.approx(coupled_moments(THETA, ALPHA, baseline=BASE).lam_star, abs=1e-12)


@pytest.mark.parametrize("kappa", [0.033, 0.066])
def test_learned_rule_converges_to_the_mse_optimal_weight(kappa):
    truth = biased_coupled_moments(THETA, ALPHA, kappa, B, baseline=BASE)
    assert truth.lam_var - truth.lam_mse > 0.1  # the bias matters
    # a long window: the bias' upper confidence limit tightens to ||b||^2
    lams = [_window({"source": "learned"}, kappa, 64, seed, window=64).lam for seed in range(4)]
    assert abs(np.mean(lams) - truth.lam_mse) < 0.05


def test_learned_rule_is_cautious_without_evidence_and_exact_rule_is_not():
    truth = coupled_moments(THETA, ALPHA, baseline=BASE)
    learned = _window({"source": "learned"}, 0.0, 1, 0)
    exact = _window({"source": "exact"}, 0.0, 1, 0)
    assert learned.lam < 0.6 * truth.lam_star  # one rollout proves nothing about the bias
    assert abs(exact.lam - truth.lam_star) < 0.1
    # with more data the learned source earns trust on an unbiased problem
    assert _window({"source": "learned"}, 0.0, 64, 0, window=64).lam > 0.85 * truth.lam_star


def test_exact_rule_equals_lam_star_within_its_standard_error():
    truth = coupled_moments(THETA, ALPHA, baseline=BASE).lam_star
    z = []
    for seed in range(6):
        est = _window({"source": "exact"}, 0.0, 8, seed, window=8).estimate(with_se=True)
        assert est.bias_sq_used == 0.0 and est.source == "exact"
        z.append((est.lam_unclipped - truth) / est.lam_se)
    assert np.all(np.abs(z) < 3.5) and np.mean(np.square(z)) < 4.0


def test_old_point_rule_is_noisier_than_the_exact_rule_on_an_unbiased_model():
    truth = coupled_moments(THETA, ALPHA, baseline=BASE).lam_star
    err = {}
    for name, kw in {"old": {"bias_rule": "point"}, "new": {"source": "exact"}}.items():
        err[name] = np.mean([abs(_window(kw, 0.0, 8, s, window=8).lam - truth) for s in range(8)])
    assert err["new"] < 0.05 and err["new"] < err["old"]


@pytest.mark.parametrize("kappa", [0.033, 0.066])
def test_posterior_rule_is_centred_on_the_mse_weight_where_ucl_falls_below_and_point_above(kappa):
    """Window of 8 rollouts (the default), 16 seeds: the posterior-mean rule's average weight is the
    closed-form MSE-optimal one within its standard error; the UCL's caution puts it below, the
    point rule's convexity (E[1/(D + B beta_hat)] > 1/(D + B E beta_hat)) above."""
    truth = biased_coupled_moments(THETA, ALPHA, kappa, B, baseline=BASE)
    lams = {
        rule: np.array([_window({"bias_rule": rule}, kappa, 8, s, window=8).lam for s in range(16)])
        for rule in ("posterior", "ucl", "point")
    }
    post = lams["posterior"]
    assert abs(post.mean() - truth.lam_mse) < 3 * post.std(ddof=1) / math.sqrt(len(post))
    assert lams["ucl"].mean() < post.mean() < lams["point"].mean()
    assert np.mean(np.abs(post - truth.lam_mse)) <= np.mean(np.abs(lams["ucl"] - truth.lam_mse))


def test_posterior_rule_minimises_the_posterior_expected_mse():
    """Independent check of the decision: draw b from its posterior N(b_hat, S) (S isotropic, trace
    tau) and minimise the Monte Carlo mean of lam^2 ||b||^2 + Var(mix) / B over a grid of lam."""
    rng = np.random.default_rng(0)
    gp = rng.normal(size=(512, 3)) + 0.05
    gm = 0.6 * gp + rng.normal(size=(512, 3))
    stats = pool([BatchMoments.from_samples(gp, gm)])
    batch = 256.0
    est = WeightRule(bias="posterior", bounds=None)([BatchMoments.from_samples(gp, gm)], batch_size=batch, with_se=False)
    assert est.bias_sq_used == pytest.approx(posterior_mean_bias_sq(stats.bias_hat_sq, stats.tau))
    b_hat = gp.mean(0) - gm.mean(0)
    draws = b_hat + rng.normal(size=(200_000, 3)) * math.sqrt(stats.tau / 3)
    bias_sq = np.mean(np.sum(draws**2, axis=1))
    grid = np.linspace(-0.5, 1.5, 4001)
    vp, vm, c = stats.var_path, stats.var_score, stats.cov
    risk = grid**2 * bias_sq + (grid**2 * vp + (1 - grid) ** 2 * vm + 2 * grid * (1 - grid) * c) / batch
    assert est.lam_unclipped == pytest.approx(grid[np.argmin(risk)], abs=2e-3)


def test_bias_ucl_properties():
    assert bias_upper_confidence_limit(0.0, 0.0) == 0.0
    assert bias_upper_confidence_limit(1.0, 0.1, z=0.0) == pytest.approx(0.9)
    assert bias_upper_confidence_limit(1.0, 0.1) > 0.9
    with pytest.raises(ValueError):
        WeightRule(source="critic")


def _ar1(rng, n_envs, n_steps, phi, d=1):
    """Env-major flattened AR(1) trajectories, stationary start, unit innovation variance."""
    x = np.empty((n_envs, n_steps, d))
    x[:, 0] = rng.normal(size=(n_envs, d)) / math.sqrt(1 - phi * phi)
    for t in range(1, n_steps):
        x[:, t] = phi * x[:, t - 1] + rng.normal(size=(n_envs, d))
    return x.reshape(n_envs * n_steps, d)


def test_block_statistics_recover_the_ar1_long_run_variance():
    phi, n_envs, n_steps = 0.8, 4, 4096
    true_lr = 1.0 / (1 - phi) ** 2  # sum of autocovariances of AR(1) with unit innovations
    true_var = 1.0 / (1 - phi * phi)
    rng = np.random.default_rng(0)
    est = [long_run_variance(_ar1(rng, n_envs, n_steps, phi), block_ids(n_envs, n_steps, 256)) for _ in range(6)]
    assert np.mean(est) == pytest.approx(true_lr, rel=0.15)
    x = _ar1(rng, n_envs, n_steps, phi)
    m = BatchMoments.from_samples(x, 0.0 * x, blocks=block_ids(n_envs, n_steps, 256))
    n_eff = effective_sample_size(m, "path")
    assert n_eff == pytest.approx(n_envs * n_steps * true_var / true_lr, rel=0.35)  # n / 9
    assert standard_error_of_mean(m, "path") == pytest.approx(math.sqrt(true_lr / (n_envs * n_steps)), rel=0.2)


def test_blocks_merge_and_concat_like_one_pass():
    rng = np.random.default_rng(3)
    gp, gm = rng.normal(size=(600, 3)), rng.normal(size=(600, 3))
    labels = block_ids(3, 200, 25)
    whole = BatchMoments.from_samples(gp, gm, blocks=labels)
    a = BatchMoments.from_samples(gp[:300], gm[:300], blocks=labels[:300])
    b = BatchMoments.from_samples(gp[300:], gm[300:], blocks=labels[300:])
    merged = a.merge(b)
    assert merged.n_blocks == whole.n_blocks == 24
    for k in ("lr_ss_path", "lr_ss_score", "lr_ss_cross"):
        assert getattr(merged, k) == pytest.approx(getattr(whole, k), rel=1e-9)


def test_block_ids_respect_envs_and_episodes():
    ids = block_ids(2, 5, 3)
    assert list(ids) == [0, 0, 0, 1, 1, 2, 2, 2, 3, 3]
    starts = np.zeros((5, 2), dtype=bool)
    starts[1, 0] = True  # env 0's episode restarts at t = 1
    assert list(block_ids(2, 5, 3, episode_starts=starts)) == [0, 1, 1, 2, 2, 3, 3, 3, 4, 4]


def test_learned_noise_floor_uses_the_long_run_variance():
    """Correlated samples: the per-sample D/n undercounts the noise of b_hat; blocks fix it."""
    rng = np.random.default_rng(4)
    n_envs, n_steps = 4, 1024
    labels = block_ids(n_envs, n_steps, 64)
    x = _ar1(rng, n_envs, n_steps, 0.9)
    gp, gm = 0.1 * rng.normal(size=x.shape), x  # score: correlated noise; pathwise: small noise
    with_blocks = WeightRule()([BatchMoments.from_samples(gp, gm, blocks=labels)], batch_size=len(x))
    without = WeightRule()([BatchMoments.from_samples(gp, gm)], batch_size=len(x))
    assert with_blocks.bias_sq_used > 5 * without.bias_sq_used
    assert with_blocks.lam < without.lam


def test_oracle_lambdas_on_the_biased_problem():
    kappa = 0.05
    truth = biased_coupled_moments(THETA, ALPHA, kappa, B, baseline=BASE)
    gp, gm = sample_biased_gradients(THETA, ALPHA, kappa, 200_000, baseline=BASE, rng=7)
    parts = split_moments(gp, gm, np.arange(len(gp)) // 10_000)
    ref = oracle_lambdas(parts, batch_size=B)
    assert abs(ref.lam_var - truth.lam_var) < 3 * ref.lam_var_se + 1e-3
    assert abs(ref.lam_mse - truth.lam_mse) < 3 * ref.lam_mse_se + 1e-3
    assert ref.bias_sq == pytest.approx(kappa**2, abs=3 * ref.bias_sq_se)
    assert ref.n == len(gp) and ref.n_parts == 20


def test_old_window_states_still_load():
    win = WindowedLambda(window=4, bias_correction=True)
    rng = np.random.default_rng(0)
    for _ in range(3):
        win.update(rng.normal(size=(20, 2)), rng.normal(size=(20, 2)))
    state = win.state_dict()
    for key in ("bias_rule", "source", "confidence", "long_run"):
        del state["config"][key]
    for b in state["batches"]:
        for key in ("n_blocks", "lr_ss_path", "lr_ss_score", "lr_ss_cross"):
            del b[key]
    restored = WindowedLambda()
    restored.load_state_dict(state)
    assert restored.lam == pytest.approx(win.lam) and restored.source == "learned"


def test_outer_product_block_statistics_equal_explicit_per_sample_gradients():
    from torch import nn

    from hybrid_pg.per_sample import outer_product_group_moments

    th.manual_seed(0)
    head = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2)).double()
    n = 48
    feats, log_std = th.randn(n, 3, dtype=th.float64), th.zeros(2, dtype=th.float64, requires_grad=True)
    w_p, w_m = th.randn(n, 2, dtype=th.float64), th.randn(n, 2, dtype=th.float64)

    def path_fn(m, s, wp=w_p):
        return (wp * m).sum(1) + (s * wp).sum(1)

    def score_fn(m, s, wm=w_m):
        return (wm * m * m).sum(1) - s.sum(1)

    labels = th.as_tensor(block_ids(2, 24, 6))
    got = outer_product_group_moments(head, feats, log_std, path_fn, score_fn, blocks=labels)["global"]
    # explicit per-sample gradients
    rows_p, rows_m = [], []
    for i in range(n):
        for fn, w, rows in ((path_fn, w_p, rows_p), (score_fn, w_m, rows_m)):
            out = fn(head(feats[i : i + 1]), log_std.expand(1, 2), w[i : i + 1])[0]
            g = th.autograd.grad(out, list(head.parameters()) + [log_std])
            rows.append(th.cat([x.reshape(-1) for x in g]))
    want = BatchMoments.from_samples(th.stack(rows_p), th.stack(rows_m), blocks=labels)
    assert got.n_blocks == want.n_blocks == 8
    for k in ("ss_path", "ss_score", "ss_cross", "lr_ss_path", "lr_ss_score", "lr_ss_cross"):
        assert getattr(got, k) == pytest.approx(getattr(want, k), rel=1e-8, abs=1e-10)
