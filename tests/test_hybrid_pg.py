"""HybridPG: construction errors, exact gradients of the mixed update, statistics, persistence."""

import math

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from stable_baselines3.common.env_util import make_vec_env

from hybrid_pg import BatchMoments, HybridPG
from hybrid_pg.per_sample import GROUPS

# lr = 0 leaves the parameters at theta_old, so after one full-batch update .grad holds the
# update's gradient at theta_old; no clipping of norms, ratios or advantages interferes.
EXACT_GRADIENT_KWARGS = dict(
    n_steps=64,
    batch_size=None,
    n_epochs=1,
    learning_rate=0.0,
    clip_range=None,
    normalize_advantage=False,
    max_grad_norm=1e12,
    vf_coef=0.0,
    advantage_coef=0.0,
    ent_coef=0.0,
    pathwise_source="critic",
    seed=3,
)


def _actor_params(model):
    head = list(model.policy.mlp_extractor.policy_net.parameters()) + list(model.policy.action_net.parameters())
    return head + [model.policy.log_std]


def _one_update(**kwargs):
    model = HybridPG("MlpPolicy", "Pendulum-v1", **{**EXACT_GRADIENT_KWARGS, **kwargs})
    model.learn(EXACT_GRADIENT_KWARGS["n_steps"])
    return model


def _rollout_tensors(model):
    buf = model.rollout_buffer
    obs = th.as_tensor(buf.observations, dtype=th.float32).reshape(-1, *model.observation_space.shape)
    actions = th.as_tensor(buf.actions, dtype=th.float32).reshape(len(obs), -1)
    adv = th.as_tensor(buf.advantages, dtype=th.float32).flatten()
    return obs, actions, adv


def _score_gradient_via_sb3(model):
    """-(A * log pi).mean() with SB3's own distribution code: an independent implementation."""
    obs, actions, adv = _rollout_tensors(model)
    _, log_prob, _ = model.policy.evaluate_actions(obs, actions)
    return th.autograd.grad(-(adv * log_prob).mean(), _actor_params(model))


def _pathwise_gradient_by_hand(model):
    obs, actions, _ = _rollout_tensors(model)
    with th.no_grad():
        mean_old = model.policy.actor_mean(obs)
    std = th.exp(model.policy.log_std)
    eps = (actions - mean_old) / std.detach()
    low = th.as_tensor(model.action_space.low)
    high = th.as_tensor(model.action_space.high)
    a = th.clamp(model.policy.actor_mean(obs) + std * eps, low, high)
    features = model.policy.extract_features(obs, model.policy.vf_features_extractor)
    scaled = 2 * (a - low) / (high - low) - 1
    q = model.policy.advantage_head.mlp(th.cat([features, scaled], 1)).squeeze(-1)
    return th.autograd.grad(-q.mean(), _actor_params(model))


def _grads(model):
    return [p.grad.clone() for p in _actor_params(model)]


def _assert_close(a, b, rtol=1e-4, atol=1e-6):
    for x, y in zip(a, b):
        assert th.allclose(x, y, rtol=rtol, atol=atol), (x, y)


# ------------------------------------------------------------------------------------------------
# the update's gradient
# ------------------------------------------------------------------------------------------------


def test_lambda_zero_is_exactly_the_likelihood_ratio_gradient():
    model = _one_update(estimator="reinforce")
    _assert_close(_grads(model), _score_gradient_via_sb3(model))
    assert model.last_lambda["global"] == 0.0


def test_lambda_one_is_exactly_the_pathwise_gradient_and_the_critic_is_frozen():
    model = _one_update(estimator="pathwise")
    _assert_close(_grads(model), _pathwise_gradient_by_hand(model))
    # advantage_coef = 0: the actor's pathwise objective must not reach the critic's weights
    for p in model.policy.advantage_head.parameters():
        assert p.grad is None or float(p.grad.abs().max()) == 0.0


def test_fixed_lambda_mixes_the_two_gradients():
    lam = 0.3
    model = _one_update(estimator="hybrid", fixed_lambda=lam)
    expected = [lam * p + (1 - lam) * s for p, s in zip(_pathwise_gradient_by_hand(model), _score_gradient_via_sb3(model))]
    _assert_close(_grads(model), expected)


@pytest.mark.parametrize("clip_range", [None, 0.2])
def test_the_control_variate_update_is_the_score_gradient_plus_lam_times_a_zero_mean_difference(clip_range):
    """g = g_M + lam (g_P - A~ dlog pi), A~ = Q~(s, a) - Q~(s, mu_old): at theta_old the clipped
    residual surrogate has the plain one's gradient."""
    lam = 0.3
    model = _one_update(estimator="hybrid", fixed_lambda=lam, control_variate=True, clip_range=clip_range)
    obs, actions, _ = _rollout_tensors(model)
    policy = model.policy
    low, high = th.as_tensor(model.action_space.low), th.as_tensor(model.action_space.high)
    features = policy.extract_features(obs, policy.vf_features_extractor)

    def q(a):
        scaled = 2 * (th.clamp(a, low, high) - low) / (high - low) - 1
        return policy.advantage_head.mlp(th.cat([features, scaled], 1)).squeeze(-1)

    with th.no_grad():
        a_tilde = q(actions) - q(policy.actor_mean(obs))
    log_prob = policy.evaluate_actions(obs, actions)[1]
    critic_score = th.autograd.grad(-(a_tilde * log_prob).mean(), _actor_params(model))
    path, score = _pathwise_gradient_by_hand(model), _score_gradient_via_sb3(model)
    expected = [s_ + lam * (p_ - c_) for p_, s_, c_ in zip(path, score, critic_score)]
    _assert_close(_grads(model), expected)


