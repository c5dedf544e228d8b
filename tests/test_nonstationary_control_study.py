"""The control-task non-stationarity study: its analysis functions on hand-made series with known
answers (recovery with a sparse oracle, paired regret, the paired difference of differences and its
"too few runs" wording), the grid it builds, and ``--quick`` end to end."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
import yaml

from hybrid_pg.experiments.nonstationary_analysis import difference_of_differences, paired_regret, recovery_times, tracking_lag

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("nonstationary_control_study", ROOT / "examples" / "nonstationary_control_study.py")
study = importlib.util.module_from_spec(spec)
spec.loader.exec_module(study)

STEP = 1000
CONFIG = yaml.safe_load((ROOT / "configs" / "nonstationary_control.yaml").read_text())


def _result(label, seed, returns, errors=None, oracle_every=1):
    """Rows as the runner writes them: row i + 1 holds the step after rollout i + 1 and update i's values."""
    rows = [{"time/total_timesteps": STEP, "rollout/ep_rew_mean": returns[0]}]
    for i in range(1, len(returns)):
        row = {"time/total_timesteps": STEP * (i + 1), "rollout/ep_rew_mean": returns[i], "hybrid/lambda": 0.5}
        if errors is not None and (i - 1) % oracle_every == 0:
            row.update(
                {"hybrid/oracle_error_applied": errors[i - 1], "hybrid/oracle_lambda": 0.5 + errors[i - 1], "hybrid/oracle_degenerate": 0.0}
            )
        rows.append(row)
    return {
        "spec": {"label": label, "seed": seed},
        "rows": rows,
        "final_return": returns[-1],
        "config": {"algo": {"lambda_warmup": 0, "oracle_freq": oracle_every}},
    }


def test_recovery_counts_logged_oracle_updates_when_the_oracle_is_sparse():
    # the oracle on every 2nd update: updates 0, 2, 4, ... (rollouts ending at 1000, 3000, 5000, ...)
    errors = [0.0, 9, 0.0, 9, 0.5, 9, 0.3, 9, 0.01, 9, 0.01, 9, 0.02, 9]
    result = _result("t__e__c", 0, [-1.0] * (len(errors) + 1), errors, oracle_every=2)
    # switch at 4000: logged post-switch updates end at 5000 (0.5), 7000 (0.3), 9000, 11000, 13000 (0.01, 0.01, 0.02)
    assert recovery_times(result, [4000.0]) == [3.0]


def test_recovery_allows_the_oracles_own_noise():
    """A reference known only to +-0.15 (jackknife SE) cannot tell 0.25 from 0: within 2 SE counts
    as recovered; a precise reference keeps the fixed 0.05."""
    errors = [0.0, 0.6, 0.25, 0.2, 0.25, 0.3]
    result = _result("t__e__c", 0, [-1.0] * (len(errors) + 1), errors)
    for row in result["rows"][1:]:
        row.update({"hybrid/oracle_lambda_is_mse": 1.0, "hybrid/oracle_lambda_mse_se": 0.15, "hybrid/oracle_lambda_var_se": 0.001})
    assert recovery_times(result, [1500.0]) == [2.0]  # 0.6 > 0.3; then 0.25, 0.2, 0.25 <= 0.3
    assert math.isnan(recovery_times(result, [1500.0], noise_z=None)[0])  # the fixed 0.05 never holds
    for row in result["rows"][1:]:
        row["hybrid/oracle_lambda_is_mse"] = 0.0  # scored against the (precise) variance-optimal lam*
    assert math.isnan(recovery_times(result, [1500.0])[0])


def test_tracking_lag_with_a_sparse_oracle_is_in_logged_updates():
    oracle = [0.1, 0.9, 0.3, 0.7, 0.2, 0.8, 0.4, 0.6]
    result = _result("t__e__c", 0, [-1.0] * (2 * len(oracle) + 1), [o - 0.5 for o in oracle for _ in (0, 1)], oracle_every=2)
    logged = [row for row in result["rows"] if "hybrid/oracle_lambda" in row]
    for k, row in enumerate(logged):  # the applied lam is the oracle of the previous logged update
        row["hybrid/lambda"] = oracle[k - 1] if k else 0.5
    assert tracking_lag(result, warmup=0) == 1.0


