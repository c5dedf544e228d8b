"""Correlation-aware statistics of rollout samples: blocks, long-run variances, effective sizes.

The samples of one rollout are not independent: consecutive steps share a trajectory (and GAE
sums overlap), so the variance of the rollout-mean gradient is the *long-run* variance
sigma_LR^2 = sum_k gamma(k) (autocovariances summed over all lags) divided by n, not the per-sample
variance gamma(0) divided by n. Batch means estimate it: cut each env's trajectory into contiguous
blocks of L steps (long compared with the correlation time), then sigma_LR^2 ~ sum_j L_j ||ybar_j -
ybar||^2 / (n_blocks - 1). The effective sample size is n_eff = n gamma(0) / sigma_LR^2.

Rollout samples come flattened env-major (SB3's swap_and_flatten): index = env * n_steps + t.
:func:`block_ids` labels them so that no block spans two envs (nor, optionally, two episodes).
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np

from hybrid_pg.estimator import ArrayLike, BatchMoments


def default_block_length(n_steps: int) -> int:
    """About sqrt(n_steps) (the classical batch-means choice), at least 1."""
    return max(1, int(round(math.sqrt(max(int(n_steps), 1)))))


def block_ids(
    n_envs: int,
    n_steps: int,
    block_len: Optional[int] = None,
    episode_starts: Optional[ArrayLike] = None,
) -> np.ndarray:
    """Block label per flattened rollout sample (env-major: index = env * n_steps + t).

    Blocks are contiguous runs of ``block_len`` steps of one env's trajectory (the last run of an
    env may be shorter). With ``episode_starts`` (shape (n_steps, n_envs), SB3's buffer layout, or
    already flattened env-major), a new block also starts at each episode start, so per-episode
    sums are blocks when episodes are shorter than ``block_len``.
    """
    n_envs, n_steps = int(n_envs), int(n_steps)
    if n_envs < 1 or n_steps < 1:
        raise ValueError(f"n_envs and n_steps must be >= 1, got {n_envs}, {n_steps}")
    block_len = default_block_length(n_steps) if block_len is None else int(block_len)
    if block_len < 1:
        raise ValueError(f"block_len must be >= 1, got {block_len}")
    t = np.tile(np.arange(n_steps), n_envs)
    new_block = (t % block_len) == 0
    if episode_starts is not None:
        starts = np.asarray(episode_starts, dtype=bool)
        if starts.shape == (n_steps, n_envs):
            starts = starts.T.reshape(-1)
        starts = starts.reshape(-1)
        if starts.shape[0] != n_envs * n_steps:
            raise ValueError(f"episode_starts must have n_steps * n_envs entries, got {starts.shape[0]}")
        new_block = new_block | starts
    return np.cumsum(new_block) - 1


def long_run_variance(samples: ArrayLike, blocks: ArrayLike) -> float:
    """Batch-means estimate of the trace long-run variance of (N, d) or (N,) samples."""
    m = BatchMoments.from_samples(samples, samples, blocks=blocks)
    return m.lr_ss_path / (m.n_blocks - 1) if m.n_blocks >= 2 else math.nan


def effective_sample_size(moments: BatchMoments, which: str = "diff") -> float:
    """n * (per-sample variance) / (long-run variance) of one batch (n itself without blocks).

    :param which: "path", "score", or "diff" (g_P - g_M, the process that the bias estimate and
        lam's denominator D depend on).
    """
    if not moments.has_blocks or moments.n < 2:
        return float(moments.n)
    if which == "path":
        ss, lr = moments.ss_path, moments.lr_ss_path
    elif which == "score":
        ss, lr = moments.ss_score, moments.lr_ss_score
    elif which == "diff":
        ss = moments.ss_path + moments.ss_score - 2.0 * moments.ss_cross
        lr = moments.lr_ss_path + moments.lr_ss_score - 2.0 * moments.lr_ss_cross
    else:
        raise ValueError(f"which must be 'path', 'score' or 'diff', got {which!r}")
    var, lr_var = ss / (moments.n - 1), lr / (moments.n_blocks - 1)
    if not (lr_var > 0):
        return float(moments.n)
    return float(moments.n * var / lr_var)


def standard_error_of_mean(moments: BatchMoments, which: str = "diff") -> float:
    """sqrt(trace Var(batch mean)) from the long-run variance (per-sample variance without blocks)."""
    if which == "path":
        ss, lr = moments.ss_path, moments.lr_ss_path
    elif which == "score":
        ss, lr = moments.ss_score, moments.lr_ss_score
    else:
        ss = moments.ss_path + moments.ss_score - 2.0 * moments.ss_cross
        lr = moments.lr_ss_path + moments.lr_ss_score - 2.0 * moments.lr_ss_cross
    var = lr / (moments.n_blocks - 1) if moments.has_blocks else ss / max(moments.n - 1, 1)
    return math.sqrt(max(var, 0.0) / moments.n)
