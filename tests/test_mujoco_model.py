"""The differentiable MuJoCo step model (hybrid_pg_envs.mujoco_model) against the real envs."""

from __future__ import annotations

import math
import pickle

import numpy as np
import pytest

pytest.importorskip("mujoco")

import gymnasium as gym  # noqa: E402
import torch as th  # noqa: E402
from stable_baselines3.common.env_util import make_vec_env  # noqa: E402
from stable_baselines3.common.monitor import Monitor  # noqa: E402
from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize  # noqa: E402

from hybrid_pg_envs.differentiable import find_differentiable_model, has_differentiable_model  # noqa: E402
from hybrid_pg_envs.mujoco_model import MujocoDifferentiableWrapper, MujocoStepModel, jacobian_cost  # noqa: E402

ENV_IDS = ["HalfCheetah-v5", "Hopper-v5", "Walker2d-v5", "Swimmer-v5"]


@pytest.fixture(autouse=True)
def _one_thread():
    threads = th.get_num_threads()
    th.set_num_threads(1)
    yield
    th.set_num_threads(threads)


def _set_state(env: gym.Env, model: MujocoStepModel, obs: np.ndarray) -> None:
    """Put the real env in the state the model reads from ``obs`` (root x = 0, zero warm-start)."""
    qpos, qvel = model.obs_to_state(obs[None])
    env.unwrapped.data.qacc_warmstart[:] = 0.0
    env.unwrapped.set_state(qpos[0], qvel[0])


def _env_step(env: gym.Env, model: MujocoStepModel, obs: np.ndarray, action: np.ndarray):
    _set_state(env, model, obs)
    next_obs, reward, terminated, _, _ = env.step(action)
    return next_obs, reward, terminated


def _visited(env: gym.Env, n: int, seed: int):
    """n (obs, action) pairs along random-action episodes (restarting when one ends)."""
    env.action_space.seed(seed)
    obs, _ = env.reset(seed=seed)
    pairs = []
    for i in range(n):
        action = env.action_space.sample()
        pairs.append((obs, action))
        obs, _, terminated, truncated, _ = env.step(action)
        if terminated or truncated:
            obs, _ = env.reset(seed=seed + i + 1)
    return pairs


def _model_jacobian(model: MujocoStepModel, obs: np.ndarray, action: np.ndarray) -> np.ndarray:
    """d(next_obs, reward)/d(obs, action) through torch autograd, (obs_dim + 1, obs_dim + act_dim)."""
    o = th.tensor(obs[None], dtype=th.float64, requires_grad=True)
    a = th.tensor(action[None], dtype=th.float64, requires_grad=True)
    next_obs, reward = model.step(o, a)
    out = th.cat([next_obs, reward[:, None]], dim=1)[0]
    rows = [th.cat(th.autograd.grad(out[k], (o, a), retain_graph=True), dim=1)[0] for k in range(out.numel())]
    return th.stack(rows).numpy()


def _env_jacobian(env: gym.Env, model: MujocoStepModel, obs: np.ndarray, action: np.ndarray, h: float) -> np.ndarray:
    """Central finite differences of the real ``env.step`` (set state, step, read obs and reward)."""
    n, m = obs.size, action.size
    jac = np.zeros((n + 1, n + m))
    for i in range(n + m):
        e = np.zeros(n + m)
        e[i] = h
        plus = _env_step(env, model, obs + e[:n], action + e[n:])
        minus = _env_step(env, model, obs - e[:n], action - e[n:])
        jac[:, i] = (np.r_[plus[0], plus[1]] - np.r_[minus[0], minus[1]]) / (2 * h)
    return jac


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_step_equals_env_step(env_id):
    env = gym.make(env_id)
    model = MujocoStepModel.from_env(env)
    pairs = _visited(env, 64, seed=3)
    obs = np.array([o for o, _ in pairs])
    actions = np.array([a for _, a in pairs])
    # float32 in and out, as the policy produces
    next_obs, reward = model.step(th.tensor(obs, dtype=th.float32), th.tensor(actions, dtype=th.float32))
    assert next_obs.dtype == th.float32 and next_obs.shape == obs.shape and reward.shape == (len(pairs),)
    next64, reward64 = model.step(th.tensor(obs), th.tensor(actions, dtype=th.float64))
    terminal = model.terminal(next64)
    for i in range(len(pairs)):
        # the float32 observation is what the model saw in the float32 call; the env gets the same
        o32 = obs[i].astype(np.float32).astype(np.float64)
        env_obs, env_reward, env_term = _env_step(env, model, o32, actions[i])
        np.testing.assert_allclose(next_obs[i].numpy(), env_obs, rtol=1e-6, atol=1e-5)
        assert reward[i].item() == pytest.approx(env_reward, rel=1e-6, abs=1e-5)
        env_obs, env_reward, env_term = _env_step(env, model, obs[i], actions[i])
        # float64: the same simulator from the same state -> equal up to rounding of the reward sum
        np.testing.assert_allclose(next64[i].numpy(), env_obs, rtol=0, atol=1e-12)
        assert reward64[i].item() == pytest.approx(env_reward, rel=1e-9, abs=1e-7)
        assert bool(terminal[i]) == env_term
    if env_id in ("Hopper-v5", "Walker2d-v5"):
        assert terminal.any(), "random actions should end some episode: the terminal test is exercised"


