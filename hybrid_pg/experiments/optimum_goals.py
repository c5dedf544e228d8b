"""Does a cell stay at the optimum once it has reached it? The report of a grid of solvable tasks.

On a task that every cell solves within the budget (InvertedPendulum, InvertedDoublePendulum), the
question is no longer how fast a cell learns but whether it keeps what it learned. Per env and cell,
from the runs' deterministic evaluations (``evaluations.csv``) and their ``train/std``:

* the optimum: the best evaluation any run of the grid reached on that env (the task's maximum is
  not always known in closed form; a grid where no run solves the task says so by its low value);
* reached: the seeds whose evaluations came within ``tolerance`` (5%) of the optimum at some point;
* held: of those, the seeds whose last ``last`` (3) evaluations all stayed within ``tolerance`` of it
  (the goal: no seed losing more than 5% of the optimum over its last 3 evaluations once reached),
  and the worst such minimum over the seeds;
* kept: per seed that reached it, the mean of its evaluations *after* the first one at the optimum,
  as a share of the optimum (1.0: every later evaluation at the optimum; one evaluation episode of
  five failing early shows as about 0.8 in that evaluation), mean over seeds with a 95% bootstrap
  CI, and paired by seed against the floor cell. Held/not held turns on the last few evaluations
  and single failing episodes; kept uses every evaluation after the optimum, so it separates cells
  with the same count of held seeds;
* the share of updates after a seed first reached the optimum that applied lam = 0 (a back-off rule
  falling back to the score gradient; 100% for REINFORCE), the median over the seeds that reached it;
* the policy's std at the end (median over seeds) and its paired difference from the ``floor`` cell
  (REINFORCE with the same update) over the seeds both ran, with a 95% bootstrap CI: the goal's "std
  not below REINFORCE's by more than noise" holds when the interval's upper end is above 0.

Nothing is called met with fewer than :data:`~hybrid_pg.experiments.baseline_goals.MIN_RUNS` seeds.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

import numpy as np

from hybrid_pg.experiments.aggregate import Interval, mean
from hybrid_pg.experiments.baseline_goals import MIN_RUNS, Results, evaluation_curve, seed_interval
from hybrid_pg.experiments.results import policy_std, run_seed, update_series

#: the weight a HybridPG run applied per update
LAMBDA_KEY = "hybrid/lambda"

#: a seed is at the optimum while its evaluation is within this share of it
DEFAULT_TOLERANCE: float = 0.05
#: how many final evaluations must all stay there
DEFAULT_LAST: int = 3


def grid_optimum(results: Results) -> float:
    """The best deterministic evaluation any run of the env reached (nan: no evaluations)."""
    peaks = [evaluation_curve(run)[1] for runs in results.values() for run in runs]
    best = [float(values.max()) for values in peaks if values.size]
    return max(best) if best else math.nan


def seed_at_optimum(
    result: Mapping[str, Any], optimum: float, tolerance: float = DEFAULT_TOLERANCE, last: int = DEFAULT_LAST
) -> Dict[str, Any]:
    """``reached`` (some evaluation within ``tolerance`` of ``optimum``), ``held`` (reached before its
    last ``last`` evaluations, which all stayed within it) and ``last_min`` (the lowest of them)."""
    steps, values = evaluation_curve(result)
    threshold = (1.0 - tolerance) * optimum
    if values.size == 0 or not math.isfinite(optimum):
        return {"reached": False, "held": False, "last_min": math.nan, "reached_step": math.nan, "kept": math.nan}
    tail = values[-last:]
    reached_at = np.nonzero(values >= threshold)[0]
    reached = bool(reached_at.size)
    held = reached and values.size >= last and bool((tail >= threshold).all())
    after = values[reached_at[0] + 1 :] if reached else values[:0]
    return {
        "reached": reached,
        "held": held,
        "last_min": float(tail.min()),
        "reached_step": float(steps[reached_at[0]]) if reached else math.nan,
        "kept": float(after.mean() / optimum) if after.size else math.nan,
    }


def fallback_share(result: Mapping[str, Any], after_step: float) -> float:
    """The share of the updates after env step ``after_step`` that applied lam = 0 (the score
    gradient alone: REINFORCE, or a back-off rule falling back); nan without such updates."""
    steps, lam = update_series(result, LAMBDA_KEY)
    lam = lam[steps > after_step] if math.isfinite(after_step) else lam[:0]
    return float((lam == 0.0).mean()) if lam.size else math.nan


def _by_seed(runs: Sequence[Mapping[str, Any]], values: Sequence[float]) -> Dict[int, float]:
    """seed -> value for the runs whose value is finite (run order kept)."""
    return {run_seed(r): v for r, v in zip(runs, values) if math.isfinite(v)}


def _paired_difference(own: Mapping[int, float], floor: Mapping[int, float]) -> Optional[Interval]:
    """Mean over the seeds both have of (own - floor), with a bootstrap CI."""
    return seed_interval(np.array([v - floor[s] for s, v in own.items() if s in floor], dtype=float), mean)


def cell_rows(
    results: Results, floor: Optional[str], tolerance: float = DEFAULT_TOLERANCE, last: int = DEFAULT_LAST
) -> List[Dict[str, Any]]:
    """One row per cell of one env (the module docstring's columns)."""
    optimum = grid_optimum(results)
    at_optimum = {name: [seed_at_optimum(r, optimum, tolerance, last) for r in runs] for name, runs in results.items()}
    stds = {name: _by_seed(runs, [policy_std(r) for r in runs]) for name, runs in results.items()}
    kept = {name: _by_seed(runs, [s["kept"] for s in at_optimum[name]]) for name, runs in results.items()}
    floor_stds = {} if floor is None else stds.get(floor, {})
    floor_kept = {} if floor is None else kept.get(floor, {})
    rows = []
    for name, runs in results.items():
        seeds = at_optimum[name]
        reached = sum(s["reached"] for s in seeds)
        held = sum(s["held"] for s in seeds)
        lows = [s["last_min"] for s in seeds if s["reached"] and math.isfinite(s["last_min"])]
        shares = [fallback_share(r, s["reached_step"]) for r, s in zip(runs, seeds) if s["reached"]]
        shares = [x for x in shares if math.isfinite(x)]
        paired = floor is not None and name != floor
        std_diff = _paired_difference(stds[name], floor_stds) if paired else None
        kept_diff = _paired_difference(kept[name], floor_kept) if paired else None
        paired_seeds = len(set(stds[name]) & set(floor_stds)) if paired else 0
        verdict = _verdict(len(runs), reached, held, std_diff if paired else None, paired_seeds, floor if paired else None)
        rows.append(
            {
                "estimator": name,
                "optimum": optimum,
                "seeds": len(runs),
                "reached": reached,
                "held": held,
                "worst_last_min": min(lows) if lows else math.nan,
                "fallback_share": float(np.median(shares)) if shares else math.nan,
                "std_end_median": float(np.median(list(stds[name].values()))) if stds[name] else math.nan,
                "std_vs_floor": std_diff,
                "kept": seed_interval(np.array(list(kept[name].values()), dtype=float), mean),
                "kept_vs_floor": kept_diff,
                "verdict": verdict,
            }
        )
    return rows


def _verdict(seeds: int, reached: int, held: int, std_diff: Optional[Interval], paired_seeds: int, floor: Optional[str]) -> str:
    """The goal has two clauses: every seed that reached the optimum holds it, and (against a floor
    cell) the final std is not below the floor's by more than noise (the paired CI's upper end >= 0).
    A clause that needs more seeds keeps the verdict open rather than passing it."""
    if seeds < MIN_RUNS:
        return f"too few seeds ({seeds} < {MIN_RUNS})"
    if reached == 0:
        return "never reached the optimum"
    failures = [] if held == reached else [f"{reached - held} of {reached} seeds lost it"]
    if floor is not None:
        if paired_seeds < MIN_RUNS or std_diff is None or math.isnan(std_diff.high):
            if not failures:
                return f"open: held on every seed; the std against {floor}'s needs {MIN_RUNS} paired seeds ({paired_seeds})"
        elif std_diff.high < 0:
            failures.append(f"std below {floor}'s by more than noise")
    return "met" if not failures else "not met: " + "; ".join(failures)


def _interval_text(x: Optional[Interval], fmt: str = "{:+.3f}") -> str:
    """A difference (signed, the default) or a share (``fmt="{:.3f}"``) with its CI."""
    if x is None:
        return "—"
    if math.isnan(x.low):
        return f"{fmt.format(x.point)} (one seed)"
    return f"{fmt.format(x.point)} [{fmt.format(x.low)}, {fmt.format(x.high)}]"


def markdown(
    per_env_rows: Mapping[str, Sequence[Mapping[str, Any]]], floor: Optional[str], tolerance: float, last: int, title: str = ""
) -> str:
    lines = [
        f"# Staying at the optimum{': ' + title if title else ''}",
        "",
        f"Per env, the optimum is the best deterministic evaluation any run reached. A seed *reached* it when an evaluation "
        f"came within {tolerance:.0%} of it, and *held* it when its last {last} evaluations all stayed within {tolerance:.0%}. "
        f"Goal: every seed that reached the optimum holds it"
        + (
            f", and the final policy std is not below {floor}'s by more than noise (the paired CI's upper end at or above 0)"
            if floor
            else ""
        )
        + f" ({MIN_RUNS} seeds or more)."
        + (f" Std vs {floor}: the final policy std minus {floor}'s, paired by seed, mean [95% bootstrap CI]." if floor else "")
        + " Kept: per seed that reached the optimum, the mean of its evaluations after the first one there, as a share of "
        "the optimum; mean over those seeds [95% bootstrap CI]" + (f", and minus {floor}'s, paired by seed." if floor else "."),
        "",
    ]
    for env, rows in per_env_rows.items():
        optimum = rows[0]["optimum"] if rows else math.nan
        lines += [f"## {env} (optimum {optimum:.1f})", ""]
        header = ["estimator", "seeds", "reached", "held", "worst of the last evaluations", "updates at lam = 0 once reached (median)"]
        header += ["policy std at the end (median)"]
        header += [f"std vs {floor}"] if floor else []
        header += ["kept after reaching"] + ([f"kept vs {floor}"] if floor else [])
        header += ["goal"]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for r in rows:
            cells = [
                r["estimator"],
                str(r["seeds"]),
                str(r["reached"]),
                str(r["held"]),
                "—" if math.isnan(r["worst_last_min"]) else f"{r['worst_last_min']:.1f}",
                "—" if math.isnan(r["fallback_share"]) else f"{r['fallback_share']:.0%}",
                "—" if math.isnan(r["std_end_median"]) else f"{r['std_end_median']:.3f}",
            ]
            cells += [_interval_text(r["std_vs_floor"])] if floor else []
            cells += [_interval_text(r["kept"], "{:.3f}")] + ([_interval_text(r["kept_vs_floor"])] if floor else [])
            cells += [r["verdict"]]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def write_optimum_goals(
    out_dir: Union[str, Path],
    per_env: Mapping[str, Results],
    floor: Optional[str],
    tolerance: float = DEFAULT_TOLERANCE,
    last: int = DEFAULT_LAST,
    title: str = "",
) -> Path:
    """Write ``optimum.md`` into ``out_dir`` (atomically) and return its path."""
    per_env_rows = {env: cell_rows(results, floor, tolerance, last) for env, results in per_env.items()}
    path = Path(out_dir) / "optimum.md"
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text(markdown(per_env_rows, floor, tolerance, last, title) + "\n")
    tmp.replace(path)
    return path
