"""Aggregation statistics (IQM, stratified bootstrap), benchmark row helpers, determinism of a run,
and ``hybrid-pg bench`` on a tiny budget."""

from __future__ import annotations

import contextlib
import io
import json
import math

import numpy as np
import pytest
from scipy import stats

from hybrid_pg.experiments.aggregate import (
    Interval,
    bootstrap_difference_ci,
    curve_mean_ci,
    iqm,
    mean,
    stratified_bootstrap_ci,
    welch_p_value,
)
from hybrid_pg.experiments.benchmark import run_config, speed_markdown
from hybrid_pg.experiments.cli import main
from hybrid_pg.experiments.csv_callbacks import read_csv_columns
from hybrid_pg.experiments.results import learning_curve, median_over_updates, normalized_auc, update_series
from hybrid_pg.experiments.runner import available_cores, load_result, run, worker_count


def _run(argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main(argv)
    return status, out.getvalue(), err.getvalue()


# ------------------------------------------------------------------------------------------------
# IQM and bootstrap intervals
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "values, expected",
    [
        ([1, 2, 3, 4, 5, 6, 7, 8], 4.5),  # cut 2 per end: mean(3, 4, 5, 6)
        ([10, 1, 2, 3, 100], 5.0),  # cut int(1.25) = 1 per end: mean(2, 3, 10)
        ([0, 0, 1, 1, 1, 1, 9, 1000], 1.0),  # the outliers never count
        ([3.0, 7.0], 5.0),  # n < 4: nothing cut, the mean
        ([5.0], 5.0),
    ],
)
def test_iqm_of_known_arrays(values, expected):
    assert iqm(np.array(values, dtype=float)) == pytest.approx(expected)
    assert iqm(np.array(values, dtype=float)) == pytest.approx(stats.trim_mean(values, 0.25))


def test_iqm_reduces_the_last_axis():
    x = np.array([[1, 2, 3, 4, 5, 6, 7, 8], [8, 7, 6, 5, 4, 3, 2, 100]], dtype=float)
    assert np.allclose(iqm(x), [4.5, 5.5])  # second row sorted: 2 3 [4 5 6 7] 8 100
    with pytest.raises(ValueError):
        iqm(np.array([]))


def test_constant_sample_has_a_point_interval():
    ci = stratified_bootstrap_ci([2.0, 2.0, 2.0], mean, reps=200)
    assert (ci.point, ci.low, ci.high) == (2.0, 2.0, 2.0)
    assert not ci.excludes(2.0) and ci.excludes(2.1)


def test_stratified_resampling_keeps_each_task_s_run_count():
    # task A: three runs scoring 0, task B: one run scoring 1. Stratified resampling keeps 3 A-runs
    # and 1 B-run in every resample, so the pooled mean is 0.25 exactly, always; pooling the four
    # scores into one sample first would let it range over 0 .. 1.
    ci = stratified_bootstrap_ci([[0.0, 0.0, 0.0], [1.0]], mean, reps=500)
    assert (ci.point, ci.low, ci.high) == (0.25, 0.25, 0.25)
    pooled = stratified_bootstrap_ci([0.0, 0.0, 0.0, 1.0], mean, reps=500)
    assert pooled.low == 0.0 and pooled.high >= 0.5
    # a (runs x tasks) array is read like rliable's score matrices: columns are the strata
    matrix = np.array([[0.0, 1.0], [0.0, 1.0]])
    assert stratified_bootstrap_ci(matrix, mean, reps=100) == Interval(0.5, 0.5, 0.5)


def test_bootstrap_is_reproducible_for_a_seed():
    x = np.random.default_rng(3).normal(size=12)
    assert stratified_bootstrap_ci(x, iqm, seed=7) == stratified_bootstrap_ci(x, iqm, seed=7)


def test_mean_ci_covers_the_true_mean_about_95_percent_of_the_time():
    rng = np.random.default_rng(0)
    replicates, n = 400, 30
    samples = rng.normal(loc=1.0, scale=2.0, size=(replicates, n))
    hits = sum(not stratified_bootstrap_ci(s, mean, reps=600, seed=i).excludes(1.0) for i, s in enumerate(samples))
    coverage = hits / replicates
    # percentile bootstrap of a mean of 30 normals: about 0.94; 400 replicates: +-0.012 standard error
    assert 0.90 <= coverage <= 0.98, coverage


