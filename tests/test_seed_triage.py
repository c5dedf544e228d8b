"""Seed triage (hybrid_pg.experiments.seed_triage): what a run logs early against how it ends. The rank
correlations against scipy and the partial-correlation formula, pooling within groups (never across
them), the seed bootstrap, the records read from runs, and the report with its bad inputs."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import spearmanr

from hybrid_pg.experiments import seed_triage as st

ROOT = Path(__file__).resolve().parents[1]


def test_rank_correlation_is_spearman_and_partial_matches_the_formula():
    rng = np.random.default_rng(0)
    z = rng.normal(size=200)
    x = z + 0.5 * rng.normal(size=200)
    y = z + 0.5 * rng.normal(size=200)
    rho, n = st.rank_correlation(x, y)
    assert n == 200 and rho == pytest.approx(spearmanr(x, y)[0], abs=1e-12)
    r_xy, r_xz, r_yz = spearmanr(x, y)[0], spearmanr(x, z)[0], spearmanr(y, z)[0]
    expected = (r_xy - r_xz * r_yz) / math.sqrt((1 - r_xz**2) * (1 - r_yz**2))
    assert st.rank_correlation(x, y, given=z)[0] == pytest.approx(expected, abs=1e-12)
    # x and y share only z: the plain correlation is clearly positive, the partial one is not
    assert rho > 0.5 and abs(expected) < 0.2


def test_rank_correlation_needs_pairs_and_spread():
    x = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    assert math.isnan(st.rank_correlation(x[:4], x[:4])[0])  # below MIN_RUNS pairs
    assert math.isnan(st.rank_correlation(x, [1.0] * 6)[0])  # no spread
    assert math.isnan(st.rank_correlation(x, x, given=x)[0])  # nothing left beyond `given`
    with_nan = [1.0, 2.0, math.nan, 4.0, 5.0, 6.0, 7.0]
    rho, n = st.rank_correlation(with_nan, list(range(7)))
    assert n == 6 and rho == pytest.approx(1.0)


def _records(groups, rng=None, effect=1.0, noise=0.0):
    """Records of several (env, cell) groups: within each group y rises with x (``effect``), while
    the groups' levels run the other way, so a pooled correlation would read them backwards."""
    rng = rng or np.random.default_rng(1)
    records = []
    for g, (env, cell) in enumerate(groups):
        for seed in range(10):
            x = seed + 0.0
            records.append({"env": env, "cell": cell, "seed": seed, "x": x + 100 * g, "y": effect * x - 1000 * g + noise * rng.normal()})
    return records


def test_pooling_is_within_groups():
    records = _records([("A", "hybrid"), ("B", "hybrid"), ("A", "other")])
    pooled_naive = spearmanr([r["x"] for r in records], [r["y"] for r in records])[0]
    assert pooled_naive < 0  # the groups' levels alone
    rho, runs, groups = st.pooled_rank_correlation(records, "x", "y")
    assert (rho, runs, groups) == (pytest.approx(1.0), 30, 3)
    # a group too small to rank is left out, not counted
    small = [r for r in records if not (r["env"] == "B" and r["seed"] > 3)]
    assert st.pooled_rank_correlation(small, "x", "y")[1:] == (20, 2)


def test_seed_bootstrap_keeps_pairs_and_covers_0_without_an_effect():
    exact = st.seed_bootstrap(_records([("A", "h"), ("B", "h")]), "x", "y", resamples=300)
    assert exact[:3] == (pytest.approx(1.0), pytest.approx(1.0), pytest.approx(1.0))  # every resample keeps the pairs
    rng = np.random.default_rng(2)
    hits = 0
    for trial in range(20):
        records = _records([("A", "h"), ("B", "h"), ("C", "h")], rng=rng, effect=0.0, noise=1.0)
        _, low, high, _, _ = st.seed_bootstrap(records, "x", "y", resamples=300, seed=trial)
        hits += low <= 0.0 <= high
    assert hits >= 16  # about 95% of 20 (a binomial floor with room for the bootstrap's percentile CI)
    planted = _records([("A", "h"), ("B", "h"), ("C", "h")], rng=rng, effect=1.0, noise=2.0)
    rho, low, high, runs, groups = st.seed_bootstrap(planted, "x", "y", resamples=300)
    assert low > 0.0 and runs == 30 and groups == 3


