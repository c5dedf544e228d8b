"""The model source under VecNormalize (Pendulum's exact torch model) and the MuJoCo source."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch as th
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.vec_env import VecNormalize

import hybrid_pg_envs  # noqa: F401  (registers hybrid_pg/Pendulum-v0)
from hybrid_pg import HybridPG
from hybrid_pg.sources import ModelSource
from hybrid_pg_envs.differentiable import find_differentiable_model


def _normalized_pendulum(clip_obs: float = 10.0) -> VecNormalize:
    """VecNormalize with fixed, non-trivial statistics (as after some training)."""
    env = VecNormalize(make_vec_env("hybrid_pg/Pendulum-v0", n_envs=1, seed=0), gamma=0.9, clip_obs=clip_obs)
    env.obs_rms.mean = np.array([0.3, -0.2, 0.5])
    env.obs_rms.var = np.array([0.4, 0.6, 4.0])
    env.ret_rms.var = np.array(4.0)  # reward scale 1/2: |r| <= 16.3 stays inside clip_reward=10
    return env


def _raw_batch(n: int, seed: int):
    g = th.Generator().manual_seed(seed)
    theta = th.rand(n, generator=g) * 2 * np.pi - np.pi
    obs = th.stack([th.cos(theta), th.sin(theta), th.rand(n, generator=g) * 8 - 4], dim=1)
    return obs, th.randn(n, 1, generator=g)


@pytest.mark.parametrize("horizon", [1, 3])
def test_normalised_pathwise_values_and_gradients_are_the_raw_ones_times_the_reward_scale(horizon):
    """Q~_norm(s_norm, a) = c * Q~_raw(s_raw, a) when the raw pipeline's value and policy see the same
    normalised inputs and its value is divided by c = 1/sqrt(ret_var + eps): un-normalising the
    observations, re-normalising the model's states and scaling its rewards is all that differs."""
    env = _normalized_pendulum()
    algo = HybridPG("MlpPolicy", env, gamma=0.9, pathwise_source="model", model_horizon=horizon, seed=1, device="cpu")
    source = algo.pathwise
    assert isinstance(source, ModelSource) and source.normalization is not None
    c = 1.0 / np.sqrt(4.0 + env.epsilon)
    assert source.normalization.reward_scale == pytest.approx(c, rel=1e-6)

    raw_obs, eps = _raw_batch(64, seed=2)
    norm_obs = th.as_tensor(env.normalize_obs(raw_obs.numpy()), dtype=th.float32)
    normalise = lambda s: (s - th.tensor([0.3, -0.2, 0.5])) / th.sqrt(th.tensor([0.4, 0.6, 4.0]) + env.epsilon)  # noqa: E731

    raw = ModelSource(algo.policy, find_differentiable_model(env), 0.9, horizon)
    assert raw.normalization is None
    raw._value = lambda s: source._value(normalise(s)) / c  # the same value function, raw units
    ctx_norm = source.context(algo.policy, norm_obs, eps, generator=th.Generator().manual_seed(3))
    ctx_raw = {**ctx_norm, "obs": raw_obs}

    policy = algo.policy
    mean = policy.actor_mean(norm_obs).detach().requires_grad_(True)
    log_std = policy.log_std.detach().clone().requires_grad_(True)
    q_norm = source.value(mean, log_std, eps, ctx_norm)
    g_norm = th.autograd.grad(q_norm.sum(), (mean, log_std))
    q_raw = raw.value(mean, log_std, eps, ctx_raw, mean_fn=lambda s: source.frozen_mean(normalise(s)))
    g_raw = th.autograd.grad(q_raw.sum(), (mean, log_std))
    assert th.allclose(q_norm, c * q_raw, rtol=1e-4, atol=1e-4)
    for a, b in zip(g_norm, g_raw):
        assert th.allclose(a, c * b, rtol=1e-3, atol=1e-4)
    assert source.clipped_fraction == 0.0