@pytest.mark.parametrize("env_id", ["HalfCheetah-v5", "Hopper-v5", "Walker2d-v5"])
def test_jacobian_matches_finite_differences_of_env_step(env_id):
    """Autograd through the model vs central differences of the real env with h = 1e-5 (the model
    uses 1e-6: a different stencil, so an error in the chaining, the obs <-> state map or the
    backward shows). Central-difference truncation error is O(h^2 f'''): at contact states we saw
    up to 4e-5 of the Jacobian's scale (Walker2d, h = 1e-5) and 1e-9 elsewhere, so the bound is
    1e-3 of the largest entry, per entry."""
    env = gym.make(env_id)
    model = MujocoStepModel.from_env(env)
    rng = np.random.default_rng(0)
    pairs = _visited(env, 40, seed=1)
    for k in (10, 25, 39):
        obs, _ = pairs[k]
        action = rng.uniform(-0.8, 0.8, size=model.nu)
        jac_model = _model_jacobian(model, obs, action)
        jac_env = _env_jacobian(env, model, obs, action, h=1e-5)
        scale = np.abs(jac_env).max()
        assert np.abs(jac_model - jac_env).max() <= 1e-3 * scale


def test_transition_and_rollout_jacobians_agree():
    """HalfCheetah (Euler): mjd_transitionFD chained over frame_skip == FD of the frame-skipped step."""
    env = gym.make("HalfCheetah-v5")
    pairs = _visited(env, 12, seed=2)
    obs = np.array([o for o, _ in pairs])
    actions = np.array([a for _, a in pairs])
    by_transition = MujocoStepModel.from_env(env, jacobian="transition").simulate(obs, actions, jacobian=True)
    by_rollout = MujocoStepModel.from_env(env, jacobian="rollout").simulate(obs, actions, jacobian=True)
    for key in ("next_obs", "dx"):
        np.testing.assert_array_equal(by_transition[key], by_rollout[key])
    for key in ("jac_obs", "jac_act"):
        scale = np.abs(by_rollout[key]).max()
        np.testing.assert_allclose(by_transition[key], by_rollout[key], rtol=0, atol=1e-6 * scale)
    # the action columns alone (what a one-step pathwise gradient needs): ctrl-only rollouts
    action_only = MujocoStepModel.from_env(env).simulate(obs, actions, jacobian=True, wrt_obs=False)
    assert "jac_obs" not in action_only
    np.testing.assert_array_equal(action_only["jac_act"], by_rollout["jac_act"])
    np.testing.assert_array_equal(action_only["next_obs"], by_rollout["next_obs"])
    with pytest.raises(ValueError, match="RK4"):
        MujocoStepModel.from_env(gym.make("Hopper-v5"), jacobian="transition")


def _in_the_air(env_id: str, model: MujocoStepModel, rng: np.random.Generator) -> np.ndarray:
    """An observation above the floor (z + 0.5: Walker2d's healthy z range ends at 2), upright,
    with small joint angles and velocities."""
    qpos = np.array(model.mj_model.qpos0, dtype=np.float64)
    qpos[1] += 0.5
    qpos[3:] += rng.uniform(-0.1, 0.1, size=model.nq - 3)
    qvel = rng.normal(0.0, 0.1, size=model.nv)
    return model.state_to_obs(qpos[None], qvel[None])[0]


