"""What one HybridPG update records: losses, the weight, the window's health and the gradient
statistics of the rollout.

Every key HybridPG writes is declared once in :data:`LOGGED_KEYS`, with its meaning, when it is
written and whether the console shows it; the documentation's logged-keys table is generated from
that declaration, and a test trains with every optional diagnostic on and checks that the keys
written and the keys declared are the same. :data:`REMOVED_KEYS` names the keys no longer written
and what replaces them.

The algorithm hands over what it measured; the arithmetic that turns it into scalars lives here so
that ``train`` reads as collect, estimate, mix, step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

import numpy as np
import torch as th

from hybrid_pg.estimator import BatchMoments, LambdaEstimate, excess_variance, lambda_from_moments, mixed_variance, pooled_estimate
from hybrid_pg.per_sample import GROUPS
from hybrid_pg.weight_rule import direction_test

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


@dataclass(frozen=True)
class LoggedKey:
    """One scalar HybridPG writes to SB3's logger.

    :param key: the logger key (``env/<param>`` stands for one key per env parameter).
    :param meaning: what the value is, in one or two sentences.
    :param when: when it is written ("" for every update).
    :param console: "yes" when SB3's stdout table (``verbose=1``) shows it, "per_group" when it does
        with ``lambda_groups="per_group"`` only, "no" when it goes to CSV, JSON and tensorboard only.
    """

    key: str
    meaning: str
    when: str = ""
    console: str = "no"


_ORACLE = "with the oracle on (oracle_freq > 0), on the updates it runs"
_FROZEN = "with the oracle and oracle_frozen_clock set, on the updates the oracle runs"

#: every key HybridPG writes (SB3's own rollout/ and time/ keys are not repeated), in table order
LOGGED_KEYS: Tuple[LoggedKey, ...] = (
    # the weight
    LoggedKey(
        "hybrid/lambda",
        "the weight lam applied to this rollout, estimated from previous rollouts only (NaN with per-group weights)",
        console="yes",
    ),
    LoggedKey("hybrid/lambda_mean", "the weight applied to the mean network's parameters", console="per_group"),
    LoggedKey("hybrid/lambda_log_std", "the weight applied to log_std", console="per_group"),
    LoggedKey(
        "hybrid/lambda_window",
        "the window's weight once this rollout has joined it: the next update's weight (unless a warm-up or a fixed weight applies)",
    ),
    LoggedKey(
        "hybrid/lambda_batch", "what this rollout alone would have said (noisy; never applied)", "when the rollout's statistics are finite"
    ),
    LoggedKey(
        "hybrid/per_group_gain",
        "1 - Var(one weight per group) / Var(one global weight) on this rollout: what per-group weights would gain",
        "when the rollout's statistics are finite",
    ),
    # this rollout's gradient statistics
    LoggedKey(
        "hybrid/var_path",
        "per-sample trace variance of the pathwise policy gradient on this rollout",
        "when the rollout's statistics are finite",
    ),
    LoggedKey(
        "hybrid/var_score",
        "per-sample trace variance of the score-function (REINFORCE) gradient on this rollout",
        "when the rollout's statistics are finite",
    ),
    LoggedKey("hybrid/cov", "per-sample trace covariance of the two gradients", "when the rollout's statistics are finite"),
    LoggedKey("hybrid/corr", "their correlation cov / sqrt(var_path var_score), in [-1, 1]", "when the rollout's statistics are finite"),
    LoggedKey(
        "hybrid/bias_sq",
        "the estimated squared bias of the pathwise gradient, its noise removed",
        "when the rollout's statistics are finite",
    ),
    LoggedKey(
        "hybrid/var_applied",
        "per-sample variance of the gradient actually applied (the lam mix)",
        "when the rollout's statistics are finite",
    ),
    LoggedKey(
        "hybrid/variance_ratio_vs_reinforce",
        "var_applied / var_score: the applied gradient's noise relative to REINFORCE with the same samples (below 1: the mix helps)",
        "when the rollout's statistics are finite",
        console="yes",
    ),
    LoggedKey(
        "hybrid/variance_reduction_vs_score",
        "the window's predicted 1 - Var(mix) / Var(score)",
        "when the window has a finite score variance",
    ),
    LoggedKey(
        "hybrid/variance_reduction_vs_better",
        "the window's predicted 1 - Var(mix) / min(Var_P, Var_M) (against a learned, biased source the better estimator is not a fair reference)",
        "exact pathwise sources only (a true model)",
    ),
    # do the two estimators agree? (hybrid_pg.online_signals; the gradient audit scores them against the true gradient)
    LoggedKey(
        "hybrid/sign_agreement",
        "share of samples where the GAE advantage and the pathwise source's advantage Q~(s, a) - Q~(s, mu) agree in sign (0.5: chance)",
    ),
    LoggedKey("hybrid/advantage_corr", "correlation of the same two per-sample advantages on this rollout"),
    LoggedKey("hybrid/path_score_cos", "cosine between this rollout's mean pathwise and mean score gradients (policy parameters)"),
    LoggedKey(
        "hybrid/path_score_cos_debiased",
        "the same cosine with the noise the two means share removed (long-run covariances); NaN when the rollout is too noisy to say",
    ),
    LoggedKey(
        "hybrid/direction_cos",
        "cosine between the window's pathwise and score gradients, from pairs of different rollouts (their shared noise never "
        "enters), once this rollout has joined the window (NaN where the window cannot see the gradient's direction)",
        "when the window holds 3 rollouts or more",
    ),
    LoggedKey(
        "hybrid/direction_t",
        "the same inner product over its jackknife standard error: below 0 (at the default direction_confidence) the "
        "direction check (direction_check=True) makes the next update fall back to the score gradient",
        "when the window holds 3 rollouts or more",
    ),
    LoggedKey(
        "hybrid/stats_valid", "1 when this rollout's gradient statistics were finite and joined the window, 0 when they were skipped"
    ),
    LoggedKey("hybrid/stats_time_fraction", "share of the update's time spent on the gradient statistics"),
    # the window's health
    LoggedKey("hybrid/window_size", "rollouts in the window"),
    LoggedKey("hybrid/effective_sample_size", "the window's Kish effective number of samples"),
    LoggedKey(
        "hybrid/window_f_path",
        "between- over within-rollout spread of the pathwise gradients: about 1 when the window is homogeneous, large when it mixes regimes",
    ),
    LoggedKey("hybrid/window_f_score", "the same F statistic for the score-function gradients"),
    LoggedKey("hybrid/change_alarm", "1 when the change detector fired on this rollout (the window was cut)", "lambda_mode='adaptive'"),
    LoggedKey("hybrid/change_alarms_total", "alarms so far", "lambda_mode='adaptive'"),
    # the update
    LoggedKey(
        "hybrid/pathwise_dropped_fraction",
        "share of pathwise terms dropped by the trust region (pathwise_kl_limit)",
        "when the pathwise term is on and limited",
    ),
    LoggedKey(
        "hybrid/contact_gated_fraction",
        "share of the rollout's samples given the score estimator alone because their step changes the number of active contacts",
        "contact_gate=True",
    ),
    LoggedKey("hybrid/critic_diverged_steps", "minibatch steps whose advantage-head loss was not finite and was left out"),
    LoggedKey("hybrid/skipped_steps", "minibatch steps skipped because the gradient norm was not finite", console="yes"),
    # drift between rollouts
    LoggedKey(
        "hybrid/drift_cos_path",
        "cosine between this and the previous rollout's mean pathwise gradients",
        "from the second update with finite statistics",
    ),
    LoggedKey("hybrid/drift_cos_score", "the same for the score-function gradients", "from the second update with finite statistics"),
    LoggedKey(
        "hybrid/drift_rel_change_var_path",
        "relative change of var_path from the previous rollout",
        "from the second update with finite statistics",
    ),
    LoggedKey(
        "hybrid/drift_rel_change_var_score",
        "relative change of var_score from the previous rollout",
        "from the second update with finite statistics",
    ),
    LoggedKey(
        "hybrid/drift_rel_change_cov", "relative change of cov from the previous rollout", "from the second update with finite statistics"
    ),
    LoggedKey(
        "hybrid/kl_to_oldest",
        "KL from the current policy to the one that collected the window's oldest rollout (NaN after a resume until the window refills)",
    ),
    # the oracle
    LoggedKey(
        "hybrid/oracle_lambda",
        "the oracle's reference weight from a large fresh batch at the current policy (variance-optimal for an exact source, MSE-optimal for a learned one)",
        _ORACLE,
        console="yes",
    ),
    LoggedKey("hybrid/oracle_lambda_is_mse", "1 when oracle_lambda is the MSE-optimal weight, 0 when variance-optimal", _ORACLE),
    LoggedKey("hybrid/oracle_lambda_var", "the oracle's variance-optimal lam*", _ORACLE),
    LoggedKey("hybrid/oracle_lambda_var_se", "its jackknife standard error", _ORACLE),
    LoggedKey("hybrid/oracle_lambda_mse", "the oracle's MSE-optimal weight", _ORACLE),
    LoggedKey("hybrid/oracle_lambda_mse_se", "its jackknife standard error", _ORACLE),
    LoggedKey("hybrid/oracle_bias_sq", "the oracle batch's squared bias of the pathwise gradient", _ORACLE),
    LoggedKey("hybrid/oracle_error_applied", "abs(lambda - oracle_lambda)", _ORACLE),
    LoggedKey("hybrid/oracle_error_applied_var", "abs(lambda - oracle_lambda_var)", _ORACLE),
    LoggedKey("hybrid/oracle_error_applied_mse", "abs(lambda - oracle_lambda_mse)", _ORACLE),
    LoggedKey("hybrid/oracle_error_window", "abs(lambda_window - oracle_lambda)", _ORACLE),
    LoggedKey("hybrid/oracle_error_batch", "abs(lambda_batch - oracle_lambda)", _ORACLE),
    LoggedKey("hybrid/oracle_excess_variance", "the exact excess variance (lam - lam*)^2 Var(g_P - g_M) of the weight applied", _ORACLE),
    LoggedKey("hybrid/oracle_var_path", "the oracle batch's var_path", _ORACLE),
    LoggedKey("hybrid/oracle_var_score", "the oracle batch's var_score", _ORACLE),
    LoggedKey("hybrid/oracle_cov", "the oracle batch's cov", _ORACLE),
    LoggedKey(
        "hybrid/oracle_degenerate", "1 when the oracle batch had no usable spread and lam* is the fallback, not an estimate", _ORACLE
    ),
    LoggedKey(
        "hybrid/oracle_lambda_frozen_env",
        "the oracle's lam* on an env copy held at oracle_frozen_clock: it moves only because the policy moves",
        _FROZEN,
    ),
    LoggedKey("hybrid/oracle_env_drift_share", "oracle_lambda - oracle_lambda_frozen_env: the env drift's share of lam*", _FROZEN),
    # the env's parameters and a learned source's own fit
    LoggedKey(
        "env/<param>",
        "a non-stationary env's parameter, the mean over sub-envs of info['env_params']",
        "envs that report info['env_params']",
        console="yes",
    ),
    LoggedKey("replay_critic/loss", "the replay critic's TD(lambda) regression loss", "pathwise_source='replay_critic'", console="yes"),
    LoggedKey(
        "replay_critic/explained_variance",
        "explained variance of its targets by the fitted Q",
        "pathwise_source='replay_critic'",
        console="yes",
    ),
    LoggedKey("replay_critic/samples", "samples in its replay", "pathwise_source='replay_critic'", console="yes"),
    # SB3's train/ keys, as HybridPG fills them
    LoggedKey("train/loss", "the total loss, mean over the update's minibatch steps", console="yes"),
    LoggedKey("train/policy_loss", "-(pathwise term + score term), mean over the update", console="yes"),
    LoggedKey("train/value_loss", "the V regression loss", console="yes"),
    LoggedKey("train/advantage_loss", "the advantage head's regression loss (0 for sources that train no head)", console="yes"),
    LoggedKey("train/entropy_loss", "minus the policy's entropy", console="yes"),
    LoggedKey("train/approx_kl", "approximate KL between the rollout policy and the updated one", console="yes"),
    LoggedKey("train/clip_fraction", "share of samples whose likelihood ratio was clipped", "clip_range set", console="yes"),
    LoggedKey("train/clip_range", "the clip range in force", "clip_range set", console="yes"),
    LoggedKey("train/explained_variance", "explained variance of the returns by V", console="yes"),
    LoggedKey("train/n_updates", "gradient epochs so far (not written to tensorboard)", console="yes"),
    LoggedKey("train/std", "the policy's mean standard deviation", console="yes"),
    LoggedKey("train/learning_rate", "the learning rate in force (SB3's own key)", console="yes"),
)

#: keys HybridPG wrote in earlier releases and no longer writes -> what replaces them
REMOVED_KEYS: Dict[str, str] = {
    "hybrid/variance_ratio_vs_score": "hybrid/variance_ratio_vs_reinforce (the same value, renamed)",
    "hybrid/variance_reduction": "hybrid/variance_reduction_vs_better (exact sources) or hybrid/variance_ratio_vs_reinforce",
}


def start_messages(settings: Any, source: Any, n_rollouts_trained: int) -> List[str]:
    """What ``verbose >= 1`` prints when a model is set up: the pathwise source in use (what
    ``"auto"`` chose) and when the adaptive weight starts. Until then the console shows lam 0 and a
    variance ratio of 1: the update is REINFORCE's."""
    lines = []
    if settings.estimator == "reinforce":
        lines.append("pathwise source: none used (estimator='reinforce': lam = 0, the score-function gradient alone)")
    elif source is not None:
        chosen = f"{source.name!r}" + (" (chosen by pathwise_source='auto')" if settings.pathwise_source == "auto" else "")
        kind = "exact, treated as unbiased" if source.exact else "learned, the weight allows for its bias"
        lines.append(f"pathwise source: {chosen}, {kind}")
    if settings.estimator == "pathwise":
        lines.append("weight: lam = 1 at every update (estimator='pathwise')")
    elif settings.estimator == "hybrid" and settings.fixed_lambda is not None:
        lines.append(f"weight: lam = {settings.fixed_lambda:g} at every update (fixed_lambda)")
    elif settings.estimator == "hybrid":
        # warm-up rollouts never join the window; the first one after them starts it, so the
        # window first has a rollout to give at update lambda_warmup + 2
        first = settings.lambda_warmup + 2
        if n_rollouts_trained + 1 >= first:
            lines.append(f"weight: lam from the window of the previous {settings.lambda_window} rollouts")
        else:
            if settings.lambda_warmup:
                held = (
                    f"updates 1-{first - 1} (lambda_warmup={settings.lambda_warmup}: the critic is fitted first; "
                    f"update {first - 1}'s rollout starts the window)"
                )
            else:
                held = "update 1 (its rollout starts the window)"
            lines.append(
                f"weight: lam = 0 for {held}; from update {first} lam comes from the window of the previous "
                f"{settings.lambda_window} rollouts (until then the variance ratio reads 1: the update is REINFORCE's)"
            )
    return [f"HybridPG: {line}" for line in lines]


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
    Keys of earlier releases that are no longer written: :data:`REMOVED_KEYS`.
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
    direction = direction_test(window.batches, window.weights)
    if direction is not None:
        record("hybrid/direction_cos", direction.cos, exclude=QUIET)
        record("hybrid/direction_t", direction.t, exclude=QUIET)
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