def test_statistics_are_a_snapshot_per_refresh_and_clipped_observations_are_counted():
    env = _normalized_pendulum(clip_obs=1.0)
    algo = HybridPG("MlpPolicy", env, pathwise_source="model", seed=1, device="cpu")
    source = algo.pathwise
    before = source.normalization.obs_mean.clone()
    env.obs_rms.mean = np.array([1.0, 1.0, 1.0])  # the running statistics move ...
    assert th.equal(source.normalization.obs_mean, before)  # ... the snapshot does not
    source.refresh(algo)
    assert th.allclose(source.normalization.obs_mean, th.ones(3))
    obs = th.tensor([[0.0, 0.0, 0.0], [0.0, 1.0, 0.0]])  # the second row sits at the clip bound
    source.context(algo.policy, obs, th.zeros(2, 1))
    assert source.clipped_fraction == 0.5


def test_norm_obs_only_keeps_raw_rewards():
    env = VecNormalize(make_vec_env("hybrid_pg/Pendulum-v0", n_envs=1, seed=0), norm_reward=False)
    source = HybridPG("MlpPolicy", env, pathwise_source="model", seed=1, device="cpu").pathwise
    r = th.tensor([-16.0, -1.0])
    assert source.normalization.reward_scale is None and th.equal(source.normalization.reward(r), r)


def test_short_training_run_with_the_model_source_under_vecnormalize():
    env = VecNormalize(make_vec_env("hybrid_pg/Pendulum-v0", n_envs=2, seed=0))
    algo = HybridPG("MlpPolicy", env, n_steps=64, batch_size=64, n_epochs=2, lambda_warmup=0, pathwise_source="model", seed=0)
    algo.learn(64 * 2 * 3)
    # an exact model, but Q~ bootstraps with the learned value head (gamma > 0): not an unbiased source
    assert algo.pathwise.name == "model" and not algo.pathwise.exact
    assert all(w.source == "learned" for w in algo.lambda_windows.values())
    assert all(np.isfinite(p.detach().numpy()).all() for p in algo.policy.parameters())
    assert 0.0 <= algo.last_lambda["global"] <= 1.0
    # the snapshot is the training env's statistics of the last update
    assert np.allclose(algo.pathwise.normalization.obs_mean.numpy(), env.obs_rms.mean, atol=1e-6)


# ------------------------------------------------------------------------------------------------
# pathwise_source="mujoco"
# ------------------------------------------------------------------------------------------------

MJ = dict(n_steps=32, batch_size=32, n_epochs=1, seed=0, device="cpu")


def _mujoco():
    pytest.importorskip("mujoco")
    from hybrid_pg_envs import mujoco_model

    return mujoco_model


def test_mujoco_source_builds_the_model_from_an_unwrapped_env_or_uses_the_wrapper():
    mm = _mujoco()
    algo = HybridPG("MlpPolicy", make_vec_env("Hopper-v5", n_envs=2, seed=0), pathwise_source="mujoco", **MJ)
    assert algo.pathwise.name == "mujoco" and isinstance(algo.pathwise.model, mm.MujocoStepModel)
    assert algo.pathwise.model.terminate_when_unhealthy
    wrapped = make_vec_env(
        mm.make_mujoco_env, n_envs=1, seed=0, env_kwargs=dict(env_id="HalfCheetah-v5", model_options=dict(jacobian="rollout"))
    )
    algo = HybridPG("MlpPolicy", wrapped, pathwise_source="mujoco", **MJ)
    assert algo.pathwise.model.jacobian_method == "rollout"  # the wrapper's options are kept
    # 'auto' takes the wrapped env's model (the same class of values), never an unwrapped simulator
    assert HybridPG("MlpPolicy", wrapped, **MJ).pathwise.name == "model"
    assert HybridPG("MlpPolicy", make_vec_env("HalfCheetah-v5", n_envs=1, seed=0), **MJ).pathwise.name == "critic"


def test_mujoco_source_refusals_are_clear():
    _mujoco()
    from stable_baselines3.common.vec_env import SubprocVecEnv

    with pytest.raises(ValueError, match="pathwise_source='mujoco'.*PendulumEnv"):
        HybridPG("MlpPolicy", "Pendulum-v1", pathwise_source="mujoco", **MJ)
    with pytest.raises(ValueError, match="pathwise_source='mujoco'.*PendulumModel.*pathwise_source='model'"):
        HybridPG("MlpPolicy", "hybrid_pg/Pendulum-v0", pathwise_source="mujoco", **MJ)
    env = make_vec_env("HalfCheetah-v5", n_envs=2, seed=0, vec_env_cls=SubprocVecEnv, vec_env_kwargs=dict(start_method="fork"))
    try:
        with pytest.raises(ValueError, match="SubprocVecEnv.*MujocoDifferentiableWrapper"):
            HybridPG("MlpPolicy", env, pathwise_source="mujoco", **MJ)
    finally:
        env.close()


