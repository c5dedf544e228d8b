"""Unbiasedness of HybridPG's batch gradients against the LQR's exact policy gradient.

With a linear Gaussian policy (``net_arch=dict(pi=[])``) the expected return of the LQR has a
closed form (``hybrid_pg_envs.lqr_exact``), hence so does its gradient. One update with lr = 0 leaves
theta at theta_old, so ``.grad`` after ``learn`` is exactly minus the batch-mean surrogate gradient.
Each test checks two things:

1. exactness: that gradient equals the mean of per-sample gradients computed here independently
   (closed-form score gradients of a linear Gaussian; pathwise gradients by autograd through the
   model), so the algorithm computes what it claims;
2. unbiasedness: the mean of those per-sample gradients is within 4 standard errors of the exact
   gradient, coordinate by coordinate (SE from the per-episode sums, which are independent).
"""

import copy

import numpy as np
import pytest
import torch as th
from stable_baselines3.common.env_util import make_vec_env

import hybrid_pg_envs  # noqa: F401
from hybrid_pg import HybridPG
from hybrid_pg_envs.lqr_exact import exact_policy_gradient

N_ENVS = 8
BOUND = 100.0  # the closed form assumes no clipping; at this bound it never happens (checked)
# an action that matters (B large against the state's scale) so the gradient stands out of the noise
SYSTEM = dict(A=[[1.0, 0.2], [0.0, 1.0]], B=[[0.5], [1.0]], Q=[[1.0, 0.0], [0.0, 0.5]], R=[[0.1]], x0_mean=[1.0, -0.5], x0_std=0.5)


def _make(horizon, n_steps, **kwargs):
    env = make_vec_env("hybrid_pg/LQR-v0", n_envs=N_ENVS, seed=7, env_kwargs=dict(SYSTEM, horizon=horizon, action_bound=BOUND))
    kw = dict(
        n_steps=n_steps,
        batch_size=None,
        n_epochs=1,
        learning_rate=0.0,
        clip_range=None,
        normalize_advantage=False,
        gamma=1.0,
        gae_lambda=1.0,
        max_grad_norm=1e12,
        vf_coef=0.0,
        advantage_coef=0.0,
        ent_coef=0.0,
        pathwise_source="model",
        lambda_warmup=0,
        policy_kwargs=dict(net_arch=dict(pi=[], vf=[16]), log_std_init=-0.5),
        seed=11,
    )
    kw.update(kwargs)
    return HybridPG("MlpPolicy", env, **kw)


def _params(model):
    return [model.policy.action_net.weight, model.policy.action_net.bias, model.policy.log_std]


def _flat(tensors):
    return th.cat([t.reshape(-1) for t in tensors]).double()


def _exact(model):
    lqr = model.env.get_attr("unwrapped")[0].lqr_kwargs()
    w, b, log_std = (p.detach().double() for p in _params(model))
    g = exact_policy_gradient(**lqr, gamma=1.0, W=w, b=b, log_std=log_std)
    return _flat([g.weight, g.bias, g.log_std])


def _rollout(model):
    """The rollout as (n_envs, n_steps, dim): after train() SB3 has flattened its buffer env-major."""
    buf = model.rollout_buffer
    assert buf.generator_ready
    shape = (model.n_envs, model.n_steps, -1)
    obs = th.as_tensor(buf.observations, dtype=th.float64).reshape(shape)
    actions = th.as_tensor(buf.actions, dtype=th.float64).reshape(shape)
    adv = th.as_tensor(buf.advantages, dtype=th.float64).reshape(model.n_envs, model.n_steps)
    return obs, actions, adv


def _score_per_sample(model):
    """A * dlog pi / d(W, b, log_std) for a linear Gaussian, in closed form: (n_envs, n_steps, p)."""
    obs, actions, adv = _rollout(model)
    w, b, log_std = (p.detach().double() for p in _params(model))
    mean = obs @ w.T + b
    z = (actions - mean) * th.exp(-log_std)  # = eps
    d_mean = z * th.exp(-log_std)  # dlog pi / d mean
    d_w = d_mean[..., :, None] * obs[..., None, :]
    d_log_std = z**2 - 1.0
    grads = th.cat([d_w.flatten(-2), d_mean, d_log_std], dim=-1)
    return adv[..., None] * grads


def _pathwise_per_sample(model):
    """d r(s, mu + sigma eps) / d(W, b, log_std) through the LQR model (horizon-1 episodes)."""
    obs, actions, _ = _rollout(model)
    w, b, log_std = (p.detach().double() for p in _params(model))
    dyn = copy.deepcopy(model.pathwise.model).double()
    flat_obs = obs.reshape(-1, obs.shape[-1])
    eps = ((actions - (obs @ w.T + b)) * th.exp(-log_std)).reshape(-1, actions.shape[-1])
    a = (flat_obs @ w.T + b + th.exp(log_std) * eps).requires_grad_(True)
    _, reward = dyn.step(flat_obs, a)
    (dr_da,) = th.autograd.grad(reward.sum(), a)  # rows are independent: per-sample dr/da
    d_w = dr_da[:, :, None] * flat_obs[:, None, :]
    d_log_std = dr_da * th.exp(log_std) * eps
    grads = th.cat([d_w.flatten(-2), dr_da, d_log_std], dim=-1)
    return grads.reshape(*obs.shape[:2], -1)


