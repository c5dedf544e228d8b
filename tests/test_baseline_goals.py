"""Every cell against a baseline cell (hybrid_pg.experiments.baseline_goals): synthetic runs whose
answers are known by construction."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from hybrid_pg.experiments.baseline_goals import (
    MIN_RUNS,
    GoalThresholds,
    cell_row,
    env_rows,
    goal_verdicts,
    mean_curve,
    return_at,
    steps_to_reach,
    write_goals,
)


def _run(tmp: Path, name: str, curve, lam=None):
    """A finished run's dict as runner.load_result gives it, with evaluations.csv on disk."""
    run_dir = tmp / name
    run_dir.mkdir()
    lines = ["timesteps,mean,std"] + [f"{s},{v},0" for s, v in curve]
    (run_dir / "evaluations.csv").write_text("\n".join(lines) + "\n")
    rows = [{"time/total_timesteps": float(s)} for s, _ in curve]
    if lam is not None:
        for row in rows[1:]:
            row["hybrid/lambda"] = lam
            row["hybrid/variance_ratio_vs_reinforce"] = 0.5
    return {"run_dir": str(run_dir), "final_return": float(curve[-1][1]), "rows": rows}


STEPS = (0, 100, 200, 300)


def _cell(tmp, prefix, finals, rate=1.0, lam=None):
    """Linear curves from 0 to each final return, reaching it at STEPS[-1] / rate (then flat)."""
    runs = []
    for i, final in enumerate(finals):
        curve = [(s, final * min(1.0, rate * s / STEPS[-1])) for s in STEPS]
        runs.append(_run(tmp, f"{prefix}{i}", curve, lam))
    return runs


def test_curves_steps_and_returns_at_a_budget(tmp_path):
    a = _run(tmp_path, "a", [(0, 0.0), (100, 10.0), (200, 30.0)])
    b = _run(tmp_path, "b", [(0, 0.0), (100, 20.0), (150, 25.0), (200, 50.0)])
    steps, values = mean_curve([a, b])
    assert steps.tolist() == [0, 100, 200] and values.tolist() == [0.0, 15.0, 40.0]  # only the common steps
    assert steps_to_reach([a, b], 15.0) == 100 and math.isnan(steps_to_reach([a, b], 41.0))
    assert return_at(b, 180) == 25.0 and math.isnan(return_at(b, -1))


def test_a_dominating_cell_meets_the_goals_and_a_collapse_is_named(tmp_path):
    n = MIN_RUNS
    base = _cell(tmp_path, "ppo", [100.0 + i for i in range(n)])
    fast = _cell(tmp_path, "fast", [200.0 + i for i in range(n)], rate=3.0, lam=0.8)
    collapsed = _cell(tmp_path, "col", [200.0] * (n - 1) + [10.0])
    per_env = {env: {"ppo": base, "fast": fast, "collapsed": collapsed} for env in ("e1", "e2")}
    rows = {env: env_rows(results, "ppo") for env, results in per_env.items()}
    fast_row = next(r for r in rows["e1"] if r["estimator"] == "fast")
    assert fast_row["poi"].point == 1.0 and fast_row["poi"].low > 0.5
    assert fast_row["steps_ratio"] == pytest.approx(100 / 300)  # reaches ppo's mean at the first eval after 0
    assert fast_row["lambda_median"] == 0.8 and fast_row["variance_ratio_median"] == 0.5
    verdicts = dict(goal_verdicts(rows, "fast", "ppo"))
    assert all(v.startswith("met") for v in verdicts.values()), verdicts
    worst = [v for g, v in goal_verdicts(rows, "collapsed", "ppo") if "worst seed" in g][0]
    assert worst.startswith("not met") and "e1" in worst


def test_fewer_than_min_runs_decide_nothing(tmp_path):
    base = _cell(tmp_path, "ppo", [100.0, 101.0, 102.0])
    better = _cell(tmp_path, "h", [500.0, 501.0, 502.0])
    rows = {"e": env_rows({"ppo": base, "h": better}, "ppo")}
    for _, verdict in goal_verdicts(rows, "h", "ppo"):
        assert verdict.startswith("not decided") and "fewer than 5 runs per side on e 3/3" in verdict


def test_an_env_the_cell_has_not_reached_is_named_as_missing(tmp_path):
    n = MIN_RUNS
    base = _cell(tmp_path, "ppo", [100.0 + i for i in range(n)])
    better = _cell(tmp_path, "h", [500.0 + i for i in range(n)])
    rows = {"e1": env_rows({"ppo": base, "h": better}, "ppo"), "e2": env_rows({"ppo": base}, "ppo")}
    for _, verdict in goal_verdicts(rows, "h", "ppo"):
        # e1 has its runs on both sides: only e2 keeps the goal open
        assert verdict.startswith("not decided: no runs yet on e2;") and "fewer than" not in verdict, verdict


