"""Cheap online signals of whether the pathwise gradient agrees with the score gradient.

The weight's own statistics (variances, the posterior bias) cannot see a bias that both
estimators share, and the true-gradient reference (:mod:`hybrid_pg.reference_gradient`) is far too
expensive to run during training. These candidates cost one extra forward pass of the source (or
nothing: they read the rollout's moments) and are logged every update; the gradient audit
(:mod:`hybrid_pg.experiments.gradient_audit`) computes them at every audited checkpoint too, so
how well each predicts the reference's verdict (the MSE-optimal lam) can be measured:

* ``sign_agreement``: the share of samples where the GAE advantage A_hat and the source's own
  advantage of the taken action, Q~(s, a) - Q~(s, mu(s)), have the same sign: the rate of Q-Prop's
  conservative gate eta = 1[A_hat * A_bar > 0]. 0.5 is chance; the pathwise term follows A_bar.
* ``advantage_corr``: the Pearson correlation of the same two per-sample advantages.
* ``path_score_cos``: the cosine between the rollout's mean pathwise and mean score gradients, over
  the policy parameters (both estimate the same gradient when unbiased).
* ``path_score_cos_debiased``: the same cosine with the noise the two means share removed from the
  inner product and the norms (the long-run batch-means covariances of the rollout's samples, which
  keep the serial correlation of a rollout's steps in): a noisy rollout no longer reads as
  disagreement.
"""

from __future__ import annotations

import math
from typing import Any, Dict, Mapping, Optional

import torch as th

from hybrid_pg.estimator import BatchMoments

SIGNAL_KEYS = ("sign_agreement", "advantage_corr", "path_score_cos", "path_score_cos_debiased")
#: the signals of a window of rollouts rather than of one: the direction check's statistics
#: (:func:`hybrid_pg.weight_rule.direction_test`), logged as ``hybrid/direction_cos`` and ``hybrid/direction_t``
WINDOW_SIGNAL_KEYS = ("direction_cos", "direction_t")


@th.no_grad()
def advantage_agreement(source: Any, batch: Any) -> Dict[str, float]:
    """``sign_agreement`` and ``advantage_corr`` of a rollout batch at theta_old (module docstring)."""
    a_bar = source.own_advantage(batch).double()
    a_hat = batch.adv.double().reshape(-1)
    if a_bar.numel() < 2 or not bool(th.isfinite(a_bar).all()):
        return {"sign_agreement": float("nan"), "advantage_corr": float("nan")}
    agree = float(((a_bar * a_hat) > 0).double().mean())
    x, y = a_bar - a_bar.mean(), a_hat - a_hat.mean()
    denom = float(x.norm() * y.norm())
    return {"sign_agreement": agree, "advantage_corr": float(x @ y) / denom if denom > 0 else float("nan")}


def moment_agreement(moments: Optional[BatchMoments]) -> Dict[str, float]:
    """``path_score_cos`` and ``path_score_cos_debiased`` from a rollout's moments."""
    nan = {"path_score_cos": float("nan"), "path_score_cos_debiased": float("nan")}
    if moments is None or moments.n < 2:
        return nan
    mp, mm = moments.mean_path.double(), moments.mean_score.double()
    np_, nm = float(mp.norm()), float(mm.norm())
    out = dict(nan)
    if np_ > 0 and nm > 0:
        out["path_score_cos"] = float(mp @ mm) / (np_ * nm)
    if moments.n_blocks > 1:
        # the covariance of the two means: long-run (batch-means) covariance / n
        scale = 1.0 / ((moments.n_blocks - 1) * moments.n)
        dot = float(mp @ mm) - moments.lr_ss_cross * scale
        sq_p = np_**2 - moments.lr_ss_path * scale
        sq_m = nm**2 - moments.lr_ss_score * scale
        if sq_p > 0 and sq_m > 0:
            out["path_score_cos_debiased"] = max(-1.0, min(1.0, dot / math.sqrt(sq_p * sq_m)))
    return out


def online_signals(source: Any, batch: Any, moments: Optional[Mapping[str, BatchMoments]]) -> Dict[str, float]:
    """Every signal of the module docstring for one rollout (NaN where it cannot be computed)."""
    out = advantage_agreement(source, batch) if source is not None else {"sign_agreement": float("nan"), "advantage_corr": float("nan")}
    out.update(moment_agreement(None if moments is None else moments.get("global")))
    return out
