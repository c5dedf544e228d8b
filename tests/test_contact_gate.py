"""The contact gate (hybrid_pg.sources.contact_gate): which steps change the contacts, and what a gated
sample's estimator is.

Ground truth: the env's own contact count (``data.ncon`` after each step of a Hopper trajectory) for
the simulator's flags; for the estimator, by construction: a gated sample's per-sample gradient is the
score estimator's, so with every sample gated the pathwise and score moments coincide, and with none
gated the source is MuJoCo's derivatives unchanged.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch as th

pytest.importorskip("mujoco")

import gymnasium as gym  # noqa: E402

from hybrid_pg import HybridPG  # noqa: E402
from hybrid_pg.rollout import prepare_batch, whole_rollout  # noqa: E402
from hybrid_pg.settings import SettingsError  # noqa: E402
from hybrid_pg.sources.contact_gate import GATE_KEY, ContactGatedSource  # noqa: E402
from hybrid_pg.surrogates import gaussian_log_prob  # noqa: E402
from hybrid_pg_envs.mujoco_model import MujocoStepModel  # noqa: E402

SMALL = dict(n_steps=64, batch_size=64, n_epochs=1, lambda_warmup=0, seed=0, device="cpu")


def _trajectory(steps: int = 300, seed: int = 0):
    env = gym.make("Hopper-v5")
    obs, _ = env.reset(seed=seed)
    rng = np.random.default_rng(seed)
    observations, actions, ncon = [], [], [env.unwrapped.data.ncon]
    for _ in range(steps):
        action = rng.uniform(-1.0, 1.0, 3)
        observations.append(obs)
        actions.append(action)
        obs, _, terminated, truncated, _ = env.step(action)
        ncon.append(env.unwrapped.data.ncon)
        if terminated or truncated:
            break
    return env, np.array(observations), np.array(actions), np.array(ncon)


def test_the_simulator_flags_the_steps_where_the_env_made_or_broke_a_contact():
    env, observations, actions, ncon = _trajectory()
    model = MujocoStepModel.from_env(env)
    out = model.simulate(observations, actions, contacts=True)
    # the contact count the model finds at each next state is the env's own after that step
    assert np.array_equal(model.contact_counts(out["qpos"], out["qvel"]), ncon[1:])
    truth = ncon[1:] != ncon[:-1]
    assert truth.any() and not truth.all()  # the trajectory holds both kinds of steps
    assert np.array_equal(out["contact_change"], truth)
    lin = model.linearize(th.as_tensor(observations), th.as_tensor(actions), contacts=True)
    assert th.equal(lin["lin_contact_change"], th.as_tensor(truth, dtype=lin["lin_contact_change"].dtype))
    assert "lin_contact_change" not in model.linearize(th.as_tensor(observations), th.as_tensor(actions))


def _gated_batch(model: HybridPG):
    model.learn(SMALL["n_steps"])  # fills the buffer with one rollout (and trains once on it)
    source = model._source()
    assert isinstance(source, ContactGatedSource)
    batch = prepare_batch(model.policy, source, whole_rollout(model.rollout_buffer), model.settings.normalize_advantage)
    return source, batch


@pytest.fixture(scope="module")
def gated():
    model = HybridPG("MlpPolicy", "Hopper-v5", pathwise_source="mujoco", contact_gate=True, **SMALL)
    source, batch = _gated_batch(model)
    return model, source, batch


def test_a_rollout_is_gated_on_its_contact_changing_steps_only(gated):
    _, source, batch = gated
    gate = batch.context[GATE_KEY]
    assert set(gate.unique().tolist()) <= {0.0, 1.0}
    assert source.gated_fraction == pytest.approx(float(gate.mean()))
    assert 0.0 < source.gated_fraction < 1.0  # a Hopper rollout lands and lifts its foot


def _moments(model, source, batch, gate_value):
    context = dict(batch.context)
    context[GATE_KEY] = th.full_like(context[GATE_KEY], gate_value)
    return model._rollout_moments(source, dataclasses.replace(batch, context=context))["global"]


def test_every_sample_gated_is_the_score_estimator_and_none_gated_is_the_derivatives(gated):
    model, source, batch = gated
    all_gated = _moments(model, source, batch, 1.0)
    # g_P' = g_M sample by sample: the two estimators' moments are one
    assert th.allclose(all_gated.mean_path, all_gated.mean_score, rtol=1e-4, atol=1e-8)
    assert all_gated.ss_path == pytest.approx(all_gated.ss_score, rel=1e-4)
    assert all_gated.ss_cross == pytest.approx(all_gated.ss_score, rel=1e-4)
    none_gated = _moments(model, source, batch, 0.0)
    plain = model._rollout_moments(source.inner, batch)["global"]
    assert th.allclose(none_gated.mean_path, plain.mean_path, rtol=1e-5, atol=1e-9)
    assert none_gated.ss_path == pytest.approx(plain.ss_path, rel=1e-5)
    assert none_gated.ss_cross == pytest.approx(plain.ss_cross, rel=1e-5)
    assert none_gated.ss_path != pytest.approx(all_gated.ss_path, rel=1e-2)


def test_a_gated_samples_surrogate_has_the_score_gradient(gated):
    model, source, batch = gated
    policy = model.policy
    context = dict(batch.context)
    context[GATE_KEY] = th.ones_like(context[GATE_KEY])
    mean = policy.actor_mean(batch.obs)
    log_std = policy.log_std
    path = batch.path_scale * source.value(mean, log_std, batch.eps, context).mean()
    score = (batch.adv * gaussian_log_prob(mean, log_std, batch.actions)).mean()
    params = [p for p in policy.parameters() if p.requires_grad]
    g_path = th.autograd.grad(path, params, allow_unused=True, retain_graph=True)
    g_score = th.autograd.grad(score, params, allow_unused=True)
    for a, b in zip(g_path, g_score):
        if a is None or b is None:
            assert a is None and b is None
            continue
        assert th.allclose(a, b, rtol=1e-5, atol=1e-7)


def test_the_gate_needs_the_simulators_derivatives():
    with pytest.raises(ValueError, match="contact_gate=True needs MuJoCo's derivatives"):
        HybridPG("MlpPolicy", "Hopper-v5", pathwise_source="critic", contact_gate=True, **SMALL)  # at construction
    with pytest.raises(SettingsError, match="contact_gate=True: has no effect with estimator='reinforce'"):
        HybridPG("MlpPolicy", "Hopper-v5", estimator="reinforce", contact_gate=True, **SMALL)
