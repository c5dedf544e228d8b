"""A grid's cells against a baseline cell: the questions a benchmark's goals ask.

``ablate``'s tables compare every cell with the file's ``reference`` (REINFORCE with the same
update: what isolates the gradient). A user choosing an algorithm asks something else: does it beat
the baseline they would otherwise run (SB3's PPO), how often, how much sooner, and does it ever
collapse below it? Per env and estimator this module reports, from the finished runs only:

* final return: mean and IQM over seeds with a 95% bootstrap CI (IQM from 4 runs on);
* P(improvement) over the baseline: P(a run of the cell beats a run of the baseline on the same env),
  ties half, with a bootstrap CI; aggregated over envs as a stratified bootstrap (envs as strata);
* steps to the baseline's return: the first evaluation step at which the cell's mean evaluation
  curve (over seeds, on the evaluation steps every run has) reaches the baseline's mean final return,
  and that step over the baseline's own (the goal "in at most 0.5x the steps" reads this ratio);
* worst seed: the cell's lowest final return against the baseline's lowest (a gain must not come
  with collapses), and optionally, at an earlier budget, against a *floor* cell's lowest (the
  hybrid against REINFORCE-with-the-same-update: the weight must never make learning worse than its
  unbiased fallback). Read literally that is a coin flip when the two cells do not differ (the
  lowest of all runs is the cell's with probability n / (n + m)), so the row also counts the
  cell's runs below the floor's worst with the exact probability of that many under
  exchangeability (:func:`~hybrid_pg.experiments.aggregate.below_minimum_test`): "worse than its
  fallback by more than noise" is p < 0.05;
* the weight: the median over updates of ``hybrid/lambda`` and of ``hybrid/variance_ratio_vs_reinforce``;
* the policy's standard deviation (``train/std``) at 100k steps and at the end, each the median over
  seeds (:func:`~hybrid_pg.experiments.results.policy_std_summary`; the end only where the budget is
  100k steps or less): where a cell loses, a std that fell faster than the baseline's is the first
  suspect.

Nothing is called met with fewer than :data:`MIN_RUNS` runs on either side: the row says how many
there are. Wall time is not read from grid runs (they share cores with whatever else ran); the cost
ratios come from a side-by-side measurement (``examples/mujoco_cost.py``).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from hybrid_pg.experiments.aggregate import (
    MIN_RUNS_FOR_SIGNIFICANCE,
    SIGNIFICANCE_LEVEL,
    Interval,
    iqm,
    iqm_is_informative,
    mean,
    probability_of_improvement,
    stratified_bootstrap_ci,
)
from hybrid_pg.experiments.fallback_goals import (
    GridPlan,
    estimator_rows,
    fallback_markdown,
    fallback_rows,
    fallback_verdicts,
    floor_test,
    reading,
    verdict_word,
    why_undecided,
)
from hybrid_pg.experiments.results import (
    Results,
    evaluation_curve,
    median_over_updates,
    policy_std_note,
    policy_std_summary,
    policy_std_titles,
    return_at,
    run_seed,
)

#: runs per side before a goal can be called met (the project's rule against 2-3-seed verdicts)
MIN_RUNS: int = MIN_RUNS_FOR_SIGNIFICANCE


def mean_curve(results: Sequence[Mapping[str, Any]]) -> Tuple[np.ndarray, np.ndarray]:
    """Mean evaluation curve over runs, on the evaluation steps every run has."""
    curves = [evaluation_curve(r) for r in results]
    curves = [c for c in curves if c[0].size]
    if not curves:
        return np.empty(0), np.empty(0)
    common = sorted(set(curves[0][0].tolist()).intersection(*(set(c[0].tolist()) for c in curves[1:])))
    steps = np.array(common)
    values = np.mean([[dict(zip(c[0].tolist(), c[1].tolist()))[s] for s in common] for c in curves], axis=0) if common else np.empty(0)
    return steps, np.asarray(values, dtype=float)


def steps_to_reach(results: Sequence[Mapping[str, Any]], target: float) -> float:
    """First evaluation step at which the mean curve of ``results`` reaches ``target`` (nan: never)."""
    steps, values = mean_curve(results)
    hit = np.nonzero(values >= target)[0]
    return float(steps[hit[0]]) if hit.size else math.nan


def _finals(results: Sequence[Mapping[str, Any]]) -> np.ndarray:
    values = np.array([float(r["final_return"]) for r in results], dtype=float)
    return values[np.isfinite(values)]


def seed_interval(values: np.ndarray, statistic) -> Optional[Interval]:
    """``statistic`` of per-seed values with a 95% bootstrap CI; None without values (or for an IQM
    of too few), no interval for one value (a bootstrap of one value is that value)."""
    if values.size == 0 or (statistic is iqm and not iqm_is_informative(values.size)):
        return None
    if values.size == 1:
        return Interval(float(values[0]), math.nan, math.nan)
    return stratified_bootstrap_ci([values], statistic=statistic)


def _median_key(results: Sequence[Mapping[str, Any]], key: str, skip: int) -> float:
    values = [median_over_updates(r, key, skip=skip) for r in results]
    values = [v for v in values if math.isfinite(v)]
    return float(np.median(values)) if values else math.nan


def cell_row(
    name: str,
    runs: Sequence[Mapping[str, Any]],
    baseline_runs: Sequence[Mapping[str, Any]],
    floor_runs: Optional[Sequence[Mapping[str, Any]]] = None,
    at_steps: Optional[float] = None,
    skip_updates: int = 0,
    total_timesteps: Optional[float] = None,
) -> Dict[str, Any]:
    """One estimator's numbers on one env against the baseline's (and the floor's at ``at_steps``);
    ``total_timesteps``: the runs' budget (where the policy std is read; default: their configs')."""
    finals, base = _finals(runs), _finals(baseline_runs)
    row: Dict[str, Any] = {"estimator": name, "runs": int(finals.size), "baseline_runs": int(base.size)}
    row["mean"], row["iqm"] = seed_interval(finals, mean), seed_interval(finals, iqm)
    # one run on either side: a comparison of two numbers, not a probability with an interval
    row["poi"] = probability_of_improvement([finals], [base]) if finals.size > 1 and base.size > 1 else None
    target = float(np.mean(base)) if base.size else math.nan
    own, theirs = steps_to_reach(runs, target), steps_to_reach(baseline_runs, target)
    row["steps_to_baseline"] = own
    row["steps_ratio"] = own / theirs if math.isfinite(own) and math.isfinite(theirs) and theirs > 0 else math.nan
    row["worst"] = float(finals.min()) if finals.size else math.nan
    row["baseline_worst"] = float(base.min()) if base.size else math.nan
    if floor_runs is not None and at_steps is not None:
        early = np.array([return_at(r, at_steps) for r in runs])
        floor = np.array([return_at(r, at_steps) for r in floor_runs])
        row["worst_at"] = float(np.nanmin(early)) if np.isfinite(early).any() else math.nan
        row["floor_worst_at"] = float(np.nanmin(floor)) if np.isfinite(floor).any() else math.nan
        row["floor_runs"] = int(np.isfinite(floor).sum())
        row["floor_test"] = floor_test(early, floor)
    row["lambda_median"] = _median_key(runs, "hybrid/lambda", skip_updates)
    row["variance_ratio_median"] = _median_key(runs, "hybrid/variance_ratio_vs_reinforce", skip_updates)
    row["policy_std"] = policy_std_summary(runs, total_timesteps)
    return row


def env_rows(
    results: Results,
    baseline: str,
    floor: Optional[str] = None,
    at_steps: Optional[float] = None,
    skip_updates: int = 0,
    total_timesteps: Optional[float] = None,
) -> List[Dict[str, Any]]:
    """Every estimator of one env (the baseline's own row included, for scale)."""
    base = results.get(baseline, [])
    floor_runs = results.get(floor) if floor is not None else None
    return [cell_row(name, runs, base, floor_runs, at_steps, skip_updates, total_timesteps) for name, runs in results.items()]


def aggregate_poi(per_env: Mapping[str, Results], estimator: str, baseline: str) -> Optional[Interval]:
    """P(improvement) over the baseline averaged over the envs where both have runs (stratified)."""
    xs, ys = [], []
    for results in per_env.values():
        x, y = _finals(results.get(estimator, [])), _finals(results.get(baseline, []))
        if x.size > 1 and y.size > 1:
            xs.append(x)
            ys.append(y)
    return probability_of_improvement(xs, ys) if xs else None


def aggregate_normalised_iqm(per_env: Mapping[str, Results], estimator: str, baseline: str) -> Tuple[Optional[Interval], int]:
    """IQM over all runs of final return / the baseline's mean final return on the run's env
    (1 = the baseline's mean), stratified bootstrap over envs; and the number of envs used."""
    strata = []
    for results in per_env.values():
        x, y = _finals(results.get(estimator, [])), _finals(results.get(baseline, []))
        if x.size and y.size and np.mean(y) > 0:
            strata.append(x / np.mean(y))
    total = sum(s.size for s in strata)
    if not strata or not iqm_is_informative(total):
        return None, len(strata)
    return stratified_bootstrap_ci(strata, statistic=iqm), len(strata)


def goal_verdicts(
    per_env_rows: Mapping[str, Sequence[Mapping[str, Any]]],
    estimator: str,
    baseline: str,
    thresholds: Optional[GoalThresholds] = None,
    plan: Optional[GridPlan] = None,
) -> List[Tuple[str, str]]:
    """The benchmark's goals for one estimator, each as (goal, reading). A goal is "met" or "not
    met" only when every env (of the report, or those the ``plan`` sets the cell to run on) has its
    runs on both sides: all the plan's seeds, at least MIN_RUNS; otherwise the reading says what is
    missing."""
    thresholds = thresholds or GoalThresholds()
    rows = estimator_rows(per_env_rows, estimator)
    planned = tuple(plan.envs.get(estimator, ())) if plan is not None else tuple(per_env_rows)
    need = plan.required_runs() if plan is not None else MIN_RUNS
    counts = {env: (min(r["runs"], r["baseline_runs"]), f"{r['runs']}/{r['baseline_runs']}") for env, r in rows.items()}
    undecided = why_undecided(counts, planned, need, "runs per side") if rows else "no runs yet"

    def centre(row: Optional[Mapping[str, Any]]) -> Optional[Interval]:
        # the IQM where it is defined (>= 4 runs), else the mean, so "so far" readings exist early
        return None if row is None else (row["iqm"] or row["mean"])

    baseline_rows = estimator_rows(per_env_rows, baseline)
    base_iqm = {env: centre(baseline_rows.get(env)) for env in rows}
    out: List[Tuple[str, str]] = []

    def is_above(env: str, row: Mapping[str, Any]) -> bool:
        mine, theirs = centre(row), base_iqm[env]
        return mine is not None and theirs is not None and mine.point > theirs.point

    above = {env: is_above(env, r) for env, r in rows.items()}
    out.append(
        (
            f"IQM final return above {baseline}'s on every env",
            reading(undecided, all(above.values()), f"above on {sum(above.values())} of {len(rows)} (the mean where a cell has < 4 runs)"),
        )
    )
    clear = {env: r["poi"] is not None and r["poi"].low > 0.5 for env, r in rows.items()}
    out.append(
        (
            f"P(improvement over {baseline}) > 0.5 with a CI excluding 0.5 on >= {thresholds.poi_envs} envs",
            reading(undecided, sum(clear.values()) >= thresholds.poi_envs, f"on {sum(clear.values())}"),
        )
    )
    fast = {env: math.isfinite(r["steps_ratio"]) and r["steps_ratio"] <= 0.5 for env, r in rows.items()}
    out.append(
        (
            f"{baseline}'s final return reached in <= 0.5x its steps on >= {thresholds.faster_envs} env(s)",
            reading(undecided, sum(fast.values()) >= thresholds.faster_envs, f"on {sum(fast.values())}"),
        )
    )
    safe = {env: r["worst"] >= r["baseline_worst"] for env, r in rows.items()}
    out.append(
        (
            f"no seed below {baseline}'s worst seed",
            reading(undecided, all(safe.values()), f"below on {[e for e, ok in safe.items() if not ok] or 'none'}"),
        )
    )
    return out


@dataclasses.dataclass(frozen=True)
class GoalThresholds:
    """How many envs a goal needs (a benchmark's own numbers; the defaults are the 3-task, 5-seed
    benchmark's): P(improvement) clear of 0.5 on ``poi_envs``, the baseline's return in half its
    steps on ``faster_envs``, and (with a floor cell) AUC above the floor's on ``wins_envs``
    (None: that goal is not reported)."""

    poi_envs: int = 2
    faster_envs: int = 1
    wins_envs: Optional[int] = None


def _below_floor(row: Mapping[str, Any]) -> bool:
    """The row's worst seed at the floor budget is below the floor cell's worst there (both known)."""
    mine, floor = row.get("worst_at", math.nan), row.get("floor_worst_at", math.nan)
    return math.isfinite(mine) and math.isfinite(floor) and mine < floor


def _fmt(x: Optional[Interval], digits: int = 0) -> str:
    if x is None:
        return "—"
    if not math.isfinite(x.low):
        return f"{x.point:.{digits}f}"
    return f"{x.point:.{digits}f} [{x.low:.{digits}f}, {x.high:.{digits}f}]"


def _num(x: float, fmt: str = ".0f") -> str:
    return "—" if x is None or not math.isfinite(x) else format(x, fmt)


def glance_table(
    verdicts: Mapping[str, Sequence[Tuple[str, str]]],
    floor_verdicts: Mapping[str, Sequence[Tuple[str, str]]],
    baseline: str,
    floor: Optional[str],
    thresholds: GoalThresholds,
) -> List[str]:
    """Every cell against every goal in one table (met / not met / open); the readings follow below."""
    head = [
        f"IQM above {baseline} on every env",
        f"P(impr.) clear on >= {thresholds.poi_envs}",
        f"{baseline}'s return in half its steps on >= {thresholds.faster_envs}",
        f"no seed below {baseline}'s worst",
    ]
    if floor is not None and floor_verdicts:
        head.append(f"never loses to {floor}")
        if thresholds.wins_envs is not None:
            head.append(f"beats {floor} on >= {thresholds.wins_envs}")
    lines = ["", "## At a glance", "", "| estimator | " + " | ".join(head) + " |", "|---|" + "---|" * len(head)]
    for est, rows in verdicts.items():
        cells = [verdict_word(v) for _, v in rows]
        mine = list(floor_verdicts.get(est, ()))
        if floor is not None and floor_verdicts:
            cells += [verdict_word(v) for _, v in mine] if mine else ["—"] * (len(head) - len(cells))
        lines.append(f"| {est} | " + " | ".join(cells) + " |")
    lines += ["", "Open: not decided until the grid's runs of both sides have finished (readings in **Goals** below)."]
    return lines


def all_verdicts(
    per_env_rows: Mapping[str, Sequence[Mapping[str, Any]]],
    per_env: Mapping[str, Results],
    estimators: Sequence[str],
    baseline: str,
    floor: Optional[str],
    at_steps: Optional[float],
    thresholds: GoalThresholds,
    plan: Optional[GridPlan],
) -> Tuple[Dict[str, List[Tuple[str, str]]], Dict[str, Any], Dict[str, List[Tuple[str, str]]]]:
    """(the goals against the baseline per estimator, the paired rows against the floor, the goals
    against the floor per estimator): every verdict the report states, computed once for the report
    and for readers that combine grids (:mod:`hybrid_pg.experiments.rule_decision`)."""
    verdicts = {est: goal_verdicts(per_env_rows, est, baseline, thresholds, plan) for est in estimators}
    vs_floor = fallback_rows(per_env, floor, at_steps, skip=(baseline,)) if floor is not None else {}
    floor_verdicts = {
        est: fallback_verdicts(vs_floor, est, floor, thresholds.wins_envs, plan) for est in estimators if floor is not None and est != floor
    }
    return verdicts, vs_floor, floor_verdicts


def markdown(
    per_env_rows: Mapping[str, Sequence[Mapping[str, Any]]],
    per_env: Mapping[str, Results],
    baseline: str,
    floor: Optional[str] = None,
    at_steps: Optional[float] = None,
    title: str = "",
    thresholds: Optional[GoalThresholds] = None,
    plan: Optional[GridPlan] = None,
) -> str:
    thresholds = thresholds or GoalThresholds()
    lines = [f"# {title or 'Against the baseline'}: every cell against {baseline}", ""]
    lines.append(
        f"Final return: deterministic evaluation at the end of training, mean and IQM over seeds with a 95% bootstrap CI "
        f"(IQM from 4 runs). P(impr.): probability that a run beats a run of {baseline} on the same env (ties half), 95% "
        f"bootstrap CI. Steps to {baseline}: first evaluation step where the mean curve reaches {baseline}'s mean final return, "
        f"and that over {baseline}'s own. lam, Var ratio: medians over updates (after the warm-up) and seeds of hybrid/lambda and "
        f"of the applied gradient's variance over REINFORCE's on the same rollout. "
        + (
            f"No goal is called before every env and seed the grid plans for both sides has finished ({plan.required_runs()} runs per side)."
            if plan is not None
            else f"No goal is called with fewer than {MIN_RUNS} runs per side."
        )
    )
    early = any(r["policy_std"].at_step is not None for rows in per_env_rows.values() for r in rows)
    lines += ["", policy_std_note(early)]
    estimators = [
        e for e in dict.fromkeys(name for rows in per_env_rows.values() for name in (r["estimator"] for r in rows)) if e != baseline
    ]
    verdicts, vs_floor, floor_verdicts = all_verdicts(per_env_rows, per_env, estimators, baseline, floor, at_steps, thresholds, plan)
    lines += glance_table(verdicts, floor_verdicts, baseline, floor, thresholds)
    for env, rows in per_env_rows.items():
        lines += ["", f"## {env}", ""]
        head = f"| estimator | runs | final: mean [CI] | final: IQM [CI] | P(impr. over {baseline}) [CI] | steps to {baseline} (ratio) | worst seed (vs {baseline}'s) |"
        sep = "|---|---|---|---|---|---|---|"
        if floor is not None and at_steps is not None:
            head += f" worst at {at_steps:.0f} (vs {floor}'s) |"
            sep += "---|"
        head += " lam | Var ratio | " + " | ".join(policy_std_titles(early)) + " |"
        sep += "---|---|" + "---|" * len(policy_std_titles(early))
        lines += [head, sep]
        for r in rows:
            poi = "—" if r["estimator"] == baseline else _fmt(r["poi"], 2)
            steps = f"{_num(r['steps_to_baseline'])} ({_num(r['steps_ratio'], '.2f')})"
            cells = [
                r["estimator"],
                str(r["runs"]),
                _fmt(r["mean"]),
                _fmt(r["iqm"]),
                poi,
                steps,
                f"{_num(r['worst'])} ({_num(r['baseline_worst'])})",
            ]
            if floor is not None and at_steps is not None:
                test = r.get("floor_test")
                below = "" if test is None or r["estimator"] == floor else f"; {test.count} below, p {test.p_value:.2f}"
                cells.append(f"{_num(r.get('worst_at', math.nan))} ({_num(r.get('floor_worst_at', math.nan))}){below}")
            cells += [_num(r["lambda_median"], ".2f"), _num(r["variance_ratio_median"], ".3f"), *r["policy_std"].texts()]
            lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "## Final return by seed", ""]
    for env, results in per_env.items():
        for name, runs in results.items():
            by_seed = sorted((run_seed(r), float(r["final_return"])) for r in runs)
            lines.append(f"- {env}, {name}: " + (", ".join(f"s{seed} {value:.0f}" for seed, value in by_seed) or "no finished run"))
    lines += [
        "",
        "## Across envs",
        "",
        f"| estimator | IQM of final / {baseline}'s mean [CI] (envs) | P(impr. over {baseline}) [CI] |",
        "|---|---|---|",
    ]
    for est in estimators:
        norm, n_envs = aggregate_normalised_iqm(per_env, est, baseline)
        lines.append(f"| {est} | {_fmt(norm, 2)} ({n_envs}) | {_fmt(aggregate_poi(per_env, est, baseline), 2)} |")
    lines += ["", "## Goals", ""]
    for est in estimators:
        for goal, verdict in verdicts[est]:
            lines.append(f"- **{est}**: {goal}: {verdict}")
    if floor is not None and at_steps is not None:
        lines += [""]
        for est in estimators:
            if est == floor:
                continue
            worse = [env for env, rows in per_env_rows.items() for r in rows if r["estimator"] == est and _below_floor(r)]
            counts = [
                f"{env} {r['runs']}/{r.get('floor_runs', 0)}" for env, rows in per_env_rows.items() for r in rows if r["estimator"] == est
            ]
            noisy = [
                env
                for env, rows in per_env_rows.items()
                for r in rows
                if r["estimator"] == est and r.get("floor_test") is not None and r["floor_test"].p_value < SIGNIFICANCE_LEVEL
            ]
            lines.append(
                f"- **{est}** at {at_steps:.0f} steps, worst seed vs {floor}'s worst: below on {worse or 'none'}; "
                f"below by more than noise (more runs under {floor}'s worst than chance puts there, exact test p < {SIGNIFICANCE_LEVEL}): "
                f"{noisy or 'none'} (runs {', '.join(counts)})"
            )
    if floor is not None:
        lines += fallback_markdown(vs_floor, floor, at_steps, thresholds.wins_envs, plan, floor_verdicts)
    return "\n".join(lines) + "\n"


def write_goals(
    out_dir: Union[str, Path],
    per_env: Mapping[str, Results],
    baseline: str,
    floor: Optional[str] = None,
    at_steps: Optional[float] = None,
    skip_updates: int = 0,
    title: str = "",
    total_timesteps: Optional[float] = None,
    thresholds: Optional[GoalThresholds] = None,
    plan: Optional[GridPlan] = None,
) -> Path:
    """Write ``goals_<baseline>.md`` into ``out_dir`` and return its path (``total_timesteps``: the
    runs' budget, where the policy std is read; default: their configs'; ``plan``: what the grid is
    set to run, so that no goal is called before all of it has finished)."""
    per_env_rows = {env: env_rows(results, baseline, floor, at_steps, skip_updates, total_timesteps) for env, results in per_env.items()}
    path = Path(out_dir) / f"goals_{baseline}.md"
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text(markdown(per_env_rows, per_env, baseline, floor, at_steps, title, thresholds, plan))
    tmp.replace(path)
    return path
