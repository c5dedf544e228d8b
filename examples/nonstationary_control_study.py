"""lam under non-stationarity on control tasks (Pendulum, HalfCheetah), and the paper's question.

Runs the grid of ``configs/nonstationary_control.yaml`` per task: envs (a stationary one and
non-stationary versions of the same task, through ``NonStationaryWrapper``, or, for a task with
``schedules_via: nsgym``, through NS-Gym's own wrapper, schedulers and update functions) x cells (HybridPG's
hybrid with each lam window mode, REINFORCE with the same update, SB3's PPO) x seeds, with the one
resumable run engine (:func:`hybrid_pg.experiments.runner.run_grid`). The hybrid runs carry the
oracle (lam*, variance- and MSE-optimal, with jackknife standard errors) and, on the moving envs, the
frozen-clock oracle (the env held at its start: lam* moves there only with the policy).

Per task it writes ``report_<task>.md`` (runs per cell, then three tables), ``summary_<task>.json``
and four figures:

* tracking (hybrid cells): |lam applied - lam*| (to the reference lam*, and to the variance- and
  MSE-optimal ones), the oracle's own standard error, the lag, recovery after each switch, the env
  drift's share and the policy drift's spread of lam*;
* returns (every cell): final training return (last 10% of rollouts: the env as it is at the end),
  final deterministic evaluation (at the training env's clock), and the regret against the same cell
  and seed on the stationary env (paired by seed; it includes any change in the task's difficulty),
  next to the policy's standard deviation (``train/std``, median over seeds) at 100k steps and at
  the end (the end only for a task of 100k steps or less);
* the paper's question: per moving env and hybrid mode, ``(hybrid - reinforce)`` final training
  return on the moving env minus the same on the stationary env, paired by seed, with a bootstrap
  CI; below 5 seeds no verdict ("too few runs", :mod:`hybrid_pg.experiments.aggregate`);
* figures ``<task>_lambda.png`` (applied lam per mode vs lam*_var and lam*_mse with the env
  parameter overlaid), ``<task>_drift.png`` (lam* live vs frozen clock), ``<task>_returns.png``,
  ``<task>_question.png``.

Everything works on a partial grid: ``--report-only`` analyses the finished run directories and
trains nothing (safe while a grid is running), and every table says how many runs each cell has.

    python examples/nonstationary_control_study.py configs/nonstationary_control.yaml --task pendulum --workers 1
    python examples/nonstationary_control_study.py configs/nonstationary_control.yaml --report-only
    python examples/nonstationary_control_study.py configs/nonstationary_control.yaml --quick --task pendulum --out /tmp/q

NS-Gym tasks (``nsgym_pendulum``, ``nsgym_halfcheetah``; the ``[nsgym]`` extra, in its own venv): each
env entry is the kwargs of the ``nsgym`` config wrapper (:class:`hybrid_pg_envs.nsgym.NSGymWrapper`)
without the clock arguments; the study sets ``steps_per_tick = n_envs`` and, unless the entry says,
``schedule_seed`` = the run's seed. NS-Gym refuses an empty set of parameters, so a stationary env is
NS-Gym's wrapper with ``NoUpdate`` (the same wrapper stack as the moving envs, the parameter held).
Switch times for the recovery metric are the steps at which an event scheduler (``PeriodicScheduler``,
``DiscreteScheduler``) fires; a parameter moved at every step (``ContinuousScheduler``) has none, and the
report marks its recovery n/a.

    python examples/nonstationary_control_study.py configs/nonstationary_control.yaml --task nsgym_pendulum --workers 1
    python examples/nonstationary_control_study.py configs/nonstationary_control.yaml --task nsgym_halfcheetah --workers 1
"""

from __future__ import annotations

import argparse
import copy
import json
import math
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Set, Tuple

import numpy as np
import yaml

from hybrid_pg.experiments.aggregate import MIN_RUNS_FOR_SIGNIFICANCE, stratified_bootstrap_ci
from hybrid_pg.experiments.config import resolve_config
from hybrid_pg.experiments.nonstationary_analysis import (
    after_warmup,
    difference_of_differences,
    draw_drift_split,
    figure,
    final_train_return,
    nanmean,
    paired_regret,
    recovery_times,
    save_figure,
    switch_steps,
    tracking_lag,
)
from hybrid_pg.experiments.ray_backend import RayNotInstalledError, require_ray
from hybrid_pg.experiments.results import (
    PolicyStd,
    learning_curve,
    policy_std_note,
    policy_std_summary,
    policy_std_titles,
    reads_early,
    update_series,
)
from hybrid_pg.experiments.runner import is_finished, load_result, run_grid, run_key, run_key_seed

STATIONARY = "stationary"