@pytest.mark.parametrize("env_id", ["HalfCheetah-v5", "Hopper-v5", "Walker2d-v5"])
def test_pathwise_gradient_matches_score_function(env_id):
    """d/dmu E[r(s, mu + sigma eps)] by the model's pathwise gradient vs a large-sample score-function
    estimate, at a contact-free state (checked: no contacts before or after any sampled step), so
    the reward is smooth in the action; within 4 combined Monte Carlo standard errors per component."""
    env = gym.make(env_id)
    env.reset(seed=0)
    model = MujocoStepModel.from_env(env)
    rng = np.random.default_rng(7)
    obs = _in_the_air(env_id, model, rng)
    mu = rng.uniform(-0.3, 0.3, size=model.nu)
    sigma = 0.2
    for _ in range(5):  # spot-check the contact-free claim on the real env
        _env_step(env, model, obs, mu + sigma * rng.standard_normal(model.nu))
        assert env.unwrapped.data.ncon == 0
    _set_state(env, model, obs)
    assert env.unwrapped.data.ncon == 0
    assert not model.terminal(th.tensor(obs[None])).item()  # healthy: the health term is a constant 1

    # pathwise: grad of r(s, mu + sigma eps) w.r.t. mu, per sample, through the model
    n_path = 128
    eps = th.tensor(rng.standard_normal((n_path, model.nu)))
    mean = th.tensor(np.repeat(mu[None], n_path, axis=0), requires_grad=True)  # one copy per sample
    _, reward = model.step(th.tensor(np.repeat(obs[None], n_path, axis=0)), mean + sigma * eps)
    per_sample = th.autograd.grad(reward.sum(), mean)[0].numpy()
    g_path = per_sample.mean(axis=0)
    se_path = per_sample.std(axis=0, ddof=1) / np.sqrt(n_path)

    # score function: (r - b) * eps / sigma, b = r(s, mu) (a constant baseline: no bias)
    n_score = 8192
    eps_s = rng.standard_normal((n_score, model.nu))
    with th.no_grad():
        _, r = model.step(th.tensor(np.repeat(obs[None], n_score, axis=0)), th.tensor(mu + sigma * eps_s))
        _, b = model.step(th.tensor(obs[None]), th.tensor(mu[None]))
    terms = (r.numpy() - b.item())[:, None] * eps_s / sigma
    g_score = terms.mean(axis=0)
    se_score = terms.std(axis=0, ddof=1) / np.sqrt(n_score)

    se = np.sqrt(se_path**2 + se_score**2)
    assert np.all(np.abs(g_path - g_score) <= 4 * se), (g_path, g_score, se)
    assert np.linalg.norm(g_score) > 4 * np.linalg.norm(se)  # the test has power: the gradient is resolved


def test_clipped_velocities_are_flagged_and_frozen():
    env = gym.make("Hopper-v5")
    model = MujocoStepModel.from_env(env)
    obs, _ = env.reset(seed=0)
    fast = obs.copy()
    fast[-1] = 10.0  # a foot joint at the clip bound: its true velocity is unknown
    batch = th.tensor(np.stack([obs, fast]), requires_grad=True)
    next_obs, _ = model.step(batch, th.zeros(2, model.nu, dtype=th.float64))
    assert model.last_clipped.tolist() == [False, True]
    assert model.clipped(batch).tolist() == [False, True]
    # a next velocity beyond the bound is clipped in next_obs and has no derivative there
    out = model.simulate(fast[None], np.ones((1, model.nu)), jacobian=True)  # the foot keeps speeding up
    over = np.abs(out["qvel"][0]) > 10.0
    assert over.any() and np.all(np.abs(out["next_obs"][0, -model.nv :][over]) == 10.0)
    assert np.all(out["jac_obs"][0, model.nq - 1 : model.nq - 1 + model.nv][over] == 0.0)


def test_reads_the_env_kwargs():
    env = gym.make("Hopper-v5", forward_reward_weight=2.0, ctrl_cost_weight=0.5, healthy_reward=3.0, frame_skip=2)
    model = MujocoStepModel.from_env(env)
    params = model.parameters_dict()
    assert params["forward_reward_weight"] == 2.0 and params["ctrl_cost_weight"] == 0.5
    assert params["healthy_reward"] == 3.0 and params["frame_skip"] == 2
    assert params["dt"] == pytest.approx(env.unwrapped.dt)
    obs, action = _visited(env, 1, seed=0)[0]
    next_obs, reward = model.step(th.tensor(obs[None]), th.tensor(action[None], dtype=th.float64))
    env_obs, env_reward, _ = _env_step(env, model, obs, action)
    np.testing.assert_allclose(next_obs[0].numpy(), env_obs, atol=1e-12)
    assert reward.item() == pytest.approx(env_reward, rel=1e-7)  # the env sums a float32 ctrl cost
    # a copy of the simulator: changing the env's physics later leaves the model as it was
    env.unwrapped.model.opt.gravity[2] = -5.0
    assert model.parameters_dict()["gravity"][2] == pytest.approx(-9.81)


