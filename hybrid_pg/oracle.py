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

import math
from typing import TYPE_CHECKING, Any, Callable, Optional, Tuple, Union

import gymnasium as gym
import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.buffers import DictRolloutBuffer, RolloutBuffer
from stable_baselines3.common.utils import obs_as_tensor
from stable_baselines3.common.vec_env import DummyVecEnv, VecEnv, VecNormalize, unwrap_vec_wrapper

from hybrid_pg.estimator import LambdaEstimate, excess_variance, lambda_from_moments
from hybrid_pg.surrogates import gaussian_log_prob

if TYPE_CHECKING:  # pragma: no cover
    from hybrid_pg.hybrid_pg import HybridPG

OracleEnv = Union[None, str, gym.Env, VecEnv, Callable[[], gym.Env]]
CLOCK_GETTER, CLOCK_SETTER = "get_clock", "set_clock"


def _as_vec_env(env: OracleEnv, model: "HybridPG") -> VecEnv:
    if env is None:
        specs = model.env.get_attr("spec") if model.env is not None else [None]
        if specs[0] is None:
            raise ValueError("oracle_freq > 0 needs oracle_env: the training env has no gymnasium spec to copy it from")
        # id and kwargs only: the spec of a Monitor-wrapped env lists wrappers gym.make cannot rebuild
        env_id, kwargs = specs[0].id, dict(specs[0].kwargs)
        return DummyVecEnv([lambda: gym.make(env_id, **kwargs) for _ in range(model.n_envs)])
    if isinstance(env, str):
        env = DummyVecEnv([lambda: gym.make(env) for _ in range(model.n_envs)])
    elif isinstance(env, gym.Env):
        env = DummyVecEnv([lambda: env])
    elif callable(env) and not isinstance(env, VecEnv):
        env = DummyVecEnv([env for _ in range(model.n_envs)])
    elif not isinstance(env, VecEnv):
        raise TypeError(f"oracle_env must be None, an env id, a gymnasium env, a VecEnv or an env factory; got {type(env).__name__}")
    # the wrappers SB3 put on the training env (e.g. VecTransposeImage for images), no Monitor
    return model._wrap_env(env, verbose=0, monitor_wrapper=False)


def env_clock(venv: Optional[VecEnv]) -> Optional[int]:
    """The clock of a non-stationary VecEnv's first sub-env (None if it has none)."""
    if venv is None or not venv.has_attr(CLOCK_GETTER):
        return None
    return venv.env_method(CLOCK_GETTER, indices=[0])[0]


def _require_clock(venv: VecEnv, which: str) -> None:
    if not venv.has_attr(CLOCK_SETTER):
        raise ValueError(
            "oracle_frozen_clock needs a non-stationary env (one with set_clock, e.g. wrapped in "
            f"hybrid_pg_envs.NonStationaryWrapper); {which} has none"
        )


def check_oracle_env(model: "HybridPG", env: OracleEnv, frozen_clock: Optional[int] = None) -> None:
    """Fail at construction if the oracle will have no env to copy, or a frozen oracle no clock."""
    if env is None and model.env is not None and model.env.get_attr("spec")[0] is None:
        raise ValueError("oracle_freq > 0 needs oracle_env: the training env has no gymnasium spec to copy it from")
    if frozen_clock is not None and env is None and model.env is not None:
        _require_clock(model.env, "the training env")


