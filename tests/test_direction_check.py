"""The weight rule's back-off candidates. The direction check (``direction_check=True``,
hybrid_pg.weight_rule.direction_test): a window whose pathwise gradient points against its score
gradient makes the update fall back to the score gradient, an unbiased pathwise gradient rarely. The
critic gate (``critic_gate``): no pathwise term while the value head's fit on the previous rollout
is below the threshold."""

import math

import numpy as np
import pytest
import torch as th

from hybrid_pg import HybridPG
from hybrid_pg.estimator import BatchMoments
from hybrid_pg.experiments.config import resolve_config
from hybrid_pg.experiments.runner import run_key
from hybrid_pg.update_weights import weights_for_update
from hybrid_pg.weight_rule import direction_test, student_t_quantile
from hybrid_pg.window import WindowedLambda

D = 6
G = th.tensor([1.0, -0.5, 0.25, 0.0, 0.5, -1.0], dtype=th.float64)  # the true gradient


def _rollout(rng, path_mean, n=64, shared=3.0, own=0.5, score_mean=G):
    """One rollout's paired per-sample gradients: large noise the two estimators share (as a
    rollout's returns and actions enter both), plus their own."""
    common = rng.normal(0.0, shared, size=(n, D))
    g_path = path_mean.numpy() + common + rng.normal(0.0, own, size=(n, D))
    g_score = score_mean.numpy() + common + rng.normal(0.0, 4 * own, size=(n, D))
    return BatchMoments.from_samples(th.as_tensor(g_path), th.as_tensor(g_score))


def test_cross_rollout_inner_product_is_unbiased_where_the_same_rollout_product_is_not():
    """E inner = <E g_P, E g_M> over many windows (within 4 SE); the same-rollout product carries the
    shared noise's covariance (tr = 6 * 9 / 64 per rollout mean here) and misses by far more."""
    rng = np.random.default_rng(0)
    truth = float(G @ G)
    inner, naive = [], []
    for _ in range(400):
        batches = [_rollout(rng, G) for _ in range(8)]
        inner.append(direction_test(batches).inner)
        naive.append(float(np.mean([float(b.mean_path @ b.mean_score) for b in batches])))
    inner, naive = np.array(inner), np.array(naive)
    se = inner.std(ddof=1) / math.sqrt(len(inner))
    assert abs(inner.mean() - truth) < 4 * se
    assert naive.mean() - truth > 10 * se  # the shared noise: tr Cov = 6 * 9 / 64 = 0.84


@pytest.mark.parametrize("confidence", [0.5, 0.95])
def test_an_unbiased_gradient_rarely_triggers_it_and_a_wrong_way_one_almost_always_does(confidence):
    """At 95% an unbiased pathwise gradient makes it fire at most at the test's level (5%) even where
    the gradient is weak against the noise (||g|| 0.48 against shared noise 6 per coordinate); at
    0.5 it fires only as often as the point estimate's sign errs, which falls as the gradient grows."""
    rng = np.random.default_rng(1)

    def rate(scale):
        g = scale * G
        return np.mean(
            [
                direction_test([_rollout(rng, g, shared=6.0, score_mean=g) for _ in range(8)], confidence=confidence).against
                for _ in range(400)
            ]
        )

    weak, strong = rate(0.3), rate(1.0)
    wrong_way = [direction_test([_rollout(rng, -G) for _ in range(8)], confidence=confidence).against for _ in range(200)]
    se = math.sqrt(0.25 / 400)  # binomial SE of a rate near 0.5 over 400 windows
    if confidence == 0.95:
        assert weak < 0.05 + 3 * math.sqrt(0.05 * 0.95 / 400)
    else:
        assert 0.05 < weak < 0.5 - 3 * se  # a true inner product > 0 makes a negative estimate the minority
        assert strong < 0.5 * weak
    assert np.mean(wrong_way) > 0.9


def test_a_wrong_way_window_reads_as_one():
    rng = np.random.default_rng(5)
    test = direction_test([_rollout(rng, -G) for _ in range(8)])
    assert test.cos < -0.8 and test.t < -student_t_quantile(1.645, 7) and test.rollouts == 8
    with pytest.raises(ValueError, match="confidence"):
        direction_test([_rollout(rng, G) for _ in range(3)], confidence=1.0)


def test_the_jackknife_se_matches_the_spread_of_the_inner_product():
    rng = np.random.default_rng(2)
    tests = [direction_test([_rollout(rng, G) for _ in range(8)]) for _ in range(300)]
    spread = np.std([t.inner for t in tests], ddof=1)
    mean_se = float(np.sqrt(np.mean([t.se**2 for t in tests])))
    assert 0.7 < mean_se / spread < 1.4  # the jackknife variance is unbiased to first order


def test_too_few_rollouts_say_nothing_and_bad_weights_are_refused():
    rng = np.random.default_rng(3)
    assert direction_test([_rollout(rng, G) for _ in range(2)]) is None
    with pytest.raises(ValueError, match="one weight per batch"):
        direction_test([_rollout(rng, G) for _ in range(3)], weights=[1.0, 1.0])


def test_student_t_quantiles():
    for dof, exact in ((2, 2.919986), (4, 2.131847), (7, 1.894579), (30, 1.697261)):
        assert student_t_quantile(1.6448536, dof) == pytest.approx(exact, rel=0.015 if dof == 2 else 0.002)


def _windows(path_mean, rng, k=8):
    windows = {}
    for g in ("global", "mean", "log_std"):
        w = WindowedLambda(window=8, source="learned")
        for _ in range(k):
            w.add(_rollout(rng, path_mean))
        windows[g] = w
    return windows