def test_the_clipped_surrogate_stops_pushing_a_sample_whose_ratio_left_the_range():
    from hybrid_pg.surrogates import clipped_surrogate

    log_ratio = th.tensor([0.0, 0.5, -0.5, 0.5], requires_grad=True)
    weights = th.tensor([1.0, 1.0, -1.0, -1.0])
    (grad,) = th.autograd.grad(clipped_surrogate(th.exp(log_ratio), weights, 0.2).sum(), log_ratio)
    # inside: w r; ratio above 1.2 with w > 0 and below 0.8 with w < 0: clipped, no push; the last
    # moved against its weight: not clipped (PPO's pessimistic min)
    assert grad.tolist() == pytest.approx([1.0, 0.0, 0.0, -math.exp(0.5)])
    (plain,) = th.autograd.grad(clipped_surrogate(th.exp(log_ratio), weights, None).sum(), log_ratio)
    assert plain.tolist() == pytest.approx((weights * th.exp(log_ratio)).tolist())


def test_per_group_weights_mix_each_group_separately(monkeypatch):
    weights = {"mean": 0.2, "log_std": 0.9, "global": float("nan")}
    monkeypatch.setattr(HybridPG, "_weights_for_this_update", lambda self: dict(weights))
    model = _one_update(estimator="hybrid", lambda_groups="per_group")
    path, score = _pathwise_gradient_by_hand(model), _score_gradient_via_sb3(model)
    expected = [0.2 * p + 0.8 * s for p, s in zip(path[:-1], score[:-1])] + [0.9 * path[-1] + 0.1 * score[-1]]
    _assert_close(_grads(model), expected)


def _moments(model, obs, actions, adv, eps, features, scale, method="auto"):
    """The algorithm's per-sample moments of a hand-made batch (critic source, pathwise scale ``scale``)."""
    from hybrid_pg.rollout import RolloutBatch, rollout_group_moments

    with th.no_grad():
        mean_old = model.policy.actor_mean(obs)
    batch = RolloutBatch(
        obs=obs,
        actions=actions,
        old_log_prob=th.zeros(len(obs)),
        returns=th.zeros(len(obs)),
        adv=adv,
        adv_scale=1.0,
        path_scale=scale,
        mean_old=mean_old,
        log_std_old=model.policy.log_std.detach(),
        eps=eps,
        pi_features=features,
        context=model.pathwise.context(model.policy, obs, actions),
    )
    return rollout_group_moments(model.policy, model.actor_head, model.pathwise, batch, method=method)


def test_per_sample_moments_equal_a_naive_per_sample_autograd_loop():
    model = _one_update(estimator="hybrid", fixed_lambda=0.5)
    obs, actions, adv = _rollout_tensors(model)
    with th.no_grad():
        mean_old = model.policy.actor_mean(obs)
        eps = (actions - mean_old) / th.exp(model.policy.log_std)
        features = model.policy.extract_features(obs, model.policy.pi_features_extractor)
    moments = _moments(model, obs, actions, adv, eps, features, 1.0)
    rows_p, rows_s = [], []
    for i in range(len(obs)):
        gp = _pathwise_gradient_by_hand_single(model, obs[i : i + 1], actions[i : i + 1])
        _, log_prob, _ = model.policy.evaluate_actions(obs[i : i + 1], actions[i : i + 1])
        gs = th.autograd.grad((adv[i] * log_prob).sum(), _actor_params(model))
        rows_p.append(th.cat([g.flatten() for g in gp]))
        rows_s.append(th.cat([g.flatten() for g in gs]))
    naive = BatchMoments.from_samples(th.stack(rows_p).double(), th.stack(rows_s).double())
    got = moments["global"]
    assert got.n == naive.n
    for attr in ("ss_path", "ss_score", "ss_cross"):
        assert getattr(got, attr) == pytest.approx(getattr(naive, attr), rel=1e-4)
    assert th.allclose(got.mean_path, naive.mean_path, atol=1e-6, rtol=1e-4)
    assert th.allclose(got.mean_score, naive.mean_score, atol=1e-6, rtol=1e-4)
    # the batch mean of the per-sample score gradients is the batch gradient
    batch = _score_gradient_via_sb3(model)
    assert th.allclose(got.mean_score.float(), -th.cat([g.flatten() for g in batch]), atol=1e-5, rtol=1e-4)


