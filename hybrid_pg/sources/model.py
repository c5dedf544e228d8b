"""The model source: Q~ = a k-step return through the env's differentiable model.

    Q~(s, a) = r(s, a) + gamma r(s1, a1) + ... + gamma^(k-1) r(s_{k-1}, a_{k-1}) + gamma^k V(s_k)

with future actions a_j = clip(mu_theta(s_j) + sigma_theta * eps_j), eps_j fresh N(0, I) draws, the
value head V frozen. The return is in reward units, so the pathwise term is divided by the same
factor as the advantages. The model is the env's (see :mod:`hybrid_pg_envs.differentiable`); for a
non-stationary env it is re-fetched before every update at the rollout's midpoint clock, so it
follows the env (or stays deliberately stale, as the env decides).

Under SB3's ``VecNormalize`` (norm_obs and/or norm_reward) the algorithm learns from normalised
observations and rewards while the model works in raw env units. The source translates at the
boundary with a :class:`Normalization` snapshot read from the training env's ``VecNormalize`` at
every :meth:`ModelSource.refresh` (one snapshot per update; the running statistics move):

* buffer observation -> model: ``obs_raw = obs * sqrt(var + eps) + mean``;
* model's next observation -> value head and policy: ``clip((obs_raw - mean) / sqrt(var + eps), +-clip_obs)``;
* model's reward -> ``clip(r / sqrt(ret_var + eps), +-clip_reward)``, the scale of the rewards (hence
  of the value head and the advantages) the algorithm learns from.

With these, Q~ is in the normalised reward units, so after the advantage normaliser the pathwise term
has the same scale with or without ``VecNormalize``. Caveats (approximations, not errors): an
observation that ``VecNormalize`` clipped at ``+-clip_obs`` cannot be inverted exactly (the model then
starts from the clip boundary; :attr:`ModelSource.clipped_fraction` reports the share of such rows of
the last rollout), and the buffer's observations were normalised with the statistics of their own
step, which the end-of-rollout snapshot matches only up to the drift of the running mean/var within
one rollout. A clipped normalised next observation or reward has a zero derivative, as in the env.

**Simulator models: one simulation per rollout.** A model that is a simulator called outside torch
(:class:`hybrid_pg_envs.mujoco_model.MujocoStepModel`) costs ``1 + 2 nu`` frame-skipped simulations
per sample for its action Jacobian; stepping it in every :meth:`ModelSource.value` call repeats that
for the statistics and for every minibatch of every epoch (11x per rollout with 10 epochs). With a
one-step return such models are used through their first-order expansion around the rollout's own
(clipped) actions a0, computed once in :meth:`ModelSource.context` (``model.linearize``)::

    s'(a) = s'(a0) + ds'/da|a0 (a - a0),   dx(a) = dx(a0) + ddx/da|a0 (a - a0)
    Q~(a) = r_ctrl(a) + c_fwd dx(a) / dt + r_healthy(a0) + gamma V(norm(s'(a)))

Only the dynamics are linearised. The control cost is the exact quadratic, and the frozen value head
is re-evaluated at the linearised next state (not linearised too): it is a cheap torch network that
the full path also evaluates, so this keeps the value head *current* (it is trained within the update,
and ``FrozenModule`` follows it exactly as the full path does) and keeps its curvature and
``VecNormalize``'s observation clip exact; linearising it as well would freeze the value head at its
rollout-time weights for the whole update and save nothing measurable. The health indicator and the
terminal flag are held at a0's next state (0/1 functions, locally constant in the full path too).

A k-step return (``model_horizon > 1``) is linearised along its nominal trajectory at theta_old (the
rollout's action, then the policy's actions with the context's future noise): step j's next state is
``s'_j0 + A_j (s_j - s_j0) + B_j (a_j - a_j0)`` with the state Jacobian A_j too (2 (2 nv + nu) + 1
perturbed simulations per sample and step, once per rollout); the future actions (policy frozen, as
always) and the value head are evaluated exactly at the linearised states.

Exactness: at theta = theta_old the pathwise action is a0 up to rounding, so the values and the
action-gradients are the simulator's; this covers the per-sample statistics (computed at theta_old,
hence the weight lam) and the first minibatch step of the update. Later steps move the actions
a - a0 = (mu - mu_old) + (sigma - sigma_old) eps, which the pathwise KL limit bounds: a sample's term is
dropped once KL(pi_old || pi) at its state exceeds ``pathwise_kl_limit`` ("auto": clip_range^2 / 2,
a mean shift of clip_range sigma at a fixed sigma); the model's error is second order in (a - a0). ``linearize=False``
restores the full simulator path (every call steps the simulator).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch as th

from hybrid_pg.sources.base import Context, MeanFn, PathwiseSource
from hybrid_pg.surrogates import ActorHead, FrozenModule, ValueHead


@dataclass(frozen=True)
class Normalization:
    """A snapshot of a ``VecNormalize``'s statistics as torch tensors (see the module docstring).
    ``obs_mean``/``obs_std`` are None without ``norm_obs``; ``reward_scale`` is None without ``norm_reward``."""

    obs_mean: Optional[th.Tensor]
    obs_std: Optional[th.Tensor]
    clip_obs: float
    reward_scale: Optional[float]
    clip_reward: float

    @classmethod
    def of(cls, env: Any, device: Any = "cpu") -> Optional["Normalization"]:
        """The statistics of the ``VecNormalize`` inside ``env`` now (copied), or None when there is
        none or it normalises neither observations nor rewards."""
        from stable_baselines3.common.vec_env import VecNormalize, unwrap_vec_wrapper

        norm = unwrap_vec_wrapper(env, VecNormalize) if env is not None else None
        if norm is None or not (norm.norm_obs or norm.norm_reward):
            return None
        as_t = lambda a: th.as_tensor(np.array(a, dtype=np.float32), device=device)  # noqa: E731 (a copy)
        mean = std = None
        if norm.norm_obs:
            rms = norm.obs_rms
            if isinstance(rms, dict):
                raise ValueError("pathwise_source='model' with VecNormalize(norm_obs=True) needs a Box observation space, not a Dict")
            mean, std = as_t(rms.mean), as_t(np.sqrt(rms.var + norm.epsilon))
        scale = float(1.0 / np.sqrt(norm.ret_rms.var + norm.epsilon)) if norm.norm_reward else None
        return cls(mean, std, float(norm.clip_obs), scale, float(norm.clip_reward))

    def raw_obs(self, obs: th.Tensor) -> th.Tensor:
        """Normalised -> raw observations (exact unless VecNormalize clipped them)."""
        if self.obs_mean is None or self.obs_std is None:
            return obs
        return obs * self.obs_std.to(obs) + self.obs_mean.to(obs)

    def obs(self, raw: th.Tensor) -> th.Tensor:
        """Raw -> normalised observations, as ``VecNormalize.normalize_obs``."""
        if self.obs_mean is None or self.obs_std is None:
            return raw
        return th.clamp((raw - self.obs_mean.to(raw)) / self.obs_std.to(raw), -self.clip_obs, self.clip_obs)

    def reward(self, reward: th.Tensor) -> th.Tensor:
        """Raw -> normalised rewards, as ``VecNormalize.normalize_reward``."""
        if self.reward_scale is None:
            return reward  # norm_obs only: the algorithm learns from raw rewards
        return th.clamp(reward * self.reward_scale, -self.clip_reward, self.clip_reward)

    def clipped(self, obs: th.Tensor) -> th.Tensor:
        """True for rows of normalised observations with a component at the clip bound."""
        if self.obs_mean is None:
            return th.zeros(obs.shape[:-1], dtype=th.bool, device=obs.device)
        return (obs.abs() >= self.clip_obs).any(dim=-1)


class ModelSource(PathwiseSource):
    """Pathwise values through a differentiable env model (``pathwise_source="model"``)."""

    name = "model"
    reward_units = True

    def __init__(self, policy: Any, model: Any, gamma: float, horizon: int = 1, linearize: Optional[bool] = None) -> None:
        self.policy = policy
        self.model = model
        self.gamma = float(gamma)
        self.horizon = int(horizon)
        #: None: linearise whenever the model offers it (see :attr:`linear`); False: never
        self.linearize = linearize
        #: ask the model which steps change the number of active contacts (``lin_contact_change``;
        #: set by :class:`hybrid_pg.sources.contact_gate.ContactGatedSource`)
        self.contacts = False
        #: the training env's VecNormalize statistics at the last refresh (None: raw units)
        self.normalization: Optional[Normalization] = None
        #: share of the last rollout's observations that VecNormalize clipped (not exactly invertible)
        self.clipped_fraction = 0.0
        self._frozen_value = FrozenModule(ValueHead(policy.mlp_extractor.value_net, policy.value_net))
        self._frozen_actor = FrozenModule(ActorHead(policy.mlp_extractor.policy_net, policy.action_net))

    @property
    def exact(self) -> bool:  # type: ignore[override]
        """True only when the pathwise estimator is unbiased: the model is exact (a model may declare
        itself inexact: a stale or learned model, or a simulator whose local Jacobians are biased
        through contacts, or one that leaves out the env's process noise) *and* Q~ has no learned
        part: gamma = 0, or episodes that end within the model's horizon (the one-step bandit).
        Otherwise the bootstrap gamma^k V(s_k) is the value head, whose state-gradient carries the
        critic's error into dQ~/da: the weight rule must then treat the source as learned (on
        Pendulum-v0, trusting it as exact gave lam = 1 and learning slower than REINFORCE)."""
        model = self.model
        episode = getattr(model, "max_episode_steps", None)
        whole_return = self.gamma == 0.0 or (episode is not None and episode <= self.horizon)
        return bool(getattr(model, "exact", True)) and float(getattr(model, "noise_std", 0.0)) == 0.0 and whole_return

    @property
    def one_step(self) -> bool:
        """Sample i's Q~ depends on theta only through (mu(s_i), log_std) at every horizon, since the
        future actions carry no theta-gradient (:meth:`value`); the outer-product moments then equal
        the ``torch.func`` ones (tested at k = 3). k-step returns keep ``torch.func`` for models it can
        trace (unchanged numbers); a simulator called outside torch (``supports_vmap = False``) has
        only the outer-product path, which is what makes ``model_horizon > 1`` possible for it."""
        return self.horizon == 1 or not getattr(self.model, "supports_vmap", True)

    @property
    def linear(self) -> bool:
        """True when the update uses the model's first-order expansion around the rollout's actions
        (one simulation with Jacobians per rollout, in :meth:`context`) instead of stepping the model
        in every :meth:`value` call: for models that offer ``linearize``/``step_linear`` (the MuJoCo
        simulator), unless ``linearize=False``. A k-step return is linearised along its nominal
        trajectory (module docstring)."""
        if self.linearize is False:
            return False
        return hasattr(self.model, "linearize") and hasattr(self.model, "step_linear")

    @property
    def action_function(self) -> bool:
        # a model linearised around each taken action is a different function per sample
        return not self.linear

    def refresh(self, algorithm: Any) -> None:
        model = algorithm.env_model_for_rollout()
        if model is not None:
            self.model = model.to(self.policy.device)
        self.normalization = Normalization.of(algorithm.env, self.policy.device)

    def with_model(self, model: Any) -> "ModelSource":
        twin = copy.copy(self)
        twin.model = model
        return twin

    def context(self, policy: Any, observations: Any, actions: th.Tensor, generator: Optional[th.Generator] = None) -> Context:
        n, act_dim = actions.shape
        if self.normalization is not None and isinstance(observations, th.Tensor):
            self.clipped_fraction = float(self.normalization.clipped(observations).float().mean()) if n else 0.0
        future = max(self.horizon - 1, 1)
        context = {
            "obs": observations,
            # drawn on the generator's device and moved: a CPU generator gives the same noise to a batch
            # on any device (the device-parity check relies on it)
            "future_eps": th.randn(
                n, future, act_dim, device=actions.device if generator is None else generator.device, generator=generator
            ).to(actions.device),
        }
        if self.linear:
            with th.no_grad():
                context.update(self._linearize(observations, actions, context["future_eps"]))
        return context

    def _linearize(self, observations: th.Tensor, actions: th.Tensor, future_eps: th.Tensor) -> Context:
        """The first-order model's context: one simulation with Jacobians per step of the return, along
        the nominal trajectory at theta_old. The expansion point of the first step is the clipped
        action the env saw (= clip(mu_old + sigma_old eps) up to rounding); step j > 0 (keys
        ``lin{j}_*``) expands around the state the nominal trajectory reaches and the action the
        policy at theta_old takes there with the context's future noise, i.e. exactly what
        :meth:`value` computes at theta_old."""
        norm, clip = self.normalization, self.policy.clip_action
        state = observations if norm is None else norm.raw_obs(observations)  # raw units
        action = clip(actions)
        std = th.exp(self.policy.log_std)
        lin: Context = {}
        for step in range(self.horizon):
            point = self.model.linearize(state, action, wrt_obs=step > 0, **({"contacts": True} if self.contacts else {}))
            lin.update({_lin_key(key, step): value for key, value in point.items()})
            if step + 1 < self.horizon:
                state = point["lin_next"]
                action = clip(self.frozen_mean(state if norm is None else norm.obs(state)) + std * future_eps[:, step])
        return lin

    def value(self, mean: th.Tensor, log_std: th.Tensor, eps: th.Tensor, context: Context, mean_fn: Optional[MeanFn] = None) -> th.Tensor:
        clip = self.policy.clip_action
        std = th.exp(log_std)
        action = clip(mean + std * eps)
        norm = self.normalization
        obs, future_eps = context["obs"], context["future_eps"]
        state = obs if norm is None else norm.raw_obs(obs)  # the model's state, raw units
        total = th.zeros(action.shape[0], dtype=action.dtype, device=action.device)
        # alive: 1 until the model reports a terminal state; rewards after it and the bootstrap
        # value of a terminal state are dropped, as GAE drops them on the score side.
        discount, alive = 1.0, th.ones_like(total)
        linear = self.linear and "lin_jac" in context
        for step in range(self.horizon):
            if linear:  # first-order model along the rollout's nominal trajectory (module docstring)
                lin = _lin_step(context, step)
                state, reward = self.model.step_linear(action, lin, state if step else None)
                ended = lin["lin_next"]  # the terminal flag: held at the nominal next state
            else:
                state, reward = self.model.step(state, action)
                ended = state
            obs = state if norm is None else norm.obs(state)  # what the policy and value head see
            if norm is not None:
                reward = norm.reward(reward)
            total = total + discount * alive * reward
            alive = alive * (1.0 - self.model.terminal(ended))
            discount *= self.gamma
            if step + 1 < self.horizon:
                if mean_fn is None:
                    mean_fn = self.frozen_mean
                # Future actions respond to the state they reach but carry no theta-gradient of their
                # own: d/da_t of Q^pi(s_t, a_t) holds the policy fixed after t. Letting theta flow into
                # a_{t+j} would count sample t+j's own pathwise term again inside sample t's.
                action = clip(mean_fn(obs) + std.detach() * future_eps[:, step])
        return total + discount * alive * self._value(obs)

    def frozen_mean(self, observations: th.Tensor) -> th.Tensor:
        """mu(s) with the actor's weights detached: gradients reach the state, never theta."""
        return self._frozen_actor(self.policy.extract_features(observations, self.policy.pi_features_extractor))

    def _value(self, observations: th.Tensor) -> th.Tensor:
        return self._frozen_value(self.policy.extract_features(observations, self.policy.vf_features_extractor))


def _lin_key(key: str, step: int) -> str:
    """``lin_x`` of step 0 stays ``lin_x``; step j > 0 is ``lin{j}_x``."""
    return key if step == 0 else f"lin{step}_{key[len('lin_') :]}"


def _lin_step(context: Context, step: int) -> Context:
    """Step ``step``'s first-order model out of a context, under the model's ``lin_*`` names."""
    if step == 0:
        return context
    prefix = f"lin{step}_"
    return {f"lin_{key[len(prefix) :]}": value for key, value in context.items() if key.startswith(prefix)}


class MujocoSource(ModelSource):
    """The model source through a MuJoCo step model (``pathwise_source="mujoco"``): the simulator's
    forward and its exact local Jacobians (:mod:`hybrid_pg_envs.mujoco_model`), computed once per rollout
    at the rollout's actions and used to first order within the update (module docstring). Same values as
    ``pathwise_source="model"`` on a ``MujocoDifferentiableWrapper``-wrapped env; this name also builds
    the model from an unwrapped gymnasium MuJoCo env (in-process VecEnvs) and says so when it cannot."""

    name = "mujoco"
