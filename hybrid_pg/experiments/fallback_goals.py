"""Every hybrid cell against its score-only fallback, paired by seed: "never loses" and "wins".

The adaptive weight is meant to be a safety mechanism: where the pathwise gradient misleads, the
update becomes the score-function one (REINFORCE with the same update, the grid's *floor* cell).
A user therefore asks two things of each hybrid cell, task by task, against that cell:

* **never loses to its fallback**: on every env the cell ran on, the paired (by seed) difference
  in AUC and in final return has a 95% CI whose upper end is above 0 (no loss beyond noise), and
  the floor test at the early budget (``below_minimum_test``: more of the cell's runs under the
  fallback's worst run than chance puts there) gives p >= 0.05;
* **wins where it should**: the paired AUC difference has a CI excluding 0 *and* Wilcoxon's p <
  0.05 on at least ``wins_envs`` envs.

Runs with the same seed share the env's random numbers, so the comparison is paired (mean of the
per-seed differences, paired bootstrap CI, Wilcoxon signed-rank test:
:func:`hybrid_pg.experiments.aggregate.compare`). Neither goal is called with fewer than
:data:`MIN_RUNS` paired seeds on an env: the reading then
says what is missing and what the runs show so far.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from hybrid_pg.experiments.aggregate import (
    MIN_RUNS_FOR_SIGNIFICANCE,
    SIGNIFICANCE_LEVEL,
    BelowMinimum,
    Comparison,
    below_minimum_test,
    compare,
)
from hybrid_pg.experiments.results import Results, learning_curve, normalized_auc, return_at, run_seed

__all__ = [
    "GridPlan",
    "estimator_rows",
    "fallback_rows",
    "fallback_verdicts",
    "fallback_markdown",
    "floor_test",
    "reading",
    "verdict_word",
    "why_undecided",
]

#: paired seeds per env before a goal can be called met (the project's rule against 2-3-seed verdicts)
MIN_RUNS: int = MIN_RUNS_FOR_SIGNIFICANCE


@dataclasses.dataclass(frozen=True)
class GridPlan:
    """What a grid is set to run: the envs of each estimator's cells and the seeds of every cell. A
    goal is called only on the whole plan: a verdict read while seeds are still arriving would be
    decided by when one looked (and an env without runs yet would silently drop out of "every env")."""

    envs: Mapping[str, Tuple[str, ...]]
    seeds: int

    def required_runs(self) -> int:
        return max(MIN_RUNS, int(self.seeds))


def why_undecided(counts: Mapping[str, Tuple[int, str]], planned_envs: Sequence[str], need: int, what: str) -> Optional[str]:
    """What keeps a goal from being called, or None: ``counts`` is env -> (the binding count of runs,
    its display), ``planned_envs`` the envs the cell is set to run on (none yet: named as missing),
    ``need`` the runs each env needs and ``what`` how they are counted."""
    why = []
    missing = [env for env in planned_envs if env not in counts]
    if missing:
        why.append(f"no runs yet on {', '.join(missing)}")
    short = [f"{env} {text}" for env, (n, text) in counts.items() if n < need]
    if short:
        why.append(f"fewer than {need} {what} on {', '.join(short)}")
    return "; ".join(why) or None


def reading(undecided: Optional[str], flag: bool, detail: str) -> str:
    """A goal's reading: "not decided: why; so far detail" while ``undecided`` names what is missing,
    else "met: detail" or "not met: detail" (:func:`verdict_word` reads it back)."""
    if undecided:
        return f"not decided: {undecided}; so far {detail}"
    return ("met" if flag else "not met") + f": {detail}"


def verdict_word(verdict: str) -> str:
    """A :func:`reading`'s verdict alone: met, not met, or open (not decided yet)."""
    return "open" if verdict.startswith("not decided") else ("not met" if verdict.startswith("not met") else "met")