# ---------------------------------------------------------------------------------------------
# the grid
# ---------------------------------------------------------------------------------------------


def cells(cfg: Mapping[str, Any]) -> List[str]:
    """The cells of every env, in the config's order: hybrid_<mode> per mode, reinforce, ppo."""
    out: List[str] = []
    for est in cfg["estimators"]:
        out.extend(f"hybrid_{m}" for m in cfg["modes"]) if est == "hybrid" else out.append(est)
    return out


def _via_nsgym(task: Mapping[str, Any]) -> bool:
    return task.get("schedules_via", "wrapper") == "nsgym"


def env_rules(task: Mapping[str, Any], env_name: str) -> Dict[str, Any]:
    """{parameter: how it moves} of an env of a task: its NonStationaryWrapper schedules, or (NS-Gym
    tasks) its per-parameter NS-Gym rules ``{update_fn, update_kwargs, scheduler, scheduler_kwargs}``
    with the entry's shared arguments filled in (:func:`hybrid_pg_envs.nsgym.parameter_rules`)."""
    entry = task["envs"][env_name]
    if not _via_nsgym(task):
        return dict(entry)
    from hybrid_pg_envs.nsgym import RULE_KEYS, parameter_rules

    return parameter_rules(entry["tunable_params"], **{k: v for k, v in entry.items() if k in RULE_KEYS})


def _is_still(rule: Any) -> bool:
    """A parameter that does not move: a number or a ``constant`` schedule, or NS-Gym's ``NoUpdate``."""
    if isinstance(rule, (int, float)):
        return True
    if not isinstance(rule, Mapping):  # an NS-Gym update function given as an object
        return type(rule).__name__ == "NoUpdate"
    if "kind" in rule:
        return rule["kind"] == "constant"
    update_fn = rule.get("update_fn")
    return getattr(update_fn, "__name__", update_fn) == "NoUpdate"


def is_stationary(rules: Mapping[str, Any]) -> bool:
    return all(_is_still(rule) for rule in rules.values())


def moving_parameter(rules: Mapping[str, Any]) -> str:
    """The parameter an env's figures and switch times follow: its first moving one."""
    return next((name for name, rule in rules.items() if not _is_still(rule)), next(iter(rules)))


def switch_times(task: Mapping[str, Any], env_name: str) -> List[float]:
    """The clock steps (= training steps: the clock counts global steps) at which the moving parameter
    switches, for the recovery metric: a ``switch`` schedule's switches; for NS-Gym rules the steps
    1 <= t < total at which an event scheduler (PeriodicScheduler: every ``period`` steps from
    ``start``; DiscreteScheduler: its events) fires, asked of NS-Gym's scheduler. A parameter that
    changes continually (a linear drift, NS-Gym's ContinuousScheduler) has none: recovery does not
    apply there."""
    rules = env_rules(task, env_name)
    name = moving_parameter(rules)
    rule, total = rules[name], int(task["total_timesteps"])
    if not _via_nsgym(task):
        return switch_steps(rule, total)
    if _is_still(rule) or not isinstance(rule, Mapping):  # (an update function object: its schedule is not readable)
        return []
    from hybrid_pg_envs.nsgym import scheduler_events

    return [float(t) for t in scheduler_events(rule, total) or []]


def _env_section(task: Mapping[str, Any], env_name: str, seed: int) -> Dict[str, Any]:
    """The run config's env section: the task's id and the env's schedules through the task's route,
    with the clock counting global steps (``steps_per_tick = n_envs``)."""
    entry = copy.deepcopy(task["envs"][env_name])
    env: Dict[str, Any] = {"id": task["env_id"], "n_envs": int(task["n_envs"]), "normalize": bool(task.get("normalize", False))}
    via = task.get("schedules_via", "wrapper")
    if via == "nsgym":
        clock_args = sorted({"clock_start", "steps_per_tick"} & set(entry))
        if clock_args:
            raise ValueError(f"{env_name}: {clock_args} are set by the study (steps_per_tick = n_envs, the clock from 0)")
        # random NS-Gym update functions are seeded by the run's seed: the same path in every cell of a seed
        env["wrappers"] = [{"name": "nsgym", "kwargs": {"schedule_seed": int(seed), **entry, "steps_per_tick": int(task["n_envs"])}}]
        return env
    ns_kwargs = {"schedules": entry, "steps_per_tick": int(task["n_envs"])}
    if via == "env_kwargs":
        env["env_kwargs"] = ns_kwargs
    else:
        env["wrappers"] = [{"name": "nonstationary", "kwargs": ns_kwargs}]
    return env


