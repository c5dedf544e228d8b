"""Every hybrid cell against its score-only fallback, paired by seed
(hybrid_pg.experiments.fallback_goals): synthetic runs whose answers are known by construction."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from hybrid_pg.experiments.ablate import load_ablation
from hybrid_pg.experiments.baseline_goals import GoalThresholds, write_goals
from hybrid_pg.experiments.config import ConfigError
from hybrid_pg.experiments.fallback_goals import MIN_RUNS, fallback_rows, fallback_verdicts

STEPS = (0, 100, 200, 300)


def _run(tmp: Path, name: str, seed: int, level: float, early: float = None):
    """A finished run: training return ``level`` at every rollout (AUC = level), evaluations 0,
    ``early`` (default level / 3) at step 100, then ``level``."""
    run_dir = tmp / name
    run_dir.mkdir()
    early = level / 3 if early is None else early
    evals = [(0, 0.0), (100, early), (200, level), (300, level)]
    (run_dir / "evaluations.csv").write_text("timesteps,mean,std\n" + "".join(f"{s},{v},0\n" for s, v in evals))
    rows = [{"time/total_timesteps": float(s), "rollout/ep_rew_mean": level} for s in STEPS]
    return {"run_dir": str(run_dir), "seed": seed, "final_return": float(level), "rows": rows}


def _cell(tmp, prefix, levels, seeds=None, early=None):
    seeds = range(len(levels)) if seeds is None else seeds
    return [_run(tmp, f"{prefix}{s}", s, v, None if early is None else early[i]) for i, (s, v) in enumerate(zip(seeds, levels))]


def _noise(i):  # seed-to-seed variation shared by both cells of a seed (what pairing removes)
    return 37.0 * ((i * 7919) % 11)


def test_a_cell_better_on_every_seed_wins_and_never_loses(tmp_path):
    n = 6  # a paired verdict needs 6 seeds: Wilcoxon's p cannot go below 2 / 2^n
    per_env = {}
    for env in ("e1", "e2", "e3"):
        floor = _cell(tmp_path, f"{env}r", [100.0 + _noise(i) for i in range(n)])
        better = _cell(tmp_path, f"{env}h", [120.0 + i + _noise(i) for i in range(n)])
        per_env[env] = {"reinforce": floor, "hybrid": better}
    rows = fallback_rows(per_env, "reinforce", at_steps=100)
    row = rows["e1"][0]
    assert row["estimator"] == "hybrid" and row["pairs"] == n
    assert row["auc"].paired and row["auc"].diff.point == pytest.approx(22.5)  # mean of 20..25
    assert row["auc"].diff.low > 0 and row["auc"].p_value == pytest.approx(2 / 2**n)
    assert row["final"].diff.point == pytest.approx(22.5) and row["floor_test"].count == 0
    verdicts = dict(fallback_verdicts(rows, "hybrid", "reinforce", wins_envs=3))
    assert len(verdicts) == 2 and all(v.startswith("met") for v in verdicts.values()), verdicts
    # the same cell against a stricter count of wins than there are envs
    assert [v for v in dict(fallback_verdicts(rows, "hybrid", "reinforce", wins_envs=4)).values()][1].startswith("not met: on 3")


def test_a_loss_on_one_env_is_named_and_noise_is_not_a_loss(tmp_path):
    n = MIN_RUNS + 1
    floor = {env: _cell(tmp_path, f"{env}r", [100.0 + _noise(i) for i in range(n)]) for env in ("good", "bad")}
    noisy = _cell(tmp_path, "goodh", [100.0 + (5.0 if i % 2 else -5.0) + _noise(i) for i in range(n)])
    worse = _cell(tmp_path, "badh", [60.0 - i + _noise(i) for i in range(n)])
    rows = fallback_rows(
        {"good": {"reinforce": floor["good"], "h": noisy}, "bad": {"reinforce": floor["bad"], "h": worse}}, "reinforce", None
    )
    assert rows["good"][0]["auc"].diff.low < 0 < rows["good"][0]["auc"].diff.high  # noise: no loss
    assert rows["bad"][0]["final"].diff.high < 0 and rows["bad"][0]["floor_test"] is None
    (goal, verdict), *_ = fallback_verdicts(rows, "h", "reinforce")
    assert "never loses" in goal and verdict == "not met: a loss beyond noise on ['bad']"
    assert len(fallback_verdicts(rows, "h", "reinforce")) == 1  # no wins goal unless asked for


def test_a_low_early_tail_fails_the_floor_test_even_when_the_end_is_fine(tmp_path):
    """5 of 8 runs below the floor's worst at 100 steps: p = 8*7*6*5*4 / (16*15*14*13*12) = 0.0128."""
    floor = _cell(tmp_path, "r", [300.0 + i for i in range(8)], early=[100.0 + i for i in range(8)])
    late = _cell(tmp_path, "h", [310.0 + i for i in range(8)], early=[10.0, 20.0, 30.0, 40.0, 50.0, 150.0, 150.0, 150.0])
    rows = fallback_rows({"e": {"reinforce": floor, "h": late}}, "reinforce", at_steps=100)
    test = rows["e"][0]["floor_test"]
    assert test.count == 5 and test.p_value == pytest.approx(8 * 7 * 6 * 5 * 4 / (16 * 15 * 14 * 13 * 12))
    assert rows["e"][0]["auc"].diff.low > 0  # better AUC and final return...
    # ...and still a loss: the early tail
    assert fallback_verdicts(rows, "h", "reinforce")[0][1] == "not met: a loss beyond noise on ['e']"


