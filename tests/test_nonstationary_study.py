"""The non-stationarity study's analysis (recovery times, warm-up and degenerate-oracle handling,
the policy/env drift split, regret) on hand-made results with known answers, and a tiny end-to-end
run of the script."""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("nonstationary_study", ROOT / "examples" / "nonstationary_study.py")
study = importlib.util.module_from_spec(spec)
spec.loader.exec_module(study)

STEP = 1000  # samples per update in the hand-made results


def _result(label: str, errors, *, seed: int = 0, degenerate=(), frozen=None, live=None, returns=None, final=0.0):
    """A result as the benchmark runner writes it: row i has the step after rollout i and the
    hybrid/ values of update i - 1 (SB3 dumps before train)."""
    n = len(errors)
    rows = [{"time/total_timesteps": STEP}]
    for i in range(n):
        row = {
            "time/total_timesteps": STEP * (i + 2),
            "hybrid/oracle_error_applied": errors[i],
            "hybrid/oracle_degenerate": float(i in degenerate),
        }
        row["hybrid/lambda"] = 0.5
        row["hybrid/oracle_lambda"] = live[i] if live is not None else 0.5
        row["hybrid/oracle_error_batch"] = 0.1
        row["hybrid/oracle_excess_variance"] = 0.0
        if frozen is not None:
            row["hybrid/oracle_lambda_frozen_env"] = frozen[i]
            row["hybrid/oracle_env_drift_share"] = row["hybrid/oracle_lambda"] - frozen[i]
        row["rollout/ep_rew_mean"] = returns[i] if returns is not None else -1.0
        rows.append(row)
    return {"spec": {"label": label, "seed": seed}, "rows": rows, "final_return": final}


def test_recovery_counts_post_switch_updates_and_needs_a_hold():
    # update k trains on the rollout that ended at step (k + 1) * STEP; a switch at step 3000
    # makes the update whose rollout ended at 4000 the first post-switch one
    errors = [0.0, 0.0, 0.0, 0.5, 0.3, 0.01, 0.2, 0.01, 0.02, 0.03, 0.0]
    result = _result("switching__x", errors)
    assert study.recovery_times(result, [3000.0]) == [5.0]  # 0.5 .3 .01 .2 | .01 .02 .03
    assert math.isnan(study.recovery_times(_result("s__x", [0.0, 0.0, 0.0, 0.5, 0.01, 0.01]), [3000.0])[0])  # no 3-update hold


def test_recovery_stops_at_the_next_switch_and_skips_degenerate_oracles():
    errors = [0.0, 0.0, 0.0, 0.01, 0.01, 0.01, 0.01, 0.4, 0.4, 0.01, 0.01, 0.01]
    result = _result("switching__x", errors, degenerate={3})
    # switch 1 at 3000: updates 3 (degenerate: no lam* to be near, so it cannot count), 4, 5, 6
    # switch 2 at 7000: .4 .4 .01 .01 .01
    assert study.recovery_times(result, [3000.0, 7000.0]) == [2.0, 3.0]
    # with the next switch at 5000 only updates 3 and 4 belong to the first: no 3-update hold
    assert math.isnan(study.recovery_times(result, [3000.0, 5000.0])[0])


def test_the_censored_recovery_mean_counts_an_unrecovered_switch_as_its_budget_plus_one():
    errors = [0.0, 0.0, 0.0, 0.01, 0.01, 0.01, 0.01, 0.4, 0.4, 0.01, 0.01, 0.01]
    result = _result("switching__x", errors, degenerate={3})
    # the updates trained on rollouts ending at 1000 ... 12000: two post-switch ones before the switch
    # at 5000 (4000: degenerate, 5000), seven after it (6000 ... 12000: .01 .01 .4 .4 .01 .01 .01)
    assert study.post_switch_updates(result, [3000.0, 5000.0]) == [2, 7]
    times = study.recovery_times(result, [3000.0, 5000.0])
    assert math.isnan(times[0]) and times[1] == 5.0
    assert study.censored_recovery_mean(times, [2, 7]) == pytest.approx((3 + 5) / 2)
    # a window that never recovers cannot look faster than one that recovers late
    assert study.censored_recovery_mean([math.nan, 1.0], [20, 20]) > study.censored_recovery_mean([15.0, 1.0], [20, 20])
    assert math.isnan(study.censored_recovery_mean([], []))
    with pytest.raises(ValueError, match="2 recovery times but 1 budgets"):
        study.censored_recovery_mean([1.0, 2.0], [3])


def test_tracking_lag_finds_a_known_shift():
    oracle = [0.1, 0.9, 0.3, 0.7, 0.2, 0.8, 0.4, 0.6, 0.5, 0.95, 0.05, 0.5]
    lagged = [0.5, 0.5, 0.5] + oracle[:-3]  # the applied lam is the oracle 3 updates late
    result = _result("e__m", [0.0] * len(oracle), live=oracle)
    for row, lam in zip(result["rows"][1:], lagged):
        row["hybrid/lambda"] = lam
    assert study.tracking_lag(result, warmup=0) == 3.0
    for row, lam in zip(result["rows"][1:], oracle):
        row["hybrid/lambda"] = lam
    assert study.tracking_lag(result, warmup=0) == 0.0


def test_switch_steps():
    assert study.switch_steps({"kind": "switch", "values": [0, 1], "every": 30}, 100) == [30.0, 60.0, 90.0]
    assert study.switch_steps({"kind": "switch", "values": [0, 1], "at": [10, 200]}, 100) == [10.0]
    assert study.switch_steps({"kind": "linear", "start": 0, "end": 1, "duration": 5}, 100) == []


