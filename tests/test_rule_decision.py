"""The rule decision (hybrid_pg.experiments.rule_decision): both grids' verdicts side by side, read
exactly as their reports state them, and a candidate decided "yes" only when every deciding goal is met."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from hybrid_pg.experiments import rule_decision as rd
from hybrid_pg.experiments.baseline_goals import GoalThresholds, write_goals
from hybrid_pg.experiments.optimum_goals import write_optimum_goals

ROOT = Path(__file__).resolve().parents[1]
STEPS = (0, 100, 200, 300)


def _run(tmp: Path, name: str, seed: int, level: float, evaluations=None, std: float = 0.5):
    """A finished run: training return ``level`` at every rollout, evaluations as given (default
    0, level / 3, level, level at STEPS), ``std`` logged every update."""
    run_dir = tmp / name
    run_dir.mkdir()
    evals = evaluations or [(0, 0.0), (100, level / 3), (200, level), (300, level)]
    (run_dir / "evaluations.csv").write_text("timesteps,mean,std\n" + "".join(f"{s},{v},0\n" for s, v in evals))
    rows = [{"time/total_timesteps": float(s), "rollout/ep_rew_mean": level, "train/std": std} for s, _ in evals]
    return {"run_dir": str(run_dir), "seed": seed, "final_return": float(evals[-1][1]), "rows": rows}


def _noise(i):
    return 3.7 * ((i * 7919) % 11)  # seed-to-seed variation shared by the cells of a seed (pairing removes it)


def _fast(level: float):
    """Evaluations at ``level`` from step 100 on: PPO's final return in a third of its steps."""
    return [(0, 0.0), (100, level), (200, level), (300, level)]


def _benchmark(tmp: Path):
    n = 6
    per_env = {}
    for env in ("e1", "e2"):
        cells = {"ppo": 90.0, "reinforce": 100.0, "hybrid": 150.0, "worse": 40.0}
        per_env[env] = {
            name: [
                _run(tmp, f"{env}_{name}_{i}", i, level + i + _noise(i), _fast(level + i + _noise(i)) if name == "hybrid" else None)
                for i in range(n)
            ]
            for name, level in cells.items()
        }
    return per_env


def _optimum(tmp: Path):
    n = 5
    holds = [(0, 100.0), (100, 990.0), (200, 1000.0), (300, 1000.0)]
    loses = [(0, 100.0), (100, 1000.0), (200, 1000.0), (300, 400.0)]
    return {
        "ip": {
            "reinforce": [_run(tmp, f"o_r{i}", i, 0, holds, std=0.05) for i in range(n)],
            "hybrid": [_run(tmp, f"o_h{i}", i, 0, holds, std=0.06) for i in range(n)],
            "worse": [_run(tmp, f"o_w{i}", i, 0, loses, std=0.05) for i in range(n)],
        }
    }


def test_verdicts_are_the_reports_own(tmp_path):
    per_env = _benchmark(tmp_path)
    thresholds = GoalThresholds(poi_envs=1, faster_envs=1, wins_envs=2)
    goals = rd.benchmark_verdicts(per_env, ["hybrid", "worse"], "ppo", "reinforce", 100, thresholds)
    report = write_goals(tmp_path, per_env, "ppo", "reinforce", 100, thresholds=thresholds).read_text()
    for est, readings in goals.items():
        assert len(readings) == 6  # never loses, wins, then the four against the baseline
        for goal, verdict in readings:
            assert f"- **{est}**: {goal}: {verdict}" in report
    optimum = _optimum(tmp_path)
    opt = rd.optimum_verdicts(optimum, ["ip", "idp"], ["hybrid", "worse"], "reinforce")
    text = write_optimum_goals(tmp_path, optimum, "reinforce").read_text()
    assert opt["hybrid"][0] == ("stays at the optimum on ip", "met") and "| met |" in text
    assert opt["worse"][0][1].startswith("not met: 5 of 5 seeds lost it") and "5 of 5 seeds lost it" in text
    assert opt["hybrid"][1] == ("stays at the optimum on idp", "not run")


