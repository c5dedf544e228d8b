"""hybrid_pg_envs: the shipped envs, their differentiable models and the LQR closed form.

Models are checked step for step against the numpy envs they claim to reproduce, the LQR closed
form against Monte Carlo returns of the numpy env (tolerance: N_SE standard errors) and against
finite differences. Every random draw is seeded.
"""

from __future__ import annotations

import importlib
import warnings

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from gymnasium.utils.env_checker import check_env as gym_check_env
from stable_baselines3 import PPO
from stable_baselines3.common.env_checker import check_env as sb3_check_env
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv, VecMonitor

import hybrid_pg_envs
from hybrid_pg_envs import (
    DifferentiableModel,
    DiffPendulumEnv,
    LQREnv,
    exact_policy_gradient,
    expected_return,
    find_differentiable_model,
    has_differentiable_model,
    linear_policy_params,
)
from hybrid_pg_envs.lqr import LQRModel
from hybrid_pg_envs.pendulum import PendulumModel

N_SE = 4.0
ENV_IDS = ["hybrid_pg/Pendulum-v0", "hybrid_pg/LQR-v0"]

# Warnings the checkers raise by design: Pendulum-v1's [-2, 2] torque (kept to stay Pendulum-v1),
# LQR's [-5, 5] action bound (physical units) and its unbounded state.
EXPECTED_WARNINGS = ("symmetric and normalized", "infinity")

# A 3-state / 2-action system for the closed-form tests, away from the env defaults on purpose.
SYSTEM = dict(
    A=[[0.9, 0.2, 0.0], [-0.1, 0.8, 0.3], [0.05, 0.0, 0.7]],
    B=[[0.5, 0.0], [0.2, 0.4], [0.0, 0.3]],
    Q=[[1.0, 0.2, 0.0], [0.2, 0.5, 0.0], [0.0, 0.0, 0.3]],
    R=[[0.1, 0.02], [0.02, 0.2]],
    x0_mean=[1.0, -0.5, 0.3],
    x0_std=[0.5, 0.3, 0.8],
    noise_std=0.2,
    horizon=6,
)
GAMMA = 0.9
POLICY = dict(
    W=np.array([[-0.4, 0.1, 0.2], [0.3, -0.5, -0.1]]),
    w_t=np.array([0.5, -0.3]),
    b=np.array([0.2, 0.1]),
    log_std=np.array([-1.0, -0.5]),
)


# ---------------------------------------------------------------------------------------------
# registration and env checkers
# ---------------------------------------------------------------------------------------------


def test_registration_is_idempotent():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        importlib.reload(hybrid_pg_envs)
        importlib.import_module("hybrid_pg_envs")
        hybrid_pg_envs.register_envs()
    assert gym.spec("hybrid_pg/Pendulum-v0").max_episode_steps == 200
    assert gym.spec("hybrid_pg/LQR-v0").max_episode_steps is None  # the env terminates itself


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_gymnasium_checker(env_id, run_env_checker):
    # Pendulum's render is gymnasium's own and needs pygame, which tests need not have
    skip_render = env_id.startswith("hybrid_pg/Pendulum")
    run_env_checker(lambda e: gym_check_env(e.unwrapped, skip_render_check=skip_render), gym.make(env_id), EXPECTED_WARNINGS)


def test_lqr_render():
    env = gym.make("hybrid_pg/LQR-v0", render_mode="rgb_array", horizon=4)
    env.reset(seed=0, options={"x0": [-10.0, 10.0]})  # off the picture: clipped to its corner
    env.step(np.zeros(1, dtype=np.float32))
    img = env.render()
    assert img.shape == (96, 96, 3) and img.dtype == np.uint8
    assert (img[0, 0] == (30, 90, 200)).all()  # top left: x[0] < 0, x[1] > 0
    assert (img[-1] == (200, 60, 30)).all(axis=-1).sum() == 24  # a quarter of the episode elapsed
    assert LQREnv().render() is None


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_sb3_checker(env_id, run_env_checker):
    run_env_checker(lambda e: sb3_check_env(e.unwrapped), gym.make(env_id), EXPECTED_WARNINGS)


# ---------------------------------------------------------------------------------------------
# Pendulum
# ---------------------------------------------------------------------------------------------