def test_summary_excludes_warmup_and_degenerate_updates_and_splits_the_drift():
    cfg = {
        "total_timesteps": 8 * STEP,
        "algo": {"lambda_warmup": 1},
        "envs": {
            "stationary": {"m": {"kind": "constant", "value": 0.0}},
            "switching": {"m": {"kind": "switch", "values": [0, 1], "every": 4000}},
        },
        "modes": {"a": {}},
    }
    errors = [9.0, 9.0, 0.1, 0.3, 9.0, 0.2, 0.2, 0.2]  # warm-up (1 + 1 updates) and update 4 (degenerate) are left out
    live = [0.5, 0.5, 0.5, 0.5, 0.5, 0.9, 0.9, 0.9]
    frozen = [0.5, 0.5, 0.5, 0.5, 0.5, 0.6, 0.4, 0.5]
    results = [
        _result("stationary__a", [0.1] * 8, returns=[-1.0] * 8),
        _result("switching__a", errors, degenerate={4}, live=live, frozen=frozen, returns=[-3.0] * 7 + [-1.0]),
    ]
    rows = {r["env"]: r for r in study.summarize(cfg, results)}
    s = rows["switching"]
    assert s["error_to_oracle"] == pytest.approx(0.2)
    assert s["env_drift_share"] == pytest.approx((0.0 + 0.0 + 0.3 + 0.5 + 0.4) / 5)
    assert s["policy_drift_spread"] == pytest.approx(float(__import__("numpy").std([0.5, 0.5, 0.6, 0.4, 0.5])))
    assert s["dynamic_regret"] == pytest.approx(-1.0 + 2.75) and rows["stationary"]["dynamic_regret"] == 0.0
    assert s["final_train_return"] == -1.0  # the last 10% of 8 rollouts: 1
    assert rows["stationary"]["env_drift_share"] == 0.0
    table = study.markdown(list(rows.values()))
    assert "| switching | a | 1 | 0.200 |" in table


def test_stationary_envs_get_no_frozen_oracle():
    cfg = {
        "env_id": "hybrid_pg/DriftingCoupledBandit-v0",
        "n_envs": 2,
        "total_timesteps": 64,
        "algo": {"oracle_freq": 1, "oracle_frozen_clock": 0},
        "envs": {
            "flat": {"m": {"kind": "constant", "value": 0.0}},
            "moving": {"m": {"kind": "linear", "start": 0, "end": 1, "duration": 10}},
        },
        "modes": {"a": {"lambda_window": 2}},
    }
    configs = dict(study.build_runs(cfg, [0]))
    assert configs["flat__a"]["algo"]["oracle_frozen_clock"] is None  # the schema's default: off
    assert configs["moving__a"]["algo"]["oracle_frozen_clock"] == 0 and configs["moving__a"]["algo"]["lambda_window"] == 2
    assert configs["moving__a"]["env"]["env_kwargs"]["steps_per_tick"] == 2


def test_study_script_end_to_end(tmp_path):
    cfg = {
        "name": "tiny",
        "output_dir": str(tmp_path / "unused"),
        "seeds": [0],
        "env_id": "hybrid_pg/DriftingCoupledBandit-v0",
        "env_kwargs": {"c": 1.5},
        "n_envs": 2,
        "total_timesteps": 640,
        "eval_episodes": 2,
        "algo": {
            "n_steps": 64,
            "batch_size": 64,
            "n_epochs": 1,
            "gamma": 0.0,
            "gae_lambda": 1.0,
            "pathwise_source": "model",
            "lambda_warmup": 1,
            "oracle_freq": 1,
            "oracle_samples": 64,
            "oracle_frozen_clock": 0,
        },
        "envs": {
            "stationary": {"m": {"kind": "constant", "value": -0.5}},
            "switching": {"m": {"kind": "switch", "values": [-0.5, 0.5], "every": 256}},
        },
        "modes": {
            "sliding_1": {"lambda_mode": "sliding", "lambda_window": 1},
            "adaptive_4": {"lambda_mode": "adaptive", "lambda_window": 4},
        },
        "reference_mode": "adaptive_4",
    }
    path = tmp_path / "cfg.yaml"
    path.write_text(json.dumps(cfg))  # JSON is YAML
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "nonstationary_study.py"), str(path), "--out", str(tmp_path / "out"), "--workers", "1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = tmp_path / "out"
    for name in (
        "table.md",
        "table.csv",
        "summary.json",
        "lambda_tracking.png",
        "error_per_mode.png",
        "returns.png",
        "drift_decomposition.png",
    ):
        assert (out / name).stat().st_size > 0, name
    rows = json.loads((out / "summary.json").read_text())
    assert {(r["env"], r["mode"]) for r in rows} == {(e, m) for e in ("stationary", "switching") for m in ("sliding_1", "adaptive_4")}
    switching = [r for r in rows if r["env"] == "switching"]
    assert all(len(r["recovery_per_switch"][0]) == 2 for r in switching)  # switches at 256 and 512
    assert all(0.0 <= r["error_to_oracle"] <= 1.0 for r in rows)


def test_select_keeps_the_configs_order_and_refuses_unknown_names():
    entries = {"a": 1, "b": 2, "c": 3}
    assert study.select(entries, None, "modes") == entries
    assert list(study.select(entries, ["c", "a"], "modes")) == ["a", "c"]
    with pytest.raises(ValueError, match=r"unknown modes \['z'\]; the config has \['a', 'b', 'c'\]"):
        study.select(entries, ["a", "z"], "modes")


def test_study_script_refuses_an_unknown_mode_before_training(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "examples" / "nonstationary_study.py"),
            str(ROOT / "configs" / "nonstationary_study.yaml"),
            "--modes",
            "sliding_16",
            "no_such_mode",
            "--out",
            str(tmp_path / "out"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "unknown modes ['no_such_mode']" in proc.stderr
    assert not (tmp_path / "out").exists()
