"""A rollout as both surrogates see it: the batch at theta_old, its checks, minibatches and the
per-sample moments of the two gradient estimators.

:func:`prepare_batch` recovers the noise behind every stored action, eps = (a - mu_old(s)) / sigma_old,
normalises the advantages (and records the factor, which the pathwise term of a source in reward
units shares) and asks the pathwise source for its per-sample context. :func:`rollout_group_moments`
reduces the per-sample parameter gradients of both surrogates to the window's moments.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.buffers import DictRolloutBuffer, RolloutBuffer
from stable_baselines3.common.utils import obs_as_tensor

from hybrid_pg.correlation import block_ids
from hybrid_pg.estimator import BatchMoments
from hybrid_pg.per_sample import (
    outer_product_group_moments,
    per_sample_group_moments,
    single_sample_surrogates,
    supports_outer_product_moments,
)
from hybrid_pg.sources.base import Context, PathwiseSource
from hybrid_pg.surrogates import gaussian_log_prob


@dataclass
class RolloutBatch:
    """Everything the update and its statistics need from one batch, computed at theta_old."""

    obs: Any
    actions: th.Tensor
    old_log_prob: th.Tensor
    returns: th.Tensor
    adv: th.Tensor  # (normalised) advantages, the score term's weights
    adv_scale: float  # the factor the advantages were divided by (1 when not normalised)
    path_scale: float  # the same factor for sources in reward units, else 1
    mean_old: th.Tensor
    log_std_old: th.Tensor
    eps: th.Tensor
    pi_features: th.Tensor
    context: Context

    @property
    def n(self) -> int:
        return len(self.actions)


def prepare_batch(
    policy: Any, source: PathwiseSource, data: Any, normalize_advantage: bool, generator: Optional[th.Generator] = None
) -> RolloutBatch:
    """The batch of SB3 ``RolloutBufferSamples`` ``data`` at the policy's current parameters."""
    obs, actions = data.observations, data.actions.reshape(len(data.actions), -1)
    n_samples = len(actions)
    adv_raw = data.advantages
    if normalize_advantage and n_samples > 1:
        scale = 1.0 / (adv_raw.std().item() + 1e-8)
        adv = (adv_raw - adv_raw.mean()) * scale
    else:
        scale, adv = 1.0, adv_raw
    with th.no_grad():
        mean_old = policy.actor_mean(obs)
        batch = RolloutBatch(
            obs=obs,
            actions=actions,
            old_log_prob=data.old_log_prob,
            returns=data.returns,
            adv=adv,
            adv_scale=scale,
            path_scale=source.scale(scale),
            mean_old=mean_old,
            log_std_old=policy.log_std.detach().clone(),
            eps=(actions - mean_old) * th.exp(-policy.log_std),
            pi_features=policy.extract_features(obs, policy.pi_features_extractor),
            context=source.context(policy, obs, actions, generator=generator),
        )
    return source.finish_batch(batch)


