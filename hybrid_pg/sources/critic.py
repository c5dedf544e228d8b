"""The advantage-head source: Q~(s, a) = A_phi(s, a), a learned head on the policy network.

A_phi is regressed on the rollout's (normalised) GAE advantages with the policy's optimizer (squared
error, or the HL-Gauss cross-entropy: ``policy_kwargs=dict(advantage_loss="hl_gauss")``), so Q~
is in the advantages' units and the pathwise term needs no further scaling. Only A_phi depends on
the action, so only A_phi is needed for dQ/da (Q = V + A). Its weights are frozen inside the
pathwise surrogate: the actor's objective must not push the critic towards larger values.
"""

from __future__ import annotations

from typing import Any, Optional

import torch as th

from hybrid_pg.sources.base import Context, MeanFn, PathwiseSource
from hybrid_pg.surrogates import FrozenModule


class AdvantageHeadSource(PathwiseSource):
    """Pathwise values from the policy's advantage head A_phi(s, a) (``pathwise_source="critic"``)."""

    name = "critic"
    exact = False
    reward_units = False

    def __init__(self, policy: Any) -> None:
        self.policy = policy
        self._frozen = FrozenModule(policy.advantage_head)

    def context(self, policy: Any, observations: Any, actions: th.Tensor, generator: Optional[th.Generator] = None) -> Context:
        return {"features": policy.advantage_features(observations), "clipped_actions": policy.clip_action(actions)}

    def value(self, mean: th.Tensor, log_std: th.Tensor, eps: th.Tensor, context: Context, mean_fn: Optional[MeanFn] = None) -> th.Tensor:
        action = self.policy.clip_action(mean + th.exp(log_std) * eps)
        return self._frozen(context["features"], action)

    def regression_loss(self, policy: Any, context: Context, advantages: th.Tensor) -> Optional[th.Tensor]:
        return policy.advantage_regression_loss(context["features"], context["clipped_actions"], advantages)