def floor_test(early: np.ndarray, floor_early: np.ndarray) -> Optional[BelowMinimum]:
    """The floor test of a cell's returns at the early budget against the floor cell's (NaN: a run
    without an evaluation by then, left out); None when either side has none. The literal floor (no
    run below the floor's worst) is a coin flip when nothing differs; the exact test says whether the
    cell's runs sit below it more often than chance."""
    mine, theirs = early[np.isfinite(early)], floor_early[np.isfinite(floor_early)]
    return below_minimum_test(mine, theirs) if mine.size and theirs.size else None


def _paired(runs: Sequence[Mapping[str, Any]], floor_runs: Sequence[Mapping[str, Any]], metric) -> Tuple[Optional[Comparison], int]:
    """The paired comparison of ``metric`` on the seeds both cells finished (None below 2 pairs)."""
    mine = {run_seed(r): metric(r) for r in runs}
    theirs = {run_seed(r): metric(r) for r in floor_runs}
    seeds = sorted(s for s in set(mine) & set(theirs) if math.isfinite(mine[s]) and math.isfinite(theirs[s]))
    if len(seeds) < 2:
        return None, len(seeds)
    a, b = np.array([mine[s] for s in seeds]), np.array([theirs[s] for s in seeds])
    return compare(a, b, seeds, seeds), len(seeds)


def _final(result: Mapping[str, Any]) -> float:
    return float(result["final_return"])


def _auc(result: Mapping[str, Any]) -> float:
    return normalized_auc(*learning_curve(dict(result)))


def fallback_rows(
    per_env: Mapping[str, Results], floor: str, at_steps: Optional[float], skip: Sequence[str] = ()
) -> Dict[str, List[Dict[str, Any]]]:
    """env -> one row per estimator (the floor's own and those in ``skip`` left out: a baseline
    such as PPO has no fallback) with its paired AUC and final-return comparisons against ``floor``
    and the floor test at ``at_steps`` (None without ``at_steps``)."""
    out: Dict[str, List[Dict[str, Any]]] = {}
    for env, results in per_env.items():
        floor_runs = results.get(floor, [])
        rows = []
        for name, runs in results.items():
            if name == floor or name in skip or not runs:
                continue
            auc, pairs = _paired(runs, floor_runs, _auc)
            final, _ = _paired(runs, floor_runs, _final)
            test = None
            if at_steps is not None:
                test = floor_test(np.array([return_at(r, at_steps) for r in runs]), np.array([return_at(r, at_steps) for r in floor_runs]))
            rows.append({"estimator": name, "pairs": pairs, "auc": auc, "final": final, "floor_test": test})
        out[env] = rows
    return out


def estimator_rows(per_env_rows: Mapping[str, Sequence[Mapping[str, Any]]], estimator: str) -> Dict[str, Mapping[str, Any]]:
    """The row of ``estimator`` in each env's report rows, for the envs that have one."""
    out: Dict[str, Mapping[str, Any]] = {}
    for env, rows in per_env_rows.items():
        row = next((r for r in rows if r["estimator"] == estimator), None)
        if row is not None:
            out[env] = row
    return out


def _no_loss(row: Mapping[str, Any]) -> bool:
    """No loss beyond noise on this env: both paired CIs reach above 0, and the floor test passes."""
    ok = all(row[m] is not None and row[m].diff.high > 0 for m in ("auc", "final"))
    test = row["floor_test"]
    return ok and (test is None or test.p_value >= SIGNIFICANCE_LEVEL)


def _win(row: Mapping[str, Any]) -> bool:
    auc = row["auc"]
    return auc is not None and auc.diff.low > 0 and auc.p_value < SIGNIFICANCE_LEVEL


