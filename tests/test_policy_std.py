"""The policy's standard deviation in the reports: the reader (hybrid_pg.experiments.results.policy_std:
the last train/std logged at or before a step, or at the end; NaN without the key), the per-cell
median over seeds (policy_std_summary), and the column every report gains (the ablation table and
its CSV, the baseline goals, the MuJoCo floor, the window study), with medians known by construction."""

from __future__ import annotations

import csv
import importlib.util
import math
from pathlib import Path

import pytest

from hybrid_pg.experiments.ablate_report import write_env_report
from hybrid_pg.experiments.baseline_goals import write_goals
from hybrid_pg.experiments.compressed import gzip_file
from hybrid_pg.experiments.csv_callbacks import format_progress_line
from hybrid_pg.experiments.results import (
    PolicyStd,
    SeedMedian,
    policy_std,
    policy_std_summary,
    reads_early,
)
from hybrid_pg.experiments.runner import load_result

ROOT = Path(__file__).resolve().parents[1]


def _example(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _rows(stds, rollout: int = 50_000):
    """progress.csv rows as load_result gives them: row i holds the step after rollout i and the
    train/ values of update i - 1; one extra row after training holds the last update's values."""
    rows = [{"time/total_timesteps": float(rollout), "rollout/ep_rew_mean": -100.0}]
    for i, std in enumerate(stds, start=1):
        step = float(rollout * min(i + 1, len(stds)))
        rows.append({"time/total_timesteps": step, "rollout/ep_rew_mean": -100.0 + i, "train/std": std})
    return rows


def _result(stds, seed: int = 0, final: float = 0.0, run_dir: str = "", budget: int = 200_000):
    return {
        "rows": _rows(stds),
        "final_return": final,
        "spec": {"seed": seed},
        "seed": seed,
        "key": f"run_s{seed}",
        "run_dir": run_dir,
        "config": {"train": {"total_timesteps": budget}},
    }


# ------------------------------------------------------------------------------------------------
# the reader
# ------------------------------------------------------------------------------------------------


def test_the_std_at_a_step_is_the_last_one_logged_at_or_before_it():
    # updates trained on the rollouts that ended at 50k, 100k, 150k, 200k
    result = _result([0.9, 0.7, 0.5, 0.4])
    assert policy_std(result, 50_000) == 0.9
    assert policy_std(result, 100_000) == 0.7  # exactly at the step
    assert policy_std(result, 149_999) == 0.7  # the last one before it
    assert policy_std(result) == 0.4  # the end
    assert math.isnan(policy_std(result, 49_999))  # before the first update: nothing logged yet


def test_a_run_without_the_key_gives_nan_not_an_error():
    result = {"rows": [{"time/total_timesteps": 1000.0}, {"time/total_timesteps": 2000.0, "train/loss": 1.0}]}
    assert math.isnan(policy_std(result)) and math.isnan(policy_std(result, 1500))
    assert math.isnan(policy_std({"rows": []}))
    summary = policy_std_summary([result, result], budget=300_000)
    assert summary.at_step is not None and summary.at_step.n == 0 and summary.end.n == 0 and math.isnan(summary.end.median)
    assert summary.texts() == ["—", "—"]


def test_a_compressed_progress_log_reads_the_same(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    lines = ["time/total_timesteps,train/std,rollout/ep_rew_mean", "1024,,-10", "2048,0.95,-9", "3072,0.9,-8", "3072,0.85,"]
    (run_dir / "progress.csv").write_text("\n".join(lines) + "\n")
    (run_dir / "config.yaml").write_text("train: {total_timesteps: 3072}\n")
    (run_dir / "result.json").write_text(
        '{"timesteps": 3072, "train_seconds": 1.0, "final_return": -8.0, "eval_returns": [-8.0], '
        '"algorithm": "ppo", "env_id": "Pendulum-v1", "seed": 0}'
    )
    plain = load_result(run_dir)
    gzip_file(run_dir / "progress.csv")
    assert not (run_dir / "progress.csv").exists() and (run_dir / "progress.csv.gz").is_file()
    packed = load_result(run_dir)
    for step in (1000, 1024, 2048, 2500, None):
        a, b = policy_std(plain, step), policy_std(packed, step)
        assert (math.isnan(a) and math.isnan(b)) or a == b, step
    assert policy_std(packed, 1024) == 0.95 and policy_std(packed, 2048) == 0.9 and policy_std(packed) == 0.85
    assert math.isnan(policy_std(packed, 1000))


def test_the_cell_summary_is_the_median_over_seeds_and_counts_them():
    runs = [_result([0.9, 0.8, 0.6, s], seed=i) for i, s in enumerate([0.5, 0.3, 0.1])]
    runs.append({"rows": [], "spec": {"seed": 3}})  # a run that logged no std: left out of the median
    summary = policy_std_summary(runs, budget=200_000)
    assert summary.at_step == SeedMedian(0.8, 3) and summary.end == SeedMedian(0.3, 3)
    assert summary.texts() == ["0.800 (n=3)", "0.300 (n=3)"]
    columns = summary.columns()
    assert columns == {"std_at_100000_median": 0.8, "std_at_100000_n": 3, "std_end_median": 0.3, "std_end_n": 3}
    assert PolicyStd.from_columns(columns) == summary
    # a budget of 100k or less: the end only (the reading at 100k would be the end's)
    short = policy_std_summary(runs, budget=100_000)
    assert short.at_step is None and short.texts() == ["0.300 (n=3)"]
    assert PolicyStd.from_columns(short.columns()) == short
    # no budget given: the runs' configs say (200k here)
    assert policy_std_summary(runs[:3]).at_step is not None
    assert reads_early(None) and reads_early(100_001) and not reads_early(100_000)


# ------------------------------------------------------------------------------------------------
# the reports
# ------------------------------------------------------------------------------------------------


def _cells(tmp_path):
    """Two estimators x 3 seeds; medians at 100k: hybrid 0.6, reinforce 0.8; at the end 0.2 and 0.5."""
    out = {}
    for name, early, ends in (("reinforce", [0.9, 0.8, 0.7], [0.5, 0.6, 0.4]), ("hybrid", [0.5, 0.6, 0.7], [0.1, 0.2, 0.3])):
        runs = []
        for seed, (e, end) in enumerate(zip(early, ends)):
            run_dir = tmp_path / f"{name}_s{seed}"
            run_dir.mkdir(parents=True)
            (run_dir / "evaluations.csv").write_text("timesteps,mean,std\n0,-10,0\n100000,-5,0\n200000,-1,0\n")
            runs.append(_result([1.0, e, 0.5 * (e + end), end], seed=seed, final=-1.0, run_dir=str(run_dir)))
        out[name] = runs
    return out


def test_the_ablation_table_gains_the_std_medians(tmp_path):
    results = _cells(tmp_path / "runs")
    write_env_report(tmp_path / "out", "E", "E", results, "reinforce", total_timesteps=200_000)
    md = (tmp_path / "out" / "table_E.md").read_text()
    assert "| estimator | policy std at 100k steps (median over seeds) | policy std at the end (median over seeds) |" in md
    assert "| hybrid | 0.600 (n=3) | 0.200 (n=3) |" in md and "| reinforce | 0.800 (n=3) | 0.500 (n=3) |" in md
    with (tmp_path / "out" / "table_E.csv").open() as fh:
        rows = {r["estimator"]: r for r in csv.DictReader(fh)}
    assert float(rows["hybrid"]["std_at_100000_median"]) == pytest.approx(0.6) and rows["hybrid"]["std_end_n"] == "3"
    assert float(rows["reinforce"]["std_end_median"]) == pytest.approx(0.5)
    with (tmp_path / "out" / "runs_E.csv").open() as fh:
        runs = [r for r in csv.DictReader(fh) if r["estimator"] == "hybrid"]
    assert [float(r["std_end"]) for r in runs] == pytest.approx([0.1, 0.2, 0.3])
    # a budget of 100k: the end only, and the table says so
    write_env_report(tmp_path / "short", "E", "E", results, "reinforce", total_timesteps=100_000)
    md = (tmp_path / "short" / "table_E.md").read_text()
    assert "| hybrid | 0.200 (n=3) |" in md and "at 100k steps (median" not in md and "the std at the end only" in md


def test_the_goals_report_gains_the_std_medians(tmp_path):
    path = write_goals(tmp_path, {"E": _cells(tmp_path)}, "reinforce", total_timesteps=200_000)
    lines = path.read_text().splitlines()
    head = next(line for line in lines if line.startswith("| estimator | runs |"))  # the env's table, not the glance
    assert head.endswith("| policy std at 100k steps (median over seeds) | policy std at the end (median over seeds) |")
    hybrid = next(line for line in lines if line.startswith("| hybrid |") and "(n=" in line)
    assert hybrid.endswith("| 0.600 (n=3) | 0.200 (n=3) |")


def test_the_floor_report_gains_the_std_at_its_budget():
    floor = _example("mujoco_floor")
    pooled = {"E": {"reinforce": {0: 10.0, 1: 20.0, 2: 30.0}, "hybrid": {0: 5.0, 1: 30.0}}}
    stds = {"E": {"reinforce": {0: 0.7, 1: 0.8, 2: 0.9}, "hybrid": {0: 0.4}}}
    text = floor.report(pooled, {}, 100_000, "", "hybrid", "reinforce", "ppo", stds)
    assert "| policy std at 100k steps (median over seeds) |" in text
    assert "| 0.800 (n=3) |" in text and "| 0.400 (n=1) |" in text
    assert "at the end" not in text.split("## The floor")[0]


def test_the_window_study_table_gains_the_std_medians():
    study = _example("nonstationary_study")
    runs = [_result([0.9, s, 0.3, 0.2], seed=i) for i, s in enumerate([0.6, 0.4])]
    row = {"env": "e", "mode": "m", "seeds": 2, **policy_std_summary(runs, budget=122_880).columns()}
    keys = ("error_to_oracle", "error_to_oracle_se", "error_of_rollout_alone", "excess_variance", "lag_updates")
    keys += ("recovery_updates", "recovered_fraction", "env_drift_share", "policy_drift_spread", "final_train_return")
    row.update({k: 0.0 for k in keys + ("train_return", "dynamic_regret")})
    table = study.markdown([row])
    assert "| policy std at 100k steps (median over seeds) | policy std at the end (median over seeds) |" in table
    assert table.splitlines()[2].endswith("| 0.500 (n=2) | 0.200 (n=2) |")


def test_the_progress_line_shows_the_std_where_there_is_one():
    row = {"update": 3, "timesteps": 3072, "rollout/ep_rew_mean": -900.0, "hybrid/lambda": 0.25, "time/elapsed": 4.0}
    assert "std" not in format_progress_line(row)
    line = format_progress_line({**row, "train/std": 0.8123})
    assert "| ep_rew_mean   -900.00 | std 0.812 | lam 0.250 |" in line


def test_the_signal_summary_is_the_median_over_seeds_of_each_runs_median():
    from hybrid_pg.experiments.results import signal_summary

    runs = []
    for seed, values in enumerate(([0.9, 0.1, 0.2, 0.3], [0.9, 0.5, 0.6, 0.7], [0.9, 0.4, 0.8, 0.9])):
        result = _result([0.5] * len(values), seed=seed)
        for row, value in zip(result["rows"][1:], values):
            row["hybrid/direction_cos"] = value
        runs.append(result)
    runs.append(_result([0.5, 0.5], seed=3))  # never logged it: not counted
    # skipping the first update: per-run medians 0.2, 0.6, 0.8 -> 0.6 over 3 seeds
    assert signal_summary(runs, "hybrid/direction_cos", skip_updates=1) == SeedMedian(pytest.approx(0.6), 3)
    assert signal_summary(runs, "hybrid/direction_cos").median == pytest.approx(0.65)  # medians 0.25, 0.65, 0.85
    assert signal_summary(runs[3:], "hybrid/direction_cos").n == 0


def test_the_ablation_table_shows_the_signals_only_where_runs_logged_them(tmp_path):
    results = _cells(tmp_path / "runs")
    write_env_report(tmp_path / "old", "E", "E", results, "reinforce", total_timesteps=200_000)
    assert "Online agreement signals" not in (tmp_path / "old" / "table_E.md").read_text()  # old grids: unchanged
    for i, result in enumerate(results["hybrid"]):
        for row in result["rows"][1:]:
            row["hybrid/sign_agreement"] = 0.4 + 0.1 * i
    write_env_report(tmp_path / "new", "E", "E", results, "reinforce", total_timesteps=200_000)
    md = (tmp_path / "new" / "table_E.md").read_text()
    assert "| hybrid | — | — | 0.500 (n=3) |" in md and "| reinforce |" not in md.split("Online agreement signals")[1]
