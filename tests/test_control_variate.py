"""The control variate (hybrid_pg.sources.control_variate): with it, the pathwise estimator of a wrong
critic has the true gradient's expectation (closed form on the coupled bandit, within its own
standard error), where the plain pathwise estimator of the same critic is off by many."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch as th
from stable_baselines3.common.env_util import make_vec_env

import hybrid_pg_envs  # noqa: F401
from hybrid_pg import HybridPG
from hybrid_pg.ground_truth.coupled_bandit import bandit_moments
from hybrid_pg.rollout import collect_rollout, prepare_batch, rollout_blocks, rollout_group_moments, whole_rollout
from hybrid_pg.settings import SettingsError
from hybrid_pg.sources import AdvantageHeadSource, ControlVariateSource
from hybrid_pg.sources.control_variate import RESIDUAL_KEY

th.set_num_threads(1)

M, C = 0.0, 1.0  # the bandit's target and clipping radius (its defaults)
N_ENVS, N_STEPS = 16, 1250  # 20000 independent one-step episodes


def _bandit_model(control_variate: bool, source: str = "critic") -> HybridPG:
    env = make_vec_env("hybrid_pg/CoupledBandit-v0", n_envs=N_ENVS, seed=0)
    return HybridPG(
        "MlpPolicy",
        env,
        n_steps=8,
        batch_size=None,
        n_epochs=1,
        gamma=0.0,
        normalize_advantage=False,
        pathwise_source=source,
        control_variate=control_variate,
        policy_kwargs=dict(net_arch=[8]),
        seed=0,
        device="cpu",
    )


def _wrong_critic(model: HybridPG) -> None:
    """An advantage head whose action-gradient has nothing to do with the bandit's reward."""
    gen = th.Generator().manual_seed(3)
    with th.no_grad():
        for p in model.policy.advantage_head.parameters():
            p.copy_(th.randn(p.shape, generator=gen) * 2.0)


def _estimates(model: HybridPG, source):
    """(pathwise, score) mean gradients along (mu, log_std), and their standard errors, from the
    per-sample moments of one large batch of independent one-step episodes."""
    data, _, _ = collect_rollout(model, model.env, N_STEPS, th.Generator().manual_seed(11))
    batch = prepare_batch(model.policy, source, data, normalize_advantage=False)
    moments = rollout_group_moments(model.policy, model.actor_head, source, batch)
    # constant observation: every mean-group gradient is a scalar times d mu / d theta
    obs = th.ones(1, 1)
    mu = model.policy.actor_mean(obs)[0, 0]
    jac = th.cat([g.reshape(-1) for g in th.autograd.grad(mu, list(model.actor_head.parameters()))]).double()
    out = {}
    n = moments["mean"].n
    for kind in ("path", "score"):
        mean_part = getattr(moments["mean"], f"mean_{kind}").double()
        ss_mean = getattr(moments["mean"], f"ss_{kind}")
        log_std_part = float(getattr(moments["log_std"], f"mean_{kind}")[0])
        ss_std = getattr(moments["log_std"], f"ss_{kind}")
        g_mu = float(mean_part @ jac) / float(jac @ jac)
        se_mu = math.sqrt(ss_mean / ((n - 1) * n)) / float(jac.norm())
        se_std = math.sqrt(ss_std / ((n - 1) * n))
        out[kind] = (np.array([g_mu, log_std_part]), np.array([se_mu, se_std]))
    truth = np.array(bandit_moments(float(mu.detach()), float(model.policy.log_std[0].detach()), m=M, c=C).grad)
    return out, truth


def test_with_the_control_variate_a_wrong_critic_still_gives_the_true_gradient():
    model = _bandit_model(control_variate=True)
    _wrong_critic(model)
    assert isinstance(model.pathwise, ControlVariateSource) and model.pathwise.exact
    est, truth = _estimates(model, model.pathwise)
    for kind in ("path", "score"):
        g, se = est[kind]
        assert np.all(np.abs(g - truth) < 4.0 * se), (kind, g, truth, se)
    # the plain pathwise estimator of the same critic on the same kind of batch: far off
    plain = AdvantageHeadSource(model.policy)
    est_plain, _ = _estimates(model, plain)
    g, se = est_plain["path"]
    assert np.max(np.abs(g - truth) / se) > 20.0, (g, truth, se)


def test_with_an_exact_model_the_control_variate_stays_unbiased():
    """Q~ = r on the bandit (the model source at gamma 0): the residual A_hat - A~ = r(mu) - V(s) no
    longer depends on the action; the estimator is still the true gradient's."""
    model = _bandit_model(control_variate=True, source="model")
    est, truth = _estimates(model, model.pathwise)
    g, se = est["path"]
    assert np.all(np.abs(g - truth) < 4.0 * se), (g, truth, se)


def test_the_residual_is_the_advantage_minus_the_sources_own_advantage():
    model = _bandit_model(control_variate=True)
    data, _, _ = collect_rollout(model, model.env, 4, th.Generator().manual_seed(0))
    batch = prepare_batch(model.policy, model.pathwise, data, normalize_advantage=True)
    inner = model.pathwise.inner
    with th.no_grad():
        q_taken = inner.value(batch.mean_old, batch.log_std_old, batch.eps, batch.context)
        q_mean = inner.value(batch.mean_old, batch.log_std_old, th.zeros_like(batch.eps), batch.context)
    expected = (batch.adv - batch.path_scale * (q_taken - q_mean)) / batch.path_scale
    assert th.allclose(batch.context[RESIDUAL_KEY], expected)


