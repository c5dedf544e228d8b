"""MuJoCo's derivatives gated at contact changes: the score estimator where the Jacobian is least true.

The simulator's action Jacobian is exact for the step it linearises, but a step that makes or
breaks a contact is only piecewise smooth: its local derivative says little about how the return
moves once the action changes. The gradient audit measured it on Hopper (docs/benchmarks/gradient_audit.md):
the relative bias of the pathwise gradient on the steps that change the number of active contacts
against the steady steps, 6.11 against 3.73 (seed 2, 20k steps), 5.83 against 0.42 (seed 2, 50k),
12.95 against 1.65 (seed 4, 20k). AHAC (Xing et al. 2024) shortens the pathwise horizon where
contact forces are stiff for the same reason.

The gate replaces, sample by sample, the pathwise estimator by the score estimator on the steps
that change the number of contacts (``g_i = 1``), and leaves it on the others::

    g_P'_i = (1 - g_i) dQ~/da da/dtheta + g_i A_hat_i dlog pi(a_i)/dtheta

so the mix is ``lam (1 - g_i) g_P_i + (1 - lam (1 - g_i)) g_M_i``: a gated sample gets the score
estimator alone, whatever lam. The weight is then the variance-optimal (and bias-aware) one for the
gated estimator: the per-sample statistics see ``g_P'``, with the score term in place on gated
samples, so nothing else in the weight rule changes. Which samples are gated is decided at
theta_old from the rollout's own steps (the simulator at the taken action), once per rollout.

Cost: two collision passes (``mj_forward``) per sample, once per rollout, beside the Jacobians'
``1 + 2 nu`` frame-skipped rollouts per sample.

Where the score part enters: as the control variate's residual does, through
:class:`hybrid_pg.sources.base.ScoreTermSource`: a log-likelihood term for the statistics at
theta_old, a PPO-clipped likelihood-ratio surrogate of the same weights in the update
(:meth:`ContactGatedSource.score_residual`), with the same gradient at theta_old.
"""

from __future__ import annotations

from typing import Any, Dict, Optional

import torch as th

from hybrid_pg.sources.base import Context, MeanFn, PathwiseSource, ScoreTermSource

__all__ = ["ContactGatedSource", "GATE_KEY", "GATED_ADV_KEY"]

#: context keys: the gate (1.0 on samples whose step changes the contacts) and A_hat / path_scale
GATE_KEY = "contact_gate"
GATED_ADV_KEY = "contact_gate_adv"


def _gate_of(context: Context) -> th.Tensor:
    """1.0 where any step of the sample's model return changes the number of contacts (the first
    step's flag is ``lin_contact_change``, step j's ``lin{j}_contact_change``)."""
    flags = [v for k, v in context.items() if k.startswith("lin") and k.endswith("contact_change")]
    if not flags:
        raise ValueError("the context has no contact flags: the source must linearise with contacts=True")
    return th.stack(flags).amax(dim=0)


class ContactGatedSource(ScoreTermSource):
    """``inner`` (MuJoCo's derivatives, linearised) with the score estimator in place of the pathwise
    one on the samples whose step changes the number of active contacts (module docstring)."""

    def __init__(self, inner: PathwiseSource) -> None:
        if isinstance(inner, ContactGatedSource):
            raise ValueError("the source is already gated at contact changes")
        model = getattr(inner, "model", None)
        if not (getattr(inner, "linear", False) and hasattr(model, "contact_counts")):
            raise ValueError(
                f"contact_gate=True needs MuJoCo's derivatives (pathwise_source='mujoco', or 'model' on a MuJoCo env), "
                f"linearised around the rollout's actions; the {inner.name!r} source has no contacts to gate on"
            )
        inner.contacts = True  # type: ignore[attr-defined]
        super().__init__(inner)
        #: share of the last rollout's samples on the score estimator alone
        self.gated_fraction = 0.0

    def action_value(
        self, mean: th.Tensor, log_std: th.Tensor, eps: th.Tensor, context: Context, mean_fn: Optional[MeanFn] = None
    ) -> th.Tensor:
        # the pathwise part only (the score part is score_residual's); a gated sample's Q~ is left out
        return (1.0 - context[GATE_KEY]) * self.inner.action_value(mean, log_std, eps, context, mean_fn=mean_fn)

    def score_residual(self, context: Context) -> th.Tensor:
        if GATED_ADV_KEY not in context:
            raise ValueError("the gated samples' advantages are missing from the context: build the batch with prepare_batch")
        return context[GATE_KEY] * context[GATED_ADV_KEY]

    def score_context(self, batch: Any) -> Context:
        """The gate and A_hat / path_scale at theta_old (the gate is read again in every call, so the
        pathwise and score parts of a sample always agree on it)."""
        gate = _gate_of(batch.context).to(batch.adv.dtype)
        self.gated_fraction = float(gate.mean()) if gate.numel() else 0.0
        return {GATE_KEY: gate, GATED_ADV_KEY: (batch.adv.reshape(-1) / batch.path_scale).detach()}

    def logged(self) -> Dict[str, float]:
        return {**self.inner.logged(), "hybrid/contact_gated_fraction": self.gated_fraction}