def test_diff_pendulum_env_is_pendulum_v1():
    ours, ref = gym.make("hybrid_pg/Pendulum-v0"), gym.make("Pendulum-v1")
    obs, _ = ours.reset(seed=3)
    ref_obs, _ = ref.reset(seed=3)
    rng = np.random.default_rng(0)
    for _t in range(200):
        np.testing.assert_array_equal(obs, ref_obs)
        action = rng.uniform(-3.0, 3.0, size=1).astype(np.float32)
        obs, r, term, trunc, _ = ours.step(action)
        ref_obs, ref_r, ref_term, ref_trunc, _ = ref.step(action)
        assert (r, term, trunc) == (ref_r, ref_term, ref_trunc)
    assert trunc and not term  # TimeLimit at 200, as Pendulum-v1


@pytest.mark.parametrize("dtype", [th.float32, th.float64])
def test_pendulum_model_matches_gymnasium(dtype):
    env = gym.make("Pendulum-v1")
    model = DiffPendulumEnv().get_differentiable_model()
    obs, _ = env.reset(seed=1)
    rng = np.random.default_rng(1)
    clipped = 0
    for _ in range(200):
        # beyond the +-2 torque limit half of the time, to check the clipping too
        action = rng.uniform(-4.0, 4.0, size=1).astype(np.float32)
        clipped += abs(action[0]) > 2.0
        next_obs, reward, *_ = env.step(action)
        pred_obs, pred_r = model.step(th.as_tensor(obs, dtype=dtype)[None], th.as_tensor(action, dtype=dtype)[None])
        assert pred_obs.dtype == dtype and pred_obs.shape == (1, 3) and pred_r.shape == (1,)
        np.testing.assert_allclose(pred_obs[0].numpy(), next_obs, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(pred_r[0].item(), reward, rtol=1e-5, atol=1e-5)
        obs = next_obs
    assert clipped > 50
    assert float(model.terminal(pred_obs)[0]) == 0.0  # Pendulum only truncates


def test_pendulum_model_batched_and_gradcheck():
    model = PendulumModel()
    gen = th.Generator().manual_seed(0)
    # away from the kinks: |u| < 2 (torque clip), |thdot'| < 8 (speed clip), |theta| < pi (atan2 branch cut)
    theta = th.empty(6, dtype=th.float64).uniform_(-2.5, 2.5, generator=gen)
    thdot = th.empty(6, dtype=th.float64).uniform_(-3.0, 3.0, generator=gen)
    obs = th.stack([th.cos(theta), th.sin(theta), thdot], dim=-1).requires_grad_(True)
    action = th.empty(6, 1, dtype=th.float64).uniform_(-1.5, 1.5, generator=gen).requires_grad_(True)
    assert th.autograd.gradcheck(lambda o, a: model.step(o, a), (obs, action))
    # batched equals row by row, and extra leading dims are accepted
    next_obs, reward = model.step(obs, action)
    for i in range(6):
        row_obs, row_r = model.step(obs[i : i + 1], action[i : i + 1])
        th.testing.assert_close(row_obs[0], next_obs[i])
        th.testing.assert_close(row_r[0], reward[i])
    obs3, r3 = model.step(obs.reshape(2, 3, 3), action.reshape(2, 3, 1))
    th.testing.assert_close(obs3.reshape(6, 3), next_obs)
    th.testing.assert_close(r3.reshape(6), reward)


def test_pendulum_set_parameters_and_snapshot():
    env = DiffPendulumEnv(g=9.81)
    model = env.get_differentiable_model()
    assert model.parameters_dict() == pytest.approx(dict(g=9.81, m=1.0, l=1.0, dt=0.05, max_speed=8.0, max_torque=2.0))
    obs = th.tensor([[np.cos(0.7), np.sin(0.7), 0.5]], dtype=th.float64)
    action = th.tensor([[0.3]], dtype=th.float64)
    before, r_before = model.step(obs, action)
    model.set_parameters(g=4.0)
    after, r_after = model.step(obs, action)
    # newthdot = thdot + (3 g / (2 l) sin th + 3 u / (m l^2)) dt: linear in g
    expected_shift = 1.5 * (4.0 - 9.81) * np.sin(0.7) * 0.05
    assert after[0, 2].item() - before[0, 2].item() == pytest.approx(expected_shift, rel=1e-10)
    assert r_after.item() == r_before.item()  # the cost is on the current state
    with pytest.raises(ValueError, match="unknown model parameter"):
        model.set_parameters(gravity=1.0)
    with pytest.raises(ValueError, match="shape"):
        model.set_parameters(g=[1.0, 2.0])
    # a model is a snapshot of the env at the time of the call
    env.g = 3.0
    assert env.get_differentiable_model().parameters_dict()["g"] == 3.0
    assert model.parameters_dict()["g"] == 4.0


# ---------------------------------------------------------------------------------------------
# LQR env and model
# ---------------------------------------------------------------------------------------------


def test_lqr_env_mdp():
    env = LQREnv(horizon=5)
    obs, _ = env.reset(seed=0, options={"x0": [1.0, -2.0]})
    np.testing.assert_array_equal(obs, np.array([1.0, -2.0, 0.0], dtype=np.float32))
    x = np.array([1.0, -2.0])
    for t in range(1, 6):
        u = np.array([7.0 if t % 2 else -0.5])  # 7 is clipped to the default bound 5
        obs, r, term, trunc, _ = env.step(u.astype(np.float32))
        uc = np.clip(u, -5.0, 5.0)
        x = env.A @ x + env.B @ uc
        assert r == pytest.approx(-(x @ env.Q @ x + uc @ env.R @ uc))
        np.testing.assert_allclose(obs, np.r_[x, t / 5], rtol=1e-6)
        assert term == (t == 5) and not trunc


def test_lqr_model_matches_env():
    env = gym.make("hybrid_pg/LQR-v0", **{k: SYSTEM[k] for k in ("A", "B", "Q", "R", "x0_mean", "x0_std")}, horizon=7)
    model = find_differentiable_model(env)
    rng = np.random.default_rng(2)
    for episode in range(3):
        obs, _ = env.reset(seed=episode)
        done = False
        while not done:
            action = rng.uniform(-7.0, 7.0, size=2).astype(np.float32)  # bound 5: some clipped
            next_obs, reward, done, trunc, _ = env.step(action)
            pred_obs, pred_r = model.step(th.as_tensor(obs)[None], th.as_tensor(action)[None])
            np.testing.assert_allclose(pred_obs[0].numpy(), next_obs, rtol=1e-5, atol=1e-5)
            np.testing.assert_allclose(pred_r.item(), reward, rtol=1e-5, atol=1e-5)
            assert float(model.terminal(pred_obs)[0]) == float(done)
            assert not trunc
            obs = next_obs


def test_lqr_model_gradcheck_and_set_parameters():
    env = LQREnv(**SYSTEM)
    model = env.get_differentiable_model()
    assert model.noise_std == SYSTEM["noise_std"]
    gen = th.Generator().manual_seed(0)
    obs = th.randn(5, 4, dtype=th.float64, generator=gen).requires_grad_(True)
    action = th.empty(5, 2, dtype=th.float64).uniform_(-4.0, 4.0, generator=gen).requires_grad_(True)
    assert th.autograd.gradcheck(lambda o, a: model.step(o, a), (obs, action))

    obs = th.tensor([[1.0, 2.0, -1.0, 0.5]], dtype=th.float64)
    action = th.tensor([[0.5, -1.0]], dtype=th.float64)
    model.set_parameters(A=np.eye(3), Q=np.zeros((3, 3)))
    next_obs, reward = model.step(obs, action)
    B, R = np.array(SYSTEM["B"]), np.array(SYSTEM["R"])
    u = action[0].numpy()
    np.testing.assert_allclose(next_obs[0, :3].numpy(), obs[0, :3].numpy() + B @ u)
    assert next_obs[0, 3].item() == pytest.approx(0.5 + 1 / 6)
    assert reward.item() == pytest.approx(-(u @ R @ u))
    with pytest.raises(ValueError, match="unknown model parameter"):
        model.set_parameters(K=np.eye(3))
    with pytest.raises(ValueError, match="shape"):
        model.set_parameters(A=np.eye(2))


def test_lqr_terminal_detection():
    model = LQRModel(np.eye(1), np.eye(1), np.eye(1), np.eye(1), horizon=3, action_bound=1.0)
    obs = th.tensor([[0.0, 0.0]], dtype=th.float32)
    flags = []
    for _ in range(3):  # float32 accumulation of 1/3 must still land on "terminal" at the end
        obs, _ = model.step(obs, th.zeros(1, 1))
        flags.append(float(model.terminal(obs)[0]))
    assert flags == [0.0, 0.0, 1.0]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(A=[[1.0, 0.0]]), "A must be a square"),
        (dict(B=[[1.0], [0.0], [0.0]]), "B must have shape"),
        (dict(Q=np.eye(3)), "Q must have shape"),
        (dict(R=np.eye(2)), "R must have shape"),
        (dict(A=[[np.nan, 0.0], [0.0, 1.0]]), "A must be finite"),
        (dict(horizon=0), "horizon"),
        (dict(horizon=2.5), "horizon"),
        (dict(x0_mean=[0.0, 0.0, 0.0]), "x0_mean"),
        (dict(x0_std=-1.0), "x0_std"),
        (dict(noise_std=-0.1), "noise_std"),
        (dict(action_bound=0.0), "action_bound"),
        (dict(action_bound=np.inf), "action_bound"),
    ],
)
def test_lqr_constructor_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LQREnv(**kwargs)