def _pathwise_gradient_by_hand_single(model, obs, actions):
    with th.no_grad():
        mean_old = model.policy.actor_mean(obs)
    std = th.exp(model.policy.log_std)
    eps = (actions - mean_old) / std.detach()
    low, high = th.as_tensor(model.action_space.low), th.as_tensor(model.action_space.high)
    a = th.clamp(model.policy.actor_mean(obs) + std * eps, low, high)
    features = model.policy.extract_features(obs, model.policy.vf_features_extractor)
    q = model.policy.advantage_head.mlp(th.cat([features, 2 * (a - low) / (high - low) - 1], 1)).sum()
    return th.autograd.grad(q, _actor_params(model))


def test_pathwise_term_sees_the_clipped_action():
    """Actions outside the Box bounds: the env saw the bound, so dQ/da must be zero there."""
    model = _one_update(estimator="pathwise", policy_kwargs=dict(log_std_init=1.5))
    obs, actions, _ = _rollout_tensors(model)
    outside = (actions.abs() > 2.0).any(1)
    assert outside.any() and (~outside).any()
    grads_out = _pathwise_gradient_by_hand_single(model, obs[outside][:1], actions[outside][:1])
    assert all(float(g.abs().max()) == 0.0 for g in grads_out)


# ------------------------------------------------------------------------------------------------
# the weight: window of previous rollouts, warmup, logging
# ------------------------------------------------------------------------------------------------


def test_weight_comes_from_previous_rollouts_only(monkeypatch):
    model = HybridPG("MlpPolicy", "Pendulum-v1", n_steps=64, batch_size=32, n_epochs=1, lambda_warmup=1, seed=0)
    applied, window_before = [], []
    original = HybridPG._weights_for_this_update

    def spy(self):
        window_before.append(
            self.lambda_windows["global"].estimate(batch_size=self._gradient_batch_size()).lam
            if len(self.lambda_windows["global"])
            else None
        )
        out = original(self)
        applied.append(out["global"])
        return out

    monkeypatch.setattr(HybridPG, "_weights_for_this_update", spy)
    model.learn(64 * 4)
    assert applied[0] == 0.0 and window_before[0] is None  # warmup
    assert window_before[1] is None and applied[1] == 0.0  # the warmup rollout never entered the window
    assert applied[2] == window_before[2] and applied[3] == window_before[3]
    assert len(model.lambda_windows["global"]) == 3


def test_learn_logs_every_hybrid_scalar():
    from stable_baselines3.common.logger import KVWriter, Logger

    class Capture(KVWriter):
        def __init__(self):
            self.rows = []

        def write(self, key_values, key_excluded, step=0):
            self.rows.append(dict(key_values))

    cap = Capture()
    model = HybridPG("MlpPolicy", "Pendulum-v1", n_steps=64, batch_size=64, n_epochs=1, lambda_warmup=0, seed=0)
    model.set_logger(Logger(folder=None, output_formats=[cap]))
    model.learn(64 * 3)
    last = cap.rows[-1]
    for key in (
        "lambda",
        "lambda_batch",
        "lambda_window",
        "var_path",
        "var_score",
        "cov",
        "corr",
        "variance_reduction_vs_score",
        "bias_sq",
        "window_size",
        "var_applied",
        "effective_sample_size",
        "variance_ratio_vs_reinforce",
    ):
        assert f"hybrid/{key}" in last, key
        assert math.isfinite(last[f"hybrid/{key}"]), key
    # SB3 dumps an update's records at the start of the next iteration: the last row written
    # during learn(3 rollouts) is update 2's, whose window then held rollouts 1 and 2
    assert last["hybrid/window_size"] == 2
    assert len(model.lambda_windows["global"]) == 3
    assert 0.0 <= last["hybrid/lambda"] <= 1.0
    # a critic is a learned source: no "reduction vs the better estimator" against a biased one
    assert "hybrid/variance_reduction_vs_better" not in last
    # the names removed after their deprecation release are no longer written
    assert "hybrid/variance_ratio_vs_score" not in last and "hybrid/variance_reduction" not in last


# ------------------------------------------------------------------------------------------------
# construction errors
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"estimator": "ddpg"}, "estimator"),
        ({"pathwise_source": "oracle"}, "pathwise_source"),
        ({"lambda_window": 0}, "lambda_window"),
        ({"lambda_mode": "adaptive-please"}, "lambda_mode"),
        ({"lambda_bounds": (0.8, 0.2)}, "lambda_bounds"),
        ({"lambda_bounds": (-0.5, 1.0)}, "lambda_bounds"),
        ({"lambda_groups": "per_layer"}, "lambda_groups"),
        ({"fixed_lambda": 1.5}, "fixed_lambda"),
        ({"fixed_lambda": 0.5, "estimator": "reinforce"}, "fixed_lambda"),
        ({"use_sde": True}, "use_sde"),
        ({"n_steps": 0}, "n_steps"),
        ({"batch_size": 0}, "batch_size"),
        ({"model_horizon": 0}, "model_horizon"),
        ({"gamma": 1.5}, "gamma"),
    ],
)
def test_invalid_hyperparameters_fail_at_construction_naming_the_parameter(kwargs, name):
    with pytest.raises(ValueError, match=name):
        HybridPG("MlpPolicy", "Pendulum-v1", **kwargs)