def run_config_for(task: Mapping[str, Any], cfg: Mapping[str, Any], env_name: str, cell: str, seed: int) -> Dict[str, Any]:
    """The resolved run config of one (env, cell, seed) of a task."""
    env = _env_section(task, env_name, seed)
    algo: Dict[str, Any] = dict(task["algo"])
    if cell == "ppo":
        algo["algorithm"] = "ppo"
    else:
        algo.update(algorithm="hybrid_pg", **task.get("hybrid_algo", {}))
        if cell == "reinforce":
            algo["estimator"] = "reinforce"
        else:
            algo.update(estimator="hybrid", **cfg["modes"][cell[len("hybrid_") :]], **task.get("oracle", {}))
            if is_stationary(env_rules(task, env_name)):
                algo.pop("oracle_frozen_clock", None)  # the frozen copy would equal the live one
    train = {
        "total_timesteps": int(task["total_timesteps"]),
        "seed": int(seed),
        "eval_freq": int(task.get("eval_freq", 0)),
        "eval_episodes": int(task.get("eval_episodes", 5)),
    }
    return resolve_config({"env": env, "algo": algo, "train": train})


def question_cells(cfg: Mapping[str, Any]) -> List[str]:
    return [f"hybrid_{cfg['question_mode']}", "reinforce"]


def build_runs(
    cfg: Mapping[str, Any], tasks: Sequence[str], seeds: Sequence[int], question_only: bool = False
) -> List[Tuple[str, Dict[str, Any]]]:
    """(label ``task__env__cell``, run config) for every run, in priority order (see the config):
    the question's cells on every env seed by seed, then the other hybrid modes, then the rest
    (``question_only``: the question's cells alone)."""
    first = question_cells(cfg)
    tiers = [
        first,
        [c for c in cells(cfg) if c.startswith("hybrid_") and c not in first],
        [c for c in cells(cfg) if not c.startswith("hybrid_") and c not in first],
    ]
    if question_only:
        tiers = tiers[:1]
    runs = []
    for task_name in tasks:
        task = cfg["tasks"][task_name]
        for tier in tiers:
            for seed in seeds:
                for env_name in task["envs"]:
                    for cell in tier:
                        runs.append((f"{task_name}__{env_name}__{cell}", run_config_for(task, cfg, env_name, cell, seed)))
    return runs


def quick_config(cfg: Mapping[str, Any]) -> Dict[str, Any]:
    """A tiny version of the study for the test: a few hundred steps, 2 modes, small oracle batches."""
    cfg = copy.deepcopy(dict(cfg))
    other = next(m for m in cfg["modes"] if m != cfg["question_mode"])
    cfg["modes"] = {m: cfg["modes"][m] for m in (other, cfg["question_mode"])}
    cfg["seeds"] = [0]
    for task in cfg["tasks"].values():
        # the stationary env and the first moving one; 4 updates of 50 steps per env: one Pendulum episode
        task["envs"] = dict(list(task["envs"].items())[:2])
        steps = 4 * 50 * int(task["n_envs"])
        task.update(total_timesteps=steps, eval_freq=0, eval_episodes=1)
        task["algo"].update(n_steps=50, batch_size=50, n_epochs=1)
        task["oracle"] = {**task.get("oracle", {}), "oracle_freq": 1, "oracle_samples": 64}
        task["hybrid_algo"] = {**task.get("hybrid_algo", {}), "lambda_warmup": 1}
        for env_name, entry in task["envs"].items():
            if _via_nsgym(task):  # each parameter's own rule, its period and interpolation span shrunk
                rules = env_rules(task, env_name)
                from hybrid_pg_envs.nsgym import RULE_KEYS

                task["envs"][env_name] = {**{k: v for k, v in entry.items() if k not in RULE_KEYS}, "tunable_params": rules}
                for rule in rules.values():
                    if "period" in (rule["scheduler_kwargs"] or {}):
                        rule["scheduler_kwargs"]["period"] = steps // 3
                    if "T" in (rule["update_kwargs"] or {}):
                        rule["update_kwargs"]["T"] = steps
                continue
            for sched in entry.values():
                if isinstance(sched, dict) and sched.get("kind") == "switch":
                    sched["every"] = steps // 3
                elif isinstance(sched, dict) and "duration" in sched:
                    sched["duration"] = steps
    return cfg


# ---------------------------------------------------------------------------------------------
# analysis
# ---------------------------------------------------------------------------------------------


def _split(label: str) -> Tuple[str, str, str]:
    task, env, cell = label.split("__")
    return task, env, cell


def group(results: Sequence[Mapping[str, Any]], task: str) -> Dict[Tuple[str, str], Dict[int, Mapping[str, Any]]]:
    """{(env, cell): {seed: result}} of one task."""
    out: Dict[Tuple[str, str], Dict[int, Mapping[str, Any]]] = {}
    for r in results:
        t, env, cell = _split(r["spec"]["label"])
        if t == task:
            out.setdefault((env, cell), {})[int(r["spec"]["seed"])] = r
    return out