# ---------------------------------------------------------------------------------------------
# find_differentiable_model
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make, model_type",
    [
        (lambda: DiffPendulumEnv(), PendulumModel),
        (lambda: LQREnv(), LQRModel),
        (lambda: Monitor(gym.make("hybrid_pg/Pendulum-v0")), PendulumModel),
        (lambda: make_vec_env("hybrid_pg/LQR-v0", n_envs=2), LQRModel),
        (lambda: VecMonitor(DummyVecEnv([lambda: gym.make("hybrid_pg/Pendulum-v0")])), PendulumModel),
        (lambda: gym.make("Pendulum-v1"), None),
        (lambda: make_vec_env("Pendulum-v1", n_envs=2), None),
        (lambda: None, None),
    ],
)
def test_find_differentiable_model(make, model_type):
    env = make()
    model = find_differentiable_model(env)
    if model_type is None:
        assert model is None
        if env is not None:
            assert not has_differentiable_model(env)
    else:
        assert isinstance(model, model_type) and isinstance(model, DifferentiableModel)
        assert has_differentiable_model(env)


def test_find_differentiable_model_subproc():
    venv = SubprocVecEnv([lambda: gym.make("hybrid_pg/Pendulum-v0", g=9.0)] * 2, start_method="fork")
    try:
        model = find_differentiable_model(venv)
    finally:
        venv.close()
    assert isinstance(model, PendulumModel) and model.parameters_dict()["g"] == 9.0