def test_non_box_and_unbounded_action_spaces_are_rejected():
    with pytest.raises(ValueError, match="Box"):
        HybridPG("MlpPolicy", "CartPole-v1")

    class Unbounded(gym.Env):
        observation_space = gym.spaces.Box(-1, 1, (2,))
        action_space = gym.spaces.Box(-np.inf, np.inf, (1,))

        def reset(self, seed=None, options=None):
            return np.zeros(2, dtype=np.float32), {}

        def step(self, action):
            return np.zeros(2, dtype=np.float32), 0.0, False, False, {}

    with pytest.raises(ValueError, match="finite action bounds"):
        HybridPG("MlpPolicy", Unbounded())


def test_model_source_without_a_model_is_rejected():
    with pytest.raises(ValueError, match="differentiable model"):
        HybridPG("MlpPolicy", "Pendulum-v1", pathwise_source="model")


# ------------------------------------------------------------------------------------------------
# persistence and an end-to-end run
# ------------------------------------------------------------------------------------------------


def test_save_load_keeps_the_window_and_lambda(tmp_path):
    model = HybridPG("MlpPolicy", "Pendulum-v1", n_steps=64, batch_size=64, n_epochs=1, lambda_warmup=0, lambda_mode="ema", seed=0)
    model.learn(64 * 3)
    model.save(tmp_path / "m.zip")
    loaded = HybridPG.load(tmp_path / "m.zip", env=make_vec_env("Pendulum-v1", n_envs=1, seed=0))
    for name in ("global", *GROUPS):
        assert loaded.lambda_windows[name].estimate() == model.lambda_windows[name].estimate()
        assert loaded.lambda_windows[name].mode == "ema"
    assert loaded.last_lambda == model.last_lambda
    assert loaded._n_rollouts_trained == 3
    loaded.learn(64, reset_num_timesteps=False)
    assert len(loaded.lambda_windows["global"]) == 4


def test_short_end_to_end_learning_run_on_pendulum():
    env = make_vec_env("Pendulum-v1", n_envs=2, seed=0)
    model = HybridPG("MlpPolicy", env, n_steps=128, batch_size=64, n_epochs=2, seed=0)
    model.learn(128 * 2 * 4)
    for p in model.policy.parameters():
        assert th.isfinite(p).all()
    action, _ = model.predict(env.observation_space.sample(), deterministic=True)
    assert env.action_space.contains(action.astype(np.float32))


def test_outer_product_moments_equal_the_torch_func_moments():
    model = _one_update(estimator="hybrid", fixed_lambda=0.5, policy_kwargs=dict(net_arch=dict(pi=[16, 8], vf=[16])))
    obs, actions, adv = _rollout_tensors(model)
    with th.no_grad():
        eps = (actions - model.policy.actor_mean(obs)) / th.exp(model.policy.log_std)
        features = model.policy.extract_features(obs, model.policy.pi_features_extractor)
    fast = _moments(model, obs, actions, adv, eps, features, 0.7, method="outer")
    slow = _moments(model, obs, actions, adv, eps, features, 0.7, method="vmap")
    for group in ("mean", "log_std", "global"):
        for attr in ("ss_path", "ss_score", "ss_cross"):
            assert getattr(fast[group], attr) == pytest.approx(getattr(slow[group], attr), rel=1e-5, abs=1e-9), (group, attr)
        assert th.allclose(fast[group].mean_path, slow[group].mean_path, rtol=1e-5, atol=1e-8)
        assert th.allclose(fast[group].mean_score, slow[group].mean_score, rtol=1e-5, atol=1e-8)


def test_sb3_machinery_subproc_vecnormalize_callbacks_tensorboard_progress_bar(tmp_path):
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.vec_env import SubprocVecEnv, VecNormalize

    class Count(BaseCallback):
        def __init__(self):
            super().__init__()
            self.steps = self.rollouts = 0

        def _on_step(self):
            self.steps += 1
            return True

        def _on_rollout_end(self):
            self.rollouts += 1

    pytest.importorskip("tensorboard")
    env = VecNormalize(make_vec_env("Pendulum-v1", n_envs=2, seed=0, vec_env_cls=SubprocVecEnv, vec_env_kwargs=dict(start_method="fork")))
    try:
        model = HybridPG("MlpPolicy", env, n_steps=32, batch_size=32, n_epochs=1, lambda_warmup=0, seed=0, tensorboard_log=str(tmp_path))
        counter = Count()
        model.learn(32 * 2 * 3, callback=counter, progress_bar=True)
        assert counter.steps == 32 * 3 and counter.rollouts == 3
        assert list(tmp_path.glob("HybridPG_1/events.out.tfevents.*"))
        obs = env.reset()
        actions, _ = model.predict(obs, deterministic=True)
        assert actions.shape == (2, 1)
    finally:
        env.close()


