"""The replay-window critic source: targets, convergence of its action-gradient on LQR, training, persistence."""

import copy
from types import SimpleNamespace

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from stable_baselines3.common.callbacks import CallbackList
from stable_baselines3.common.env_util import make_vec_env

import hybrid_pg_envs  # noqa: F401  (registers hybrid_pg/LQR-v0)
from hybrid_pg import HybridPG
from hybrid_pg.sources import SOURCE_NAMES, ReplayCriticSource
from hybrid_pg_envs.lqr_exact import expected_return

# A scalar LQR whose action matters for the return (the default system's dQ/da is tiny next to
# the state's effect on Q, so any learned Q's action-gradient is mostly noise there). A large
# action bound: no clipping, the closed form holds.
LQR = dict(A=[[0.9]], B=[[1.0]], Q=[[1.0]], R=[[0.1]], action_bound=1e3)
T, GAMMA, N_STEPS = 5, 0.9, 200


def _fake_buffer(rewards, starts, obs):
    return SimpleNamespace(
        observations=np.asarray(obs, dtype=np.float32),
        actions=np.zeros((len(rewards), 1, 1), dtype=np.float32),
        rewards=np.asarray(rewards, dtype=np.float32).reshape(-1, 1),
        episode_starts=np.asarray(starts, dtype=np.float32).reshape(-1, 1),
    )


def test_targets_are_td_lambda_returns_with_episode_ends():
    model = HybridPG("MlpPolicy", "Pendulum-v1", n_steps=64, pathwise_source="critic", seed=0)
    rng = np.random.default_rng(0)
    obs = rng.normal(size=(5, 1, 3))
    last_obs = rng.normal(size=(1, 3))
    rewards, starts = [1.0, 2.0, 3.0, 4.0, 5.0], [1, 0, 0, 1, 0]  # an episode ends after step 2
    with th.no_grad():
        v = model.policy.predict_values(th.as_tensor(np.concatenate([obs[:, 0], last_obs]), dtype=th.float32)).flatten().numpy()
    for lam in (0.0, 0.5, 1.0):
        source = ReplayCriticSource(model.policy, 0.9, td_lambda=lam, seed=0)
        source.add_rollout(_fake_buffer(rewards, starts, obs), last_obs, np.array([False]))
        (got,) = source.targets()
        g = np.zeros(5)
        g[4] = 5.0 + 0.9 * v[5]  # the rollout's end: the value of the observation after it
        g[3] = 4.0 + 0.9 * ((1 - lam) * v[4] + lam * g[4])
        g[2] = 3.0  # step 3 starts a new episode: nothing after step 2 counts
        g[1] = 2.0 + 0.9 * ((1 - lam) * v[2] + lam * g[2])
        g[0] = 1.0 + 0.9 * ((1 - lam) * v[1] + lam * g[1])
        np.testing.assert_allclose(got[:, 0], g, rtol=1e-5, atol=1e-5)


def _collect(model, n_rollouts):
    callback = CallbackList([])
    callback.init_callback(model)
    rollouts = []
    for _ in range(n_rollouts):
        model.collect_rollouts(model.env, callback, model.rollout_buffer, N_STEPS)
        rollouts.append((copy.deepcopy(model.rollout_buffer), model._last_obs.copy(), model._last_episode_starts.copy()))
    return rollouts


def _true_action_gradient(env, policy, obs, actions):
    """dQ^pi/da of the linear Gaussian policy: Q_t(x, u) = r(x, u) + gamma V_{t+1}(A x + B u), with
    V_{t+1} the closed-form return of the rest of the episode from a known state (the policy's time
    feature rescaled to the shorter horizon). V is quadratic, so a central difference is exact."""
    kw = env.lqr_kwargs()
    n = kw["A"].shape[0]
    weight, bias = policy.action_net.weight.detach().double(), policy.action_net.bias.detach().double()
    w_x, w_t, log_std = weight[:, :n], weight[:, n], policy.log_std.detach().double()
    A, B, Q, R = (np.asarray(kw[k]) for k in "ABQR")
    grads = []
    for o, u in zip(obs.astype(np.float64), actions.astype(np.float64)):
        x, t = o[:n], int(round(o[n] * T))
        x_next = A @ x + B @ u
        grad = -2.0 * B.T @ Q @ x_next - 2.0 * R @ u
        rest = T - t - 1
        if rest > 0:

            def value(x0, rest=rest, t=t):
                return float(
                    expected_return(
                        A=A,
                        B=B,
                        Q=Q,
                        R=R,
                        x0_mean=x0,
                        x0_std=0.0,
                        noise_std=0.0,
                        horizon=rest,
                        gamma=GAMMA,
                        W=w_x,
                        w_t=w_t * rest / T,
                        b=bias + w_t * (t + 1) / T,
                        log_std=log_std,
                    )
                )

            h = 1e-3
            grad_v = np.array([(value(x_next + h * e) - value(x_next - h * e)) / (2 * h) for e in np.eye(n)])
            grad = grad + GAMMA * B.T @ grad_v
        grads.append(grad)
    return np.array(grads)