def test_find_differentiable_model_rejects_mixed_dynamics():
    venv = DummyVecEnv([lambda: LQREnv(), lambda: LQREnv(A=[[1.0, 0.0], [0.0, 1.0]])])
    with pytest.raises(ValueError, match="different differentiable model"):
        find_differentiable_model(venv)


# ---------------------------------------------------------------------------------------------
# LQR closed form
# ---------------------------------------------------------------------------------------------


def _monte_carlo_returns(n_episodes: int, seed: int) -> np.ndarray:
    """Discounted returns of the numpy env under the linear Gaussian policy; one env per episode,
    stepped in lockstep so the policy is evaluated on all of them in one numpy call."""
    envs = [LQREnv(**SYSTEM, action_bound=1e6) for _ in range(n_episodes)]
    obs = np.stack([env.reset(seed=seed + i)[0] for i, env in enumerate(envs)])
    rng = np.random.default_rng(seed)
    weight = np.hstack([POLICY["W"], POLICY["w_t"][:, None]])
    returns = np.zeros(n_episodes)
    for t in range(SYSTEM["horizon"]):
        actions = obs @ weight.T + POLICY["b"] + np.exp(POLICY["log_std"]) * rng.standard_normal((n_episodes, 2))
        steps = [env.step(a) for env, a in zip(envs, actions.astype(np.float32))]
        obs = np.stack([s[0] for s in steps])
        returns += GAMMA**t * np.array([s[1] for s in steps])
        assert all(s[2] for s in steps) == (t == SYSTEM["horizon"] - 1)
    return returns


def test_expected_return_matches_monte_carlo():
    exact = expected_return(**SYSTEM, gamma=GAMMA, **POLICY).item()
    returns = _monte_carlo_returns(4000, seed=0)
    se = returns.std(ddof=1) / np.sqrt(len(returns))
    assert abs(returns.mean() - exact) < N_SE * se, (returns.mean(), exact, se)
    # the test has power: dropping the exploration noise moves the closed form by many standard errors
    no_explore = expected_return(**SYSTEM, gamma=GAMMA, **{**POLICY, "log_std": None}).item()
    assert abs(no_explore - exact) > 3 * N_SE * se