def test_gaussian_kl_matches_torch_distributions():
    from torch.distributions import Normal, kl_divergence

    from hybrid_pg.surrogates import gaussian_kl

    gen = th.Generator().manual_seed(0)
    mp, mq = th.randn(5, 3, generator=gen), th.randn(5, 3, generator=gen)
    sp, sq = 0.3 * th.randn(3, generator=gen), 0.3 * th.randn(3, generator=gen)
    expected = kl_divergence(Normal(mp, sp.exp()), Normal(mq, sq.exp())).sum(-1)
    assert th.allclose(gaussian_kl(mp, sp, mq, sq), expected, atol=1e-6)


@pytest.mark.parametrize("limit, dropped", [(1e-8, True), (None, False)])
def test_pathwise_trust_region_drops_samples_whose_state_moved_beyond_the_kl_limit(limit, dropped):
    from stable_baselines3.common.logger import KVWriter, Logger

    class Capture(KVWriter):
        rows = []

        def write(self, key_values, key_excluded, step=0):
            self.rows.append(dict(key_values))

    model = HybridPG(
        "MlpPolicy",
        "Pendulum-v1",
        n_steps=64,
        batch_size=16,
        n_epochs=3,
        learning_rate=1e-2,
        estimator="pathwise",
        pathwise_source="critic",
        pathwise_kl_limit=limit,
        seed=0,
    )
    model.set_logger(Logger(folder=None, output_formats=[Capture()]))
    model.learn(64 * 2)
    rows = [r for r in Capture.rows if "hybrid/pathwise_dropped_fraction" in r]
    if dropped:
        assert rows and 0.0 < rows[-1]["hybrid/pathwise_dropped_fraction"] < 1.0
    else:
        assert not rows


def test_pathwise_kl_limit_auto_follows_the_clip_range():
    model = HybridPG("MlpPolicy", "Pendulum-v1", n_steps=64, clip_range=0.3)
    assert model._pathwise_kl_limit(0.3) == pytest.approx(0.045)
    assert HybridPG("MlpPolicy", "Pendulum-v1", n_steps=64, clip_range=None)._pathwise_kl_limit(None) is None
    with pytest.raises(ValueError, match="pathwise_kl_limit"):
        HybridPG("MlpPolicy", "Pendulum-v1", pathwise_kl_limit=-1.0)


def test_load_without_an_env_predicts_and_learns_after_set_env(tmp_path):
    model = HybridPG("MlpPolicy", "Pendulum-v1", n_steps=64, batch_size=64, n_epochs=1, lambda_warmup=0, seed=0)
    model.learn(64 * 2)
    model.save(tmp_path / "m.zip")
    loaded = HybridPG.load(tmp_path / "m.zip")
    obs = np.zeros((3, 3), dtype=np.float32)
    np.testing.assert_allclose(loaded.predict(obs, deterministic=True)[0], model.predict(obs, deterministic=True)[0])
    loaded.set_env(make_vec_env("Pendulum-v1", n_envs=1, seed=1))
    loaded.learn(64, reset_num_timesteps=False)
    assert len(loaded.lambda_windows["global"]) == 3


def test_adaptive_lambda_mode_logs_alarms_and_survives_save_load(tmp_path):
    from stable_baselines3.common.logger import KVWriter, Logger

    class Capture(KVWriter):
        rows = []

        def write(self, key_values, key_excluded, step=0):
            self.rows.append(dict(key_values))

    model = HybridPG(
        "MlpPolicy",
        "Pendulum-v1",
        n_steps=64,
        batch_size=64,
        n_epochs=1,
        lambda_warmup=0,
        lambda_mode="adaptive",
        lambda_detector=dict(threshold=4.0, warmup=2),
        seed=0,
    )
    model.set_logger(Logger(folder=None, output_formats=[Capture()]))
    model.learn(64 * 6)
    assert "hybrid/change_alarm" in Capture.rows[-1] and "hybrid/change_alarms_total" in Capture.rows[-1]
    model.save(tmp_path / "m.zip")
    loaded = HybridPG.load(tmp_path / "m.zip")
    window, restored = model.lambda_windows["global"], loaded.lambda_windows["global"]
    assert restored.mode == "adaptive" and restored.detector.threshold == 4.0
    assert restored.detector.state_dict() == window.detector.state_dict()


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(lambda_detector=dict(threshold=3.0)), "lambda_detector"),
        (dict(lambda_mode="adaptive", lambda_detector=dict(threshold=-1.0)), "lambda_detector"),
        (dict(lambda_mode="adaptive", lambda_detector=dict(bogus=1)), "lambda_detector"),
    ],
)
def test_detector_settings_are_validated(kwargs, name):
    with pytest.raises(ValueError, match=name):
        HybridPG("MlpPolicy", "Pendulum-v1", **kwargs)