@th.no_grad()
def collect_rollout(
    algorithm: Any,
    env: Any,
    n_steps: int,
    generator: th.Generator,
    before_step: Optional[Callable[[int, Any], None]] = None,
    obs: Any = None,
) -> Tuple[Any, np.ndarray, Any]:
    """A rollout of ``n_steps`` per env at the policy's current parameters, off the training run.

    The diagnostics (the oracle, the reference gradient's audit) draw their batches with this:
    action noise from their own ``generator``, SB3's treatment of truncated episodes (the reward of
    a truncated step gets gamma * V(terminal observation)) and its GAE. ``before_step(t, obs)`` is
    called before each step (e.g. to snapshot the envs at chosen states); ``obs`` continues from a
    given observation instead of resetting ``env``.

    :return: (the whole rollout as one SB3 ``RolloutBufferSamples``, the buffer's episode starts
        (n_steps, n_envs), the last observation).
    """
    policy = algorithm.policy
    buffer_class = DictRolloutBuffer if isinstance(algorithm.observation_space, spaces.Dict) else RolloutBuffer
    buffer = buffer_class(
        n_steps,
        algorithm.observation_space,
        algorithm.action_space,
        device=algorithm.device,
        gamma=algorithm.gamma,
        gae_lambda=algorithm.gae_lambda,
        n_envs=env.num_envs,
    )
    low, high = algorithm.action_space.low, algorithm.action_space.high
    obs = env.reset() if obs is None else obs
    episode_starts = np.ones(env.num_envs, dtype=bool)
    dones = episode_starts
    for t in range(n_steps):
        if before_step is not None:
            before_step(t, obs)
        obs_t = obs_as_tensor(obs, algorithm.device)
        mean = policy.actor_mean(obs_t)
        noise = th.randn(mean.shape, generator=generator, device=mean.device)
        actions = mean + th.exp(policy.log_std) * noise
        values = policy.predict_values(obs_t)
        log_prob = gaussian_log_prob(mean, policy.log_std, actions)
        actions_np = actions.cpu().numpy().reshape((-1, *algorithm.action_space.shape))
        new_obs, rewards, dones, infos = env.step(np.clip(actions_np, low, high))
        for i, done in enumerate(dones):
            # bootstrap truncated episodes exactly as SB3's collect_rollouts does
            if done and infos[i].get("terminal_observation") is not None and infos[i].get("TimeLimit.truncated", False):
                terminal = policy.obs_to_tensor(infos[i]["terminal_observation"])[0]
                rewards[i] += algorithm.gamma * policy.predict_values(terminal)[0].item()
        buffer.add(obs, actions_np, rewards, episode_starts, values, log_prob)
        obs, episode_starts = new_obs, dones
    buffer.compute_returns_and_advantage(last_values=policy.predict_values(obs_as_tensor(obs, algorithm.device)), dones=dones)
    episode_starts = buffer.episode_starts.copy()
    return whole_rollout(buffer), episode_starts, obs


def whole_rollout(buffer: Any) -> Any:
    """Every sample of a full SB3 rollout buffer as one ``RolloutBufferSamples``, in the buffer's
    env-major order (index = env * n_steps + t).

    SB3's ``get(batch_size=None)`` returns the samples *shuffled*. The per-sample statistics' block
    labels (:func:`rollout_blocks`) and every per-step mask (episode starts, contact changes) are
    indexed env-major, so on a shuffled batch they would label random samples: the batch-means
    (long-run) variances would become those of random groups, i.e. the independent-samples ones the
    blocks exist to correct. The update draws its own random minibatches (:func:`minibatches`)."""
    n = buffer.buffer_size * buffer.n_envs
    if not buffer.generator_ready:
        next(buffer.get(batch_size=n))  # SB3 flattens its arrays on the first draw, for any buffer class
    return buffer._get_samples(np.arange(n))


def subset_batch(batch: RolloutBatch, idx: th.Tensor) -> RolloutBatch:
    """Rows ``idx`` of a batch (its advantages stay normalised over the whole batch)."""
    return dataclasses.replace(
        batch,
        obs=index_obs(batch.obs, idx),
        context=index_context(batch.context, idx),
        **{k: getattr(batch, k)[idx] for k in ("actions", "old_log_prob", "returns", "adv", "mean_old", "eps", "pi_features")},
    )


def index_obs(obs: Any, idx: th.Tensor) -> Any:
    """Rows ``idx`` of a tensor or of every tensor of a Dict observation."""
    if isinstance(obs, dict):
        return {k: v[idx] for k, v in obs.items()}
    return obs[idx]


def index_context(context: Context, idx: th.Tensor) -> Context:
    return {k: v[idx] for k, v in context.items()}


def minibatches(n: int, batch_size: int, device: th.device) -> Iterator[th.Tensor]:
    """Index tensors of a random permutation of ``range(n)`` in chunks of ``batch_size``."""
    perm = th.as_tensor(np.random.permutation(n), device=device)
    for start in range(0, n, batch_size):
        yield perm[start : start + batch_size]


def rollout_blocks(buffer: Any, block_len: Optional[int] = None) -> np.ndarray:
    """Block labels of SB3's flattened rollout (env-major: index = env * n_steps + t): contiguous
    runs of ``block_len`` steps (default about sqrt(n_steps)) of one env, cut at episode starts."""
    return block_ids(buffer.n_envs, buffer.buffer_size, block_len=block_len, episode_starts=buffer.episode_starts)


def _named_arrays(obs: Any, name: str) -> List[Tuple[str, Any]]:
    """(name, array) of an observation: one array, or one per key of a Dict observation."""
    return list(obs.items()) if isinstance(obs, dict) else [(name, obs)]


