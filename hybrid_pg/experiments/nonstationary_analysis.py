"""Analysis shared by the non-stationarity studies (``examples/nonstationary_study.py`` on the
coupled bandit, ``examples/nonstationary_control_study.py`` on Pendulum and HalfCheetah).

Every function reads finished runs as :func:`hybrid_pg.experiments.runner.load_result` returns them
(per-update series through :func:`hybrid_pg.experiments.results.update_series`, whose row semantics
pair update ``k`` with the step at which its rollout ended):

* :func:`switch_steps`: the switch times of a ``switch`` schedule;
* :func:`recovery_times`: per switch, the updates on post-switch rollouts until the applied lam is
  within :data:`TOLERANCE` (or :data:`NOISE_Z` of the oracle's own standard errors, if larger) of
  the oracle's lam* for :data:`HOLD` updates in a row;
* :func:`tracking_lag`: the shift (in updates) that best aligns the applied lam with lam*;
* :func:`final_train_return`: the training return over the last rollouts (the env as it is at the end);
* :func:`paired_regret`: per seed, a run's mean training return on the stationary env minus the same
  run's on the non-stationary one;
* :func:`difference_of_differences`: does an advantage of A over B change between two versions of a
  task? Paired by seed, with a bootstrap CI and no verdict below five seeds
  (:func:`hybrid_pg.experiments.aggregate.compare`).
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from hybrid_pg.experiments.aggregate import MIN_RUNS_FOR_SIGNIFICANCE, compare
from hybrid_pg.experiments.results import learning_curve, update_series

__all__ = [
    "HOLD",
    "NOISE_Z",
    "TOLERANCE",
    "after_warmup",
    "difference_of_differences",
    "draw_drift_split",
    "figure",
    "final_train_return",
    "masked_series",
    "nanmean",
    "paired_regret",
    "recovery_times",
    "post_switch_updates",
    "censored_recovery_mean",
    "reference_noise",
    "save_figure",
    "switch_steps",
    "tracking_lag",
]

TOLERANCE, HOLD = 0.05, 3


def switch_steps(schedule: Any, total: int) -> List[float]:
    """The switch times (clock steps below ``total``) of a ``switch`` schedule config; [] otherwise."""
    if not isinstance(schedule, dict) or schedule.get("kind") != "switch":
        return []
    if "every" in schedule:
        return [float(s) for s in range(int(schedule["every"]), total, int(schedule["every"]))]
    return [float(s) for s in schedule.get("at", []) if s < total]


def masked_series(result: Mapping[str, Any], key: str, fill: float) -> Tuple[np.ndarray, np.ndarray]:
    """(steps, values) of a per-update key, ``fill`` where the oracle was degenerate (its lam* is
    then a fallback, not an estimate)."""
    steps, values = update_series(result, key)
    d_steps, degenerate = update_series(result, "hybrid/oracle_degenerate")
    bad = set(d_steps[degenerate > 0].tolist())
    return steps, np.array([fill if s in bad else v for s, v in zip(steps, values)], dtype=float)


def after_warmup(result: Mapping[str, Any], key: str, warmup: int) -> np.ndarray:
    """A per-update key after the first ``warmup`` values, NaN where the oracle was degenerate."""
    return masked_series(result, key, math.nan)[1][warmup:]


def nanmean(values: Sequence[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return float(np.mean(finite)) if finite else math.nan


#: how many of the oracle's own standard errors count as "at lam*" (see :func:`recovery_times`)
NOISE_Z = 2.0


def reference_noise(result: Mapping[str, Any]) -> Tuple[np.ndarray, np.ndarray]:
    """(steps, jackknife SE) of the reference the oracle scored the applied lam against: the
    MSE-optimal weight's for a learned source, the variance-optimal one's for an exact source
    (``hybrid/oracle_lambda_is_mse``); empty when the run logged no SEs."""
    steps, is_mse = update_series(result, "hybrid/oracle_lambda_is_mse")
    if not steps.size:
        return steps, steps
    s_mse, se_mse = update_series(result, "hybrid/oracle_lambda_mse_se")
    s_var, se_var = update_series(result, "hybrid/oracle_lambda_var_se")
    mse, var = dict(zip(s_mse.tolist(), se_mse.tolist())), dict(zip(s_var.tolist(), se_var.tolist()))
    se = [(mse if flag > 0 else var).get(s, math.nan) for s, flag in zip(steps.tolist(), is_mse.tolist())]
    return steps, np.array(se, dtype=float)


def _post_switch(steps: Union[Sequence[float], np.ndarray], switches: Sequence[float]) -> List[List[int]]:
    """Per switch, the indices of the updates on post-switch rollouts before the next switch (or the
    end): an update's rollout ended at ``steps[i]``, so it is post-switch when it ended after it."""
    bounds = list(switches[1:]) + [math.inf]
    return [[i for i, s in enumerate(steps) if switch < s <= end] for switch, end in zip(switches, bounds)]


