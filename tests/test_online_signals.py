"""The online agreement signals: known answers on synthetic moments and on the coupled bandit."""

import math

import numpy as np
import pytest
import torch as th
from stable_baselines3.common.env_util import make_vec_env

import hybrid_pg_envs  # noqa: F401
from hybrid_pg import HybridPG
from hybrid_pg.correlation import block_ids
from hybrid_pg.estimator import BatchMoments
from hybrid_pg.online_signals import SIGNAL_KEYS, advantage_agreement, moment_agreement
from hybrid_pg.rollout import collect_rollout, prepare_batch


def _moments(sign, noise, n=4000, dim=20, seed=0):
    rng = np.random.default_rng(seed)
    mu = rng.standard_normal(dim)
    path = sign * mu + noise * rng.standard_normal((n, dim))
    score = mu + noise * rng.standard_normal((n, dim))
    return BatchMoments.from_samples(th.as_tensor(path), th.as_tensor(score), blocks=block_ids(1, n, block_len=40))


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_debiased_cosine_sees_through_noise_that_hides_agreement(sign):
    for seed in range(3):
        out = moment_agreement(_moments(sign, noise=50.0, seed=seed))
        assert abs(out["path_score_cos"]) < 0.8  # the raw cosine is pulled towards 0 by the noise
        assert out["path_score_cos_debiased"] == pytest.approx(sign, abs=0.15)
        assert abs(out["path_score_cos_debiased"]) > abs(out["path_score_cos"])


def test_debiased_cosine_is_nan_when_the_noise_swamps_the_mean():
    # far more noise than signal: the debiased squared norms are not positive on most draws
    assert sum(math.isnan(moment_agreement(_moments(1.0, noise=2000.0, seed=s))["path_score_cos_debiased"]) for s in range(5)) >= 3
    assert math.isnan(moment_agreement(None)["path_score_cos"])


def _bandit_batch(source_name):
    env = make_vec_env("hybrid_pg/CoupledBandit-v0", n_envs=1, seed=0, env_kwargs=dict(m=1.0, c=1.0))
    model = HybridPG(
        "MlpPolicy", env, n_steps=512, batch_size=512, pathwise_source=source_name, policy_kwargs=dict(net_arch=[]), seed=0, device="cpu"
    )
    with th.no_grad():
        model.policy.action_net.bias.fill_(0.3)
    data, _, _ = collect_rollout(model, model.env, 512, th.Generator().manual_seed(0))
    return model, prepare_batch(model.policy, model.pathwise, data, True)


def test_an_exact_source_agrees_with_the_score_estimator_and_an_untrained_head_does_not():
    model, batch = _bandit_batch("model")
    exact = advantage_agreement(model.pathwise, batch)
    # one-step episodes: A_hat = r - V (a constant) and A_bar = r(a) - r(mu): the same up to a shift
    assert exact["sign_agreement"] > 0.7 and exact["advantage_corr"] > 0.9
    model, batch = _bandit_batch("critic")
    untrained = advantage_agreement(model.pathwise, batch)
    assert untrained["advantage_corr"] < exact["advantage_corr"] - 0.5


def test_every_signal_is_logged_each_update():
    env = make_vec_env("Pendulum-v1", n_envs=1, seed=0)
    model = HybridPG("MlpPolicy", env, n_steps=64, batch_size=64, n_epochs=1, lambda_warmup=0, seed=0, device="cpu")
    model.learn(128)
    values = model.logger.name_to_value
    for key in SIGNAL_KEYS:
        assert f"hybrid/{key}" in values
    assert 0.0 <= values["hybrid/sign_agreement"] <= 1.0