def _mean_ci(values: Sequence[float]) -> Dict[str, Any]:
    """Mean with a bootstrap CI over runs (the CI is NaN below 2 runs; it is a range, not a claim)."""
    vals = [v for v in values if math.isfinite(v)]
    if not vals:
        return {"mean": math.nan, "low": math.nan, "high": math.nan, "n": 0}
    if len(vals) < 2:
        return {"mean": float(vals[0]), "low": math.nan, "high": math.nan, "n": 1}
    ci = stratified_bootstrap_ci(np.array(vals))
    return {"mean": ci.point, "low": ci.low, "high": ci.high, "n": len(vals)}


def _oracle_warmup(cfg_algo: Mapping[str, Any]) -> int:
    """Logged oracle values to skip: those of the updates that hold lam at 0 plus one short window."""
    freq = max(1, int(cfg_algo.get("oracle_freq") or 1))
    return int(math.ceil((int(cfg_algo.get("lambda_warmup", 2)) + 1) / freq))


def tracking_rows(
    task: Mapping[str, Any], grouped: Mapping[Tuple[str, str], Mapping[int, Mapping[str, Any]]], cfg: Mapping[str, Any]
) -> List[Dict[str, Any]]:
    rows = []
    for env_name in task["envs"]:
        switches = switch_times(task, env_name)
        for mode in cfg["modes"]:
            runs = grouped.get((env_name, f"hybrid_{mode}"), {})
            if not runs:
                continue
            seeds = sorted(runs)
            rs = [runs[s] for s in seeds]
            warm = _oracle_warmup(rs[0]["config"]["algo"])
            errors = [nanmean(after_warmup(r, "hybrid/oracle_error_applied", warm).tolist()) for r in rs]
            live_minus_frozen = [after_warmup(r, "hybrid/oracle_env_drift_share", warm) for r in rs]
            frozen = [after_warmup(r, "hybrid/oracle_lambda_frozen_env", warm) for r in rs]
            if not any(f.size for f in frozen):  # stationary: the live oracle is the frozen one
                frozen = [after_warmup(r, "hybrid/oracle_lambda", warm) for r in rs]
            rec = [recovery_times(r, switches) for r in rs]
            flat = [t for per in rec for t in per]
            rows.append(
                {
                    "env": env_name,
                    "mode": mode,
                    "runs": len(rs),
                    "seeds": seeds,
                    "switches": switches,
                    "error_to_oracle": _mean_ci(errors),
                    "error_to_lam_var": nanmean([nanmean(after_warmup(r, "hybrid/oracle_error_applied_var", warm).tolist()) for r in rs]),
                    "error_to_lam_mse": nanmean([nanmean(after_warmup(r, "hybrid/oracle_error_applied_mse", warm).tolist()) for r in rs]),
                    "oracle_se_var": nanmean([nanmean(after_warmup(r, "hybrid/oracle_lambda_var_se", warm).tolist()) for r in rs]),
                    "oracle_se_mse": nanmean([nanmean(after_warmup(r, "hybrid/oracle_lambda_mse_se", warm).tolist()) for r in rs]),
                    "reference_is_mse": nanmean([nanmean(after_warmup(r, "hybrid/oracle_lambda_is_mse", warm).tolist()) for r in rs]),
                    "lag_oracle_updates": nanmean([tracking_lag(r, warm) for r in rs]),
                    "recovery_per_switch": [[None if math.isnan(t) else t for t in per] for per in rec],
                    "recovery_mean": nanmean(flat),
                    "recovered_fraction": float(np.mean([math.isfinite(t) for t in flat])) if flat else math.nan,
                    "env_drift_share": nanmean([nanmean(np.abs(d).tolist()) for d in live_minus_frozen if d.size])
                    if any(d.size for d in live_minus_frozen)
                    else 0.0,
                    "policy_drift_spread": nanmean([float(np.nanstd(f)) for f in frozen if np.isfinite(f).any()]),
                    "mean_lambda": nanmean([nanmean(after_warmup(r, "hybrid/lambda", 0).tolist()) for r in rs]),
                }
            )
    return rows


def _per_seed(runs: Mapping[int, Mapping[str, Any]], fn) -> Dict[int, float]:
    return {s: float(fn(r)) for s, r in runs.items()}


def _mean_train_return(r: Mapping[str, Any]) -> float:
    values = learning_curve(r)[1]
    return float(np.mean(values)) if values.size else math.nan


def _eval_return(r: Mapping[str, Any]) -> float:
    value = r.get("final_return")
    return math.nan if value is None else float(value)