def recovery_times(
    result: Mapping[str, Any],
    switches: Sequence[float],
    tolerance: float = TOLERANCE,
    hold: int = HOLD,
    key: str = "hybrid/oracle_error_applied",
    noise_z: Optional[float] = NOISE_Z,
) -> List[float]:
    """Per switch: updates on post-switch rollouts until |lam applied - oracle| (``key``) is within
    the tolerance for ``hold`` consecutive logged updates; the first post-switch update counts as 1
    (NaN: never within the budget or before the next switch). With the oracle every k updates, the
    count is in *logged* updates (multiply by k for updates).

    The tolerance of an update is ``max(tolerance, noise_z * SE)``, SE the oracle's own jackknife
    standard error of its reference (:func:`reference_noise`): a reference known only to +-0.2 (the
    MSE-optimal weight of a learned source on Pendulum from 2048 samples) cannot tell 0.05 from 0, and
    a fixed 0.05 would call every such run unrecovered. ``noise_z=None`` (or runs without SEs) keeps
    the fixed tolerance."""
    steps, error = masked_series(result, key, math.inf)  # a degenerate oracle: no lam* to be near
    noise = dict(zip(*(x.tolist() for x in reference_noise(result)))) if noise_z is not None else {}

    def allowed(step: float) -> float:
        se = noise.get(step, math.nan)
        return max(tolerance, noise_z * se) if noise_z is not None and math.isfinite(se) else tolerance

    out = []
    for window in _post_switch(steps, switches):
        after = [(error[i], allowed(steps[i])) for i in window]
        rec = math.nan
        for i in range(len(after) - hold + 1):
            if all(e <= tol for e, tol in after[i : i + hold]):
                rec = float(i + 1)
                break
        out.append(rec)
    return out


def post_switch_updates(result: Mapping[str, Any], switches: Sequence[float], key: str = "hybrid/oracle_error_applied") -> List[int]:
    """Per switch: the logged updates on post-switch rollouts before the next switch (or the end),
    i.e. the budget within which :func:`recovery_times` looked for a recovery."""
    steps, _ = masked_series(result, key, math.inf)
    return [len(window) for window in _post_switch(steps, switches)]


def censored_recovery_mean(times: Sequence[float], budgets: Sequence[int]) -> float:
    """The mean recovery time with an unrecovered switch (NaN) counted as its whole budget plus one.

    That is a lower bound on its recovery time, so the mean is a lower bound too, but a fair one to
    compare windows with: the mean over recovered switches alone rewards a window that never
    recovers from the hard switches (they drop out) over one that recovers from them slowly."""
    if len(times) != len(budgets):
        raise ValueError(f"{len(times)} recovery times but {len(budgets)} budgets")
    if not times:
        return math.nan
    return float(np.mean([t if math.isfinite(t) else b + 1 for t, b in zip(times, budgets)]))


def tracking_lag(result: Mapping[str, Any], warmup: int, max_lag: int = 20) -> float:
    """The lag (in logged updates) of the applied lam behind the oracle: the shift k that minimises
    the mean |lam applied(t) - lam*_oracle(t - k)| (0: no lag; NaN: too short a run). The applied lam
    is taken at the updates where the oracle ran."""
    o_steps, oracle = masked_series(result, "hybrid/oracle_lambda", math.nan)
    l_steps, lam = update_series(result, "hybrid/lambda")
    at = dict(zip(l_steps.tolist(), lam.tolist()))
    lam = np.array([at.get(s, math.nan) for s in o_steps.tolist()], dtype=float)[warmup:]
    oracle = oracle[warmup:]
    n = min(len(lam), len(oracle))
    best, best_k = math.inf, math.nan
    for k in range(0, min(max_lag, n - 2) + 1):
        gaps = np.abs(lam[k:n] - oracle[: n - k])
        if np.isfinite(gaps).sum() >= 2:
            gap = float(np.nanmean(gaps))
            if gap < best - 1e-12:
                best, best_k = gap, float(k)
    return best_k