def test_paired_regret_matches_seeds():
    assert paired_regret({0: -100.0, 1: -120.0, 2: -90.0}, {0: -150.0, 2: -80.0, 5: 0.0}) == {0: 50.0, 2: -10.0}


def test_difference_of_differences_by_hand():
    seeds = range(6)
    h_move = {s: -200.0 + s for s in seeds}
    r_move = {s: -260.0 + 2 * s for s in seeds}  # H - R moving: 60 - s
    h_still = {s: -150.0 for s in seeds}
    r_still = {s: -170.0 - s for s in seeds}  # H - R stationary: 20 + s
    out = difference_of_differences(h_move, r_move, h_still, r_still)
    per = {s: (60.0 - s) - (20.0 + s) for s in seeds}  # 40 - 2 s: 40, 38, ..., 30
    assert out["per_seed"] == pytest.approx(per)
    assert out["diff"] == pytest.approx(35.0)
    assert out["advantage_moving"] == pytest.approx(57.5) and out["advantage_stationary"] == pytest.approx(22.5)
    assert 30.0 <= out["low"] <= 35.0 <= out["high"] <= 40.0
    assert out["verdict"] == "significant"  # 6 positive pairs: Wilcoxon p = 2 / 2**6
    # seeds only in some cells are dropped; fewer than 5 paired seeds: no verdict, whatever the CI
    few = difference_of_differences(
        {0: 1.0, 1: 2.0, 2: 3.0, 9: 0.0}, {0: 0.0, 1: 0.0, 2: 0.0}, {0: 0.0, 1: 0.0, 2: 0.0}, {0: 0.0, 1: 0.0, 2: 0.0}
    )
    assert few["seeds"] == [0, 1, 2] and few["diff"] == pytest.approx(2.0) and few["verdict"] == "too few runs"
    assert difference_of_differences({}, {0: 1.0}, {0: 1.0}, {0: 1.0})["verdict"] == "no paired runs"


def test_question_and_regret_rows_from_hand_made_runs():
    cfg = {"modes": {"w": {}}, "estimators": ["hybrid", "reinforce"], "question_mode": "w", "seeds": [0, 1]}
    task = {
        "total_timesteps": 10 * STEP,
        "envs": {
            "stationary": {"g": {"kind": "constant", "value": 10.0}},
            "moving": {"g": {"kind": "switch", "values": [10.0, 14.0], "every": 5000}},
        },
    }
    finals = {
        ("stationary", "hybrid_w"): -100.0,
        ("stationary", "reinforce"): -110.0,
        ("moving", "hybrid_w"): -130.0,
        ("moving", "reinforce"): -125.0,
    }
    results = [
        _result(f"p__{env}__{cell}", seed, [-300.0] * 9 + [value + seed]) for (env, cell), value in finals.items() for seed in (0, 1)
    ]
    grouped = study.group(results, "p")
    (q,) = study.question_rows(task, grouped, cfg)
    assert q["seeds"] == [0, 1] and q["diff"] == pytest.approx((-5.0) - 10.0) and q["verdict"] == "too few runs"
    rows = {(r["env"], r["cell"]): r for r in study.return_rows(task, grouped, cfg)}
    # mean training return: (9 * -300 + final) / 10; regret = stationary - moving, per seed
    assert rows[("moving", "hybrid_w")]["regret_vs_stationary"]["mean"] == pytest.approx(3.0)
    assert rows[("moving", "hybrid_w")]["final_train_return"]["n"] == 2
    assert "1/2" not in study.coverage(task, grouped, cfg, 2) and "2/2" in study.coverage(task, grouped, cfg, 2)