def return_rows(
    task: Mapping[str, Any], grouped: Mapping[Tuple[str, str], Mapping[int, Mapping[str, Any]]], cfg: Mapping[str, Any]
) -> List[Dict[str, Any]]:
    rows = []
    for env_name in task["envs"]:
        for cell in cells(cfg):
            runs = grouped.get((env_name, cell), {})
            if not runs:
                continue
            final = _per_seed(runs, final_train_return)
            mean_train = _per_seed(runs, _mean_train_return)
            regret: Dict[str, Any] = {"mean": math.nan, "low": math.nan, "high": math.nan, "n": 0}
            if env_name != STATIONARY and (STATIONARY, cell) in grouped:
                per = paired_regret(_per_seed(grouped[(STATIONARY, cell)], _mean_train_return), mean_train)
                regret = {**_mean_ci(list(per.values())), "per_seed": per}
            rows.append(
                {
                    "env": env_name,
                    "cell": cell,
                    "runs": len(runs),
                    "seeds": sorted(runs),
                    "final_train_return": _mean_ci(list(final.values())),
                    "final_eval_return": _mean_ci(list(_per_seed(runs, _eval_return).values())),
                    "mean_train_return": _mean_ci(list(mean_train.values())),
                    "regret_vs_stationary": regret,
                    "train_seconds": nanmean([float(r.get("train_seconds", math.nan)) for r in runs.values()]),
                    **policy_std_summary(list(runs.values()), float(task["total_timesteps"])).columns(),
                }
            )
    return rows


def question_rows(
    task: Mapping[str, Any], grouped: Mapping[Tuple[str, str], Mapping[int, Mapping[str, Any]]], cfg: Mapping[str, Any]
) -> List[Dict[str, Any]]:
    """Per moving env and hybrid mode: (hybrid - reinforce) final training return, moving minus
    stationary, paired by seed (:func:`difference_of_differences`)."""
    rows = []
    final = {key: _per_seed(runs, final_train_return) for key, runs in grouped.items()}
    for env_name in task["envs"]:
        if env_name == STATIONARY:
            continue
        for mode in cfg["modes"]:
            hyb = f"hybrid_{mode}"
            keys = [(env_name, hyb), (env_name, "reinforce"), (STATIONARY, hyb), (STATIONARY, "reinforce")]
            if not all(k in final for k in keys):
                continue
            did = difference_of_differences(*(final[k] for k in keys))
            if did["seeds"]:
                rows.append({"env": env_name, "mode": mode, **did})
    return rows


def coverage(
    task: Mapping[str, Any], grouped: Mapping[Tuple[str, str], Mapping[int, Mapping[str, Any]]], cfg: Mapping[str, Any], planned: int
) -> str:
    lines = ["| env | " + " | ".join(cells(cfg)) + " |", "|---|" + "---|" * len(cells(cfg))]
    for env_name in task["envs"]:
        lines.append(f"| {env_name} | " + " | ".join(f"{len(grouped.get((env_name, c), {}))}/{planned}" for c in cells(cfg)) + " |")
    return "\n".join(lines)


def _f(value: Any, spec: str = ".3f") -> str:
    return "" if value is None or (isinstance(value, float) and not math.isfinite(value)) else format(value, spec)


def _ci(d: Mapping[str, Any], spec: str = ".1f") -> str:
    if not math.isfinite(d.get("mean", math.nan)):
        return ""
    if not math.isfinite(d.get("low", math.nan)):
        return f"{d['mean']:{spec}} (n={d['n']})"
    return f"{d['mean']:{spec}} [{d['low']:{spec}}, {d['high']:{spec}}] (n={d['n']})"


