"""Pooling gradient audits (hybrid_pg.experiments.critic_accuracy): which checkpoints count, the rank
correlation's bootstrap over runs (not over checkpoints), the report and its bad inputs."""

from __future__ import annotations

import csv
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from hybrid_pg.experiments import critic_accuracy as ca

COLUMNS = (
    "run",
    "seed",
    "step",
    "stratum",
    "group",
    "estimator",
    "source",
    "cos_single_corrected",
    "rel_bias",
    "lam_mse",
    "adv_head_corr",
    "value_rmse_rel",
)


def write_audit(folder: Path, rows) -> Path:
    (folder / "audit").mkdir(parents=True)
    by_file = {}
    for row in rows:
        by_file.setdefault(f"{row['run']}__{row['step']}", []).append(row)
    for name, file_rows in by_file.items():
        with open(folder / "audit" / f"{name}.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=COLUMNS)
            writer.writeheader()
            for row in file_rows:
                writer.writerow({k: row.get(k, "nan") for k in COLUMNS})
    return folder


def row(run, seed, step, corr, cos, bias=1.0, estimator="pathwise", source="critic", **extra):
    return dict(
        run=run, seed=seed, step=step, stratum="all", group="all", estimator=estimator, source=source,
        cos_single_corrected=cos, rel_bias=bias, lam_mse=0.5, adv_head_corr=corr, value_rmse_rel=0.3, **extra,
    )  # fmt: skip


def test_only_reliable_pathwise_checkpoints_of_the_advantage_head_count(tmp_path):
    folder = write_audit(
        tmp_path / "a",
        [
            row("H__hybrid", 1, 20000, 0.1, 0.5),
            row("H__hybrid", 1, 50000, 0.2, "nan"),  # reference too noisy for a cosine
            row("H__hybrid", 1, 20000, 0.1, 0.4, estimator="score"),  # another estimator's row
            row("H__hybrid_mujoco", 2, 20000, 0.3, 0.9, source="mujoco"),  # not the head's gradient
            dict(row("H__hybrid", 1, 20000, 0.1, 0.5), stratum="contact_change"),  # a stratum, not the checkpoint
        ],
    )
    records = ca.checkpoints({"plain": folder})
    assert [(r["head"], r["step"], r["cos_single_corrected"]) for r in records] == [("plain", 20000, 0.5)]
    assert records[0]["cluster"] == "plain/H__hybrid/s1"


def test_the_bootstrap_resamples_runs_not_checkpoints():
    """Within every run quality rises with accuracy (rho 1 over the pooled checkpoints), so every
    resample of runs gives rho 1 as well; with fewer than 3 runs there is no CI."""
    records = [
        {"cluster": f"r{run}", "adv_head_corr": run + 0.1 * k, "cos_single_corrected": run + 0.1 * k} for run in range(6) for k in range(3)
    ]
    rho, low, high, n, runs = ca.cluster_bootstrap_rho(records, "adv_head_corr", "cos_single_corrected", resamples=200)
    assert (rho, low, high, n, runs) == (pytest.approx(1.0), pytest.approx(1.0), pytest.approx(1.0), 18, 6)
    rho, low, high, _, runs = ca.cluster_bootstrap_rho(records[:6], "adv_head_corr", "cos_single_corrected")
    assert runs == 2 and rho == pytest.approx(1.0) and math.isnan(low) and math.isnan(high)


def test_a_run_level_effect_gets_a_wide_interval_where_checkpoint_counting_would_not():
    """Eight runs of 10 checkpoints each: within a run x and y are unrelated, and the runs' levels
    agree only through one shared offset drawn per run, so the evidence is 8 runs, not 80 points. The
    CI must reflect that: wider than the naive one from resampling checkpoints."""
    rng = np.random.default_rng(1)
    records = []
    for run in range(8):
        level = rng.normal()
        for _ in range(10):
            records.append({"cluster": f"r{run}", "x": level + 0.3 * rng.normal(), "y": level + 0.3 * rng.normal()})
    rho, low, high, n, runs = ca.cluster_bootstrap_rho(records, "x", "y", resamples=500)
    naive = []
    for _ in range(500):
        picked = [records[i] for i in rng.integers(0, len(records), len(records))]
        naive.append(ca.spearman([r["x"] for r in picked], [r["y"] for r in picked]))
    naive_low, naive_high = np.percentile(naive, [2.5, 97.5])
    assert (n, runs) == (80, 8) and low <= rho <= high
    assert (high - low) > 1.5 * (naive_high - naive_low)


def test_the_report_and_its_figure_are_written(tmp_path):
    rows_a = [row("H__hybrid", s, step, 0.05 * s + step / 1e6, 2 * (0.05 * s + step / 1e6)) for s in range(1, 5) for step in (20000, 50000)]
    rows_b = [row("H__hybrid_layer_norm", s, 20000, 0.03 * s, 0.06 * s) for s in range(1, 5)]
    audits = {"plain": write_audit(tmp_path / "a", rows_a), "layer_norm": write_audit(tmp_path / "b", rows_b)}
    md, png = ca.write(audits, tmp_path / "out" / "critic")
    text = md.read_text()
    assert "| plain | 4 | 8 |" in text and "| layer_norm | 4 | 4 |" in text
    assert "+1.00 [1.00, 1.00] (n 12, 8 runs)" in text  # cos rises with the head's accuracy in every run
    assert png.stat().st_size > 0


def test_the_online_signals_are_joined_by_run_seed_and_step(tmp_path):
    import json

    rows = [row("H__hybrid", s, step, 0.1 * s, 0.15 * s + step / 1e6) for s in range(1, 6) for step in (20000, 50000)]  # cos < 1
    folder = write_audit(tmp_path / "a", rows)
    (folder / "signals").mkdir()
    for s in range(1, 6):
        for step in (20000, 50000):
            record = {"run": "H__hybrid", "seed": s, "step": step, "path_score_cos": -(0.1 * s + step / 1e6), "direction_t": float("nan")}
            (folder / "signals" / f"H__hybrid_s{s}__{step}.json").write_text(json.dumps(record))
    records = ca.checkpoints({"plain": folder})
    first = sorted((r["seed"], r["step"], r["path_score_cos"]) for r in records)[:2]
    assert first == [(1, 20000, pytest.approx(-0.12)), (1, 50000, pytest.approx(-0.15))]
    assert all(math.isnan(r["direction_t"]) and math.isnan(r["sign_agreement"]) for r in records)
    text = ca.markdown(records, {"plain": folder})
    assert "| `path_score_cos` | -1.00 [-1.00, -1.00] (n 10, 5 runs) |" in text  # falls as the cosine rises, in every run
    assert "| `direction_t` | — | — | — |" in text


def test_bad_inputs_are_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="not an audit's output folder"):
        ca.write({"plain": tmp_path}, tmp_path / "out")
    folder = write_audit(tmp_path / "a", [row("H__hybrid", 1, 20000, 0.1, "nan")])
    with pytest.raises(ValueError, match="no reliable advantage-head checkpoints"):
        ca.write({"plain": folder}, tmp_path / "out")
    script = Path(__file__).resolve().parents[1] / "examples" / "critic_accuracy.py"
    result = subprocess.run([sys.executable, str(script), "--audit", "plain"], capture_output=True, text=True)
    assert result.returncode == 2 and "NAME=FOLDER" in result.stderr
