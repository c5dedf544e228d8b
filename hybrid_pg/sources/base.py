"""The pathwise-source interface: where dQ~/da comes from.

The pathwise estimator differentiates a per-sample value Q~(s_i, a_i(theta)) with respect to the
policy parameters through the action a_i(theta) = clip(mu_theta(s_i) + sigma_theta * eps_i). A
*source* supplies Q~. It is chosen once, when the algorithm is set up (and again by ``set_env``),
and the algorithm, the surrogates and the per-sample statistics only ever call this interface, so a
new source (a replay-window critic, a simulator's derivatives) needs no change to ``train``.

Life of a source in one update:

1. :meth:`PathwiseSource.refresh` before the update (a model source re-fetches the env's model at the
   rollout's clock; a learned source may fit itself on the new rollout).
2. :meth:`PathwiseSource.context` once per rollout at theta_old: the per-sample tensors it needs
   (leading dimension N), e.g. critic features or raw observations. The per-sample statistics slice
   and vmap over them, the training loss indexes them by minibatch.
   :meth:`PathwiseSource.finish_batch` then sees the whole batch (advantages normalised).
3. :meth:`PathwiseSource.value` for a batch: Q~ per sample, differentiable in ``mean`` and ``log_std``.
4. :meth:`PathwiseSource.regression_loss` per minibatch for sources trained with the policy's
   optimizer (the advantage head); None otherwise.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from typing import Any, Callable, Dict, Optional

import torch as th

from hybrid_pg.surrogates import gaussian_log_prob

Context = Dict[str, th.Tensor]
MeanFn = Callable[[th.Tensor], th.Tensor]


class PathwiseSource(ABC):
    """A differentiable per-sample value Q~(s, a) for the pathwise gradient.

    :cvar name: the ``pathwise_source`` setting that selects it.
    :cvar exact: True when Q~'s action-gradient is exact for the env (a true model): the bias-aware
        weight may treat the pathwise estimator as unbiased. Learned sources are not exact.
    :cvar reward_units: True when Q~ is in reward units, so the pathwise term is divided by the
        advantage normaliser exactly like the advantages (same scale for both terms); False when
        Q~ is already in the normalised advantages' units (a head regressed on them).
    """

    name: str = ""
    exact: bool = False
    reward_units: bool = False

    @property
    def one_step(self) -> bool:
        """True when sample i's Q~ depends on the policy only through (mu(s_i), log_std), which makes
        the exact outer-product moments of :mod:`hybrid_pg.per_sample` applicable."""
        return True

    @property
    def action_function(self) -> bool:
        """True when Q~(s, .) is one function of the action for each state (not re-linearised around
        each taken action): what the control variate needs (:mod:`hybrid_pg.sources.control_variate`)."""
        return True

    def refresh(self, algorithm: Any) -> None:
        """Called before every update (default: nothing)."""

    @abstractmethod
    def context(self, policy: Any, observations: Any, actions: th.Tensor, generator: Optional[th.Generator] = None) -> Context:
        """Per-sample tensors (leading dimension N) that :meth:`value` needs, computed at theta_old."""

    @abstractmethod
    def value(self, mean: th.Tensor, log_std: th.Tensor, eps: th.Tensor, context: Context, mean_fn: Optional[MeanFn] = None) -> th.Tensor:
        """Q~(s, clip(mean + exp(log_std) * eps)) for a batch, shape (B,).

        :param mean_fn: observations -> the mean action of the policy *frozen* at its current
            parameters (future actions of multi-step sources carry no theta-gradient of their own).
        """

    def action_value(
        self, mean: th.Tensor, log_std: th.Tensor, eps: th.Tensor, context: Context, mean_fn: Optional[MeanFn] = None
    ) -> th.Tensor:
        """Q~ itself at the action (the source's own advantage is read from it); the same as
        :meth:`value` unless a source adds terms to its pathwise surrogate (the control variate)."""
        return self.value(mean, log_std, eps, context, mean_fn=mean_fn)

    @th.no_grad()
    def own_advantage(self, batch: Any) -> th.Tensor:
        """The source's own advantage of each taken action at theta_old, Q~(s, a) - Q~(s, mu(s)),
        shape (N,): what Q-Prop's gate compares with the GAE advantage, and what the control
        variate's score term subtracts."""
        q_taken = self.action_value(batch.mean_old, batch.log_std_old, batch.eps, batch.context)
        q_mean = self.action_value(batch.mean_old, batch.log_std_old, th.zeros_like(batch.eps), batch.context)
        return (q_taken - q_mean).reshape(-1)

    def score_residual(self, context: Context) -> Optional[th.Tensor]:
        """Per-sample weights of a score term that belongs to the pathwise estimator (in Q~'s units,
        times ``path_scale`` in advantage units): the update adds it as a clipped likelihood-ratio
        surrogate, while :meth:`value` carries it as a log-likelihood term for the statistics at
        theta_old (same gradient there). None (default): the pathwise estimator has no such term."""
        return None

    def finish_batch(self, batch: Any) -> Any:
        """The rollout batch once its advantages are normalised (:func:`hybrid_pg.rollout.prepare_batch`
        calls it last); a source that needs them per sample adds them to the context (default: unchanged)."""
        return batch

    def regression_loss(self, policy: Any, context: Context, advantages: th.Tensor) -> Optional[th.Tensor]:
        """The source's own training loss on a minibatch (default: None, nothing to train)."""
        return None

    def with_model(self, model: Any) -> "PathwiseSource":
        """This source differentiating through another env model (a frozen-clock oracle's); sources
        that use no env model return themselves."""
        return self

    def scale(self, advantage_scale: float) -> float:
        """Factor of the pathwise term: the advantage normaliser for sources in reward units."""
        return advantage_scale if self.reward_units else 1.0

    def logged(self) -> Dict[str, float]:
        """What the source reports about the last rollout, logger key -> value (keys declared in
        :data:`hybrid_pg.update_log.LOGGED_KEYS`); default: nothing."""
        return {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, exact={self.exact})"


class WrappedSource(PathwiseSource):
    """A source that changes another one's estimator (the control variate, the contact gate): every
    method is ``inner``'s unless the wrapper overrides it."""

    def __init__(self, inner: PathwiseSource) -> None:
        self.inner = inner
        self.name = inner.name
        self.reward_units = inner.reward_units

    @property
    def exact(self) -> bool:  # type: ignore[override]
        return self.inner.exact

    @property
    def one_step(self) -> bool:
        return self.inner.one_step

    @property
    def action_function(self) -> bool:
        return self.inner.action_function

    def refresh(self, algorithm: Any) -> None:
        self.inner.refresh(algorithm)

    def context(self, policy: Any, observations: Any, actions: th.Tensor, generator: Optional[th.Generator] = None) -> Context:
        return self.inner.context(policy, observations, actions, generator=generator)

    def value(self, mean: th.Tensor, log_std: th.Tensor, eps: th.Tensor, context: Context, mean_fn: Optional[MeanFn] = None) -> th.Tensor:
        return self.inner.value(mean, log_std, eps, context, mean_fn=mean_fn)

    def action_value(
        self, mean: th.Tensor, log_std: th.Tensor, eps: th.Tensor, context: Context, mean_fn: Optional[MeanFn] = None
    ) -> th.Tensor:
        return self.inner.action_value(mean, log_std, eps, context, mean_fn=mean_fn)

    def regression_loss(self, policy: Any, context: Context, advantages: th.Tensor) -> Optional[th.Tensor]:
        return self.inner.regression_loss(policy, context, advantages)

    def with_model(self, model: Any) -> "PathwiseSource":
        inner = self.inner.with_model(model)
        return self if inner is self.inner else type(self)(inner)

    def scale(self, advantage_scale: float) -> float:
        return self.inner.scale(advantage_scale)

    def logged(self) -> Dict[str, float]:
        return self.inner.logged()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.inner!r})"