def test_drift_diagnostics_and_env_parameters_are_logged():
    import gymnasium as gym
    from stable_baselines3.common.logger import KVWriter, Logger

    class Capture(KVWriter):
        rows = []

        def write(self, key_values, key_excluded, step=0):
            self.rows.append(dict(key_values))

    class ReportsG(gym.Wrapper):
        def step(self, action):
            obs, r, term, trunc, info = super().step(action)
            info["env_params"] = {"g": float(self.unwrapped.g)}
            return obs, r, term, trunc, info

    env = make_vec_env("Pendulum-v1", n_envs=2, seed=0, wrapper_class=ReportsG)
    model = HybridPG("MlpPolicy", env, n_steps=64, batch_size=64, n_epochs=2, lambda_warmup=0, seed=0)
    model.set_logger(Logger(folder=None, output_formats=[Capture()]))
    model.learn(128 * 4)
    last = Capture.rows[-1]
    assert last["env/g"] == 10.0
    for key in ("drift_cos_path", "drift_cos_score", "drift_rel_change_var_score", "kl_to_oldest"):
        assert math.isfinite(last[f"hybrid/{key}"]), key
    assert -1.0 <= last["hybrid/drift_cos_score"] <= 1.0
    assert last["hybrid/kl_to_oldest"] > 0.0  # the policy moved across the window


def test_kl_to_oldest_is_zero_for_an_unchanged_policy():
    from hybrid_pg.drift import DriftTracker

    model = HybridPG("MlpPolicy", "Pendulum-v1", n_steps=64)
    tracker = DriftTracker(4)
    for _ in range(3):
        tracker.snapshot(model.actor_head, model.policy.log_std)
    features = th.randn(10, 3)
    assert tracker.kl_to_oldest(model.actor_head, features, 3) == 0.0
    assert math.isnan(DriftTracker(4).kl_to_oldest(model.actor_head, features, 3))


def test_bias_min_samples_floors_the_bias_aware_batch_size_and_plain_policies_are_refused():
    from stable_baselines3.common.policies import ActorCriticPolicy

    assert HybridPG("MlpPolicy", "Pendulum-v1", n_steps=5)._gradient_batch_size() == 2048
    assert HybridPG("MlpPolicy", "Pendulum-v1", n_steps=4096)._gradient_batch_size() == 4096
    assert HybridPG("MlpPolicy", "Pendulum-v1", n_steps=5, bias_min_samples=1)._gradient_batch_size() == 5
    with pytest.raises(ValueError, match="bias_min_samples"):
        HybridPG("MlpPolicy", "Pendulum-v1", bias_min_samples=0)
    with pytest.raises(TypeError, match="HybridActorCriticPolicy"):
        HybridPG(ActorCriticPolicy, "Pendulum-v1")


def _final_params(**kwargs):
    model = HybridPG("MlpPolicy", "Pendulum-v1", n_steps=64, batch_size=32, n_epochs=2, lambda_warmup=0, seed=4, **kwargs)
    model.learn(64 * 4)
    return model, th.cat([p.detach().flatten() for p in model.policy.parameters()])


def test_oracle_does_not_perturb_the_training_run():

    _, plain = _final_params()
    model, with_oracle = _final_params(oracle_freq=1, oracle_samples=256)
    assert th.equal(plain, with_oracle)
    assert model.oracle is not None and model.oracle._live.calls == 4


def test_oracle_lambda_agrees_with_a_long_window_at_a_fixed_policy():
    from stable_baselines3.common.logger import KVWriter, Logger

    class Capture(KVWriter):
        rows = []

        def write(self, key_values, key_excluded, step=0):
            self.rows.append(dict(key_values))

    # lr = 0: the policy never moves, so a window of 8 rollouts and the oracle estimate one lam*
    model = HybridPG(
        "MlpPolicy",
        "Pendulum-v1",
        n_steps=1024,
        batch_size=None,
        n_epochs=1,
        learning_rate=0.0,
        lambda_warmup=0,
        lambda_window=8,
        oracle_freq=4,
        oracle_samples=8192,
        pathwise_source="critic",
        bias_correction=False,
        seed=2,
    )
    model.set_logger(Logger(folder=None, output_formats=[Capture()]))
    model.learn(1024 * 10)
    rows = [r for r in Capture.rows if "hybrid/oracle_lambda" in r]
    assert rows
    last = rows[-1]
    assert 0.0 <= last["hybrid/oracle_lambda"] <= 1.0
    assert last["hybrid/oracle_error_window"] < 0.1, last
    assert last["hybrid/oracle_excess_variance"] >= 0.0


def test_oracle_settings_are_validated():
    with pytest.raises(ValueError, match="oracle_freq"):
        HybridPG("MlpPolicy", "Pendulum-v1", oracle_freq=-1)
    with pytest.raises(ValueError, match="oracle_samples"):
        HybridPG("MlpPolicy", "Pendulum-v1", oracle_samples=1)


def _switching_bandit(every: int, n_envs: int = 4):
    import hybrid_pg_envs  # noqa: F401

    schedules = {"m": {"kind": "switch", "values": [-1.0, 1.0], "every": every}}
    return make_vec_env(
        "hybrid_pg/DriftingCoupledBandit-v0", n_envs=n_envs, seed=0, env_kwargs=dict(schedules=schedules, steps_per_tick=n_envs)
    )