def _episode_sums(per_sample, horizon):
    """Sum each episode's per-sample gradients: (n_episodes, p). Every env starts an episode at
    step 0 of the first rollout and episodes last exactly ``horizon`` steps, so they are aligned."""
    n_envs, n_steps, p = per_sample.shape
    return per_sample.reshape(n_envs, n_steps // horizon, horizon, p).sum(2).reshape(-1, p)


def _check(model, per_sample, horizon):
    obs, actions, _ = _rollout(model)
    assert actions.abs().max() < BOUND  # no clipping, as the closed form assumes
    n_samples = per_sample.shape[0] * per_sample.shape[1]
    # 1. exactness: the update's gradient is minus the mean per-sample gradient
    applied = -_flat([p.grad for p in _params(model)])
    batch_mean = per_sample.reshape(n_samples, -1).mean(0)
    assert th.allclose(applied, batch_mean, rtol=2e-3, atol=1e-5 * batch_mean.abs().max().item()), (applied, batch_mean)
    # 2. unbiasedness: E[sum over an episode] is the exact gradient
    episodes = _episode_sums(per_sample, horizon)
    estimate = episodes.mean(0)
    se = episodes.std(0) / np.sqrt(len(episodes))
    exact = _exact(model)
    # the time feature is constant in one-step episodes: its weight has no gradient at all
    dead = se == 0
    assert th.all(estimate[dead] == 0) and bool((exact[dead].abs() < 1e-12).all())
    z = (estimate[~dead] - exact[~dead]) / se[~dead]
    assert z.abs().max() < 4.0, f"z-scores {z.numpy().round(2)}, estimate {estimate.numpy()}, exact {exact.numpy()}"
    # and the test has power: the gradient stands out of its standard error, so an estimator
    # that was off by the size of the gradient (or returned zeros) would fail
    assert (exact[~dead].abs() / se[~dead]).max() > 3.0


@pytest.mark.parametrize("estimator, fixed_lambda", [("reinforce", None), ("pathwise", None), ("hybrid", 0.3)])
def test_one_step_batch_gradients_are_unbiased(estimator, fixed_lambda):
    model = _make(horizon=1, n_steps=512, estimator=estimator, fixed_lambda=fixed_lambda)
    model.learn(512 * N_ENVS)
    lam = {"reinforce": 0.0, "pathwise": 1.0, "hybrid": fixed_lambda}[estimator]
    per_sample = lam * _pathwise_per_sample(model) + (1.0 - lam) * _score_per_sample(model)
    _check(model, per_sample, horizon=1)


def test_adaptive_hybrid_gradient_is_unbiased_with_the_weight_from_the_previous_rollout():
    # the exact model's lam* is >= 1 here (the weight rule no longer adds bias noise for an exact
    # source), so the bounds keep the weight a genuine mix of both estimators
    model = _make(horizon=1, n_steps=512, estimator="hybrid", lambda_bounds=(0.0, 0.9))
    model.learn(2 * 512 * N_ENVS)
    lam = model.last_lambda["global"]
    assert 0.0 < lam < 1.0
    per_sample = lam * _pathwise_per_sample(model) + (1.0 - lam) * _score_per_sample(model)
    _check(model, per_sample, horizon=1)


def test_multi_step_score_gradient_with_gae_one_is_unbiased():
    # gamma = gae_lambda = 1 and episodes that terminate inside the rollout: A_t = G_t - V(s_t)
    horizon = 4
    model = _make(horizon=horizon, n_steps=128, estimator="reinforce")
    model.learn(128 * N_ENVS)
    _check(model, _score_per_sample(model), horizon=horizon)


def test_multi_step_model_return_pathwise_gradient_is_unbiased():
    # a model horizon that reaches the episode's end: Q~ is a reparameterised sample of Q^pi, and
    # the future actions respond to the state but carry no theta-gradient (no double counting).
    # The k-step surrogate draws its future eps inside train(), so the SE comes from repeated
    # rollouts at the same theta (lr = 0): the callback reads .grad after each update.
    from stable_baselines3.common.callbacks import BaseCallback

    class Grads(BaseCallback):
        def __init__(self):
            super().__init__()
            self.seen = []

        def _on_rollout_start(self):
            if self.model.policy.log_std.grad is not None:
                self.seen.append(-_flat([p.grad for p in _params(self.model)]))

        def _on_step(self):
            return True

    horizon, n_steps, rollouts = 3, 96, 12
    model = _make(horizon=horizon, n_steps=n_steps, estimator="pathwise", model_horizon=horizon)
    grads = Grads()
    model.learn(rollouts * n_steps * N_ENVS, callback=grads)
    est = th.stack(grads.seen + [-_flat([p.grad for p in _params(model)])])
    assert len(est) == rollouts
    # batch mean over samples = (1/T) * mean over episodes of the per-episode sum
    mean = est.mean(0) * horizon
    se = est.std(0) * horizon / np.sqrt(len(est))
    exact = _exact(model)
    z = (mean - exact) / se
    assert z.abs().max() < 4.5, f"z {z.numpy().round(2)} mean {mean.numpy()} exact {exact.numpy()}"
    assert (exact.abs() / se).max() > 3.0