def _run(seed, final, signal, early_return, std=0.5, updates=10):
    """A finished run as finished_results returns it: rows of logged keys after each update."""
    rows = [{"time/total_timesteps": 0.0}]
    for i in range(1, updates + 1):
        step = 20_000.0 * i
        # after 100k steps the signal flips: the early median must not see it
        value = signal if step <= 100_000 else -signal
        rows.append(
            {
                "time/total_timesteps": step,
                "rollout/ep_rew_mean": early_return * step / 100_000,
                "hybrid/path_score_cos": value,
                "hybrid/lambda": 0.5,
                "train/std": std,
            }
        )
    return {"seed": seed, "final_return": final, "rows": rows, "run_dir": "/nonexistent"}


def test_records_read_the_early_window_and_the_floor_twin():
    per_env = {
        "E": {
            "hybrid": [_run(0, 100.0, 0.2, 50.0), _run(1, 300.0, 0.4, 70.0)],
            "reinforce": [_run(0, 150.0, 0.0, 40.0)],
        }
    }
    records = st.triage_records(per_env, ["hybrid"], "reinforce", early_step=100_000)
    by_seed = {r["seed"]: r for r in records}
    # the signal's median over the updates whose rollout ended by 100k: rows 1..6 pair with steps 0..100k
    assert by_seed[0]["path_score_cos"] == pytest.approx(0.2)
    assert by_seed[0]["return_early"] == pytest.approx(50.0)
    assert by_seed[0]["std_early"] == pytest.approx(0.5)
    assert by_seed[0]["final_vs_floor"] == pytest.approx(-50.0)
    assert math.isnan(by_seed[1]["final_vs_floor"])  # the floor has no seed 1
    assert math.isnan(by_seed[0]["direction_cos"])  # never logged


def test_report_end_to_end(tmp_path):
    rng = np.random.default_rng(3)
    per_env = {}
    for env, level in (("E1", 1000.0), ("E2", 10.0)):
        hybrid, floor = [], []
        for seed in range(8):
            signal = rng.uniform(0, 1)
            hybrid.append(_run(seed, level * (1 + 2 * signal), signal, early_return=rng.uniform(0, level)))
            floor.append(_run(seed, level * 2, 0.0, early_return=rng.uniform(0, level)))
        per_env[env] = {"hybrid": hybrid, "reinforce": floor}
    paths = st.write_report(per_env, ["hybrid"], "reinforce", tmp_path / "triage", "fake.yaml", resamples=200)
    assert [p.name for p in paths] == ["triage.md", "triage.csv", "triage.png"]
    md = paths[0].read_text()
    row = next(line for line in md.splitlines() if line.startswith("| `hybrid/path_score_cos` |"))
    assert row.split("|")[2].strip().startswith("+1.00")  # the planted signal ranks the final return exactly
    assert "## Control: the reinforce cell" in md
    lines = paths[1].read_text().splitlines()
    assert lines[0].startswith("env,cell,seed,return_early") and len(lines) == 1 + 32
    with pytest.raises(ValueError, match="no finished runs"):
        st.write_report(per_env, ["missing"], "reinforce", tmp_path / "none", "fake.yaml")


def test_example_reports_an_empty_grid_clearly(tmp_path):
    empty = tmp_path / "runs"
    empty.mkdir()
    for runs, message in ((empty, "no finished runs"), (tmp_path / "absent", "no such runs folder")):
        proc = subprocess.run(
            [
                sys.executable,
                str(ROOT / "examples" / "seed_triage.py"),
                str(ROOT / "configs" / "ablate_smoke.yaml"),
                "--runs",
                str(runs),
                "--out",
                str(tmp_path / "t"),
            ],
            capture_output=True,
            text=True,
            cwd=ROOT,
        )
        assert proc.returncode == 2 and message in proc.stderr
    assert not (tmp_path / "t.md").exists()
