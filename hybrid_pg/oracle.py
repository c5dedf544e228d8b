"""Oracle lam*: a large fresh batch at the current policy, from a separate copy of the env.

The windowed lam lags (it pools previous rollouts) and the per-rollout lam is noisy. Every
``oracle_freq`` updates HybridPG can draw ``oracle_samples`` fresh transitions with the *current*
policy from its own env copy and compute lam from them: the reference that the windowed and
per-rollout estimates are scored against (error, lag, excess variance).

The oracle never touches the training run: it has its own env (with the parameters of the rollout
being trained on: a non-stationary env's clock is set to the rollout's midpoint and held there for
the batch; VecNormalize statistics are copied, not updated), its own torch generator for the
action noise, and the global numpy/torch RNG states are restored afterwards, so a seeded run
follows the same trajectory with and without it (tested).

Policy drift vs env drift. lam* moves for two reasons: the policy moves (the landscape changes
under a fixed env) and the env drifts. With ``frozen_clock`` set, a second oracle holds its env copy
at the parameters of that clock value (e.g. 0: the env as training started) instead of following
the training env: its lam* moves only with the policy, and its gap to the live oracle's lam* is the
env drift's share. With the model pathwise source it differentiates through its own env copy's
model, which is at the frozen parameters.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional, Tuple, Union

import gymnasium as gym
import numpy as np
import torch as th
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.preprocessing import is_image_space, is_image_space_channels_first
from stable_baselines3.common.vec_env import DummyVecEnv, VecEnv, VecNormalize, VecTransposeImage, unwrap_vec_wrapper

from hybrid_pg.correlation import block_ids, default_block_length
from hybrid_pg.estimator import BatchMoments, LambdaEstimate
from hybrid_pg.rollout import collect_rollout, prepare_batch, rollout_group_moments, subset_batch
from hybrid_pg.weight_rule import OracleLambdas, oracle_lambdas
from hybrid_pg_envs.clock import env_clock, has_clock, sync_clock
from hybrid_pg_envs.differentiable import find_differentiable_model

#: the algorithm the oracle serves (``hybrid_pg.HybridPG``; duck-typed so the oracle never imports it)
Algorithm = Any

OracleEnv = Union[None, str, gym.Env, VecEnv, Callable[[], gym.Env]]


def copy_env_without_monitor(env: gym.Env) -> gym.Env:
    """A deep copy of ``env``, wrappers and all, with SB3's Monitor wrappers spliced out (a copy must
    not write to the training run's monitor file or count its episodes; its file handle cannot be
    copied either). The deepcopy memo maps each Monitor to the copy of the env it wraps."""
    monitors, inner = [], env
    while isinstance(inner, gym.Wrapper):
        if isinstance(inner, Monitor):
            monitors.append(inner)
        inner = inner.env
    memo: Dict[int, Any] = {}
    for monitor in reversed(monitors):  # innermost first, so outer ones find it in the memo
        memo[id(monitor)] = copy.deepcopy(monitor.env, memo)
    return copy.deepcopy(env, memo)


def _copy_training_envs(training: VecEnv, n_envs: int) -> VecEnv:
    """Copies of the training env *with the user's wrappers* (and its clock).

    In-process sub-envs (DummyVecEnv) are deep-copied, wrappers and all. Envs in other processes
    are rebuilt from their gymnasium spec, which records every wrapper that records its constructor
    arguments (gymnasium's own, :class:`hybrid_pg_envs.NonStationaryWrapper`); a wrapper that does not
    cannot be rebuilt, and the oracle refuses rather than silently computing lam* on another env.
    """
    base = training.unwrapped if hasattr(training, "unwrapped") else training
    while hasattr(base, "venv"):
        base = base.venv
    if isinstance(base, DummyVecEnv):
        # each copy is made now; the factories hand out those copies
        copies = [copy_env_without_monitor(env) for env in _cycle(base.envs, n_envs)]
        return DummyVecEnv([_returning(e) for e in copies])
    specs = training.get_attr("spec")
    spec = specs[0]
    if spec is None:
        raise ValueError(
            "oracle_freq > 0 needs oracle_env: the training env runs in other processes and has no gymnasium spec to copy it from"
        )
    wrappers = tuple(w for w in spec.additional_wrappers if not w.entry_point.startswith("stable_baselines3.common.monitor"))
    unknown = [w.name for w in wrappers if w.kwargs is None]
    if unknown:
        raise ValueError(
            f"the oracle cannot copy the training env: its wrapper(s) {unknown} do not record their constructor arguments "
            "(gymnasium.utils.RecordConstructorArgs), so a copy would drop them. Pass oracle_env= a factory that builds the "
            "env with the same wrappers."
        )
    spec = copy.deepcopy(spec)
    spec.additional_wrappers = wrappers
    return DummyVecEnv([lambda: gym.make(spec) for _ in range(n_envs)])


def _cycle(envs: list, n: int) -> list:
    return [envs[i % len(envs)] for i in range(n)]


def _returning(env: gym.Env) -> Callable[[], gym.Env]:
    """A factory that returns ``env`` itself (DummyVecEnv takes factories)."""
    return lambda: env


def _as_vec_env(env: OracleEnv, algorithm: Algorithm) -> VecEnv:
    n_envs = algorithm.n_envs
    if env is None:
        if algorithm.env is None:
            raise ValueError("oracle_freq > 0 needs an env (or oracle_env)")
        env = _copy_training_envs(algorithm.env, n_envs)
    elif isinstance(env, str):
        env_id = env
        env = DummyVecEnv([lambda: gym.make(env_id) for _ in range(n_envs)])
    elif isinstance(env, gym.Env):
        single = env
        env = DummyVecEnv([lambda: single])
    elif callable(env) and not isinstance(env, VecEnv):
        env = DummyVecEnv([env for _ in range(n_envs)])
    elif not isinstance(env, VecEnv):
        raise TypeError(f"oracle_env must be None, an env id, a gymnasium env, a VecEnv or an env factory; got {type(env).__name__}")
    # the wrapper SB3 puts on the training env for channel-last images
    space = env.observation_space
    if (
        isinstance(space, gym.spaces.Box)
        and is_image_space(space)
        and not is_image_space_channels_first(space)
        and not isinstance(env, VecTransposeImage)
    ):
        env = VecTransposeImage(env)
    return env


#: parts the oracle batch is cut into for the jackknife SEs of lam* (contiguous runs of whole blocks)
ORACLE_PARTS = 16


@dataclass(frozen=True)
class OracleEstimate:
    """The oracle's reference weights for one batch.

    :ivar lam: the reference the applied weight is scored against (``hybrid/oracle_lambda``):
        the variance-optimal lam* for an exact source (it has no bias, so that is the best weight)
        or when the run has ``bias_correction=False``, else (a learned source) the MSE-optimal
        weight at the training batch size.
    :ivar kind: "var" or "mse": which of the two ``lam`` is.
    :ivar lambdas: both, with jackknife standard errors over the batch's parts.
    :ivar pooled: the algorithm's own weight estimate on the whole batch (its moments: var_path,
        var_score, cov, degenerate); attributes not defined here are read from it.
    """

    lam: float
    kind: str
    lambdas: OracleLambdas
    pooled: LambdaEstimate

    def __getattr__(self, name: str) -> Any:
        if name in ("pooled", "__setstate__") or name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.pooled, name)


def oracle_parts(n_envs: int, n_steps: int, episode_starts: Any = None, n_parts: int = ORACLE_PARTS) -> Tuple[np.ndarray, np.ndarray]:
    """(part label, block label) per env-major sample: about ``n_parts`` contiguous parts, each a run
    of whole blocks of one env's trajectory (parts do not cut blocks, so merged parts keep exact
    batch-means statistics)."""
    small = default_block_length(n_steps)
    per_env = max(1, math.ceil(n_parts / n_envs))
    part_len = small * math.ceil(math.ceil(n_steps / small) / per_env)
    return block_ids(n_envs, n_steps, block_len=part_len), block_ids(n_envs, n_steps, block_len=small, episode_starts=episode_starts)


def _require_clock(venv: VecEnv, which: str) -> None:
    if not has_clock(venv):
        raise ValueError(
            "oracle_frozen_clock needs a non-stationary env (one with set_clock, e.g. wrapped in "
            f"hybrid_pg_envs.NonStationaryWrapper); {which} has none"
        )


def check_oracle_env(algorithm: Algorithm, env: OracleEnv, frozen_clock: Optional[int] = None) -> None:
    """Fail at construction, not at the first update: build the oracle's env copy once (so a copy that
    would drop the user's wrappers is refused now), check that it has the training env's observation
    and action spaces (an oracle on another task would log that task's lam*, or fail at its first
    batch), and the clock a frozen oracle needs."""
    if algorithm.env is None and env is None:
        return
    copy_env = _as_vec_env(env, algorithm)
    try:
        for what in ("observation_space", "action_space"):
            training, oracle = getattr(algorithm, what, None), getattr(copy_env, what)
            if training is not None and oracle != training:
                shown = repr(env) if len(repr(env)) <= 80 else repr(env)[:77] + "..."
                raise ValueError(
                    f"oracle_env={shown}: its {what} {oracle} is not the training env's {training}; "
                    "the oracle must run the task being trained (pass the same env id, or a factory of the same env)"
                )
        if frozen_clock is not None:
            _require_clock(copy_env, "the oracle env")
        if has_clock(algorithm.env) and not has_clock(copy_env):
            raise ValueError(
                "the training env is non-stationary but the oracle's env copy has no clock: lam* would be computed on a "
                "stationary env. Pass oracle_env= a factory that builds the env with its NonStationaryWrapper."
            )
    finally:
        copy_env.close()


class OracleLambda:
    """Oracle batches for ``algorithm`` and the lam* they give (see the module docstring).

    Uses the algorithm's public API only: ``policy``, ``pathwise`` (the source), ``settings``,
    ``rollout_clock``, ``n_rollouts_trained``, ``weight_estimate``, ``gradient_batch_size``.
    """

    def __init__(self, algorithm: Algorithm, env: OracleEnv, n_samples: int, frozen_clock: Optional[int] = None) -> None:
        self.algorithm = algorithm
        self.env = _as_vec_env(env, algorithm)
        self.frozen_clock = frozen_clock
        if frozen_clock is not None:
            _require_clock(self.env, "the oracle env")
        training_norm = unwrap_vec_wrapper(algorithm.env, VecNormalize) if algorithm.env is not None else None
        if training_norm is not None and not isinstance(self.env, VecNormalize):
            self.env = VecNormalize(
                self.env, training=False, norm_obs=training_norm.norm_obs, norm_reward=training_norm.norm_reward, gamma=algorithm.gamma
            )
        self.n_steps = max(2, math.ceil(n_samples / self.env.num_envs))
        self.calls = 0

    def _sync(self) -> None:
        """Same env parameters as the training env now: clock and normalisation statistics."""
        training = self.algorithm.env
        if training is None:
            return
        norm = unwrap_vec_wrapper(training, VecNormalize)
        if norm is not None and isinstance(self.env, VecNormalize):
            self.env.obs_rms = copy.deepcopy(norm.obs_rms)
            self.env.ret_rms = copy.deepcopy(norm.ret_rms)
        # the clock is held still during the oracle batch (steps_per_tick=0): one moment's parameters
        if self.frozen_clock is not None:
            sync_clock(self.env, self.frozen_clock, steps_per_tick=0)
        elif has_clock(training) and has_clock(self.env):
            clock = self.algorithm.rollout_clock
            sync_clock(self.env, clock if clock is not None else env_clock(training), steps_per_tick=0)

    def _source(self) -> Any:
        """The training run's pathwise source; a frozen oracle's model source differentiates through
        its own env copy's model, which is at the frozen parameters."""
        source = self.algorithm.pathwise
        if self.frozen_clock is None or source is None:
            return source
        model = find_differentiable_model(self.env)
        return source if model is None else source.with_model(model.to(self.algorithm.device))

    def estimate(self) -> Optional[OracleEstimate]:
        """lam* from a fresh batch at the current policy (None when its gradients are not finite).

        The moments are computed part by part (:func:`oracle_parts`, with long-run block statistics
        inside each part); :func:`hybrid_pg.weight_rule.oracle_lambdas` merges them into the
        variance- and MSE-optimal lam* and a delete-one-part jackknife gives their standard errors.
        The training run's RNG streams are restored afterwards, whatever happens."""
        algorithm = self.algorithm
        np_state, th_state = np.random.get_state(), th.get_rng_state()
        try:
            self._sync()
            # a function of the update count, not of this object's history, so a resumed run
            # draws the same oracle batches as an uninterrupted one
            seed = (algorithm.seed or 0) * 1_000_003 + 7919 * algorithm.n_rollouts_trained + 17
            self.calls += 1
            generator = th.Generator(device=algorithm.device).manual_seed(seed)
            self.env.seed(seed)
            data, episode_starts = self._rollout(generator)
            source = self._source()
            batch = prepare_batch(algorithm.policy, source, data, algorithm.settings.normalize_advantage, generator=generator)
            parts = self._part_moments(source, batch, episode_starts)
        finally:
            np.random.set_state(np_state)
            th.set_rng_state(th_state)
        if parts is None:
            return None
        merged = parts[0]
        for part in parts[1:]:
            merged = merged.merge(part)
        settings = algorithm.settings
        lambdas = oracle_lambdas(parts, batch_size=algorithm.gradient_batch_size, bounds=settings.lambda_bounds)
        # the variance-optimal weight is the best one for an exact source, and the one a rule
        # without bias correction aims at; a learned source's best weight is the MSE-optimal one
        use_var = bool(getattr(source, "exact", False)) or not settings.bias_correction
        return OracleEstimate(
            lam=lambdas.lam_var if use_var else lambdas.lam_mse,
            kind="var" if use_var else "mse",
            lambdas=lambdas,
            pooled=algorithm.weight_estimate(merged),
        )

    def _part_moments(self, source: Any, batch: Any, episode_starts: np.ndarray) -> Optional[list]:
        """Global-group moments of each part of the batch (None when any is not finite)."""
        algorithm = self.algorithm
        part_labels, block_labels = oracle_parts(self.env.num_envs, self.n_steps, episode_starts)
        parts: list[BatchMoments] = []
        for label in np.unique(part_labels):
            idx = np.flatnonzero(part_labels == label)
            moments = rollout_group_moments(
                algorithm.policy,
                algorithm.actor_head,
                source,
                subset_batch(batch, th.as_tensor(idx, device=batch.actions.device)),
                chunk_size=algorithm.settings.stats_chunk_size,
                blocks=block_labels[idx],
            )
            if moments is None:
                return None
            parts.append(moments["global"])
        return parts

    def _rollout(self, generator: th.Generator) -> Any:
        data, episode_starts, _ = collect_rollout(self.algorithm, self.env, self.n_steps, generator)
        return data, episode_starts