def fallback_verdicts(
    rows: Mapping[str, Sequence[Mapping[str, Any]]],
    estimator: str,
    floor: str,
    wins_envs: Optional[int] = None,
    plan: Optional[GridPlan] = None,
) -> List[Tuple[str, str]]:
    """The two goals of the module docstring for one estimator, over the envs it is set to run on
    (``plan``; without one, those it ran on); each as (goal, reading), the reading "met" / "not met"
    only with every planned env paired on all the plan's seeds (at least MIN_RUNS)."""
    mine = estimator_rows(rows, estimator)
    planned = tuple(plan.envs.get(estimator, ())) if plan is not None else ()
    if not mine and not planned:
        return []
    need = plan.required_runs() if plan is not None else MIN_RUNS
    undecided = why_undecided({env: (r["pairs"], str(r["pairs"])) for env, r in mine.items()}, planned, need, f"seeds paired with {floor}")
    n_envs = len(set(mine) | set(planned))

    losing = [env for env, r in mine.items() if not _no_loss(r)]
    winning = [env for env, r in mine.items() if _win(r)]
    out = [
        (
            f"never loses to {floor} (paired AUC and final-return CIs reach above 0, floor test p >= {SIGNIFICANCE_LEVEL}) "
            f"on each of its {n_envs} env(s)",
            reading(undecided, not losing, f"a loss beyond noise on {losing}" if losing else "no loss beyond noise"),
        )
    ]
    if wins_envs is not None:
        out.append(
            (
                f"AUC above {floor}'s (CI excluding 0, Wilcoxon p < {SIGNIFICANCE_LEVEL}) on >= {wins_envs} env(s)",
                reading(undecided, len(winning) >= wins_envs, f"on {len(winning)} ({winning or 'none'})"),
            )
        )
    return out


def _diff_text(c: Optional[Comparison]) -> str:
    if c is None:
        return "—"
    d = c.diff
    interval = f"{d.point:+.1f} [{d.low:+.1f}, {d.high:+.1f}]" if math.isfinite(d.low) else f"{d.point:+.1f}"
    p = f"p {c.p_value:.3f}" if math.isfinite(c.p_value) else "p n/a"
    return f"{interval}, {p}"


def fallback_markdown(
    rows: Mapping[str, Sequence[Mapping[str, Any]]],
    floor: str,
    at_steps: Optional[float],
    wins_envs: Optional[int] = None,
    plan: Optional[GridPlan] = None,
    verdicts: Optional[Mapping[str, Sequence[Tuple[str, str]]]] = None,
) -> List[str]:
    """The goals report's section: a table per env and the verdicts per estimator (``verdicts``:
    those :func:`fallback_verdicts` gave already, by estimator; computed here otherwise)."""
    lines = [
        "",
        f"## Against the fallback ({floor}), paired by seed",
        "",
        f"Each cell against {floor} on the seeds both finished: the mean of the per-seed differences (cell minus {floor}) "
        "with a paired 95% bootstrap CI and Wilcoxon's signed-rank p, for the AUC (mean training return) and the final "
        "evaluation return"
        + (
            f"; and at {at_steps:.0f} steps the floor test: how many of the cell's runs fall below {floor}'s worst, with the "
            "exact probability of that many when the two cells do not differ."
            if at_steps is not None
            else "."
        ),
    ]
    estimators = list(dict.fromkeys(r["estimator"] for rs in rows.values() for r in rs))
    for env, env_rows in rows.items():
        if not env_rows:
            continue
        lines += ["", f"### {env}", "", "| estimator | seeds paired | AUC difference [CI], p | final difference [CI], p | floor test |"]
        lines.append("|---|---|---|---|---|")
        for r in env_rows:
            test = r["floor_test"]
            floor_text = "—" if test is None else f"{test.count} below, p {test.p_value:.2f}"
            lines.append(f"| {r['estimator']} | {r['pairs']} | {_diff_text(r['auc'])} | {_diff_text(r['final'])} | {floor_text} |")
    lines += ["", "Goals against the fallback:", ""]
    for est in estimators:
        mine = verdicts[est] if verdicts is not None and est in verdicts else fallback_verdicts(rows, est, floor, wins_envs, plan)
        for goal, verdict in mine:
            lines.append(f"- **{est}**: {goal}: {verdict}")
    return lines