def test_expected_return_deterministic_rollout():
    # no randomness anywhere: the closed form is the env's return exactly
    system = {**SYSTEM, "x0_std": 0.0, "noise_std": 0.0}
    env = LQREnv(**system, action_bound=1e6)
    obs, _ = env.reset(seed=0)
    weight = np.hstack([POLICY["W"], POLICY["w_t"][:, None]])
    total, done, t = 0.0, False, 0
    while not done:
        obs, r, done, _, _ = env.step((weight @ obs.astype(np.float64) + POLICY["b"]))
        total += GAMMA**t * r
        t += 1
    exact = expected_return(**system, gamma=GAMMA, W=weight, b=POLICY["b"])
    assert exact.dtype == th.float64 and exact.shape == ()
    assert exact.item() == pytest.approx(total, rel=1e-6)


def test_exact_policy_gradient_matches_finite_differences():
    grad = exact_policy_gradient(**SYSTEM, gamma=GAMMA, **POLICY)
    assert grad.value.item() == pytest.approx(expected_return(**SYSTEM, gamma=GAMMA, **POLICY).item())
    eps = 1e-6
    for name in ("W", "w_t", "b", "log_std"):
        fd = np.zeros_like(POLICY[name])
        for idx in np.ndindex(POLICY[name].shape):
            plus, minus = POLICY[name].copy(), POLICY[name].copy()
            plus[idx] += eps
            minus[idx] -= eps
            j_plus = expected_return(**SYSTEM, gamma=GAMMA, **{**POLICY, name: plus}).item()
            j_minus = expected_return(**SYSTEM, gamma=GAMMA, **{**POLICY, name: minus}).item()
            fd[idx] = (j_plus - j_minus) / (2 * eps)
        np.testing.assert_allclose(getattr(grad, name).numpy(), fd, rtol=1e-6, atol=1e-8, err_msg=name)
    # the SB3 layout [W | w_t] and the (m, n + 1) input form agree with the split form
    weight = np.hstack([POLICY["W"], POLICY["w_t"][:, None]])
    packed = exact_policy_gradient(**SYSTEM, gamma=GAMMA, W=weight, b=POLICY["b"], log_std=POLICY["log_std"])
    th.testing.assert_close(packed.weight, grad.weight)
    th.testing.assert_close(packed.value, grad.value)


def test_closed_form_reads_sb3_linear_policy():
    env = LQREnv(**SYSTEM, action_bound=1e3)
    model = PPO("MlpPolicy", env, policy_kwargs=dict(net_arch=dict(pi=[], vf=[8])), n_steps=8, batch_size=8, seed=0)
    params = linear_policy_params(model.policy)
    obs, _ = env.reset(seed=0)
    with th.no_grad():
        mean = model.policy.get_distribution(th.as_tensor(obs)[None]).distribution.mean[0].double()
    weight = params["W"].detach()
    th.testing.assert_close(mean, weight @ th.as_tensor(obs, dtype=th.float64) + params["b"].detach(), rtol=1e-5, atol=1e-5)
    # the closed form backpropagates into the SB3 parameters
    expected_return(**env.lqr_kwargs(), gamma=GAMMA, **params).backward()
    grad = exact_policy_gradient(**env.lqr_kwargs(), gamma=GAMMA, **{k: v.detach() for k, v in params.items()})
    th.testing.assert_close(model.policy.action_net.weight.grad.double(), grad.weight, rtol=1e-5, atol=1e-6)
    th.testing.assert_close(model.policy.log_std.grad.double(), grad.log_std, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="pi=\\[\\]"):
        linear_policy_params(PPO("MlpPolicy", env, n_steps=8, batch_size=8).policy)


def test_closed_form_argument_validation():
    with pytest.raises(ValueError, match="W must have shape"):
        expected_return(**SYSTEM, gamma=GAMMA, W=np.zeros((2, 2)))
    with pytest.raises(ValueError, match="already holds w_t"):
        expected_return(**SYSTEM, gamma=GAMMA, W=np.zeros((2, 4)), w_t=np.zeros(2))
    with pytest.raises(ValueError, match="log_std"):
        expected_return(**SYSTEM, gamma=GAMMA, W=np.zeros((2, 3)), log_std=np.zeros(3))
    with pytest.raises(ValueError, match="B must have shape"):
        expected_return(**{**SYSTEM, "B": np.zeros((2, 2))}, gamma=GAMMA, W=np.zeros((2, 3)))