def test_the_surrogates_pathwise_gradient_is_the_gradient_through_the_model_on_a_fixed_batch():
    """One update at learning rate 0 with the pathwise estimator alone leaves the surrogate's gradient in
    .grad; recompute it by hand through a fresh MujocoStepModel, un-normalising with VecNormalize."""
    mm = _mujoco()
    import gymnasium as gym

    env = VecNormalize(make_vec_env("HalfCheetah-v5", n_envs=1, seed=0), gamma=0.99)
    algo = HybridPG("MlpPolicy", env, estimator="pathwise", pathwise_source="mujoco", learning_rate=0.0, max_grad_norm=1e9, **MJ)
    algo.learn(32)
    policy = algo.policy
    actor = [*policy.mlp_extractor.policy_net.parameters(), *policy.action_net.parameters(), policy.log_std]
    got = [p.grad.clone() for p in actor]

    data = next(algo.rollout_buffer.get(batch_size=None))
    obs, actions = data.observations, data.actions
    model = mm.MujocoStepModel.from_env(gym.make("HalfCheetah-v5"))
    std_obs = th.as_tensor(np.sqrt(env.obs_rms.var + env.epsilon), dtype=th.float32)
    mean_obs = th.as_tensor(env.obs_rms.mean, dtype=th.float32)
    c = float(1.0 / np.sqrt(env.ret_rms.var + env.epsilon))
    adv_scale = 1.0 / (data.advantages.std().item() + 1e-8)
    for p in actor:
        p.grad = None
    mean = policy.actor_mean(obs)
    with th.no_grad():
        eps = (actions - mean) / th.exp(policy.log_std)
    action = policy.clip_action(mean + th.exp(policy.log_std) * eps)
    next_raw, reward = model.step(obs * std_obs + mean_obs, action)
    next_obs = th.clamp((next_raw - mean_obs) / std_obs, -env.clip_obs, env.clip_obs)
    q = th.clamp(c * reward, -env.clip_reward, env.clip_reward) + 0.99 * policy.predict_values(next_obs).flatten()
    expected = th.autograd.grad(-(adv_scale * q.mean()), actor, allow_unused=True)
    for g, e in zip(got, expected):
        assert th.allclose(g, e, rtol=1e-3, atol=1e-6)
    assert algo.pathwise.clipped_fraction == 0.0


def test_short_halfcheetah_training_with_the_mujoco_source_and_vecnormalize_logs_lambda(tmp_path):
    _mujoco()
    from stable_baselines3.common.logger import configure

    env = VecNormalize(make_vec_env("HalfCheetah-v5", n_envs=1, seed=0))
    algo = HybridPG("MlpPolicy", env, n_steps=256, batch_size=64, n_epochs=2, lambda_warmup=1, pathwise_source="mujoco", seed=0)
    algo.set_logger(configure(str(tmp_path), ["csv"]))
    algo.learn(2 * 256)
    lines = (tmp_path / "progress.csv").read_text().splitlines()
    header = lines[0].split(",")
    # SB3 dumps an update's records with the next rollout's: the last update's are still pending
    lam = [float(v) for v in (row.split(",")[header.index("hybrid/lambda")] for row in lines[1:]) if v]
    lam.append(algo.logger.name_to_value["hybrid/lambda"])
    assert len(lam) == 2 and lam[0] == 0.0 and 0.0 <= lam[1] <= 1.0
    # the simulator's local Jacobians are biased through contacts: never an exact source
    assert not algo.pathwise.exact and algo.pathwise.normalization is not None
    assert all(th.isfinite(p).all() for p in algo.policy.parameters())


# ------------------------------------------------------------------------------------------------
# the MuJoCo source's first-order model: one simulation with Jacobians per rollout
# ------------------------------------------------------------------------------------------------


