"""Which weight rule becomes the default? Every goal of the benchmark and of the optimum grid, per candidate.

The default changes only for a rule that meets every goal. Those goals live in two grids: the
benchmark (against PPO and against REINFORCE with the same update, paired by seed) and the optimum
grid (tasks every cell solves: does each seed stay at the optimum, and does its std stay up). Each
grid's report states its own verdicts; this module computes the same verdicts with the same functions
(:func:`hybrid_pg.experiments.baseline_goals.all_verdicts`,
:func:`hybrid_pg.experiments.optimum_goals.cell_rows`) and sets them side by side, so the decision is
read from one table that cannot disagree with the reports.

A candidate is a cell that both grids run (the same settings under the same name). Its decision is
"yes" when every deciding goal is met, "no" when one is not met, and "open" while a goal waits for
runs. The benchmark report's extra reading "no seed below the baseline's worst seed" is shown but
does not decide: it is not one of the benchmark's goals (a single unlucky seed of ten fails it).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Dict, List, Mapping, Optional, Sequence, Tuple

from hybrid_pg.experiments.results import Results

if TYPE_CHECKING:
    from hybrid_pg.experiments.baseline_goals import GoalThresholds
    from hybrid_pg.experiments.fallback_goals import GridPlan

__all__ = [
    "Goals",
    "benchmark_goals",
    "benchmark_verdicts",
    "decision",
    "markdown",
    "optimum_goals",
    "optimum_verdicts",
    "verdict_kind",
    "write",
]

#: candidate -> [(goal, verdict)] in a fixed order
Goals = Dict[str, List[Tuple[str, str]]]

#: the benchmark report's reading that is shown and does not decide (module docstring)
INFORMATIVE_PREFIX = "no seed below"
#: the verdict of a goal that does not apply to a cell (the fallback against itself)
NOT_APPLICABLE = "n/a"


def verdict_kind(verdict: str) -> str:
    """met, not met or open, from a verdict of either report ("—" where the goal does not apply)."""
    if verdict.startswith(NOT_APPLICABLE):
        return "—"
    if verdict.startswith(("not met", "never reached")):
        return "not met"
    if verdict == "met" or verdict.startswith("met:"):
        return "met"
    return "open"  # "not decided: ...", "too few seeds (...)", "open: ...", "not run"


def benchmark_verdicts(
    per_env: Mapping[str, Results],
    estimators: Sequence[str],
    baseline: str,
    floor: str,
    at_steps: Optional[float],
    thresholds: "GoalThresholds",
    plan: Optional["GridPlan"] = None,
    skip_updates: int = 0,
    total_timesteps: Optional[float] = None,
) -> Goals:
    """The benchmark's goals per estimator, from its finished runs (env -> cell -> runs): against the
    floor, then against the baseline, as ``goals_<baseline>.md`` states them."""
    from hybrid_pg.experiments.baseline_goals import all_verdicts, env_rows

    per_env_rows = {env: env_rows(results, baseline, floor, at_steps, skip_updates, total_timesteps) for env, results in per_env.items()}
    verdicts, _, floor_verdicts = all_verdicts(per_env_rows, per_env, estimators, baseline, floor, at_steps, thresholds, plan)
    # the floor itself has no goals against itself: its row keeps their places, read "n/a"
    own = [(goal, f"{NOT_APPLICABLE}: the fallback itself") for goal, _ in next(iter(floor_verdicts.values()), [])]
    return {est: [*floor_verdicts.get(est, own), *verdicts[est]] for est in estimators}


def optimum_verdicts(per_env: Mapping[str, Results], envs: Sequence[str], estimators: Sequence[str], floor: str) -> Goals:
    """ "Stays at the optimum" on each of ``envs`` per estimator, as ``optimum.md`` states it; an
    estimator without runs on an env reads "not run"."""
    from hybrid_pg.experiments.optimum_goals import cell_rows

    goals: Goals = {est: [] for est in estimators}
    for env in envs:
        rows = {r["estimator"]: r for r in cell_rows(per_env[env], floor)} if env in per_env else {}
        for est in estimators:
            goals[est].append((f"stays at the optimum on {env}", rows[est]["verdict"] if est in rows else "not run"))
    return goals


def benchmark_goals(config: Path, runs_dir: Optional[Path] = None) -> Goals:
    """:func:`benchmark_verdicts` of a benchmark grid's file (it needs a ``baseline`` section with a
    floor), every estimator but the baseline."""
    from hybrid_pg.experiments.ablate import finished_results, goal_settings, load_ablation, runs_folder

    ablation = load_ablation(config)
    b = ablation.baseline
    if b is None or b.floor is None:
        raise ValueError(f"{config}: the benchmark grid needs a baseline section with a floor (its goals)")
    thresholds, plan = goal_settings(ablation)
    per_env = finished_results(ablation, runs_folder(ablation, runs_dir))
    estimators = [e.name for e in ablation.estimators if e.name != b.name]
    return benchmark_verdicts(
        per_env, estimators, b.name, b.floor, b.floor_at_steps, thresholds, plan, ablation.skip_updates, ablation.total_timesteps
    )


def optimum_goals(config: Path, runs_dir: Optional[Path] = None) -> Goals:
    """:func:`optimum_verdicts` of an optimum grid's file (it needs an ``optimum_floor``), every
    estimator (the floor's own verdict reads the hold clause alone)."""
    from hybrid_pg.experiments.ablate import finished_results, load_ablation, runs_folder

    ablation = load_ablation(config)
    if ablation.optimum_floor is None:
        raise ValueError(f"{config}: the optimum grid needs an optimum_floor (its goal's std clause)")
    per_env = finished_results(ablation, runs_folder(ablation, runs_dir))
    estimators = [e.name for e in ablation.estimators]
    return optimum_verdicts(per_env, [e.name for e in ablation.envs], estimators, ablation.optimum_floor)


def decision(goals: Sequence[Tuple[str, str]]) -> str:
    """yes / no / open over the deciding goals (the informative reading left out)."""
    kinds = [verdict_kind(v) for goal, v in goals if not goal.startswith(INFORMATIVE_PREFIX)]
    if "not met" in kinds:
        return "no"
    return "open" if "open" in kinds or not kinds else "yes"


def _short(goal: str) -> str:
    return goal.replace("with a CI excluding 0.5 ", "").replace("(improvement over", "(impr. over")


def markdown(
    combined: Mapping[str, Sequence[Tuple[str, str]]], sources: Sequence[str], default: str, reference: Optional[str] = None
) -> str:
    """The table (one row per candidate, then the ``reference`` cell's for scale) and every reading."""
    goals = [goal for goal, _ in next(iter(combined.values()))]
    lines = [
        "# Which weight rule becomes the default?",
        "",
        "Every goal of " + " and ".join(f"`{s}`" for s in sources) + ", per candidate (a cell both grids run), computed by "
        "the functions that write those grids' reports. The default changes only for a candidate that meets every goal; "
        f"`{default}` is today's default. *Shown, not deciding*: the reading that no seed falls below the baseline's worst."
        + (
            f" The last row is `{reference}`, the fallback itself, for scale: a goal it does not meet either asks more than "
            "falling back could give."
            if reference in combined
            else ""
        ),
        "",
        "| candidate | "
        + " | ".join(_short(g) + (" *(shown, not deciding)*" if g.startswith(INFORMATIVE_PREFIX) else "") for g in goals)
        + " | meets every goal |",
        "|---|" + "---|" * (len(goals) + 1),
    ]
    for cand, readings in combined.items():
        label = f"{cand} (today's default)" if cand == default else (f"{cand} (the fallback, for scale)" if cand == reference else cand)
        verdict = "—" if cand == reference else f"**{decision(readings)}**"
        lines.append(f"| {label} | " + " | ".join(verdict_kind(v) for _, v in readings) + f" | {verdict} |")
    lines += ["", "## The readings", ""]
    for cand, readings in combined.items():
        lines.append(f"### {cand}")
        lines.append("")
        lines += [f"- {goal}: {verdict}" for goal, verdict in readings]
        lines.append("")
    return "\n".join(lines)


def write(
    benchmark: Path,
    optimum: Path,
    out: Path,
    candidates: Optional[Sequence[str]] = None,
    default: str = "hybrid",
    reference: Optional[str] = "reinforce",
) -> Path:
    """Write the decision table to ``out`` (.md) and return its path. ``candidates``: default, every
    cell the two grids share but ``reference`` (the fallback, whose row follows for scale)."""
    from hybrid_pg.experiments.run_files import write_atomically

    bench, opt = benchmark_goals(benchmark), optimum_goals(optimum)
    shared = [c for c in bench if c in opt and c != reference]
    chosen = list(candidates) if candidates else shared
    missing = [c for c in chosen if c not in shared]
    if missing:
        raise ValueError(f"not a cell of both grids: {', '.join(missing)} (both run: {', '.join(shared) or 'none'})")
    if not chosen:
        raise ValueError(f"{benchmark} and {optimum} share no cell: nothing to decide")
    rows = [*chosen, *([reference] if reference is not None and reference in bench and reference in opt else [])]
    combined = {c: [*bench[c], *opt[c]] for c in rows}
    out = out.with_suffix(".md")
    out.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(out, markdown(combined, [str(benchmark), str(optimum)], default, reference))
    return out