def test_the_update_falls_back_to_the_score_gradient_only_with_the_check_on():
    on = HybridPG("MlpPolicy", "Pendulum-v1", direction_check=True, lambda_warmup=0, device="cpu").settings
    off = HybridPG("MlpPolicy", "Pendulum-v1", lambda_warmup=0, device="cpu").settings
    rng = np.random.default_rng(4)
    wrong = _windows(-G, rng)
    lam_off = weights_for_update(off, wrong, n_rollouts_trained=10, batch_size=64)
    assert lam_off["global"] > 0.1  # the bias-aware rule alone keeps a weight on the wrong-way gradient here
    assert weights_for_update(on, wrong, n_rollouts_trained=10, batch_size=64) == {"global": 0.0, "mean": 0.0, "log_std": 0.0}
    right = _windows(G, rng)
    assert weights_for_update(on, right, 10, 64) == weights_for_update(off, right, 10, 64)


def test_training_logs_the_check_and_default_runs_keep_their_names():
    model = HybridPG("MlpPolicy", "Pendulum-v1", n_steps=128, batch_size=64, n_epochs=1, lambda_warmup=0, seed=0, device="cpu")
    model.learn(128 * 4)
    assert math.isfinite(model.logger.name_to_value["hybrid/direction_cos"])
    assert math.isfinite(model.logger.name_to_value["hybrid/direction_t"])
    assert model.settings.direction_check is False
    base = {"env": {"id": "Pendulum-v1"}, "train": {"total_timesteps": 100}}
    default = resolve_config({**base, "algo": {}})
    explicit = resolve_config({**base, "algo": {"direction_check": False, "direction_confidence": 0.5}})
    checked = resolve_config({**base, "algo": {"direction_check": True}})
    stricter = resolve_config({**base, "algo": {"direction_check": True, "direction_confidence": 0.95}})
    assert run_key("c", default) == run_key("c", explicit) != run_key("c", checked) != run_key("c", stricter)


# -- the critic gate (critic_gate): the value head's fit on the previous rollout ---------------------


def test_the_critic_gate_closes_below_its_threshold_and_before_any_rollout():
    gated = HybridPG("MlpPolicy", "Pendulum-v1", critic_gate=0.5, lambda_warmup=0, device="cpu").settings
    off = HybridPG("MlpPolicy", "Pendulum-v1", lambda_warmup=0, device="cpu").settings
    rng = np.random.default_rng(6)
    windows = _windows(G, rng)
    free = weights_for_update(off, windows, 10, 64)
    assert free["global"] > 0.1
    assert weights_for_update(gated, windows, 10, 64, critic_quality=0.7) == free
    assert weights_for_update(gated, windows, 10, 64, critic_quality=0.3) == {"global": 0.0, "mean": 0.0, "log_std": 0.0}
    assert weights_for_update(gated, windows, 10, 64) == {"global": 0.0, "mean": 0.0, "log_std": 0.0}  # no fit measured yet
    assert weights_for_update(off, windows, 10, 64, critic_quality=-5.0) == free  # off: the fit is not read


def test_training_gates_on_the_previous_rollouts_explained_variance():
    def model(**kwargs):
        return HybridPG("MlpPolicy", "Pendulum-v1", n_steps=128, batch_size=64, n_epochs=1, lambda_warmup=0, seed=0, device="cpu", **kwargs)

    never = model(critic_gate=1.0)  # an explained variance of exactly 1 never happens
    seen = []
    rule = never._weights_for_this_update
    never._weights_for_this_update = lambda: (seen.append(never._previous_explained_variance), rule())[1]
    never.learn(128 * 4)
    assert never.last_lambda == {"global": 0.0, "mean": 0.0, "log_std": 0.0}
    assert math.isnan(seen[0]) and all(math.isfinite(x) and x < 1.0 for x in seen[1:])
    assert never._previous_explained_variance == never.logger.name_to_value["train/explained_variance"]
    assert model(critic_gate=-1e9).learn(128 * 4).last_lambda["global"] > 0.0  # always open: the rule's weight
    base = {"env": {"id": "Pendulum-v1"}, "train": {"total_timesteps": 100}}
    assert run_key("c", resolve_config({**base, "algo": {}})) == run_key("c", resolve_config({**base, "algo": {"critic_gate": None}}))
    assert run_key("c", resolve_config({**base, "algo": {}})) != run_key("c", resolve_config({**base, "algo": {"critic_gate": 0.0}}))


def test_cross_rollout_inner_products_and_their_leave_one_out_values():
    """The vectorised sums against their definition, sum over pairs j != k of w_j w_k <x_j, y_k>."""
    from hybrid_pg.weight_rule import _cross_inner

    g = th.Generator().manual_seed(3)
    k = 6
    xs, ys = th.randn(k, 20, generator=g, dtype=th.float64), th.randn(k, 20, generator=g, dtype=th.float64)
    w = th.rand(k, generator=g, dtype=th.float64) + 0.1

    def by_definition(rollouts):
        pairs = [(j, m) for j in rollouts for m in rollouts if j != m]
        return float(sum(w[j] * w[m] * (xs[j] @ ys[m]) for j, m in pairs) / sum(w[j] * w[m] for j, m in pairs))

    full, loo = _cross_inner(xs @ ys.T, w)
    assert full == pytest.approx(by_definition(range(k)), rel=1e-12)
    assert loo == pytest.approx([by_definition([j for j in range(k) if j != i]) for i in range(k)], rel=1e-12)