class Oracle:
    """The oracle of one training run: every ``freq`` updates, lam* at the current policy (and, with
    ``frozen_clock``, at frozen env parameters), compared with the weights the run used."""

    def __init__(self, algorithm: Algorithm, env: OracleEnv, n_samples: int, freq: int, frozen_clock: Optional[int] = None) -> None:
        self.algorithm, self.env_spec, self.n_samples = algorithm, env, int(n_samples)
        self.freq, self.frozen_clock = int(freq), frozen_clock
        self._live: Optional[OracleLambda] = None
        self._frozen: Optional[OracleLambda] = None

    def due(self) -> bool:
        return bool(self.freq) and self.algorithm.n_rollouts_trained % self.freq == 0

    def estimates(self) -> Tuple[Optional[OracleEstimate], Optional[OracleEstimate]]:
        """(live, frozen) lam* estimates now; call before the update (the policy of the rollout)."""
        if self._live is None:
            self._live = OracleLambda(self.algorithm, self.env_spec, self.n_samples)
        live = self._live.estimate()
        if self.frozen_clock is None:
            return live, None
        if self._frozen is None:
            self._frozen = OracleLambda(self.algorithm, self.env_spec, self.n_samples, frozen_clock=self.frozen_clock)
        return live, self._frozen.estimate()
