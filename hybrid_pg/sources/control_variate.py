"""A source's pathwise estimator made unbiased: the critic as a control variate, not a stand-in.

The pathwise estimator of a learned source differentiates Q~, not the true Q: its expectation is
the true gradient only where dQ~/da is exact, and the gradient audit measured it far from it (the
advantage head near InvertedDoublePendulum's optimum, MuJoCo's one-step model early on Hopper).
The mix lam g_P + (1 - lam) g_M then inherits lam times that bias, and the weight rule cannot see a
bias that the score estimator's GAE advantages share.

The same Gaussian integration-by-parts identity that makes g_P and g_M two estimators of one
gradient applies to Q~ itself: for any function Q~(s, a) of the action (weakly differentiable; the
clip to the action box is),

    E_a[ dQ~/da(s, a) da/dtheta ] = E_a[ (Q~(s, a) - b(s)) dlog pi(a|s)/dtheta ]     (Stein)

for any b(s) that does not depend on the action. So the *residual* estimator

    g_P' = g_P + (A_hat - A~) dlog pi/dtheta,    A~(s, a) = Q~(s, a) - Q~(s, mu_old(s)),

has exactly the expectation of g_M = A_hat dlog pi/dtheta, whatever Q~ is: the pathwise gradient
of what the critic knows plus the score gradient of what it misses (Q-Prop's control variate, Gu et
al. 2017; Stein control variates, Liu et al. 2018). The mix lam g_P' + (1 - lam) g_M =
g_M + lam (g_P - (Q~ - b) dlog pi) is then the score estimator plus a zero-mean term, for every
lam: the weight only trades variance (the rule treats the source as exact, lam = lam*), a poor
critic can only fail to reduce the variance, never move the update's expectation away from its
score-only fallback's. What it cannot fix is what g_M itself gets wrong (GAE's bias from the value
head is the fallback's too), and the variance reduction is that of the action-dependent part
only, which on MuJoCo is a small share of the total (Tucker et al. 2018).

Requirements: Q~ must be *one* function of the action for each state. The advantage head, the
replay critic and a differentiable model stepped from (s, a) are; MuJoCo's derivatives are taken
on a model linearised around each taken action (a different function per sample), for which the
identity does not hold, so that source is refused. A~ and A_hat share the advantage normaliser
(A~ is scaled like the pathwise term).

Where the residual enters: for the statistics (the per-sample gradients at theta_old) :meth:`value`
carries it as a log-likelihood term, (A_hat - A~) log pi; the update's epochs use a PPO-clipped
likelihood-ratio surrogate of the same weights instead (:meth:`score_residual`), with the same
gradient at theta_old. That difference matters: with the plain log-likelihood term, which keeps
pushing a sample however far its ratio has moved, three InvertedDoublePendulum runs (seeds
100-102 of ``configs/rule_selection_idp.yaml``) lost the optimum that REINFORCE with the same
(clipped) update held, although the estimator's expectation and variance at theta_old were
REINFORCE's.
"""

from __future__ import annotations

from typing import Any

import torch as th

from hybrid_pg.sources.base import TAKEN_ACTIONS_KEY, Context, PathwiseSource, ScoreTermSource

__all__ = ["ControlVariateSource", "RESIDUAL_KEY", "ACTIONS_KEY"]

#: context keys the wrapper adds to a batch: (A_hat - A~) / path_scale, and the taken (unclipped) actions
RESIDUAL_KEY = "cv_residual"
ACTIONS_KEY = TAKEN_ACTIONS_KEY


class ControlVariateSource(ScoreTermSource):
    """``inner``'s pathwise estimator plus the score estimator of its residual (module docstring).

    Everything but :meth:`score_context` and :meth:`score_residual` is ``inner``'s (:class:`ScoreTermSource`
    makes :meth:`value` and :meth:`finish_batch` of them). ``exact`` is True: the estimator has the
    score estimator's expectation, so the bias-aware weight has nothing to charge."""

    exact = True

    def __init__(self, inner: PathwiseSource) -> None:
        if isinstance(inner, ControlVariateSource):
            raise ValueError("the source already carries the control variate")
        if not inner.action_function:
            raise ValueError(
                f"control_variate=True needs a source whose Q~ is one function of the action; the {inner.name!r} source "
                "differentiates a model linearised around each taken action, for which Stein's identity does not hold "
                "(use pathwise_source='critic', 'replay_critic' or 'model')"
            )
        super().__init__(inner)

    def score_residual(self, context: Context) -> th.Tensor:
        if RESIDUAL_KEY not in context:
            raise ValueError("the control variate's residual is missing from the context: build the batch with prepare_batch")
        return context[RESIDUAL_KEY]

    def score_context(self, batch: Any) -> Context:
        """(A_hat - A~) / path_scale at theta_old."""
        a_tilde = batch.path_scale * self.inner.own_advantage(batch)
        return {RESIDUAL_KEY: ((batch.adv.reshape(-1) - a_tilde) / batch.path_scale).detach()}