def test_the_floor_check_reads_the_worst_seed_at_the_budget(tmp_path):
    floor = _cell(tmp_path, "r", [100.0, 120.0])  # at step 100: 33.3, 40
    hyb = _cell(tmp_path, "h", [300.0, 30.0])  # at step 100: 100, 10 -> below the floor's worst
    row = cell_row("h", hyb, floor, floor_runs=floor, at_steps=150)
    assert row["worst_at"] == pytest.approx(10.0) and row["floor_worst_at"] == pytest.approx(100 / 3)
    path = write_goals(tmp_path, {"e": {"r": floor, "h": hyb}}, baseline="r", floor="r", at_steps=150)
    text = path.read_text()
    assert path.name == "goals_r.md" and "below on ['e']" in text and "not decided" in text
    assert np.isfinite(row["worst"])


def test_the_floor_test_separates_one_unlucky_seed_from_a_low_tail(tmp_path):
    """One run below the floor's worst is what chance gives (p 0.5 with equal counts); five of
    eight below it is not (p = 8*7*6*5*4 / (16*15*14*13*12) = 0.0128)."""
    floor = _cell(tmp_path, "r", [100.0 + i for i in range(8)])
    one_low = _cell(tmp_path, "a", [99.0] + [150.0] * 7)
    low_tail = _cell(tmp_path, "b", [10.0, 20.0, 30.0, 40.0, 50.0] + [150.0] * 3)
    row_a = cell_row("a", one_low, floor, floor_runs=floor, at_steps=300)
    row_b = cell_row("b", low_tail, floor, floor_runs=floor, at_steps=300)
    assert (row_a["floor_test"].count, row_a["floor_test"].p_value) == (1, pytest.approx(0.5))
    assert row_b["floor_test"].count == 5 and row_b["floor_test"].p_value == pytest.approx(8 * 7 * 6 * 5 * 4 / (16 * 15 * 14 * 13 * 12))
    text = write_goals(tmp_path, {"e": {"r": floor, "a": one_low, "b": low_tail}}, baseline="r", floor="r", at_steps=300).read_text()
    lines = {est: next(l for l in text.splitlines() if l.startswith(f"- **{est}** at 300")) for est in ("a", "b")}
    assert "below on ['e']; below by more than noise" in lines["a"] and lines["a"].split("p < 0.05): ")[1].startswith("none")
    assert lines["b"].split("p < 0.05): ")[1].startswith("['e']")
    assert "| 99 (100); 1 below, p 0.50 |" in text


def test_one_run_gets_no_interval_and_no_probability(tmp_path):
    base = _cell(tmp_path, "ppo", [100.0, 101.0])
    one = _cell(tmp_path, "h", [150.0])
    row = cell_row("h", one, base)
    assert row["poi"] is None and row["mean"].point == 150.0 and math.isnan(row["mean"].low)
    text = write_goals(tmp_path, {"e": {"ppo": base, "h": one}}, baseline="ppo").read_text()
    assert "| h | 1 | 150 | — | — |" in text


def test_the_plan_decides_which_envs_and_how_many_seeds_a_verdict_needs(tmp_path):
    from hybrid_pg.experiments.fallback_goals import GridPlan

    n = MIN_RUNS
    base = _cell(tmp_path, "ppo", [100.0 + i for i in range(n)])
    better = _cell(tmp_path, "h", [500.0 + i for i in range(n)])
    rows = {"e1": env_rows({"ppo": base, "h": better}, "ppo")}
    one_env = GoalThresholds(poi_envs=1, faster_envs=1)
    assert all(v.startswith("met") for _, v in goal_verdicts(rows, "h", "ppo", one_env))  # the report's envs, MIN_RUNS each
    plan = GridPlan({"h": ("e1", "e2"), "ppo": ("e1", "e2")}, seeds=10)
    for _, verdict in goal_verdicts(rows, "h", "ppo", one_env, plan=plan):
        assert verdict.startswith(f"not decided: no runs yet on e2; fewer than 10 runs per side on e1 {n}/{n};"), verdict
    assert all(v.startswith("met") for _, v in goal_verdicts(rows, "h", "ppo", one_env, plan=GridPlan({"h": ("e1",)}, seeds=n)))


def test_the_goals_report_opens_with_every_cell_against_every_goal(tmp_path):
    from hybrid_pg.experiments.fallback_goals import GridPlan

    n = MIN_RUNS
    per_env = {
        "e": {
            "ppo": _cell(tmp_path, "ppo", [100.0 + i for i in range(n)]),
            "reinforce": _cell(tmp_path, "r", [90.0 + i for i in range(n)]),
            "fast": _cell(tmp_path, "fast", [200.0 + i for i in range(n)], rate=3.0),
            "half": _cell(tmp_path, "half", [200.0 + i for i in range(n - 2)]),
        }
    }
    path = write_goals(
        tmp_path,
        per_env,
        "ppo",
        "reinforce",
        thresholds=GoalThresholds(poi_envs=1, faster_envs=1, wins_envs=1),
        plan=GridPlan({"fast": ("e",), "half": ("e",), "reinforce": ("e",)}, seeds=n),
    )
    text = path.read_text()
    glance = text[text.index("## At a glance") : text.index("## e")]
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]] for line in glance.splitlines() if line.startswith("| ")}
    assert rows["fast"][:4] == ["met"] * 4 and rows["half"] == ["open"] * 6
    assert rows["reinforce"][4:] == ["—", "—"]  # the floor has no fallback of its own
