"""What one HybridPG update records: losses, the weight, the window's health and the gradient
statistics of the rollout (every key is listed in the README's logged-metrics table).

The algorithm hands over what it measured; the arithmetic that turns it into scalars lives here so
that ``train`` reads as collect, estimate, mix, step.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Mapping, Optional

import numpy as np
import torch as th

from hybrid_pg.estimator import BatchMoments, LambdaEstimate, excess_variance, lambda_from_moments, mixed_variance, pooled_estimate
from hybrid_pg.per_sample import GROUPS

Record = Callable[..., None]

#: per-minibatch quantities the update loop collects (tensors, one host sync per update)
STEP_KEYS = (
    "policy_loss",
    "loss",
    "path",
    "score",
    "value_loss",
    "advantage_loss",
    "entropy",
    "approx_kl",
    "clip_fraction",
    "path_dropped",
)
#: counted events
EVENT_KEYS = ("advantage_diverged", "skipped_steps")


#: SB3 output formats a diagnostic is kept out of (it still reaches CSV, JSON and tensorboard)
QUIET = ("stdout", "log")
#: the hybrid/* keys the console shows (the rest are diagnostics for files and plots)
CONSOLE_KEYS = (
    "hybrid/lambda",
    "hybrid/lambda_mean",
    "hybrid/lambda_log_std",
    "hybrid/variance_ratio_vs_reinforce",
    "hybrid/oracle_lambda",
)


def new_step_logs() -> Dict[str, List[Any]]:
    return {k: [] for k in (*STEP_KEYS, *EVENT_KEYS)}


def applied_variance(moments: Mapping[str, BatchMoments], lam: Mapping[str, float]) -> float:
    """This rollout's per-sample variance of the gradient actually applied (sum over groups)."""
    total = 0.0
    for g in GROUPS:
        est = pooled_estimate([moments[g]], bounds=None)
        total += mixed_variance(lam[g], est.var_path, est.var_score, est.cov)
    return total


def record_step_logs(record: Record, logs: Mapping[str, List[Any]]) -> None:
    means = {k: th.stack(v).mean().item() for k, v in logs.items() if v and k in STEP_KEYS}
    for key in ("policy_loss", "loss", "value_loss", "approx_kl", "clip_fraction"):
        if key in means:
            record(f"train/{key}", means[key])
    if "advantage_loss" in means:
        record("train/advantage_loss", means["advantage_loss"])
    if "entropy" in means:
        record("train/entropy_loss", -means["entropy"])
    if "path_dropped" in means:
        record("hybrid/pathwise_dropped_fraction", means["path_dropped"], exclude=QUIET)
    record("hybrid/critic_diverged_steps", len(logs["advantage_diverged"]), exclude=QUIET)
    record("hybrid/skipped_steps", len(logs["skipped_steps"]))