BANDIT_KW = dict(n_steps=64, batch_size=64, n_epochs=1, gamma=0.0, gae_lambda=1.0, pathwise_source="model", lambda_warmup=0, seed=3)


def test_the_model_source_uses_the_env_of_the_rollout_not_the_next_one():
    # the switch falls exactly at the end of the first rollout: when it is trained on, the env has
    # already moved to m = +1, but its transitions were all made at m = -1
    model = HybridPG("MlpPolicy", _switching_bandit(every=256), **BANDIT_KW)
    model.learn(256)
    assert model.env.env_method("get_differentiable_model")[0].parameters_dict()["m"] == 1.0
    assert model.pathwise.model.parameters_dict()["m"] == -1.0
    model.learn(256, reset_num_timesteps=False)
    assert model.pathwise.model.parameters_dict()["m"] == 1.0


def _bandit_oracle_run(**kwargs):
    from stable_baselines3.common.logger import KVWriter, Logger

    rows = []

    class Capture(KVWriter):
        def write(self, key_values, key_excluded, step=0):
            rows.append(dict(key_values))

    model = HybridPG("MlpPolicy", _switching_bandit(every=512), **BANDIT_KW, **kwargs)
    model.set_logger(Logger(folder=None, output_formats=[Capture()]))
    model.learn(256 * 6)
    return model, [r for r in rows if "hybrid/oracle_lambda" in r]


def test_frozen_env_oracle_separates_env_drift_from_policy_drift():
    model, rows = _bandit_oracle_run(oracle_freq=1, oracle_samples=512, oracle_frozen_clock=0)
    assert len(rows) == 5 and model.oracle._frozen.calls == 6  # SB3 dumps the last update's logs at the next
    for row in rows:
        # same policy, same noise (one seed for both oracle batches): in the regime the frozen copy
        # holds (m = -1), the two oracles agree exactly; after the switch only the env differs
        same_regime = row["env/m"] == -1.0
        assert (row["hybrid/oracle_env_drift_share"] == 0.0) == same_regime, row
        assert row["hybrid/oracle_lambda"] - row["hybrid/oracle_lambda_frozen_env"] == pytest.approx(row["hybrid/oracle_env_drift_share"])
    assert {row["env/m"] for row in rows} == {-1.0, 1.0}
    # and neither oracle perturbs the training run
    plain_model = HybridPG("MlpPolicy", _switching_bandit(every=512), **BANDIT_KW)
    plain_model.learn(256 * 6)
    params = lambda m: th.cat([p.detach().flatten() for p in m.policy.parameters()])  # noqa: E731
    assert th.equal(params(model), params(plain_model))


def test_oracle_lambda_on_the_bandit_matches_the_closed_form():
    """Ground truth for the whole RL path of lam (per-sample parameter gradients through the MLP,
    advantage normalisation, the model's pathwise term, trace moments): on the coupled bandit the
    variance-optimal lam* of the policy's parameters is known in closed form, with the metric
    (||d mu / d theta||^2, 1) and the batch-mean baseline that SB3's advantage normalisation makes."""
    from hybrid_pg.ground_truth.coupled_bandit import bandit_moments
    from hybrid_pg.oracle import OracleLambda

    env = make_vec_env("hybrid_pg/CoupledBandit-v0", n_envs=4, seed=0, env_kwargs=dict(m=0.3, c=1.0))
    model = HybridPG(
        "MlpPolicy",
        env,
        n_steps=64,
        gamma=0.0,
        gae_lambda=1.0,
        pathwise_source="model",
        bias_correction=False,
        lambda_bounds=None,
        seed=0,
        policy_kwargs=dict(log_std_init=-0.5),
    )
    oracle = OracleLambda(model, None, 8192)
    obs = th.ones(1, 1)
    mean = model.policy.actor_mean(obs)[0, 0]
    w = float(sum((g**2).sum() for g in th.autograd.grad(mean, list(model.actor_head.parameters()))))
    exact = bandit_moments(float(mean.detach()), float(model.policy.log_std[0].detach()), 0.3, 1.0, baseline="mean", metric=[w, 1.0])
    draws = []
    for k in range(6):  # independent oracle batches (the oracle's seed follows the update count)
        model._n_rollouts_trained = k
        est = oracle.estimate()
        draws.append((est.lam, est.var_path / est.var_score))
    draws = np.array(draws)
    mean_est, se = draws.mean(axis=0), draws.std(axis=0, ddof=1) / np.sqrt(len(draws))
    assert abs(mean_est[0] - exact.lam_star) < 4 * se[0] + 1e-3, (mean_est, se, exact.lam_star)
    assert abs(mean_est[1] - exact.var_path / exact.var_score) < 4 * se[1] + 1e-3
    assert 0.2 < exact.lam_star < 0.8  # a case where a wrong metric or baseline would show


