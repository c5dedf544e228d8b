"""The model source: Q~ = a k-step return through the env's differentiable model.

    Q~(s, a) = r(s, a) + gamma r(s1, a1) + ... + gamma^(k-1) r(s_{k-1}, a_{k-1}) + gamma^k V(s_k)

with future actions a_j = clip(mu_theta(s_j) + sigma_theta * eps_j), eps_j fresh N(0, I) draws, the
value head V frozen. The return is in reward units, so the pathwise term is divided by the same
factor as the advantages. The model is the env's (see :mod:`hybrid_pg_envs.differentiable`); for a
non-stationary env it is re-fetched before every update at the rollout's midpoint clock, so it
follows the env (or stays deliberately stale, as the env decides).
"""

from __future__ import annotations

import copy
from typing import Any, Optional

import torch as th

from hybrid_pg.sources.base import Context, MeanFn, PathwiseSource
from hybrid_pg.surrogates import ActorHead, FrozenModule, ValueHead


class ModelSource(PathwiseSource):
    """Pathwise values through a differentiable env model (``pathwise_source="model"``)."""

    name = "model"
    reward_units = True

    def __init__(self, policy: Any, model: Any, gamma: float, horizon: int = 1) -> None:
        self.policy = policy
        self.model = model
        self.gamma = float(gamma)
        self.horizon = int(horizon)
        self._frozen_value = FrozenModule(ValueHead(policy.mlp_extractor.value_net, policy.value_net))
        self._frozen_actor = FrozenModule(ActorHead(policy.mlp_extractor.policy_net, policy.action_net))

    @property
    def exact(self) -> bool:  # type: ignore[override]
        """A model may declare itself inexact (a deliberately stale or a learned model)."""
        return bool(getattr(self.model, "exact", True))

    @property
    def one_step(self) -> bool:
        return self.horizon == 1

    def refresh(self, algorithm: Any) -> None:
        model = algorithm.env_model_for_rollout()
        if model is not None:
            self.model = model.to(self.policy.device)

    def with_model(self, model: Any) -> "ModelSource":
        twin = copy.copy(self)
        twin.model = model
        return twin

    def context(self, policy: Any, observations: Any, actions: th.Tensor, generator: Optional[th.Generator] = None) -> Context:
        n, act_dim = actions.shape
        future = max(self.horizon - 1, 1)
        return {
            "obs": observations,
            "future_eps": th.randn(n, future, act_dim, device=actions.device, generator=generator),
        }

    def value(self, mean: th.Tensor, log_std: th.Tensor, eps: th.Tensor, context: Context, mean_fn: Optional[MeanFn] = None) -> th.Tensor:
        clip = self.policy.clip_action
        std = th.exp(log_std)
        action = clip(mean + std * eps)
        state, future_eps = context["obs"], context["future_eps"]
        total = th.zeros(action.shape[0], dtype=action.dtype, device=action.device)
        # alive: 1 until the model reports a terminal state; rewards after it and the bootstrap
        # value of a terminal state are dropped, as GAE drops them on the score side.
        discount, alive = 1.0, th.ones_like(total)
        for step in range(self.horizon):
            state, reward = self.model.step(state, action)
            total = total + discount * alive * reward
            alive = alive * (1.0 - self.model.terminal(state))
            discount *= self.gamma
            if step + 1 < self.horizon:
                if mean_fn is None:
                    mean_fn = self.frozen_mean
                # Future actions respond to the state they reach but carry no theta-gradient of their
                # own: d/da_t of Q^pi(s_t, a_t) holds the policy fixed after t. Letting theta flow into
                # a_{t+j} would count sample t+j's own pathwise term again inside sample t's.
                action = clip(mean_fn(state) + std.detach() * future_eps[:, step])
        return total + discount * alive * self._value(state)

    def frozen_mean(self, observations: th.Tensor) -> th.Tensor:
        """mu(s) with the actor's weights detached: gradients reach the state, never theta."""
        return self._frozen_actor(self.policy.extract_features(observations, self.policy.pi_features_extractor))

    def _value(self, observations: th.Tensor) -> th.Tensor:
        return self._frozen_value(self.policy.extract_features(observations, self.policy.vf_features_extractor))
