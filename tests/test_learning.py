"""Learning tests: one short end-to-end run in the default suite, longer ones marked slow."""

import numpy as np
import pytest
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.evaluation import evaluate_policy

import hybrid_pg_envs  # noqa: F401
from hybrid_pg import HybridPG
from hybrid_pg_envs.lqr_exact import expected_return, linear_policy_params


def _lqr_return(model, lqr):
    """Exact expected return of the current deterministic linear policy (closed form, no noise)."""
    p = {k: v.detach() for k, v in linear_policy_params(model.policy).items()}
    return expected_return(**lqr, gamma=1.0, W=p["W"], b=p["b"], log_std=None).item()


def test_short_hybrid_training_improves_the_exact_lqr_return():
    env = make_vec_env("hybrid_pg/LQR-v0", n_envs=4, seed=0, env_kwargs=dict(horizon=10))
    model = HybridPG(
        "MlpPolicy",
        env,
        estimator="hybrid",
        n_steps=50,
        batch_size=100,
        n_epochs=5,
        learning_rate=1e-2,
        gamma=1.0,
        gae_lambda=0.95,
        policy_kwargs=dict(net_arch=dict(pi=[], vf=[32, 32])),
        seed=0,
    )
    assert model.pathwise.name == "model"  # "auto" found the LQR's differentiable model
    lqr = env.get_attr("unwrapped")[0].lqr_kwargs()
    before = _lqr_return(model, lqr)
    model.learn(200 * 25)
    after = _lqr_return(model, lqr)
    # measured: -13.36 -> -9.72 (27% less cost; 0.2, which trusted the model as exact: -8.76); a broken
    # update direction makes it worse
    assert after > before + 0.2 * abs(before), (before, after)
    assert 0.0 < model.last_lambda["global"] <= 1.0


@pytest.mark.slow
@pytest.mark.parametrize("source, env_id", [("critic", "Pendulum-v1"), ("model", "hybrid_pg/Pendulum-v0")])
def test_hybrid_learns_pendulum(source, env_id):
    env = make_vec_env(env_id, n_envs=4, seed=0)
    model = HybridPG(
        "MlpPolicy",
        env,
        pathwise_source=source,
        n_steps=1024,
        gamma=0.9,
        gae_lambda=0.95,
        n_epochs=10,
        learning_rate=1e-3,
        clip_range=0.2,
        seed=0,
    )
    model.learn(100_000)
    returns, _ = evaluate_policy(model, make_vec_env(env_id, n_envs=1, seed=100), n_eval_episodes=10)
    assert np.mean(returns) > -400.0