def test_frozen_oracle_settings_are_validated():
    with pytest.raises(ValueError, match="oracle_frozen_clock"):
        HybridPG("MlpPolicy", _switching_bandit(every=512), oracle_frozen_clock=0)  # oracle off
    with pytest.raises(ValueError, match="oracle_frozen_clock"):
        HybridPG("MlpPolicy", _switching_bandit(every=512), oracle_freq=1, oracle_frozen_clock=-1)
    with pytest.raises(ValueError, match="oracle_frozen_clock"):
        HybridPG("MlpPolicy", "Pendulum-v1", oracle_freq=1, oracle_frozen_clock=0)  # no clock


@pytest.mark.parametrize("model_mode, expected_g", [("live", 14.0), ("stale", 10.0)])
def test_model_source_follows_a_drifting_env_through_subprocesses(model_mode, expected_g):
    from stable_baselines3.common.vec_env import SubprocVecEnv

    import hybrid_pg_envs  # noqa: F401

    env = make_vec_env(
        "hybrid_pg/SwitchingPendulum-v0",
        n_envs=2,
        seed=0,
        vec_env_cls=SubprocVecEnv,
        vec_env_kwargs=dict(start_method="fork"),
        env_kwargs=dict(schedules={"g": {"kind": "switch", "values": [10.0, 14.0], "at": [48]}}, model_mode=model_mode),
    )
    try:
        model = HybridPG("MlpPolicy", env, n_steps=32, batch_size=32, n_epochs=1, pathwise_source="model", seed=0)
        assert float(model.pathwise.model.g) == 10.0
        model.learn(32 * 2 * 3)  # the switch at per-env step 48 falls inside the second rollout
        assert float(model.pathwise.model.g) == expected_g
    finally:
        env.close()


def test_saved_model_size_is_bounded_and_a_resume_gives_bit_identical_lambda(tmp_path):
    """The windows' mean vectors are stored as float32 (rounded when added) and the drift tracker's
    policy snapshots are not saved: a full window on Pendulum saves in about half the former 2.1 MB,
    and the loaded model applies exactly the lam the running one would."""
    import os
    import pickle

    model = HybridPG("MlpPolicy", "Pendulum-v1", n_steps=64, batch_size=64, n_epochs=1, lambda_warmup=0, seed=0, device="cpu")
    model.learn(64 * 10)
    model.save(tmp_path / "m.zip")
    d = model.lambda_windows["global"].batches[0].mean_path.numel()
    # 3 windows x 8 batches x 2 means x d floats: float32, with 10% for everything else
    assert len(pickle.dumps(model.lambda_windows)) < 1.1 * 3 * 8 * 2 * d * 4
    assert len(pickle.dumps(model._drift)) < 2 * 2 * d * 8 + 10_000  # the previous rollout's moments only
    assert os.path.getsize(tmp_path / "m.zip") < 1_250_000
    expected = model._weights_for_this_update()
    loaded = HybridPG.load(tmp_path / "m.zip", env=make_vec_env("Pendulum-v1", n_envs=1, seed=0), device="cpu")
    for name in ("global", *GROUPS):
        a, b = model.lambda_windows[name], loaded.lambda_windows[name]
        assert a.estimate(with_se=True) == b.estimate(with_se=True)
        assert all(th.equal(x.mean_path, y.mean_path) and x.mean_path.dtype == th.float64 for x, y in zip(a.batches, b.batches))
    assert loaded._weights_for_this_update() == expected
    loaded.learn(64, reset_num_timesteps=False)
    assert loaded.last_lambda == expected
    assert math.isnan(loaded._drift.kl_to_oldest(loaded.actor_head, th.zeros(1, 3), 8))


def test_drift_trackers_pickled_with_snapshots_still_load():
    import pickle

    from hybrid_pg.drift import DriftTracker

    old_state = {
        "_previous": BatchMoments.from_samples(th.ones(3, 2), th.zeros(3, 2)),
        "_snapshots": __import__("collections").deque([{}], maxlen=4),
    }
    restored = DriftTracker.__new__(DriftTracker)
    restored.__setstate__(old_state)
    assert restored._previous.n == 3 and len(restored._snapshots) == 0 and restored._snapshots.maxlen == 4
    assert pickle.loads(pickle.dumps(restored))._snapshots.maxlen == 4


def test_console_shows_the_headline_keys_only():
    import io

    from stable_baselines3.common.logger import HumanOutputFormat, Logger

    out = io.StringIO()
    model = HybridPG("MlpPolicy", "Pendulum-v1", n_steps=64, batch_size=64, n_epochs=1, lambda_warmup=0, seed=0, device="cpu")
    model.set_logger(Logger(folder=None, output_formats=[HumanOutputFormat(out)]))
    model.learn(64 * 2)
    shown = {line.split("|")[1].strip() for line in out.getvalue().splitlines() if line.startswith("|    ")}
    assert {"lambda", "variance_ratio_vs_reinforce"} <= shown
    assert not shown & {"variance_reduction_vs_score", "var_path", "cov", "window_f_path", "drift_cos_path", "kl_to_oldest"}