def record_weight(
    record: Record,
    lam: Mapping[str, float],
    per_group: bool,
    window: Any,
    window_estimate: LambdaEstimate,
    rollout_estimate: Optional[LambdaEstimate],
    moments: Optional[Mapping[str, BatchMoments]],
    bounds: Any,
) -> None:
    """The weight applied, the window's estimate and health, and this rollout's own statistics.

    The console (SB3's stdout table) shows the headline only: the lam applied (per group when
    weights are per group) and ``variance_ratio_vs_reinforce``, plus the oracle's lam when it runs
    (:func:`oracle_log`, :data:`CONSOLE_KEYS`); every key still goes to CSV and tensorboard.

    ``variance_ratio_vs_reinforce`` = Var(applied mix) / Var(score) on this rollout, per sample:
    the gradient noise relative to REINFORCE with the same samples (< 1: the mix helps). The
    window's predicted ``variance_reduction_vs_better`` = 1 - Var(mix) / min(Var_P, Var_M) is
    logged for exact sources only: against a learned (biased) pathwise estimator "the better
    estimator" is not a fair reference and the number reads as a large negative "reduction".
    Deprecated (one release): ``hybrid/variance_reduction`` (the same quantity, logged for every
    source; use ``variance_reduction_vs_better`` or ``variance_ratio_vs_reinforce``) and
    ``hybrid/variance_ratio_vs_score`` (renamed ``variance_ratio_vs_reinforce``).
    """
    per_group_shown = QUIET if not per_group else None
    record("hybrid/lambda", float("nan") if per_group else lam["global"])
    record("hybrid/lambda_mean", lam["mean"], exclude=per_group_shown)
    record("hybrid/lambda_log_std", lam["log_std"], exclude=per_group_shown)
    record("hybrid/lambda_window", window_estimate.lam, exclude=QUIET)
    record("hybrid/window_size", len(window), exclude=QUIET)
    if window.detector is not None:
        record("hybrid/change_alarm", float(window.last_alarm is not None), exclude=QUIET)
        record("hybrid/change_alarms_total", window.detector.n_alarms, exclude=QUIET)
    record("hybrid/effective_sample_size", window.effective_sample_size, exclude=QUIET)
    health = window.between_within()
    record("hybrid/window_f_path", health["path"], exclude=QUIET)
    record("hybrid/window_f_score", health["score"], exclude=QUIET)
    if moments is None or rollout_estimate is None:
        return
    batch = rollout_estimate
    for key, value in (
        ("lambda_batch", batch.lam),
        ("var_path", batch.var_path),
        ("var_score", batch.var_score),
        ("cov", batch.cov),
        ("corr", batch.corr),
        ("bias_sq", batch.bias_sq),
    ):
        record(f"hybrid/{key}", value, exclude=QUIET)
    applied = applied_variance(moments, lam)
    record("hybrid/var_applied", applied, exclude=QUIET)
    ratio = applied / batch.var_score if batch.var_score > 0 else float("nan")
    record("hybrid/variance_ratio_vs_reinforce", ratio)
    record("hybrid/variance_ratio_vs_score", ratio, exclude=QUIET)  # deprecated name
    record("hybrid/variance_reduction", window_estimate.variance_reduction, exclude=QUIET)  # deprecated
    if getattr(window, "source", "learned") == "exact":
        record("hybrid/variance_reduction_vs_better", window_estimate.variance_reduction, exclude=QUIET)
    if window_estimate.var_score > 0:
        record("hybrid/variance_reduction_vs_score", 1.0 - window_estimate.var_hybrid / window_estimate.var_score, exclude=QUIET)
    # how much one weight per group would lower this rollout's variance vs one global weight
    groups = [pooled_estimate([moments[g]], bounds=bounds) for g in GROUPS]
    best_global = pooled_estimate([moments["global"]], bounds=bounds).var_hybrid
    if best_global > 0:
        record("hybrid/per_group_gain", 1.0 - sum(p.var_hybrid for p in groups) / best_global, exclude=QUIET)


def oracle_log(oracle: Any, applied: float, window: float, batch: Optional[float], frozen: Optional[Any] = None) -> Dict[str, float]:
    """Scalars comparing the estimates with the oracle's lam: absolute errors, plus the exact excess
    variance Var(lam) - Var(lam*_var) = (lam - lam*_var)^2 Var(g_P - g_M) of the weight applied,
    lam*_var being the oracle batch's unclipped variance minimiser.

    ``oracle`` is a :class:`hybrid_pg.oracle.OracleEstimate` (a plain ``LambdaEstimate`` is read as
    the reference only). ``oracle_lambda`` is its reference: the variance-optimal lam* for an exact
    source, the MSE-optimal weight for a learned one (``oracle_lambda_is_mse`` says which);
    ``oracle_lambda_var``/``_mse`` (with jackknife ``_se``) are both, and
    ``oracle_error_applied_var``/``_mse`` the applied weight's distance to each."""
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
    lambdas = getattr(oracle, "lambdas", None)
    if lambdas is not None:
        out.update(
            oracle_lambda_is_mse=float(oracle.kind == "mse"),
            oracle_lambda_var=lambdas.lam_var,
            oracle_lambda_var_se=lambdas.lam_var_se,
            oracle_lambda_mse=lambdas.lam_mse,
            oracle_lambda_mse_se=lambdas.lam_mse_se,
            oracle_bias_sq=lambdas.bias_sq,
            oracle_error_applied_var=abs(applied - lambdas.lam_var),
            oracle_error_applied_mse=abs(applied - lambdas.lam_mse),
        )
    if batch is not None:
        out["oracle_error_batch"] = abs(batch - oracle.lam)
    if frozen is not None:
        out["oracle_lambda_frozen_env"] = frozen.lam
        out["oracle_env_drift_share"] = oracle.lam - frozen.lam
    return out


def mean_env_params(infos: List[Dict[str, Any]]) -> Optional[Dict[str, float]]:
    """The mean over sub-envs of the scalar parameters non-stationary envs report as
    ``info["env_params"]`` (None when none reports any)."""
    reported = [info["env_params"] for info in infos if isinstance(info.get("env_params"), dict)]
    if not reported:
        return None
    keys = set().union(*reported)
    return {
        k: float(np.mean([r[k] for r in reported if k in r and np.isscalar(r[k])]))
        for k in keys
        if any(k in r and np.isscalar(r[k]) for r in reported)
    }
