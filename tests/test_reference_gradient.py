"""The Monte Carlo reference gradient against closed forms (LQR, the coupled bandit), its precision
statistics, and the unbiased geometric tail of its returns."""

import math

import gymnasium as gym
import numpy as np
import pytest
import torch as th

import hybrid_pg_envs  # noqa: F401
from hybrid_pg import HybridPG
from hybrid_pg.ground_truth.coupled_bandit import bandit_moments
from hybrid_pg.reference_gradient import (
    GROUPS,
    Normalisation,
    ReferenceGradient,
    corrected_cosine,
    monte_carlo_returns,
    reference_gradient,
    spearman_brown,
    tail_horizon,
)
from hybrid_pg_envs.lqr_exact import exact_policy_gradient

SYSTEM = dict(A=[[1.0, 0.2], [0.0, 1.0]], B=[[0.5], [1.0]], Q=[[1.0, 0.0], [0.0, 0.5]], R=[[0.1]], x0_mean=[1.0, -0.5], x0_std=0.5)


def _lqr_model(gamma):
    env = gym.make("hybrid_pg/LQR-v0", **SYSTEM, horizon=8, action_bound=1e3)
    model = HybridPG(
        "MlpPolicy",
        env,
        n_steps=16,
        batch_size=16,
        gamma=gamma,
        policy_kwargs=dict(net_arch=dict(pi=[], vf=[8]), log_std_init=-0.7),
        seed=3,
        device="cpu",
    )
    with th.no_grad():  # a policy away from the optimum, so the gradient is large against the noise
        model.policy.action_net.weight.copy_(th.tensor([[-0.2, 0.1, 0.3]]))
        model.policy.action_net.bias.copy_(th.tensor([0.4]))
    return model, env


def _exact_lqr_gradient(model, env, gamma) -> th.Tensor:
    """The closed-form gradient of the LQR's discounted return, flattened as the reference's groups."""
    policy = model.policy
    exact = exact_policy_gradient(
        **env.unwrapped.lqr_kwargs(),
        gamma=gamma,
        W=policy.action_net.weight.detach().double(),
        b=policy.action_net.bias.detach().double(),
        log_std=policy.log_std.detach().double(),
    )
    return th.cat([exact.weight.reshape(-1), exact.bias, exact.log_std])


def _z_scores(ref: ReferenceGradient, exact: th.Tensor) -> th.Tensor:
    return (ref.mean("all") - exact) / ref.se("all")


def test_lqr_reference_matches_the_closed_form_gradient():
    gamma = 0.9
    model, env = _lqr_model(gamma)
    exact_flat = _exact_lqr_gradient(model, env, gamma)
    ref = reference_gradient(model, env, n_episodes=300, n_actions=4, seed=0)
    z = _z_scores(ref, exact_flat)
    # 5 coordinates, each within 4 of its own standard error; and precise enough to mean something
    assert th.all(z.abs() < 4.0), (z, ref.mean("all"), exact_flat)
    assert ref.relative_se() < 0.1
    assert ref.split_half_cosine() > 0.95
    rel_err = float((ref.mean("all") - exact_flat).norm() / exact_flat.norm())
    assert rel_err < 4 * ref.relative_se()


def test_lqr_reference_state_subsampling_stays_unbiased():
    """Every 3rd state from a random offset, weighted by 3: the same gradient within its SE."""
    gamma = 0.9
    model, env = _lqr_model(gamma)
    exact_flat = _exact_lqr_gradient(model, env, gamma)
    ref = reference_gradient(model, env, n_episodes=400, n_actions=3, state_stride=3, seed=1, antithetic=False)
    assert th.all(_z_scores(ref, exact_flat).abs() < 4.0)


@pytest.mark.parametrize("mu, log_std", [(0.3, 0.0), (1.6, -0.5)])
def test_bandit_reference_matches_the_closed_form(mu, log_std):
    env = gym.make("hybrid_pg/CoupledBandit-v0", m=1.0, c=1.0)
    model = HybridPG(
        "MlpPolicy", env, n_steps=16, batch_size=16, policy_kwargs=dict(net_arch=[], log_std_init=log_std), seed=0, device="cpu"
    )
    with th.no_grad():
        model.policy.action_net.weight.zero_()
        model.policy.action_net.bias.fill_(mu)
    truth = bandit_moments(mu, log_std, m=1.0, c=1.0).grad  # d E r / d(mu, log_std)
    ref = reference_gradient(model, env, n_episodes=3000, n_actions=4, seed=2)
    # mean group: (d/dw, d/db) with mu = w * 1 + b, so both equal dE r/dmu
    exact = th.tensor([truth[0], truth[0], truth[1]], dtype=th.float64)
    z = _z_scores(ref, exact)
    assert th.all(z.abs() < 4.0), (z, ref.mean("all"), exact)
    assert ref.relative_se() < 0.15