def test_difference_ci_and_welch_test():
    a = np.array([10.0, 11.0, 12.0, 13.0, 14.0])
    b = np.array([0.0, 1.0, 2.0, 3.0, 4.0])
    diff = bootstrap_difference_ci(a, b)
    assert diff.point == pytest.approx(10.0) and diff.excludes(0.0) and diff.low > 7
    same = bootstrap_difference_ci(a, a)
    assert same.point == 0.0 and not same.excludes(0.0)
    # Welch by hand: equal variances 2.5, n = 5: t = 10 / sqrt(2.5/5 + 2.5/5) = 10, df = 8
    assert welch_p_value(a, b) == pytest.approx(2 * stats.t.sf(10.0, 8))
    assert math.isnan(welch_p_value([1.0], [2.0, 3.0]))
    assert math.isnan(welch_p_value([1.0, 1.0], [2.0, 2.0]))


def test_curve_band_is_pointwise():
    curves = np.array([[0.0, 1.0, 2.0], [2.0, 3.0, 4.0]])
    centre, low, high = curve_mean_ci(curves, reps=300)
    assert np.allclose(centre, [1.0, 2.0, 3.0])
    assert np.all(low <= centre) and np.all(centre <= high)
    assert np.allclose(low, [0.0, 1.0, 2.0]) and np.allclose(high, [2.0, 3.0, 4.0])


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError, match="confidence"):
        stratified_bootstrap_ci([1.0, 2.0], confidence=1.5)
    with pytest.raises(ValueError, match="stratum"):
        stratified_bootstrap_ci([[1.0], []])


# ------------------------------------------------------------------------------------------------
# result rows
# ------------------------------------------------------------------------------------------------

# SB3 dumps before train(): row i has rollout i's statistics and update i-1's values; the last row
# (same step) holds the last update's values
ROWS = [
    {"time/total_timesteps": 100.0},
    {"time/total_timesteps": 200.0, "rollout/ep_rew_mean": -10.0, "hybrid/var_applied": 4.0},
    {"time/total_timesteps": 300.0, "rollout/ep_rew_mean": -4.0, "hybrid/var_applied": 2.0},
    {"time/total_timesteps": 300.0, "hybrid/var_applied": 1.0},
]


def test_update_series_pairs_each_update_with_its_rollout():
    steps, values = update_series({"rows": ROWS}, "hybrid/var_applied")
    assert steps.tolist() == [100.0, 200.0, 300.0] and values.tolist() == [4.0, 2.0, 1.0]
    assert median_over_updates({"rows": ROWS}, "hybrid/var_applied") == 2.0
    assert median_over_updates({"rows": ROWS}, "hybrid/var_applied", skip=1) == 1.5
    assert math.isnan(median_over_updates({"rows": ROWS}, "hybrid/not_logged"))


def test_learning_curve_and_its_normalised_area():
    steps, values = learning_curve({"rows": ROWS})
    assert steps.tolist() == [200.0, 300.0] and values.tolist() == [-10.0, -4.0]
    assert normalized_auc(steps, values) == pytest.approx(-7.0)
    # trapezoids: (0 + 10) / 2 * 10 + (10 + 10) / 2 * 20 = 250, over 30 steps
    assert normalized_auc(np.array([0.0, 10.0, 30.0]), np.array([0.0, 10.0, 10.0])) == pytest.approx(250 / 30)
    assert normalized_auc(np.array([5.0]), np.array([3.0])) == 3.0
    assert math.isnan(normalized_auc(np.array([]), np.array([])))


def test_workers_are_bounded_by_cores_and_runs():
    assert worker_count(None, 1) == 1
    assert worker_count(10_000, 10_000) == available_cores()
    assert worker_count(2, 0) == 1
    with pytest.raises(ValueError):
        worker_count(0, 3)


def _run_and_load(config, run_dir):
    run(config, run_dir)
    return load_result(run_dir)