class OracleLambda:
    """Collects oracle batches for ``model`` (see the module docstring)."""

    def __init__(self, model: "HybridPG", env: OracleEnv, n_samples: int, frozen_clock: Optional[int] = None) -> None:
        self.model = model
        self.env = _as_vec_env(env, model)
        self.frozen_clock = frozen_clock
        if frozen_clock is not None:
            _require_clock(self.env, "the oracle env")
        training_norm = unwrap_vec_wrapper(model.env, VecNormalize) if model.env is not None else None
        if training_norm is not None and not isinstance(self.env, VecNormalize):
            self.env = VecNormalize(self.env, training=False, norm_obs=training_norm.norm_obs, norm_reward=training_norm.norm_reward)
        self.n_steps = max(2, math.ceil(n_samples / self.env.num_envs))
        self.calls = 0

    def _sync(self) -> None:
        """Same env parameters as the training env now: clock and normalisation statistics."""
        training = self.model.env
        if training is None:
            return
        norm = unwrap_vec_wrapper(training, VecNormalize)
        if norm is not None and isinstance(self.env, VecNormalize):
            self.env.obs_rms = norm.obs_rms.copy() if hasattr(norm.obs_rms, "copy") else norm.obs_rms
            self.env.ret_rms = norm.ret_rms.copy() if hasattr(norm.ret_rms, "copy") else norm.ret_rms
        # the clock is held still during the oracle batch (steps_per_tick=0): one moment's parameters
        if self.frozen_clock is not None:
            self.env.env_method(CLOCK_SETTER, self.frozen_clock, steps_per_tick=0)
        elif training.has_attr(CLOCK_GETTER) and self.env.has_attr(CLOCK_SETTER):
            clock = self.model._rollout_clock()
            self.env.env_method(CLOCK_SETTER, clock if clock is not None else env_clock(training), steps_per_tick=0)

    def differentiable_model(self) -> Any:
        """The frozen oracle's own env model (at the frozen parameters); None: use the training one."""
        if self.frozen_clock is None:
            return None
        from hybrid_pg_envs.differentiable import find_differentiable_model

        model = find_differentiable_model(self.env)
        return None if model is None else model.to(self.model.device)

    def collect(self) -> Tuple[Any, th.Generator]:
        """A fresh batch at the current policy (RolloutBufferSamples, GAE advantages) and the
        generator to use for any further noise it needs."""
        model, env = self.model, self.env
        np_state, th_state = np.random.get_state(), th.get_rng_state()
        try:
            self._sync()
            # a function of the update count, not of this object's history, so a resumed run
            # draws the same oracle batches as an uninterrupted one
            seed = (model.seed or 0) * 1_000_003 + 7919 * model._n_rollouts_trained + 17
            self.calls += 1
            generator = th.Generator(device=model.device).manual_seed(seed)
            env.seed(seed)
            data = self._rollout(env, generator)
        finally:
            np.random.set_state(np_state)
            th.set_rng_state(th_state)
        return data, generator

    @th.no_grad()
    def _rollout(self, env: VecEnv, generator: th.Generator) -> Any:
        model, policy = self.model, self.model.policy
        buffer_class = DictRolloutBuffer if isinstance(model.observation_space, spaces.Dict) else RolloutBuffer
        buffer = buffer_class(
            self.n_steps, model.observation_space, model.action_space, device=model.device,
            gamma=model.gamma, gae_lambda=model.gae_lambda, n_envs=env.num_envs,
        )
        low, high = model.action_space.low, model.action_space.high
        obs = env.reset()
        episode_starts = np.ones(env.num_envs, dtype=bool)
        dones = episode_starts
        for _ in range(self.n_steps):
            obs_t = obs_as_tensor(obs, model.device)
            mean = policy.actor_mean(obs_t)
            noise = th.randn(mean.shape, generator=generator, device=mean.device)
            actions = mean + th.exp(policy.log_std) * noise
            values = policy.predict_values(obs_t)
            log_prob = gaussian_log_prob(mean, policy.log_std, actions)
            actions_np = actions.cpu().numpy().reshape((-1, *model.action_space.shape))
            new_obs, rewards, dones, infos = env.step(np.clip(actions_np, low, high))
            for i, done in enumerate(dones):
                # bootstrap truncated episodes exactly as SB3's collect_rollouts does
                if done and infos[i].get("terminal_observation") is not None and infos[i].get("TimeLimit.truncated", False):
                    terminal = policy.obs_to_tensor(infos[i]["terminal_observation"])[0]
                    rewards[i] += model.gamma * policy.predict_values(terminal)[0].item()
            buffer.add(obs, actions_np, rewards, episode_starts, values, log_prob)
            obs, episode_starts = new_obs, dones
        buffer.compute_returns_and_advantage(last_values=policy.predict_values(obs_as_tensor(obs, model.device)), dones=dones)
        return next(buffer.get(batch_size=None))


def oracle_log(
    oracle: LambdaEstimate, applied: float, window: float, batch: Optional[float], frozen: Optional[LambdaEstimate] = None
) -> dict:
    """Scalars comparing the estimates with the oracle's lam: absolute errors, plus the exact excess
    variance Var(lam) - Var(lam*_var) = (lam - lam*_var)^2 Var(g_P - g_M) of the weight applied,
    lam*_var being the oracle batch's unclipped variance minimiser."""
    lam_var = lambda_from_moments(oracle.var_path, oracle.var_score, oracle.cov, bounds=None).lam
    out = {
        "oracle_lambda": oracle.lam,
        "oracle_error_applied": abs(applied - oracle.lam),
        "oracle_error_window": abs(window - oracle.lam),
        "oracle_excess_variance": excess_variance(applied, lam_var, oracle.var_path, oracle.var_score, oracle.cov),
        "oracle_var_path": oracle.var_path,
        "oracle_var_score": oracle.var_score,
        "oracle_cov": oracle.cov,
        # 1: the oracle batch had no usable spread (e.g. every action in a flat region, so both
        # gradients are 0) and lam* is the fallback, not an estimate; score the windows elsewhere
        "oracle_degenerate": float(oracle.degenerate),
    }
    if batch is not None:
        out["oracle_error_batch"] = abs(batch - oracle.lam)
    if frozen is not None:
        out["oracle_lambda_frozen_env"] = frozen.lam
        out["oracle_env_drift_share"] = oracle.lam - frozen.lam
    return out