def final_train_return(result: Mapping[str, Any], fraction: float = 0.1) -> float:
    """Mean training return over the last ``fraction`` of rollouts: the return on the env as it is
    at the end of training."""
    _, values = learning_curve(result)
    tail = values[-max(1, int(round(fraction * len(values)))) :]
    return float(np.mean(tail)) if tail.size else math.nan


def paired_regret(stationary: Mapping[int, float], moving: Mapping[int, float]) -> Dict[int, float]:
    """Per seed present in both: ``stationary[seed] - moving[seed]`` (e.g. mean training returns:
    what the env's movement cost the same agent with the same seed). Not the textbook dynamic regret
    against the best policy at each moment, which needs that policy; this is the regret against the
    same learner on the unmoving env, and it includes any change in how hard the task is."""
    return {s: float(stationary[s] - moving[s]) for s in sorted(set(stationary) & set(moving))}


def difference_of_differences(
    a_moving: Mapping[int, float],
    b_moving: Mapping[int, float],
    a_stationary: Mapping[int, float],
    b_stationary: Mapping[int, float],
    min_runs: int = MIN_RUNS_FOR_SIGNIFICANCE,
    seed: Optional[int] = 0,
) -> Dict[str, Any]:
    """Does A's advantage over B change when the task moves? Per seed present in all four (runs
    with the same seed share the env's random numbers), ``(A - B)`` on the moving task minus ``(A -
    B)`` on the stationary one; the mean over seeds with a paired bootstrap CI and Wilcoxon's
    signed-rank p (:func:`hybrid_pg.experiments.aggregate.compare`); ``verdict`` is ``"too few
    runs"`` below ``min_runs`` seeds, whatever the CI. Keys: seeds, per_seed, advantage_moving,
    advantage_stationary (means over the paired seeds), diff, low, high, p_value, verdict."""
    seeds = sorted(set(a_moving) & set(b_moving) & set(a_stationary) & set(b_stationary))
    out: Dict[str, Any] = {
        "seeds": seeds,
        "per_seed": {},
        "advantage_moving": math.nan,
        "advantage_stationary": math.nan,
        "diff": math.nan,
        "low": math.nan,
        "high": math.nan,
        "p_value": math.nan,
        "verdict": "no paired runs",
    }
    if not seeds:
        return out
    moving = np.array([a_moving[s] - b_moving[s] for s in seeds], dtype=float)
    still = np.array([a_stationary[s] - b_stationary[s] for s in seeds], dtype=float)
    cmp = compare(moving, still, seeds_a=seeds, seeds_b=seeds, min_runs=min_runs, seed=seed)
    out.update(
        per_seed={s: float(m - t) for s, m, t in zip(seeds, moving, still)},
        advantage_moving=float(moving.mean()),
        advantage_stationary=float(still.mean()),
        diff=cmp.diff.point,
        low=cmp.diff.low,
        high=cmp.diff.high,
        p_value=cmp.p_value,
        verdict=cmp.verdict,
    )
    return out


# ---------------------------------------------------------------------------------------------
# figures (matplotlib's object API, no pyplot state: safe in worker processes)
# ---------------------------------------------------------------------------------------------


def figure(n_rows: int, width: float = 12.0, height: float = 3.0, n_cols: int = 1) -> Tuple[Any, List[Any]]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height * n_rows))
    FigureCanvasAgg(fig)
    return fig, [fig.add_subplot(n_rows, n_cols, i + 1) for i in range(n_rows * n_cols)]


def save_figure(fig: Any, axes: Sequence[Any], out: Any, xlabel: str = "env steps") -> None:
    axes[-1].set_xlabel(xlabel)
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def draw_drift_split(ax: Any, run: Mapping[str, Any]) -> None:
    """lam* at the live env (black) and at the env frozen at its start (blue: moves only with the
    policy), the gap between them shaded (the env drift's share), along one run's training path."""
    steps, live = update_series(run, "hybrid/oracle_lambda")
    ax.plot(steps, live, "k-", lw=1.2, label="lam* (live env)")
    f_steps, frozen = update_series(run, "hybrid/oracle_lambda_frozen_env")
    if f_steps.size:
        ax.plot(f_steps, frozen, color="tab:blue", lw=1.2, label="lam* (env frozen at its start: policy drift only)")
        common = np.intersect1d(steps, f_steps)
        ax.fill_between(
            common, live[np.isin(steps, common)], frozen[np.isin(f_steps, common)], color="tab:orange", alpha=0.3, label="env drift's share"
        )
