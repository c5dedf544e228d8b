"""Which pathwise sources the weight rule may treat as unbiased ("exact")."""

from __future__ import annotations

import gymnasium as gym
import pytest
from stable_baselines3.common.env_util import make_vec_env

import hybrid_pg_envs  # noqa: F401
from hybrid_pg import HybridPG


def _model_algo(env_id: str, gamma: float) -> HybridPG:
    env = make_vec_env(env_id, n_envs=1, seed=0)
    algo = HybridPG("MlpPolicy", env, n_steps=16, batch_size=16, n_epochs=1, gamma=gamma, pathwise_source="model", seed=0, device="cpu")
    return algo.learn(16)  # one update: the windows learn the source's kind in train()


def test_an_exact_model_without_bootstrap_is_an_exact_source():
    algo = _model_algo("hybrid_pg/CoupledBandit-v0", gamma=0.0)
    assert algo.pathwise.exact
    assert all(w.source == "exact" for w in algo.lambda_windows.values())


def test_a_one_step_episode_has_no_bootstrap_at_any_gamma():
    # the bandit's episodes end after one step: Q~ = r whatever gamma
    assert _model_algo("hybrid_pg/CoupledBandit-v0", gamma=0.9).pathwise.exact


def test_an_exact_model_with_a_value_bootstrap_is_a_learned_source():
    # Q~ = r + gamma V(s'): V is the learned value head, so dQ~/da carries its error
    algo = _model_algo("hybrid_pg/Pendulum-v0", gamma=0.9)
    assert not algo.pathwise.exact
    assert all(w.source == "learned" for w in algo.lambda_windows.values())
    assert _model_algo("hybrid_pg/Pendulum-v0", gamma=0.0).pathwise.exact


def test_a_model_that_declares_itself_inexact_stays_learned_at_gamma_zero():
    algo = _model_algo("hybrid_pg/Pendulum-v0", gamma=0.0)
    algo.pathwise.model.exact = False
    assert not algo.pathwise.exact
    assert gym.spec("hybrid_pg/Pendulum-v0") is not None


def test_the_bias_rule_is_a_setting_that_reaches_the_windows_and_load(tmp_path):
    algo = _model_algo("hybrid_pg/Pendulum-v0", gamma=0.9)
    assert algo.settings.bias_rule == "posterior" and {w.bias_rule for w in algo.lambda_windows.values()} == {"posterior"}
    algo.save(tmp_path / "m")
    loaded = HybridPG.load(tmp_path / "m", bias_rule="ucl", device="cpu")
    assert {w.bias_rule for w in loaded.lambda_windows.values()} == {"ucl"}
    with pytest.raises(ValueError, match="bias_rule"):
        HybridPG("MlpPolicy", "Pendulum-v1", bias_rule="median")