def test_a_run_is_deterministic_for_its_seed(tmp_path):
    config = run_config(
        "hybrid_pg",
        "Pendulum-v1",
        seed=3,
        total_timesteps=256,
        eval_episodes=1,
        algo=dict(n_steps=128, batch_size=64, n_epochs=1, lambda_warmup=0, policy_kwargs={"net_arch": [8], "activation_fn": "Tanh"}),
    )
    first, second = _run_and_load(config, tmp_path / "a"), _run_and_load(config, tmp_path / "b")
    assert first["final_return"] == second["final_return"]
    for key in ("rollout/ep_rew_mean", "hybrid/var_applied", "hybrid/lambda"):
        assert update_series(first, key)[1].tolist() == update_series(second, key)[1].tolist()
    for key in ("hybrid/var_applied", "hybrid/lambda"):
        assert update_series(first, key)[1].size == 2  # one value per update, the last one included


# ------------------------------------------------------------------------------------------------
# hybrid-pg bench
# ------------------------------------------------------------------------------------------------


def test_bench_help():
    with pytest.raises(SystemExit) as exit_info, contextlib.redirect_stdout(io.StringIO()) as out:
        main(["bench", "--help"])
    assert exit_info.value.code == 0
    text = out.getvalue()
    for option in ("--steps", "--seeds", "--out", "--env", "stats_time_fraction"):
        assert option in text


def test_bench_rejects_a_discrete_env_before_timing(tmp_path):
    status, _, err = _run(["bench", "--env", "CartPole-v1", "--out", str(tmp_path / "b"), "--quiet"])
    assert status == 2 and "env.id='CartPole-v1'" in err
    assert not (tmp_path / "b").exists()


def test_bench_tiny_budget_writes_json_and_markdown(tmp_path):
    out = tmp_path / "bench"
    argv = [
        "bench",
        "--steps",
        "64",
        "--seeds",
        "1",
        "--n-envs",
        "1",
        "--n-steps",
        "64",
        "--eval-episodes",
        "1",
        "--out",
        str(out),
        "--quiet",
    ]
    status, stdout, err = _run(argv)
    assert status == 0, err
    assert stdout.split() == [str(out / "bench.json"), str(out / "bench.md")]
    assert len(list((out / "runs").glob("*/*/result.json"))) == 4 + 4  # warm-up and timed runs, engine-written
    report = json.loads((out / "bench.json").read_text())
    assert report["settings"]["env_id"] == "Pendulum-v1" and report["torch_threads"] == 1
    for regime, baseline in (("a2c", "A2C"), ("ppo", "PPO")):
        r = report["results"][regime]
        assert r["baseline"] == baseline
        assert r["ratio"] == pytest.approx(r["hybrid_s_per_step"] / r["baseline_s_per_step"])
        assert 0.0 <= r["stats_share_of_update"] <= 1.0
        assert set(r["final_return"]) == {baseline, "HybridPG"}
        assert {run["algo"] for run in r["runs"]} == {regime, "hybrid_pg"}
        assert all(run["steps"] == 64 for run in r["runs"])
    md = (out / "bench.md").read_text()
    assert md.strip() == speed_markdown(report).strip()
    assert "| a2c | A2C |" in md and "| ppo | PPO |" in md


def test_a_non_stationary_env_is_evaluated_where_training_left_it(tmp_path):
    # m jumps from 0 to 40 at step 128 of 256: the evaluation must see m = 40 (every action then
    # sits in the flat region, return exactly -c^2), not the m = 0 of a fresh env's clock
    import hybrid_pg_envs  # noqa: F401

    config = run_config(
        "hybrid_pg",
        "hybrid_pg/DriftingCoupledBandit-v0",
        seed=0,
        total_timesteps=256,
        n_envs=2,
        algo=dict(n_steps=64, batch_size=64, n_epochs=1, gamma=0.0),
        eval_episodes=3,
        eval_freq=128,
        env_kwargs={"c": 1.5, "steps_per_tick": 2, "schedules": {"m": {"kind": "switch", "values": [0.0, 40.0], "at": [128]}}},
    )
    result = _run_and_load(config, tmp_path / "jump")
    assert result["eval_returns"] == [-2.25] * 3
    # every evaluation follows the training env's clock: m = 0 at steps 0 and 128 (the switch takes
    # effect after it), m = 40 (return exactly -c^2) from then on
    evals = read_csv_columns(tmp_path / "jump" / "evaluations.csv")
    assert evals["timesteps"].tolist() == [0, 128, 256] and evals["mean"][-1] == -2.25
    assert evals["mean"][0] != -2.25