#: context key of the taken (unclipped) actions, which a score term inside a pathwise estimator needs
TAKEN_ACTIONS_KEY = "taken_actions"


class ScoreTermSource(WrappedSource):
    """A wrapper whose pathwise estimator carries a score term: per sample, the pathwise gradient of
    :meth:`action_value` plus :meth:`score_residual` times dlog pi(a_i)/dtheta (the control variate's
    residual, the contact gate's gated samples). :meth:`value` carries the score term as a
    log-likelihood term for the statistics at theta_old; the update adds it as a PPO-clipped
    likelihood-ratio surrogate of the same weights (the same gradient at theta_old)."""

    @abstractmethod
    def score_context(self, batch: Any) -> Context:
        """The per-sample tensors, at theta_old, that :meth:`score_residual` reads (in Q~'s units: the
        caller multiplies the whole value by ``path_scale``, so advantages enter divided by it)."""

    @abstractmethod
    def score_residual(self, context: Context) -> th.Tensor:
        """The score term's per-sample weights, from :meth:`score_context`'s tensors."""

    def value(self, mean: th.Tensor, log_std: th.Tensor, eps: th.Tensor, context: Context, mean_fn: Optional[MeanFn] = None) -> th.Tensor:
        path = self.action_value(mean, log_std, eps, context, mean_fn=mean_fn)
        return path + self.score_residual(context) * gaussian_log_prob(mean, log_std, context[TAKEN_ACTIONS_KEY])

    @th.no_grad()
    def finish_batch(self, batch: Any) -> Any:
        """The batch with :meth:`score_context`'s tensors and the taken actions in its context."""
        batch = self.inner.finish_batch(batch)
        context = {**batch.context, **self.score_context(batch), TAKEN_ACTIONS_KEY: batch.actions.detach()}
        return dataclasses.replace(batch, context=context)