def test_action_gradient_converges_to_the_closed_form_on_lqr():
    """Same number of Adam steps, 1 vs 8 rollouts of data: the fitted Q's action-gradient approaches
    the true dQ/da of the (fixed, learning_rate=0) linear policy. td_lambda=1: Monte-Carlo targets
    (every episode ends inside the rollout), so the untrained value head plays no part.

    Measured (seed 0): relative error 0.72 with 1 rollout, 0.33 with 8, (0.17 with 32 rollouts and
    40 epochs); the bounds leave margin on both."""
    env = gym.make("hybrid_pg/LQR-v0", horizon=T, **LQR)
    model = HybridPG(
        "MlpPolicy",
        env,
        n_steps=N_STEPS,
        batch_size=100,
        gamma=GAMMA,
        learning_rate=0.0,
        pathwise_source="critic",
        policy_kwargs=dict(net_arch=dict(pi=[], vf=[16])),
        seed=0,
    )
    model._setup_learn(10**6, callback=None)
    rollouts = _collect(model, 9)
    held_out = rollouts[-1][0]
    obs, actions = held_out.observations.reshape(N_STEPS, -1), held_out.actions.reshape(N_STEPS, -1)
    truth = _true_action_gradient(env.unwrapped, model.policy, obs, actions)

    def relative_error(window, epochs):
        source = ReplayCriticSource(model.policy, GAMMA, window=window, td_lambda=1.0, batch_size=100, seed=0)
        for buffer, last_obs, last_starts in rollouts[:window]:
            source.add_rollout(buffer, last_obs, last_starts)
        source.fit(epochs=epochs)
        a = th.as_tensor(actions).requires_grad_(True)
        (grad,) = th.autograd.grad(source.q(th.as_tensor(obs), a).sum(), a)
        return float(np.sqrt(((grad.numpy() - truth) ** 2).sum() / (truth**2).sum()))

    small, large = relative_error(1, 200), relative_error(8, 25)  # 400 Adam steps each
    assert large < 0.6 * small, (small, large)
    assert large < 0.45, (small, large)


@pytest.mark.parametrize("estimator", ["pathwise", "hybrid"])
def test_hybrid_pg_trains_with_the_replay_critic(estimator):
    assert "replay_critic" in SOURCE_NAMES
    model = HybridPG(
        "MlpPolicy",
        "Pendulum-v1",
        n_steps=128,
        batch_size=64,
        n_epochs=2,
        estimator=estimator,
        lambda_warmup=1,
        lambda_window=3,
        pathwise_source="replay_critic",
        seed=0,
    )
    assert isinstance(model.pathwise, ReplayCriticSource)
    model.learn(5 * 128)
    source = model.pathwise
    assert len(source.replay) == 3  # the window of the weight
    assert np.isfinite(source.last_fit["loss"]) and source.last_fit["samples"] == 3 * 128
    assert model.replay_critic_state is not None
    if estimator == "pathwise":
        assert model.last_lambda["global"] == 1.0


def test_replay_critic_survives_save_and_load(tmp_path):
    model = HybridPG("MlpPolicy", "Pendulum-v1", n_steps=64, batch_size=64, n_epochs=1, pathwise_source="replay_critic", seed=0)
    model.learn(3 * 64)
    model.save(tmp_path / "model")
    loaded = HybridPG.load(tmp_path / "model", env=make_vec_env("Pendulum-v1", n_envs=1))
    source, restored = model.pathwise, loaded.pathwise
    assert isinstance(restored, ReplayCriticSource) and len(restored.replay) == len(source.replay) == 3
    for key, value in source.q.state_dict().items():
        assert th.equal(value, restored.q.state_dict()[key]), key
    obs, actions = th.randn(16, 3), th.rand(16, 1) * 4 - 2
    with th.no_grad():
        assert th.equal(source.q(obs, actions), restored.q(obs, actions))
    np.testing.assert_array_equal(source.replay[-1]["rewards"], restored.replay[-1]["rewards"])
    loaded.learn(64, reset_num_timesteps=False)  # and it keeps training
    assert len(loaded.pathwise.replay) == 4