def test_reference_refuses_too_few_units_and_bad_settings():
    model, env = _lqr_model(0.9)
    with pytest.raises(ValueError, match="n_episodes"):
        reference_gradient(model, env, n_episodes=1)
    with pytest.raises(ValueError, match="state_stride"):
        reference_gradient(model, env, n_episodes=4, state_stride=0)
    with pytest.raises(ValueError, match="n_actions >= 2"):
        reference_gradient(model, env, n_episodes=2, n_actions=1, antithetic=False)
    with pytest.raises(ValueError, match="even n_actions >= 4"):
        reference_gradient(model, env, n_episodes=2, n_actions=3)
    with pytest.raises(ValueError, match="gamma < 1"):
        tail_horizon(1.0, 0.05)
    with pytest.raises(ValueError, match="tail_weight"):
        tail_horizon(0.9, 1.5)


class _ConstantReward(gym.Env):
    """Reward 1 every step, never terminates: the discounted return from any state is 1 / (1 - gamma)."""

    observation_space = gym.spaces.Box(-1.0, 1.0, shape=(1,))
    action_space = gym.spaces.Box(-1.0, 1.0, shape=(1,))

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return np.zeros(1, dtype=np.float32), {}

    def step(self, action):
        return np.zeros(1, dtype=np.float32), 1.0, False, False, {}


def test_the_geometric_tail_makes_returns_unbiased_for_the_infinite_sum():
    gamma, tail_weight = 0.9, 0.3  # a short exact part: most of the return comes from the tail
    env = _ConstantReward()
    env.reset(seed=0)
    model = HybridPG("MlpPolicy", env, n_steps=16, batch_size=16, seed=0, device="cpu")
    n = 4000
    returns = monte_carlo_returns(
        model.policy, [env], np.zeros((1, n, 1)), Normalisation(), gamma, np.random.default_rng(0), tail_weight=tail_weight
    )
    # one state: all its n returns share one tail length (common random numbers), so draw states
    per_state = [
        monte_carlo_returns(model.policy, [env], np.zeros((1, 1, 1)), Normalisation(), gamma, np.random.default_rng(s), tail_weight)
        for s in range(n)
    ]
    values = np.array([r.values[0, 0] for r in per_state])
    truth = 1.0 / (1.0 - gamma)
    se = values.std(ddof=1) / math.sqrt(n)
    assert abs(values.mean() - truth) < 4 * se, (values.mean(), truth, se)
    # a truncated sum at H0 would be biased by gamma^H0 / (1 - gamma): far outside that SE
    h0 = tail_horizon(gamma, tail_weight)
    assert (1 - gamma**h0) / (1 - gamma) < truth - 10 * se
    assert np.all(returns.values == returns.values[0, 0])  # common random numbers within a state


def test_spearman_brown_and_the_cosine_correction():
    assert spearman_brown(0.5, 2.0) == pytest.approx(2 / 3)
    assert spearman_brown(1.0, 3.0) == pytest.approx(1.0)
    assert corrected_cosine(0.4, 0.64) == pytest.approx(0.5)
    assert corrected_cosine(0.9, 0.5) == 1.0  # a noisy reliability cannot push a cosine past 1
    assert math.isnan(corrected_cosine(0.4, 0.0))


