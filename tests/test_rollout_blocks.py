"""Blocks in the algorithm: the rollout's moments carry long-run (batch-means) statistics."""

import numpy as np
import pytest
import torch as th
from stable_baselines3.common.env_util import make_vec_env

from hybrid_pg import HybridPG
from hybrid_pg.correlation import block_ids, effective_sample_size
from hybrid_pg.rollout import prepare_batch, rollout_blocks, rollout_group_moments

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
    batch = prepare_batch(model.policy, model.pathwise, next(buf.get(batch_size=None)), True)
    labels = rollout_blocks(buf, block_len=3)
    args = (model.policy, model.actor_head, model.pathwise, batch)
    fast = rollout_group_moments(*args, method="outer", blocks=labels)
    slow = rollout_group_moments(*args, method="vmap", blocks=labels, chunk_size=chunk_size)
    for group in ("mean", "log_std", "global"):
        assert fast[group].n_blocks == slow[group].n_blocks == len(np.unique(labels))
        for attr in ("lr_ss_path", "lr_ss_score", "lr_ss_cross", "ss_path"):
            assert getattr(fast[group], attr) == pytest.approx(getattr(slow[group], attr), rel=1e-5, abs=1e-9), (group, attr)