def report(
    task_name: str,
    task: Mapping[str, Any],
    cfg: Mapping[str, Any],
    tracking: List[Dict[str, Any]],
    returns: List[Dict[str, Any]],
    question: List[Dict[str, Any]],
    cover: str,
) -> str:
    freq = int(task.get("oracle", {}).get("oracle_freq", 1) or 1)
    early = reads_early(float(task["total_timesteps"]))
    std_titles = policy_std_titles(early)
    out = [
        f"# {task_name}: {task['env_id']}, {task['total_timesteps']} steps per run",
        "",
        "Runs finished per cell (of the seeds planned):",
        "",
        cover,
        "",
        f"## lam applied vs the oracle's lam* (hybrid runs; oracle every {freq} update(s), counts below in oracle updates)",
        "",
        "| env | mode | runs | abs(lam - lam*) mean [CI] | ... to lam*_var | ... to lam*_mse | oracle SE of lam*_var / lam*_mse | lag | "
        "recovery per switch (per seed) | recovered | env-drift share of lam* | policy-drift spread of lam* | mean lam |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in tracking:
        rec = (
            " / ".join(", ".join("-" if t is None else f"{t:.0f}" for t in per) for per in zip(*r["recovery_per_switch"]))
            if r["recovery_per_switch"] and r["recovery_per_switch"][0]
            else ""
        )
        if not r.get("switches", True):
            rec = "n/a (no switches)"
        recovered = "" if not math.isfinite(r["recovered_fraction"]) else f"{100 * r['recovered_fraction']:.0f}%"
        out.append(
            f"| {r['env']} | {r['mode']} | {r['runs']} | {_ci(r['error_to_oracle'], '.3f')} | {_f(r['error_to_lam_var'])} | {_f(r['error_to_lam_mse'])} | "
            f"{_f(r['oracle_se_var'])} / {_f(r['oracle_se_mse'])} | {_f(r['lag_oracle_updates'], '.1f')} | {rec} | {recovered} | "
            f"{_f(r['env_drift_share'])} | {_f(r['policy_drift_spread'])} | {_f(r['mean_lambda'])} |"
        )
    out += [
        "",
        "Recovery: oracle updates on post-switch rollouts until abs(lam - lam*) <= max(0.05, 2 x the oracle's own SE of lam*) for 3 in a row "
        '("-": not before the next switch or the end); switches separated by "/", seeds by ","; '
        '"n/a": the parameter does not switch (held, or drifting continually: a linear drift, NS-Gym\'s ContinuousScheduler). '
        "Lag: the shift (oracle updates) that best aligns the applied lam with lam*; it means nothing where lam* barely moves "
        "(every shift fits about equally).",
        "",
        "## Returns (mean over seeds [95% bootstrap CI over seeds], n runs)",
        "",
        "| env | cell | runs | final train return (last 10%) | final eval return | mean train return | regret vs stationary (paired by seed) | train s/run | "
        + " | ".join(std_titles)
        + " |",
        "|---|---|---|---|---|---|---|---|" + "---|" * len(std_titles),
    ]
    for r in returns:
        out.append(
            f"| {r['env']} | {r['cell']} | {r['runs']} | {_ci(r['final_train_return'])} | {_ci(r['final_eval_return'])} | "
            f"{_ci(r['mean_train_return'])} | {_ci(r['regret_vs_stationary'])} | {_f(r['train_seconds'], '.0f')} | "
            + " | ".join(PolicyStd.from_columns(r).texts())
            + " |"
        )
    out += [
        "",
        "Regret vs stationary: the same cell and seed's mean training return on the stationary env minus this env's; "
        "it includes any change in how hard the task is, not only the cost of tracking it. " + policy_std_note(early),
        "",
        "## The paper's question: does hybrid - reinforce change when the task moves?",
        "",
        "Per seed: (hybrid - reinforce) final training return on the moving env minus the same on the stationary env; "
        f"mean over the seeds present in all four cells, paired bootstrap 95% CI, Wilcoxon p; no verdict below {MIN_RUNS_FOR_SIGNIFICANCE} seeds.",
        "",
        "| moving env | hybrid mode | seeds | hybrid - reinforce, stationary | hybrid - reinforce, moving | difference [95% CI] | p | verdict |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for q in question:
        ci = f"{q['diff']:.1f}" + (f" [{q['low']:.1f}, {q['high']:.1f}]" if len(q["seeds"]) > 1 else "")
        out.append(
            f"| {q['env']} | {q['mode']} | {len(q['seeds'])} | {q['advantage_stationary']:.1f} | {q['advantage_moving']:.1f} | {ci} | {_f(q['p_value'], '.2f') if len(q['seeds']) > 1 else ''} | {q['verdict']} |"
        )
    if not question:
        out.append("| (no env has paired hybrid and reinforce runs on both versions yet) | | | | | | | |")
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------------------------------------
# figures
# ---------------------------------------------------------------------------------------------


def _first_seed(runs: Mapping[int, Mapping[str, Any]]) -> Optional[Mapping[str, Any]]:
    return runs[min(runs)] if runs else None


def _overlay(ax: Any, task: Mapping[str, Any], env_name: str, run: Mapping[str, Any]) -> None:
    param = moving_parameter(env_rules(task, env_name))
    steps, values = update_series(run, f"env/{param}")
    if steps.size:
        twin = ax.twinx()
        twin.plot(steps, values, color="grey", alpha=0.35, lw=3)
        twin.set_ylabel(f"{param} (env)", color="grey")
    for s in switch_times(task, env_name):
        ax.axvline(s, color="red", alpha=0.3)


def plot_lambda(task_name: str, task: Mapping[str, Any], cfg: Mapping[str, Any], grouped: Mapping, out: Path) -> None:
    envs = list(task["envs"])
    fig, axes = figure(len(envs))
    ref = f"hybrid_{cfg['question_mode']}"
    for ax, env_name in zip(axes, envs):
        for mode in cfg["modes"]:
            run = _first_seed(grouped.get((env_name, f"hybrid_{mode}"), {}))
            if run:
                ax.plot(*update_series(run, "hybrid/lambda"), lw=1, label=f"applied, {mode} (seed {run['spec']['seed']})")
        run = _first_seed(grouped.get((env_name, ref), {}))
        if run:
            for key, style, name in (("var", "k--", "lam*_var"), ("mse", "m:", "lam*_mse")):
                steps, lam = update_series(run, f"hybrid/oracle_lambda_{key}")
                _, se = update_series(run, f"hybrid/oracle_lambda_{key}_se")
                if steps.size:
                    ax.plot(steps, lam, style, lw=1.4, label=f"oracle {name} ({cfg['question_mode']} run)")
                    if se.size == lam.size:
                        ax.fill_between(steps, lam - se, lam + se, color=style[0], alpha=0.12)
            _overlay(ax, task, env_name, run)
        ax.set_ylim(-0.05, 1.05)
        ax.set_title(
            f"{task_name} {env_name}: applied lam vs oracle lam* (band: ± jackknife SE); grey: env parameter, red: switches", fontsize=9
        )
        ax.set_ylabel("lam")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=6, ncol=3, loc="lower left")
    save_figure(fig, axes, out)


def plot_drift(task_name: str, task: Mapping[str, Any], cfg: Mapping[str, Any], grouped: Mapping, out: Path) -> None:
    envs = [e for e in task["envs"] if e != STATIONARY] or list(task["envs"])
    fig, axes = figure(len(envs))
    ref = f"hybrid_{cfg['question_mode']}"
    for ax, env_name in zip(axes, envs):
        run = _first_seed(grouped.get((env_name, ref), {}))
        if not run:
            ax.set_title(f"{task_name} {env_name}: no finished {ref} run yet", fontsize=9)
            continue
        draw_drift_split(ax, run)
        _overlay(ax, task, env_name, run)
        ax.set_title(f"{task_name} {env_name}: policy drift vs env drift of lam* ({ref}, seed {run['spec']['seed']})", fontsize=9)
        ax.set_ylabel("lam*")
        ax.legend(fontsize=7, loc="lower left")
    save_figure(fig, axes, out)


def plot_returns(task_name: str, task: Mapping[str, Any], cfg: Mapping[str, Any], grouped: Mapping, out: Path) -> None:
    envs = list(task["envs"])
    fig, axes = figure(len(envs))
    for ax, env_name in zip(axes, envs):
        for cell in cells(cfg):
            curves = [learning_curve(r) for r in grouped.get((env_name, cell), {}).values()]
            curves = [c for c in curves if c[0].size]
            if curves:
                n = min(len(c[0]) for c in curves)
                ax.plot(curves[0][0][:n], np.mean([c[1][:n] for c in curves], axis=0), lw=1, label=f"{cell} (n={len(curves)})")
        run = next((_first_seed(grouped[(env_name, c)]) for c in cells(cfg) if grouped.get((env_name, c))), None)
        if run:
            _overlay(ax, task, env_name, run)
        ax.set_title(f"{task_name} {env_name}: training return (mean over seeds)", fontsize=9)
        ax.set_ylabel("return")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=6, ncol=3, loc="lower right")
    save_figure(fig, axes, out)