def test_grid_order_and_configs():
    runs = study.build_runs(CONFIG, ["pendulum", "halfcheetah"], [0, 1, 2])
    assert len(runs) == 2 * 3 * 7 * 3  # tasks x envs x (5 hybrid modes + reinforce + ppo) x seeds
    labels = [label for label, _ in runs]
    assert labels[:2] == ["pendulum__stationary__hybrid_adaptive_16", "pendulum__stationary__reinforce"]  # the question's cells first
    assert labels.index("pendulum__stationary__ppo") > labels.index("pendulum__drifting_g__hybrid_sliding_4")
    by = {(label, c["train"]["seed"]): c for label, c in runs}
    moving = by[("pendulum__switching_g__hybrid_sliding_16", 0)]["algo"]
    assert moving["oracle_frozen_clock"] == 0 and moving["oracle_freq"] == 2 and moving["lambda_window"] == 16
    assert by[("pendulum__stationary__hybrid_sliding_16", 0)]["algo"]["oracle_frozen_clock"] is None
    assert by[("pendulum__switching_g__reinforce", 0)]["algo"]["oracle_freq"] == 0
    assert by[("pendulum__switching_g__ppo", 0)]["algo"]["algorithm"] == "ppo"
    assert by[("pendulum__switching_g__hybrid_adaptive_16_bias", 0)]["algo"]["lambda_detector"] == {"watch_bias": True}
    env = by[("halfcheetah__drifting_friction__hybrid_ema_16", 1)]["env"]
    assert env["normalize"] and env["wrappers"][0]["name"] == "nonstationary"
    assert env["wrappers"][0]["kwargs"]["schedules"]["friction_scale"]["end"] == 0.4
    # --question-only: the question's two cells on every env and seed, the same configs
    question = study.build_runs(CONFIG, ["halfcheetah"], [3, 4], question_only=True)
    assert {label.split("__")[2] for label, _ in question} == {"hybrid_adaptive_16", "reinforce"}
    assert len(question) == 3 * 2 * 2 and {c["train"]["seed"] for _, c in question} == {3, 4}
    full = {(label, c["train"]["seed"]): c for label, c in study.build_runs(CONFIG, ["halfcheetah"], [3, 4])}
    assert all(full[(label, c["train"]["seed"])] == c for label, c in question)


def test_quick_end_to_end(tmp_path):
    out = tmp_path / "out"
    study.main([str(ROOT / "configs" / "nonstationary_control.yaml"), "--quick", "--task", "pendulum", "--out", str(out)])
    for name in (
        "report_pendulum.md",
        "summary_pendulum.json",
        "pendulum_lambda.png",
        "pendulum_drift.png",
        "pendulum_returns.png",
        "pendulum_question.png",
    ):
        assert (out / name).stat().st_size > 0, name
    summary = json.loads((out / "summary_pendulum.json").read_text())
    assert summary["runs"] == 2 * 4  # 2 envs x (2 hybrid modes + reinforce + ppo), 1 seed
    assert {(q["env"], q["mode"]) for q in summary["question"]} == {("switching_g", m) for m in ("sliding_4", "adaptive_16")}
    assert all(q["verdict"] == "too few runs" for q in summary["question"])
    assert all(math.isfinite(r["final_train_return"]["mean"]) for r in summary["returns"])
    assert "1/1" in (out / "report_pendulum.md").read_text()
    # a partial grid: --report-only reads what finished and trains nothing
    (next((out / "runs").glob("pendulum__switching_g__ppo*")) / "result.json").unlink()
    study.main([str(ROOT / "configs" / "nonstationary_control.yaml"), "--quick", "--task", "pendulum", "--out", str(out), "--report-only"])
    assert json.loads((out / "summary_pendulum.json").read_text())["runs"] == 7
    assert "0/1" in (out / "report_pendulum.md").read_text()
    # extra seeds of the question's cells alone; a later --report-only (no --seeds) still covers them
    study.main(
        [
            str(ROOT / "configs" / "nonstationary_control.yaml"),
            "--quick",
            "--task",
            "pendulum",
            "--out",
            str(out),
            "--seeds",
            "1",
            "--question-only",
        ]
    )
    assert sorted(p.name.split("__")[2].rsplit("_s", 1)[0] for p in (out / "runs").glob("pendulum__*_s1_*") if p.is_dir()) == [
        "hybrid_adaptive_16",
        "hybrid_adaptive_16",
        "reinforce",
        "reinforce",
    ]
    study.main([str(ROOT / "configs" / "nonstationary_control.yaml"), "--quick", "--task", "pendulum", "--out", str(out), "--report-only"])
    assert json.loads((out / "summary_pendulum.json").read_text())["runs"] == 7 + 4
    report = (out / "report_pendulum.md").read_text()
    assert "2/2" in report and "0/2" in report  # the question's cells have both seeds; PPO on switching g none
    assert study.seeds_on_disk(out / "runs", "pendulum") == {0, 1} and study.seeds_on_disk(out / "runs", "halfcheetah") == set()