def _first_non_finite(values: Any) -> Optional[Tuple[Tuple[int, ...], str]]:
    """Index of the first NaN/inf of a float array and which it is ("nan" or "inf"); None when all
    finite or not a float array (images are uint8)."""
    values = np.asarray(values)
    if not np.issubdtype(values.dtype, np.floating):
        return None
    bad = ~np.isfinite(values)
    if not bad.any():
        return None
    index = tuple(int(i) for i in np.argwhere(bad)[0])
    return index, "nan" if np.isnan(values[index]) else "inf"


def check_rollout_finite(buffer: Any, num_timesteps: int, n_envs: int) -> None:
    """Refuse a rollout with a non-finite observation, reward or value before it reaches any parameter,
    naming the step and the env."""
    arrays = _named_arrays(buffer.observations, "observations")
    for name, values in [*arrays, *((n, getattr(buffer, n)) for n in ("rewards", "values", "returns", "advantages"))]:
        found = _first_non_finite(values)
        if found is not None:
            (step, env, *_), kind = found
            global_step = num_timesteps - (buffer.buffer_size - step) * n_envs + env + 1
            if name in ("rewards", "returns", "advantages"):
                hint = "Check the env's reward at that step (VecCheckNan(raise_exception=True) stops at the exact call)."
            elif name == "values":
                hint = "The value network has diverged."
            else:
                hint = "Check the env's observation at that step (VecCheckNan(raise_exception=True) stops at the exact call)."
            raise ValueError(
                f"found {kind} in {name} of the rollout at step {step} of env {env} (about global env step "
                f"{global_step}); the update was not applied. {hint}"
            )


def rollout_group_moments(
    policy: Any,
    actor_head: Any,
    source: PathwiseSource,
    batch: RolloutBatch,
    chunk_size: int = 256,
    method: str = "auto",
    blocks: Optional[Any] = None,
) -> Optional[Dict[str, BatchMoments]]:
    """Per-group moments of the per-sample parameter gradients of both surrogates at theta_old.

    MLP heads with one-step sources use the exact outer-product factorisation (two backward passes);
    anything else (k-step model returns, heads with non-Linear weights) the general ``torch.func``
    path (``method="vmap"`` forces it). Both give the same numbers (tested). Returns None when the
    gradients are not finite (e.g. a diverged critic).

    ``blocks`` (a label per sample of the env-major flattened rollout, :func:`rollout_blocks`) adds
    the batch-means (long-run) statistics to every group's moments, on both paths.
    """
    if method not in ("auto", "outer", "vmap"):
        raise ValueError(f"method must be 'auto', 'outer' or 'vmap', got {method!r}")
    scale, eps, context = batch.path_scale, batch.eps, batch.context
    use_outer = method == "outer" or (method == "auto" and source.one_step and supports_outer_product_moments(actor_head))
    try:
        if use_outer:
            return outer_product_group_moments(
                actor_head,
                batch.pi_features,
                policy.log_std,
                path_fn=lambda m, s: scale * source.value(m, s, eps, context),
                score_fn=lambda m, s: batch.adv * gaussian_log_prob(m, s, batch.actions),
                blocks=blocks,
            )
        keys = list(context)
        fn = single_sample_surrogates(
            actor_head,
            extract_features=lambda o: policy.extract_features(o, policy.pi_features_extractor),
            source=source,
            context_keys=keys,
            log_prob=gaussian_log_prob,
        )
        scale_t = th.tensor(scale, dtype=th.float32, device=batch.actions.device)
        return per_sample_group_moments(
            lambda hp, ls, pi, e, a, adv, *ctx: fn(hp, ls, pi, e, a, adv, scale_t, *ctx),
            actor_head,
            policy.log_std,
            [batch.pi_features, eps, batch.actions, batch.adv, *(context[k] for k in keys)],
            chunk_size=chunk_size,
            blocks=blocks,
        )
    except ValueError:
        # BatchMoments rejects non-finite gradients
        return None


def raise_if_observation_not_finite(obs: Any, num_timesteps: int, cause: Exception) -> None:
    """A non-finite observation reaches the policy as Normal(loc=nan): say where it came from."""
    for name, values in _named_arrays(obs, "observation"):
        found = _first_non_finite(values)
        if found is not None:
            (env, *_), kind = found
            raise ValueError(
                f"found {kind} in the {name} of env {env} returned at about global env step {num_timesteps}; no update "
                "was applied. Check the env's observation at that step (VecCheckNan(raise_exception=True) stops at the exact call)."
            ) from cause