def test_split_half_and_reliability_on_synthetic_units():
    """Units = truth + noise of known size: the split-half cosine and the reliability of the full
    mean match their expectations."""
    rng = np.random.default_rng(0)
    dim, units, noise = 400, 64, 4.0
    truth = rng.standard_normal(dim)
    rows = truth + noise * rng.standard_normal((units, dim))
    ref = ReferenceGradient(
        units={"mean": th.as_tensor(rows[:, :-1]), "log_std": th.as_tensor(rows[:, -1:])},
        n_states=units,
        n_actions=2,
        env_steps=0,
        seconds=0.0,
        gamma=0.9,
        weighting="visitation",
    )
    signal = float(np.sum(truth**2))
    half_noise = noise**2 * dim / (units / 2)
    assert ref.split_half_cosine() == pytest.approx(signal / (signal + half_noise), abs=0.05)
    full_noise = noise**2 * dim / units
    assert ref.reliability() == pytest.approx(signal / (signal + full_noise), abs=0.05)
    assert set(GROUPS) == set(ref.units)


def test_a_clone_of_a_mujoco_env_continues_exactly_where_the_original_is():
    """gymnasium's MuJoCo envs deep-copy as freshly built envs (EzPickle): clone_env carries the
    simulator's state over, so the clone's steps are the original's, and a clone of a clone too."""
    pytest.importorskip("mujoco")
    from hybrid_pg.reference_gradient import clone_env

    env = gym.make("Hopper-v5")
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    for _ in range(10):
        env.step(rng.uniform(-0.1, 0.1, 3))
    snapshot = clone_env(env)
    actions = rng.uniform(-0.1, 0.1, (15, 3))
    original = [env.step(a)[0] for a in actions]
    twice = clone_env(snapshot)
    np.testing.assert_array_equal(np.array([twice.step(a)[0] for a in actions]), np.array(original))


def test_a_clone_keeps_the_physics_a_nonstationary_wrapper_set():
    pytest.importorskip("mujoco")
    from hybrid_pg.reference_gradient import clone_env, hold_clock
    from hybrid_pg_envs import NonStationaryWrapper

    schedules = {"friction_scale": {"kind": "linear", "start": 1.0, "end": 0.4, "duration": 1000}}
    env = NonStationaryWrapper(gym.make("HalfCheetah-v5"), schedules=schedules)
    env.reset(seed=0)
    env.set_clock(800)
    hold_clock(env)
    friction = env.unwrapped.model.geom_friction.copy()
    copy_ = clone_env(env)
    np.testing.assert_array_equal(copy_.unwrapped.model.geom_friction, friction)
    assert not np.allclose(gym.make("HalfCheetah-v5").unwrapped.model.geom_friction, friction)  # it did move
    copy_.step(np.zeros(6))
    np.testing.assert_array_equal(copy_.unwrapped.model.geom_friction, friction)  # and stays held


def _lqr_visitation_setup():
    """An LQR behind a frozen VecNormalize (non-trivial observation and reward scaling), a linear
    policy whose time input has weight 0 (so the closed form's clock-free value applies), and a
    rollout's states snapshotted the way the gradient audit does."""
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.vec_env import VecNormalize

    from hybrid_pg.reference_gradient import clone_env
    from hybrid_pg.rollout import collect_rollout

    horizon = 6
    venv = VecNormalize(
        make_vec_env("hybrid_pg/LQR-v0", n_envs=1, seed=0, env_kwargs=dict(SYSTEM, horizon=horizon, action_bound=1e3)),
        training=False,
        gamma=0.9,
    )
    venv.obs_rms.mean[:] = [0.3, -0.2, 0.5]
    venv.obs_rms.var[:] = [2.0, 0.5, 0.1]
    # rewards scaled by 1/100: never near VecNormalize's clip at 10, which the closed form ignores
    venv.ret_rms.var = np.float64(1e4)
    model = HybridPG(
        "MlpPolicy", venv, n_steps=64, batch_size=64, gamma=0.9, policy_kwargs=dict(net_arch=dict(pi=[], vf=[8]), log_std_init=-0.7), seed=3
    )
    with th.no_grad():
        model.policy.action_net.weight.copy_(th.tensor([[-0.3, 0.2, 0.0]]))
        model.policy.action_net.bias.copy_(th.tensor([0.4]))
    snapshots, obs, times = [], [], []
    base = venv.venv.envs[0]

    def before_step(t, current):
        snapshots.append(clone_env(base, without_monitor=True))
        obs.append(np.asarray(current[0]))
        times.append(base.unwrapped.t)

    collect_rollout(model, venv, 200, th.Generator().manual_seed(0), before_step=before_step)
    return model, venv, snapshots, np.asarray(obs), np.asarray(times), horizon