@pytest.mark.parametrize("source", ["critic", "replay_critic"])
def test_the_fast_and_the_general_per_sample_paths_agree_and_training_runs(source):
    env = make_vec_env("Pendulum-v1", n_envs=2, seed=0)
    model = HybridPG(
        "MlpPolicy",
        env,
        n_steps=32,
        batch_size=32,
        n_epochs=2,
        lambda_warmup=0,
        pathwise_source=source,
        control_variate=True,
        policy_kwargs=dict(net_arch=[8]),
        seed=0,
        device="cpu",
    )
    model.learn(32 * 2 * 3)
    assert all(w.source == "exact" for w in model.lambda_windows.values())
    assert np.isfinite(model.last_lambda["global"])
    buf = model.rollout_buffer
    batch = prepare_batch(model.policy, model.pathwise, whole_rollout(buf), True)
    labels = rollout_blocks(buf)
    args = (model.policy, model.actor_head, model.pathwise, batch)
    fast = rollout_group_moments(*args, method="outer", blocks=labels)
    slow = rollout_group_moments(*args, method="vmap", blocks=labels, chunk_size=7)
    for group in ("mean", "log_std"):
        assert th.allclose(fast[group].mean_path.double(), slow[group].mean_path.double(), rtol=1e-4, atol=1e-7)
        assert fast[group].ss_path == pytest.approx(slow[group].ss_path, rel=1e-4)
        assert fast[group].ss_cross == pytest.approx(slow[group].ss_cross, rel=1e-4, abs=1e-9)


def test_save_load_keeps_the_control_variate(tmp_path):
    model = _bandit_model(control_variate=True)
    model.learn(N_ENVS * 8 * 2)
    model.save(tmp_path / "m")
    loaded = HybridPG.load(tmp_path / "m", env=make_vec_env("hybrid_pg/CoupledBandit-v0", n_envs=2, seed=1), device="cpu")
    assert loaded.settings.control_variate and isinstance(loaded.pathwise, ControlVariateSource)


def test_sources_the_identity_does_not_hold_for_and_settings_it_cannot_serve_are_refused():
    class Linearised(AdvantageHeadSource):
        @property
        def action_function(self) -> bool:
            return False

    model = _bandit_model(control_variate=False)
    with pytest.raises(ValueError, match="one function of the action"):
        ControlVariateSource(Linearised(model.policy))
    with pytest.raises(ValueError, match="already carries"):
        ControlVariateSource(ControlVariateSource(AdvantageHeadSource(model.policy)))
    with pytest.raises(SettingsError, match="control_variate=True: has no effect with estimator='reinforce'"):
        HybridPG("MlpPolicy", "Pendulum-v1", estimator="reinforce", control_variate=True)
    with pytest.raises(SettingsError, match="control_variate"):
        HybridPG("MlpPolicy", "Pendulum-v1", control_variate="yes")


def test_the_variance_measurement_of_the_example_reads_sane_ratios():
    """examples/control_variate_variance.py: the mix at lam* in [0, 1] is never noisier than the
    score estimator alone (lam = 0 is one of the candidates), and a wrong critic's control variate
    removes almost nothing (its A~ is unrelated to the advantages)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "examples" / "control_variate_variance.py"
    spec = importlib.util.spec_from_file_location("control_variate_variance", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    model = _bandit_model(control_variate=False)
    _wrong_critic(model)
    values = example.measure(model, rollouts=2, seed=0)
    assert values["var_cv_mix_over_score"] <= 1.0 + 1e-9 and 0.0 <= values["lam_star_cv"] <= 1.0
    assert values["var_cv_over_score"] > values["var_path_over_score"] > 0
    model = _bandit_model(control_variate=False, source="model")  # Q~ = r: the action part all removed
    exact = example.measure(model, rollouts=2, seed=0)
    assert exact["var_cv_mix_over_score"] < 0.9 * values["var_cv_mix_over_score"], (exact, values)


@pytest.mark.parametrize(
    "settings",
    [dict(estimator="pathwise"), dict(lambda_groups="per_group"), dict(log_std_estimator="score"), dict(oracle_freq=1, oracle_samples=256)],
)
def test_the_control_variate_trains_with_the_other_settings(settings):
    """lam = 1 (g_P' alone: Q-Prop's estimator with eta = 1), per-group weights, log_std on the score
    gradient, and the oracle (whose fresh batches carry the residual too)."""
    env = make_vec_env("Pendulum-v1", n_envs=2, seed=0)
    kwargs = dict(n_steps=32, batch_size=32, n_epochs=2, lambda_warmup=0, control_variate=True, policy_kwargs=dict(net_arch=[8]))
    model = HybridPG("MlpPolicy", env, seed=0, device="cpu", **kwargs, **settings)
    model.learn(32 * 2 * 3)
    assert all(np.isfinite(v) for v in model.last_lambda.values())
    assert all(bool(th.isfinite(p.detach()).all()) for p in model.policy.parameters())