def _halfcheetah_at_theta_old(env_id: str = "HalfCheetah-v5", n: int = 64, horizon: int = 1):
    """A HybridPG on a VecNormalize'd MuJoCo env with its rollout buffer full at theta_old (lr 0)."""
    _mujoco()
    th.manual_seed(0)
    env = VecNormalize(make_vec_env(env_id, n_envs=1, seed=0), gamma=0.99)
    algo = HybridPG(
        "MlpPolicy",
        env,
        pathwise_source="mujoco",
        model_horizon=horizon,
        learning_rate=0.0,
        n_steps=n,
        batch_size=n,
        n_epochs=1,
        seed=0,
        device="cpu",
    )
    algo.learn(n)
    full = copy.copy(algo.pathwise)
    full.linearize = False
    assert algo.pathwise.linear and not full.linear
    return algo, full


def _value_and_grad(source, policy, batch, shift: float = 0.0):
    mean = (batch.mean_old + shift * th.exp(batch.log_std_old)).requires_grad_(True)
    log_std = policy.log_std.detach().clone().requires_grad_(True)
    q = source.value(mean, log_std, batch.eps, batch.context)
    return (q.detach(), *th.autograd.grad(q.sum(), (mean, log_std)))


@pytest.mark.parametrize("env_id,horizon", [("HalfCheetah-v5", 1), ("Hopper-v5", 1), ("Hopper-v5", 3)])
def test_linearised_source_is_the_simulator_at_theta_old_values_gradients_and_statistics(env_id, horizon):
    """At theta_old the first-order model's values, action-gradients and the per-sample moments (hence
    lam) are those of stepping the simulator in every call; away from it the error is second order."""
    from hybrid_pg.rollout import prepare_batch, rollout_group_moments

    algo, full = _halfcheetah_at_theta_old(env_id, horizon=horizon)
    policy, source = algo.policy, algo.pathwise
    data = next(algo.rollout_buffer.get(batch_size=None))
    batch = prepare_batch(policy, source, data, True, generator=th.Generator().manual_seed(1))
    assert {"lin_next", "lin_dx", "lin_jac", "lin_action", "lin_healthy"} <= set(batch.context)
    assert ("lin2_jac_obs" in batch.context) == (horizon == 3)
    calls = []
    simulate = source.model.simulate
    source.model.simulate = lambda *a, **k: calls.append(k) or simulate(*a, **k)
    lin = _value_and_grad(source, policy, batch)
    assert calls == []  # the update's values need no simulator call
    source.model.simulate = simulate
    ref = _value_and_grad(full, policy, batch)
    for a, b in zip(lin, ref):
        assert th.allclose(a, b, rtol=1e-4, atol=1e-5)
    m_lin = rollout_group_moments(policy, algo.actor_head, source, batch)
    m_full = rollout_group_moments(policy, algo.actor_head, full, batch)
    for name in m_lin:
        a, b = m_lin[name], m_full[name]
        assert th.allclose(a.mean_path, b.mean_path, rtol=1e-4, atol=1e-6)
        assert th.equal(a.mean_score, b.mean_score)
        for key in ("ss_path", "ss_cross", "lr_ss_path", "lr_ss_cross"):
            assert getattr(a, key) == pytest.approx(getattr(b, key), rel=1e-4, abs=1e-9)
    # a step of 0.1 sigma (inside the pathwise KL limit): the model's error is second order, i.e.
    # small against the first-order change of Q~ itself
    q0 = ref[0]
    q_lin, q_full = _value_and_grad(source, policy, batch, 0.1)[0], _value_and_grad(full, policy, batch, 0.1)[0]
    assert (q_lin - q_full).abs().median() < 0.1 * (q_full - q0).abs().median()


def test_the_simulator_is_called_once_per_rollout():
    _mujoco()
    env = VecNormalize(make_vec_env("HalfCheetah-v5", n_envs=1, seed=0))
    algo = HybridPG(
        "MlpPolicy", env, n_steps=64, batch_size=16, n_epochs=3, lambda_warmup=0, pathwise_source="mujoco", seed=0, device="cpu"
    )
    model = algo.pathwise.model
    calls = []
    simulate = model.simulate
    model.simulate = lambda obs, *a, **k: calls.append(len(obs)) or simulate(obs, *a, **k)
    algo.learn(64 * 2)
    assert calls == [64, 64]  # the statistics and 3 epochs x 4 minibatches reuse each rollout's Jacobians
    assert 0.0 < algo.last_lambda["global"] <= 1.0


