"""Blocks in the algorithm: the rollout's moments carry long-run (batch-means) statistics."""

import numpy as np
import pytest
import torch as th
from stable_baselines3.common.env_util import make_vec_env

from hybrid_pg import HybridPG
from hybrid_pg.correlation import block_ids, effective_sample_size
from hybrid_pg.rollout import prepare_batch, rollout_blocks, rollout_group_moments, whole_rollout

th.set_num_threads(1)


def _trained(n_envs=2, n_steps=16, **kwargs):
    env = make_vec_env("Pendulum-v1", n_envs=n_envs, seed=0)
    model = HybridPG("MlpPolicy", env, n_steps=n_steps, batch_size=None, n_epochs=1, lambda_warmup=0, seed=0, **kwargs)
    model.learn(n_steps * n_envs * 2)
    return model


def test_rollout_blocks_follow_the_env_major_layout_and_episode_starts():
    model = _trained()
    buf = model.rollout_buffer
    labels = rollout_blocks(buf, block_len=4)
    assert labels.shape == (buf.n_envs * buf.buffer_size,)
    # env-major: the second env's samples start a new block
    assert labels[buf.buffer_size] != labels[buf.buffer_size - 1]
    np.testing.assert_array_equal(labels, block_ids(2, 16, 4, episode_starts=buf.episode_starts))


def test_train_feeds_block_moments_to_the_window():
    model = _trained()
    batches = model.lambda_windows["global"].batches
    assert batches and all(b.has_blocks for b in batches)
    assert batches[-1].n_blocks == 2 * 4  # two envs, 16 steps in blocks of round(sqrt(16)) = 4
    ess = effective_sample_size(batches[-1])
    assert 0 < ess and np.isfinite(ess)


@pytest.mark.parametrize("chunk_size", [5, 256])
def test_outer_and_vmap_block_moments_agree(chunk_size):
    model = _trained(policy_kwargs=dict(net_arch=dict(pi=[8], vf=[8])))
    buf = model.rollout_buffer
    batch = prepare_batch(model.policy, model.pathwise, whole_rollout(buf), True)
    labels = rollout_blocks(buf, block_len=3)
    args = (model.policy, model.actor_head, model.pathwise, batch)
    fast = rollout_group_moments(*args, method="outer", blocks=labels)
    slow = rollout_group_moments(*args, method="vmap", blocks=labels, chunk_size=chunk_size)
    for group in ("mean", "log_std", "global"):
        assert fast[group].n_blocks == slow[group].n_blocks == len(np.unique(labels))
        for attr in ("lr_ss_path", "lr_ss_score", "lr_ss_cross", "ss_path"):
            assert getattr(fast[group], attr) == pytest.approx(getattr(slow[group], attr), rel=1e-5, abs=1e-9), (group, attr)


def test_training_statistics_see_the_rollout_in_its_env_major_order(monkeypatch):
    """The block labels are env-major; SB3's get(batch_size=None) shuffles the samples, so train()
    must take them in the buffer's order (before the fix the labels fell on random samples and the
    long-run variances were those of random groups)."""
    import hybrid_pg.hybrid_pg as algo_module

    seen = []
    original = algo_module.rollout_group_moments

    def spy(policy, actor_head, source, batch, **kwargs):
        seen.append(batch.obs.clone())
        return original(policy, actor_head, source, batch, **kwargs)

    monkeypatch.setattr(algo_module, "rollout_group_moments", spy)
    model = _trained()
    buf = model.rollout_buffer  # flattened env-major by SB3 (index = env * n_steps + t)
    np.testing.assert_array_equal(seen[-1].numpy(), buf.observations.reshape(len(seen[-1]), -1))


def test_whole_rollout_keeps_the_order_and_collect_rollout_returns_it():
    from hybrid_pg.rollout import collect_rollout, whole_rollout

    model = _trained()
    env = make_vec_env("Pendulum-v1", n_envs=2, seed=3)
    steps = []
    data, starts, _ = collect_rollout(model, env, 8, th.Generator().manual_seed(0), before_step=lambda t, obs: steps.append(obs.copy()))
    observed = np.stack(steps)  # (n_steps, n_envs, obs_dim)
    for e in range(2):
        np.testing.assert_allclose(data.observations[e * 8 : (e + 1) * 8].numpy(), observed[:, e], rtol=1e-6)
    again = whole_rollout(model.rollout_buffer)
    np.testing.assert_array_equal(again.observations.numpy(), whole_rollout(model.rollout_buffer).observations.numpy())


def _order_effect_script():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "examples" / "rollout_order_effect.py"
    spec = importlib.util.spec_from_file_location("rollout_order_effect", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_order_effect_ratio_is_the_block_length_for_samples_repeated_within_blocks():
    from hybrid_pg.estimator import BatchMoments

    script = _order_effect_script()
    k, length = 6, 5
    rng = np.random.default_rng(0)
    per_block = th.as_tensor(rng.normal(size=(k, 3)))
    g_path = per_block.repeat_interleave(length, 0)  # every block holds one value L times
    labels = np.repeat(np.arange(k), length)
    m = BatchMoments.from_samples(g_path, th.zeros_like(g_path), blocks=labels)
    assert script.variance_ratio(m) == pytest.approx((k * length - 1) / (k - 1))
    m_iid = BatchMoments.from_samples(g_path, th.zeros_like(g_path))
    assert np.isnan(script.variance_ratio(m_iid))


def test_order_effect_script_runs_and_shares_the_warm_up():
    script = _order_effect_script()
    out = script.measure("Pendulum-v1", rollouts=4, seed=0, n_steps=64)
    assert len(out["lam_fixed"]) == len(out["lam_old"]) == 4
    assert out["lam_fixed"][:2] == out["lam_old"][:2] == [0.0, 0.0]  # lambda_warmup: both windows empty
    assert all(np.isfinite(out["ratio_ordered"])) and all(np.isfinite(out["ratio_shuffled"]))
