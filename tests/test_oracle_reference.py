"""The oracle as a reference: variance- and MSE-optimal lam* with standard errors (issue 11 item 4)."""

import math

import numpy as np
import pytest
import torch as th
from stable_baselines3.common.env_util import make_vec_env

from hybrid_pg import HybridPG
from hybrid_pg.ground_truth.coupled_bandit import bandit_moments
from hybrid_pg.oracle import OracleLambda, oracle_parts
from hybrid_pg.update_log import oracle_log

th.set_num_threads(1)


def _bandit_model(**kwargs):
    env = make_vec_env("hybrid_pg/CoupledBandit-v0", n_envs=4, seed=0, env_kwargs=dict(m=0.3, c=1.0))
    return HybridPG(
        "MlpPolicy",
        env,
        n_steps=64,
        gamma=0.0,
        gae_lambda=1.0,
        pathwise_source="model",
        lambda_bounds=None,
        seed=0,
        policy_kwargs=dict(log_std_init=-0.5),
        **kwargs,
    )


def _closed_form(model):
    mean = model.policy.actor_mean(th.ones(1, 1))[0, 0]
    w = float(sum((g**2).sum() for g in th.autograd.grad(mean, list(model.actor_head.parameters()))))
    return bandit_moments(float(mean.detach()), float(model.policy.log_std[0].detach()), 0.3, 1.0, baseline="mean", metric=[w, 1.0])


def test_oracle_parts_are_runs_of_whole_blocks():
    parts, blocks = oracle_parts(4, 2048)
    assert len(np.unique(parts)) == 16
    for b in np.unique(blocks):  # no block is cut by a part boundary
        assert len(np.unique(parts[blocks == b])) == 1


def test_oracle_variance_optimal_lambda_matches_the_closed_form_within_its_se():
    model = _bandit_model(bias_correction=False)
    exact = _closed_form(model)
    oracle = OracleLambda(model, None, 4096)
    z = []
    for k in range(3):
        model._n_rollouts_trained = k
        est = oracle.estimate()
        lv = est.lambdas
        assert lv.n_parts == 16 and 0 < lv.lam_var_se < 0.05
        assert est.kind == "var" and est.lam == lv.lam_var  # exact model: the reference is variance-optimal
        z.append((lv.lam_var - exact.lam_star) / lv.lam_var_se)
    assert max(abs(v) for v in z) < 4.0, z


def test_oracle_log_reports_both_references_and_the_applied_errors():
    model = _bandit_model(bias_correction=False)
    est = OracleLambda(model, None, 2048).estimate()
    log = oracle_log(est, applied=0.4, window=0.3, batch=None)
    lv = est.lambdas
    assert log["oracle_lambda"] == lv.lam_var and log["oracle_lambda_is_mse"] == 0.0
    assert log["oracle_error_applied_var"] == pytest.approx(abs(0.4 - lv.lam_var))
    assert log["oracle_error_applied_mse"] == pytest.approx(abs(0.4 - lv.lam_mse))
    for key in ("oracle_lambda_var_se", "oracle_lambda_mse_se"):
        assert math.isfinite(log[key]) and log[key] > 0
    # an exact source has no bias: the MSE weight estimates the same lam* up to noise
    assert abs(lv.lam_mse - lv.lam_var) < 4 * max(lv.lam_mse_se, lv.lam_var_se)


@pytest.mark.parametrize("bias_correction, kind", [(True, "mse"), (False, "var")])
def test_a_learned_source_is_scored_against_the_mse_weight(bias_correction, kind):
    model = HybridPG("MlpPolicy", "Pendulum-v1", n_steps=64, pathwise_source="critic", bias_correction=bias_correction, seed=0)
    est = OracleLambda(model, None, 512).estimate()
    assert est.kind == kind
    assert est.lam == (est.lambdas.lam_mse if kind == "mse" else est.lambdas.lam_var)