def test_k_step_model_statistics_outer_product_equals_torch_func():
    """Future actions carry no theta-gradient, so a k-step return depends on theta only through
    (mu(s_i), log_std): the two-pass outer-product moments are exact at k > 1 too (which is what a
    simulator, untraceable by torch.func, needs)."""
    from hybrid_pg.rollout import prepare_batch, rollout_group_moments

    algo = HybridPG(
        "MlpPolicy",
        "hybrid_pg/Pendulum-v0",
        pathwise_source="model",
        model_horizon=3,
        n_steps=128,
        batch_size=128,
        n_epochs=1,
        learning_rate=0.0,
        seed=0,
        device="cpu",
    )
    algo.learn(128)
    assert not algo.pathwise.one_step  # a traceable model keeps torch.func (unchanged numbers)
    batch = prepare_batch(
        algo.policy, algo.pathwise, next(algo.rollout_buffer.get(batch_size=None)), True, generator=th.Generator().manual_seed(1)
    )
    outer = rollout_group_moments(algo.policy, algo.actor_head, algo.pathwise, batch, method="outer")
    vmap = rollout_group_moments(algo.policy, algo.actor_head, algo.pathwise, batch, method="vmap")
    for name in outer:
        a, b = outer[name], vmap[name]
        assert th.allclose(a.mean_path, b.mean_path, rtol=1e-6, atol=1e-9)
        for key in ("ss_path", "ss_score", "ss_cross"):
            assert getattr(a, key) == pytest.approx(getattr(b, key), rel=1e-6, abs=1e-10)


def test_mujoco_source_with_a_two_step_return_trains_on_the_outer_product_statistics():
    _mujoco()
    env = VecNormalize(make_vec_env("Hopper-v5", n_envs=1, seed=0))
    algo = HybridPG("MlpPolicy", env, pathwise_source="mujoco", model_horizon=2, lambda_warmup=0, **MJ)
    source = algo.pathwise
    assert source.one_step and source.linear  # linearised along the nominal 2-step trajectory
    calls = []
    simulate = source.model.simulate
    source.model.simulate = lambda obs, *a, **k: calls.append(k["wrt_obs"]) or simulate(obs, *a, **k)
    algo.learn(2 * 32)
    assert calls == [False, True] * 2  # per rollout: the action Jacobian, then state + action
    assert algo.logger.name_to_value["hybrid/stats_valid"] == 1.0
    assert 0.0 <= algo.last_lambda["global"] <= 1.0
    assert all(th.isfinite(p).all() for p in algo.policy.parameters())


def test_mujoco_cost_example_runs_every_cell(monkeypatch):
    _mujoco()
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "examples" / "mujoco_cost.py"
    spec = importlib.util.spec_from_file_location("mujoco_cost", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    monkeypatch.setitem(example.SETTINGS, "n_steps", 32)
    monkeypatch.setitem(example.SETTINGS, "batch_size", 32)
    monkeypatch.setitem(example.SETTINGS, "n_epochs", 1)
    table = example.cells(forced=True)
    assert {"ppo", "reinforce", "hybrid", "hybrid_replay", "hybrid_mujoco", "hybrid_mujoco_full", *example.NOT_BENCHMARK_CELLS} == set(
        table
    )
    for name in ("ppo", "hybrid_mujoco", "hybrid_mujoco_full", "hybrid_loop_adam", "ppo_fused_adam"):
        m = example.measure(table[name], "HalfCheetah-v5", 64)
        assert m["step_s"] > 0 and m["update_s"] > 0
        assert m["path_share"] == (0.0 if name.startswith("ppo") else 1.0)
    # the two optimizer cells are what they say
    fused = {
        name: table[name](example._env("HalfCheetah-v5", 0), 0).policy.optimizer.param_groups[0]["fused"]
        for name in ("hybrid_loop_adam", "ppo_fused_adam", "hybrid")
    }
    assert fused == {"hybrid_loop_adam": False, "ppo_fused_adam": True, "hybrid": True}