def test_decision_needs_every_deciding_goal(tmp_path):
    per_env = _benchmark(tmp_path)
    goals = rd.benchmark_verdicts(
        per_env, ["hybrid", "worse"], "ppo", "reinforce", 100, GoalThresholds(poi_envs=1, faster_envs=1, wins_envs=2)
    )
    opt = rd.optimum_verdicts(_optimum(tmp_path), ["ip"], ["hybrid", "worse"], "reinforce")
    hybrid = [*goals["hybrid"], *opt["hybrid"]]
    assert all(rd.verdict_kind(v) == "met" for g, v in hybrid if not g.startswith(rd.INFORMATIVE_PREFIX)), hybrid
    assert rd.decision(hybrid) == "yes"
    assert rd.decision([*goals["worse"], *opt["worse"]]) == "no"
    # a goal still waiting for runs keeps the decision open; one not met decides it
    assert rd.decision([*hybrid, ("stays at the optimum on idp", "not run")]) == "open"
    assert rd.decision([*hybrid, ("x", "not run"), ("y", "not met: on 1")]) == "no"
    # the informative reading never decides
    assert rd.decision([*hybrid, ("no seed below ppo's worst seed", "not met: below on ['e1']")]) == "yes"
    assert rd.decision([]) == "open"


def test_the_fallback_row_keeps_the_goals_places_and_decides_nothing(tmp_path):
    per_env = _benchmark(tmp_path)
    thresholds = GoalThresholds(poi_envs=1, faster_envs=1, wins_envs=2)
    goals = rd.benchmark_verdicts(per_env, ["hybrid", "reinforce"], "ppo", "reinforce", 100, thresholds)
    assert [g for g, _ in goals["reinforce"]] == [g for g, _ in goals["hybrid"]]
    assert [rd.verdict_kind(v) for _, v in goals["reinforce"][:2]] == ["—", "—"]
    opt = rd.optimum_verdicts(_optimum(tmp_path), ["ip"], ["hybrid", "reinforce"], "reinforce")
    assert opt["reinforce"] == [("stays at the optimum on ip", "met")]  # the hold clause alone
    combined = {c: [*goals[c], *opt[c]] for c in ("hybrid", "reinforce")}
    text = rd.markdown(combined, ["a.yaml", "b.yaml"], "hybrid", reference="reinforce")
    assert "| reinforce (the fallback, for scale) | — | — | met |" in text and text.count("**yes**") == 1
    assert "the fallback itself, for scale" in text


@pytest.mark.parametrize(
    "verdict, kind",
    [
        ("met", "met"),
        ("met: no loss beyond noise", "met"),
        ("not met: on 1 (['HalfCheetah-v5'])", "not met"),
        ("never reached the optimum", "not met"),
        ("not decided: no runs yet on Ant-v5; so far on 0", "open"),
        ("too few seeds (2 < 5)", "open"),
        ("open: held on every seed; the std against reinforce's needs 5 paired seeds (3)", "open"),
        ("not run", "open"),
        ("n/a: the fallback itself", "—"),
    ],
)
def test_verdict_kinds(verdict, kind):
    assert rd.verdict_kind(verdict) == kind


def test_markdown_marks_the_default_and_the_decision(tmp_path):
    combined = {
        "hybrid": [("never loses", "met: x"), ("no seed below ppo's worst seed", "not met: y")],
        "cand": [("never loses", "not decided: z"), ("no seed below ppo's worst seed", "met")],
    }
    text = rd.markdown(combined, ["a.yaml", "b.yaml"], "hybrid")
    assert "| hybrid (today's default) | met | not met | **yes** |" in text
    assert "| cand | open | met | **open** |" in text
    assert "*(shown, not deciding)*" in text and "- never loses: not decided: z" in text


def test_example_refuses_a_cell_the_grids_do_not_share(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "examples" / "rule_decision.py"),
            "--benchmark",
            str(ROOT / "configs" / "ablate_smoke.yaml"),
            "--out",
            str(tmp_path / "d"),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert proc.returncode == 2 and "needs a baseline section with a floor" in proc.stderr
    assert not (tmp_path / "d.md").exists()