def plot_question(task_name: str, question: List[Dict[str, Any]], out: Path) -> None:
    fig, (ax,) = figure(1, width=9, height=3.5)
    for i, q in enumerate(question):
        ax.errorbar(
            [i],
            [q["diff"]],
            yerr=[[q["diff"] - q["low"]], [q["high"] - q["diff"]]] if len(q["seeds"]) > 1 else None,
            fmt="o",
            capsize=3,
            color="k",
        )
        ax.plot([i] * len(q["per_seed"]), list(q["per_seed"].values()), "x", color="tab:red", alpha=0.7)
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xticks(range(len(question)), [f"{q['env']}\n{q['mode']}\n(n={len(q['seeds'])})" for q in question], fontsize=7)
    ax.set_ylabel("(H - R) moving - (H - R) stationary")
    ax.set_title(f"{task_name}: change of hybrid - reinforce final return (dots: mean [bootstrap CI], x: per seed)", fontsize=9)
    save_figure(fig, [ax], out, xlabel="")


# ---------------------------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------------------------


def finished_results(runs: Sequence[Tuple[str, Mapping[str, Any]]], runs_dir: Path) -> List[Dict[str, Any]]:
    """The runs of the grid whose directory holds a result.json (a partial grid)."""
    return [load_result(runs_dir / run_key(label, c), label=label) for label, c in runs if is_finished(runs_dir / run_key(label, c))]