def test_found_through_wrappers_and_vec_envs():
    make = lambda: MujocoDifferentiableWrapper(gym.make("HalfCheetah-v5"))  # noqa: E731
    for env in (make(), Monitor(make()), gym.wrappers.ClipAction(make())):
        assert has_differentiable_model(env)
        assert isinstance(find_differentiable_model(env), MujocoStepModel)
    venv = make_vec_env("HalfCheetah-v5", n_envs=2, wrapper_class=MujocoDifferentiableWrapper)
    assert isinstance(find_differentiable_model(venv), MujocoStepModel)
    assert isinstance(find_differentiable_model(VecNormalize(DummyVecEnv([make]))), MujocoStepModel)
    assert find_differentiable_model(gym.make("HalfCheetah-v5")) is None
    with pytest.raises(TypeError, match="no differentiable MuJoCo model"):
        MujocoDifferentiableWrapper(gym.make("Pendulum-v1"))
    # the model pickles (SubprocVecEnv sends it back) and still steps
    model = pickle.loads(pickle.dumps(find_differentiable_model(make())))
    obs = th.zeros(3, model.obs_dim, dtype=th.float64)
    assert model.step(obs, th.zeros(3, model.nu, dtype=th.float64))[0].shape == (3, model.obs_dim)


def test_jacobian_cost_reports():
    cost = jacobian_cost("HalfCheetah-v5", batch=4, repeats=1)
    # timings are reported, not compared: on a shared machine their order is not guaranteed
    assert cost["method"] == "transition"
    assert all(cost[k] > 0 and math.isfinite(cost[k]) for k in ("forward_s", "jacobian_s", "jacobian_action_s"))


@pytest.mark.parametrize("env_id", ["HalfCheetah-v5", "Hopper-v5"])
def test_forward_differences_agree_with_central_ones_at_half_the_simulations(env_id, monkeypatch):
    """fd_centered=False: one perturbed rollout per column instead of two; the Jacobians agree with
    the central ones to the forward stencil's O(fd_eps) error (contact states: a few 1e-3 of the
    scale), and a ctrl at its upper bound gets the same one-sided column both ways."""
    env = gym.make(env_id)
    pairs = _visited(env, 30, seed=4)
    obs = np.array([o for o, _ in pairs])
    actions = np.array([a for _, a in pairs])
    actions[:4, 0] = env.unwrapped.model.actuator_ctrlrange[0, 1]  # at the bound: a one-sided column
    central = MujocoStepModel.from_env(env)
    forward = MujocoStepModel.from_env(env, fd_centered=False)
    rows = []
    original = MujocoStepModel._rollout

    def counting(self, qpos, qvel, ctrl):
        rows.append(len(qpos))
        return original(self, qpos, qvel, ctrl)

    monkeypatch.setattr(MujocoStepModel, "_rollout", counting)
    by_central = central.simulate(obs, actions, jacobian=True, wrt_obs=False)
    by_forward = forward.simulate(obs, actions, jacobian=True, wrt_obs=False)
    nu, n = central.nu, len(obs)
    assert rows == [n * (1 + 2 * nu), n * (1 + nu)]
    np.testing.assert_array_equal(by_forward["next_obs"], by_central["next_obs"])
    scale = np.abs(by_central["jac_act"]).max()
    diff = np.abs(by_forward["jac_act"] - by_central["jac_act"])
    assert np.median(diff) <= 1e-6 * scale and diff.max() <= 1e-2 * scale
    np.testing.assert_array_equal(by_forward["jac_act"][:4, :, 0], by_central["jac_act"][:4, :, 0])
    # the full Jacobian (states too) through the same switch
    full_c = central.simulate(obs[:6], actions[:6], jacobian=True)
    full_f = forward.simulate(obs[:6], actions[:6], jacobian=True)
    assert np.median(np.abs(full_f["jac_obs"] - full_c["jac_obs"])) <= 1e-6 * np.abs(full_c["jac_obs"]).max()