def test_only_seeds_both_cells_finished_are_paired_and_too_few_decide_nothing(tmp_path):
    floor = _cell(tmp_path, "r", [100.0] * 4, seeds=[0, 1, 2, 3])
    cell = _cell(tmp_path, "h", [200.0] * 4, seeds=[2, 3, 4, 5])
    rows = fallback_rows({"e": {"reinforce": floor, "h": cell}}, "reinforce", None)
    assert rows["e"][0]["pairs"] == 2 and rows["e"][0]["auc"].diff.point == pytest.approx(100.0)
    for _, verdict in fallback_verdicts(rows, "h", "reinforce", wins_envs=1):
        assert verdict.startswith(f"not decided: fewer than {MIN_RUNS} seeds paired with reinforce on e 2;")
    lone = _cell(tmp_path, "l", [200.0], seeds=[9])
    assert fallback_rows({"e": {"reinforce": floor, "l": lone}}, "reinforce", None)["e"][0]["auc"] is None


def test_the_plan_keeps_goals_open_until_every_planned_env_and_seed_has_finished(tmp_path):
    """6 paired seeds of a clear win on e1 would be called without a plan; a plan of 10 seeds on e1
    and e2 keeps both goals open and says what is missing; all of it finished, they are called."""
    from hybrid_pg.experiments.fallback_goals import GridPlan

    floor = _cell(tmp_path, "r", [100.0 + _noise(i) for i in range(10)], seeds=list(range(10)))
    cell = _cell(tmp_path, "h", [200.0 + i + _noise(i) for i in range(6)], seeds=list(range(6)))
    rows = fallback_rows({"e1": {"reinforce": floor, "h": cell}}, "reinforce", None)
    assert all(v.startswith("met") for _, v in fallback_verdicts(rows, "h", "reinforce", wins_envs=1))
    plan = GridPlan({"h": ("e1", "e2"), "reinforce": ("e1", "e2")}, seeds=10)
    for goal, verdict in fallback_verdicts(rows, "h", "reinforce", wins_envs=1, plan=plan):
        assert verdict.startswith("not decided: no runs yet on e2; fewer than 10 seeds paired with reinforce on e1 6;"), verdict
        assert "2 env(s)" in goal or "AUC" in goal
    full = _cell(tmp_path, "f", [200.0 + i + _noise(i) for i in range(10)], seeds=list(range(10)))
    both = fallback_rows({e: {"reinforce": floor, "h": full} for e in ("e1", "e2")}, "reinforce", None)
    assert all(v.startswith("met") for _, v in fallback_verdicts(both, "h", "reinforce", wins_envs=2, plan=plan))


def test_the_goals_report_gains_the_fallback_section_and_reads_the_thresholds(tmp_path):
    n = 6
    floor = _cell(tmp_path, "r", [100.0 + _noise(i) for i in range(n)])
    hyb = _cell(tmp_path, "h", [150.0 + i + _noise(i) for i in range(n)])
    ppo = _cell(tmp_path, "p", [90.0 + _noise(i) for i in range(n)])
    per_env = {"e": {"ppo": ppo, "reinforce": floor, "hybrid": hyb}}
    text = write_goals(
        tmp_path, per_env, "ppo", "reinforce", 100, thresholds=GoalThresholds(poi_envs=1, faster_envs=1, wins_envs=1)
    ).read_text()
    section = text.split("## Against the fallback (reinforce), paired by seed")[1]
    assert "| hybrid | 6 | +52.5 [" in section and "p 0.031" in section
    assert "- **ppo**" not in section  # the baseline has no fallback
    assert "- **hybrid**: AUC above reinforce's (CI excluding 0, Wilcoxon p < 0.05) on >= 1 env(s): met: on 1 (['e'])" in section
    assert "with a CI excluding 0.5 on >= 1 envs" in text


BASE = {
    "name": "g",
    "seeds": 2,
    "total_timesteps": 128,
    "envs": ["Pendulum-v1"],
    "estimators": ["hybrid", "reinforce", {"name": "ppo", "algo": {"algorithm": "ppo"}}],
}


def _load(tmp_path, baseline):
    path = tmp_path / "g.yaml"
    path.write_text(yaml.safe_dump({**BASE, "baseline": baseline}))
    return load_ablation(path)


def test_goal_thresholds_are_read_and_bad_ones_refused(tmp_path):
    b = _load(tmp_path, {"name": "ppo", "floor": "reinforce", "floor_at_steps": 64, "goals": {"poi_envs": 3, "wins_envs": 3}}).baseline
    assert (b.poi_envs, b.faster_envs, b.wins_envs) == (3, 1, 3)
    with pytest.raises(ConfigError, match=r"baseline.goals.win_envs is not a known key.*did you mean 'wins_envs'"):
        _load(tmp_path, {"name": "ppo", "goals": {"win_envs": 3}})
    with pytest.raises(ConfigError, match="baseline.goals.wins_envs needs baseline.floor"):
        _load(tmp_path, {"name": "ppo", "goals": {"wins_envs": 3}})
    with pytest.raises(ConfigError, match="baseline.goals.poi_envs must be >= 1, got 0"):
        _load(tmp_path, {"name": "ppo", "goals": {"poi_envs": 0}})
    with pytest.raises(ConfigError, match="baseline.goals must be a mapping"):
        _load(tmp_path, {"name": "ppo", "goals": [3]})