def seeds_on_disk(runs_dir: Path, task_name: str) -> Set[int]:
    """The seeds of the task's finished runs in ``runs_dir`` (any cell), so that a report covers every
    finished run, whichever ``--seeds`` trained it (Pendulum's 6 seeds, HalfCheetah's question cells' 5)."""
    if not runs_dir.is_dir():
        return set()
    seeds = {run_key_seed(run_dir.name) for run_dir in runs_dir.glob(f"{task_name}__*") if is_finished(run_dir)}
    return {seed for seed in seeds if seed is not None}


def analyse(
    cfg: Mapping[str, Any],
    tasks: Sequence[str],
    results: Sequence[Mapping[str, Any]],
    out: Path,
    seeds: Optional[Mapping[str, Sequence[int]]] = None,
) -> Dict[str, Any]:
    """Reports and figures per task; ``seeds``: per task, the seeds the coverage table counts (default
    the config's)."""
    out.mkdir(parents=True, exist_ok=True)
    everything = {}
    for task_name in tasks:
        task = cfg["tasks"][task_name]
        grouped = group(results, task_name)
        tracking, returns, question = tracking_rows(task, grouped, cfg), return_rows(task, grouped, cfg), question_rows(task, grouped, cfg)
        text = report(
            task_name, task, cfg, tracking, returns, question, coverage(task, grouped, cfg, len((seeds or {}).get(task_name, cfg["seeds"])))
        )
        (out / f"report_{task_name}.md").write_text(text)
        summary = {"tracking": tracking, "returns": returns, "question": question, "runs": sum(len(v) for v in grouped.values())}
        (out / f"summary_{task_name}.json").write_text(json.dumps(summary, indent=1, default=str) + "\n")
        plot_lambda(task_name, task, cfg, grouped, out / f"{task_name}_lambda.png")
        plot_drift(task_name, task, cfg, grouped, out / f"{task_name}_drift.png")
        plot_returns(task_name, task, cfg, grouped, out / f"{task_name}_returns.png")
        plot_question(task_name, question, out / f"{task_name}_question.png")
        print(text)
        everything[task_name] = summary
    return everything


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config")
    parser.add_argument("--task", action="append", default=None, help="a task of the config (repeatable; default: all)")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--backend", choices=("local", "ray"), default="local")
    parser.add_argument("--address", default=None, help="--backend ray: the Ray cluster")
    parser.add_argument("--seeds", type=int, nargs="+", default=None)
    parser.add_argument("--quick", action="store_true", help="a tiny grid (a few hundred steps, 1 seed, 2 modes) for the test")
    parser.add_argument("--report-only", action="store_true", help="analyse the finished runs; train nothing")
    parser.add_argument(
        "--question-only",
        action="store_true",
        help="train only the paper's question's cells (the hybrid of question_mode and REINFORCE), e.g. "
        "extra seeds for its verdict; the report still covers every finished run",
    )
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    if args.backend == "ray":
        try:
            require_ray()
        except RayNotInstalledError as exc:
            parser.error(str(exc))
    cfg = yaml.safe_load(Path(args.config).read_text())
    if args.quick:
        cfg = quick_config(cfg)
    # train the seeds asked for; report every finished run: the file's seeds, those, and any other seed
    # a task has finished runs of (a run with --seeds 3 4 5 must not shrink the report to seeds 3-5,
    # nor a later --report-only drop them)
    train_seeds = list(args.seeds) if args.seeds else list(cfg["seeds"])
    cfg["seeds"] = sorted(set(cfg["seeds"]) | set(train_seeds))
    tasks = args.task or list(cfg["tasks"])
    unknown = sorted(set(tasks) - set(cfg["tasks"]))
    if unknown:
        parser.error(f"unknown task(s) {unknown}; the config has {sorted(cfg['tasks'])}")
    out = Path(args.out or (cfg["output_dir"] + ("_quick" if args.quick else "")))
    if not args.report_only:
        run_grid(
            build_runs(cfg, tasks, train_seeds, question_only=args.question_only),
            out / "runs",
            workers=args.workers,
            backend=args.backend,
            address=args.address,
        )
    seeds = {t: sorted(set(cfg["seeds"]) | seeds_on_disk(out / "runs", t)) for t in tasks}
    runs = [run for t in tasks for run in build_runs(cfg, [t], seeds[t])]
    results = finished_results(runs, out / "runs")
    print(f"{len(results)} of {len(runs)} runs finished")
    analyse(cfg, tasks, results, out, seeds)
    print(f"wrote {out}/report_<task>.md, summary_<task>.json and <task>_lambda, _drift, _returns, _question .png for {tasks}")


if __name__ == "__main__":
    main()