def _exact_semi_gradient(model, venv, obs, times, horizon):
    """mean over states of grad_theta E_{a ~ pi_theta(s)} Q(s, a), Q with the policy's own value of
    the next state held fixed (the quantity the reference estimates), in closed form: Q is quadratic
    in a, so E_a Q = Q(mu) + 1/2 sum_j H_jj sigma_j^2."""
    from hybrid_pg.reference_gradient import flat_group_gradients, group_parameters
    from hybrid_pg_envs.lqr_exact import expected_return

    lqr = venv.venv.envs[0].unwrapped.lqr_kwargs()
    A, Bm, Qm, Rm = (th.as_tensor(lqr[k], dtype=th.float64) for k in ("A", "B", "Q", "R"))
    scale = 1.0 / math.sqrt(float(venv.ret_rms.var) + venv.epsilon)
    policy, gamma = model.policy, model.gamma
    # the linear policy on raw states: mu = W (x - m) / s + b, the time input's weight being 0
    weight = policy.action_net.weight.detach().double()[:, :2]
    m, s = (th.as_tensor(v[:2], dtype=th.float64) for v in (venv.obs_rms.mean, np.sqrt(venv.obs_rms.var + venv.epsilon)))
    w_eff = weight / s
    b_eff = policy.action_net.bias.detach().double() - w_eff @ m
    log_std = policy.log_std.detach().double()
    total = 0.0
    for o, t in zip(obs, times):
        x = th.as_tensor(o[:2], dtype=th.float64) * th.as_tensor(np.sqrt(venv.obs_rms.var[:2] + venv.epsilon)) + m

        def q(a, x=x, t=t):
            nxt = A @ x + Bm @ a
            reward = -(nxt @ Qm @ nxt + a @ Rm @ a)
            rest = horizon - t - 1
            value = 0.0
            if rest > 0:
                value = expected_return(
                    A=lqr["A"],
                    B=lqr["B"],
                    Q=lqr["Q"],
                    R=lqr["R"],
                    x0_mean=nxt,
                    x0_std=0.0,
                    noise_std=0.0,
                    horizon=rest,
                    gamma=gamma,
                    W=w_eff,
                    b=b_eff,
                    log_std=log_std,
                )
            return scale * (reward + gamma * value)

        obs_t = th.as_tensor(o[None], dtype=th.float32)
        mu = policy.actor_mean(obs_t)[0].double()
        hess = th.autograd.functional.hessian(q, mu.detach())
        sigma_sq = th.exp(2 * policy.log_std.double())
        total = total + q(mu) + 0.5 * (th.diagonal(hess) * sigma_sq).sum()
    grads = flat_group_gradients(total / len(obs), group_parameters(policy))
    return th.cat([grads[g] for g in GROUPS])


def test_visitation_reference_matches_the_closed_form_through_vecnormalize():
    """The gradient audit's path (snapshots of a rollout's states, Monte Carlo returns through the
    frozen VecNormalize's observation and reward scaling) agrees with the LQR's closed-form
    per-state gradient at the same states."""
    from hybrid_pg.reference_gradient import monte_carlo_returns, sample_actions, score_contributions, unit_gradients

    model, venv, snapshots, obs, times, horizon = _lqr_visitation_setup()
    exact = _exact_semi_gradient(model, venv, obs, times, horizon)
    obs_t = th.as_tensor(obs, dtype=th.float32)
    actions = sample_actions(model.policy, obs_t, 16, th.Generator().manual_seed(1), antithetic=True)
    returns = monte_carlo_returns(model.policy, snapshots, actions.numpy(), Normalisation(venv), model.gamma, np.random.default_rng(1))
    per_state = score_contributions(model.policy, obs_t, actions, returns.values, antithetic=True)
    units = np.arange(len(obs)) % 20
    rows = unit_gradients(model.policy, per_state, th.ones(len(obs)), units, {u: float((units == u).sum()) for u in range(20)})
    ref = ReferenceGradient(
        units=rows, n_states=len(obs), n_actions=16, env_steps=0, seconds=0.0, gamma=model.gamma, weighting="visitation"
    )
    z = (ref.mean("all") - exact) / ref.se("all")
    assert th.all(z.abs() < 4.0), (z, ref.mean("all"), exact)
    assert ref.relative_se() < 0.25  # precise enough for the z-scores to mean something
