"""Smoke tests: the synthetic-problem examples run and write sane PNG/CSV output."""

from __future__ import annotations

import csv
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"


def _run(script: str, *args: str, timeout: float = 120) -> str:
    proc = subprocess.run([sys.executable, str(EXAMPLES / script), *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{script} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def _read_csv(path: Path) -> list[dict[str, str]]:
    assert path.is_file(), f"missing {path.name}"
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert rows, f"{path.name} is empty"
    return rows


def _check_columns(rows: list[dict[str, str]], columns: list[str], text_columns: tuple[str, ...] = ()) -> None:
    missing = set(columns) - set(rows[0])
    assert not missing, f"missing columns {missing}"
    for row in rows:
        for col in columns:
            if col in text_columns:
                assert row[col], col
            else:
                assert math.isfinite(float(row[col])), (col, row[col])


def _check_png(path: Path) -> None:
    assert path.is_file(), f"missing {path.name}"
    with open(path, "rb") as fh:
        assert fh.read(8) == b"\x89PNG\r\n\x1a\n", f"{path.name} is not a PNG"


@pytest.fixture(scope="module")
def paper_quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("paper_figures")
    stdout = _run("paper_figures.py", "--quick", "--out", str(out))
    return out, stdout


def test_paper_figures_quick_outputs(paper_quick):
    out, _ = paper_quick
    for name in ("lambda_vs_alpha", "mse_vs_batch", "variance_reduction_vs_alpha", "trend_map"):
        _check_png(out / f"{name}.png")
    lam = _read_csv(out / "lambda_vs_alpha.csv")
    _check_columns(lam, ["alpha", "sigma", "lam_star", "lam_hat_mean", "lam_hat_se", "abs_err_mean", "batch_size"])
    for row in lam:  # lam-hat tracks the closed form (generous: 6 SE + the float formatting)
        assert abs(float(row["lam_hat_mean"]) - float(row["lam_star"])) < 6 * float(row["lam_hat_se"]) + 1e-6
    _check_columns(_read_csv(out / "mse_vs_batch.csv"), ["batch_size", "mse", "mse_se", "bias", "delta_method_mse", "fitted_mse"])
    red = _read_csv(out / "variance_reduction_vs_alpha.csv")
    _check_columns(
        red,
        [
            "alpha",
            "var_path",
            "var_score",
            "cov",
            "lam_star",
            "var_hybrid",
            "reduction_exact",
            "reduction_realised_mean",
            "reduction_large_sample",
        ],
    )
    for row in red:
        assert 0.0 <= float(row["reduction_exact"]) < 1.0
        assert float(row["var_hybrid"]) <= min(float(row["var_path"]), float(row["var_score"])) * (1 + 1e-9)
    trend = _read_csv(out / "trend_map.csv")
    _check_columns(
        trend,
        [
            "theta",
            "c",
            "m",
            "baseline",
            "lam_net_change",
            "reduction_net_change",
            "max_reduction",
            "alpha_at_max_reduction",
            "lam_trend",
            "reduction_trend",
            "paper_trend",
        ],
        text_columns=("baseline", "lam_trend", "reduction_trend", "paper_trend"),
    )
    assert {r["baseline"] for r in trend} == {"none", "mean"}
    assert {r["paper_trend"] for r in trend} <= {"holds", "holds-net", "split", "reverses"}


def test_paper_figures_mse_slope(paper_quick):
    out, stdout = paper_quick
    summary = json.loads((out / "summary.json").read_text())
    assert -1.3 <= summary["mse_slope"] <= -0.7, summary["mse_slope"]
    printed = re.search(r"MSE slope = (-?\d+\.\d+)", stdout)
    assert printed and float(printed.group(1)) == pytest.approx(summary["mse_slope"], abs=1e-3)
    assert 0.0 < summary["best_reduction_grid"] < 1.0


def test_seed_question_outputs(tmp_path):
    stdout = _run("seed_question.py", "--out", str(tmp_path))
    _check_png(tmp_path / "seed_question.png")
    rows = _read_csv(tmp_path / "seed_question.csv")
    _check_columns(rows, ["mu", "sigma", "exact_mean", "mc_mean", "mc_se", "exact_var", "mc_var", "z_score"], text_columns=())
    assert {r["estimator"] for r in rows} == {"pathwise", "score"}
    for r in rows:  # unbiased: within 4 SE
        assert abs(float(r["z_score"])) < 4.0
    by_key = {(r["mu"], r["sigma"], r["coordinate"], r["estimator"]): float(r["exact_var"]) for r in rows}
    for (mu, sigma, coord, est), var in by_key.items():
        if est == "pathwise":
            assert var < by_key[(mu, sigma, coord, "score")]
    descent = _read_csv(tmp_path / "seed_question_descent.csv")
    _check_columns(descent, ["step", "mu_Ef", "sigma_Ef", "mu_nll", "sigma_nll"])
    assert float(descent[-1]["sigma_Ef"]) < 1e-3  # E f drives sigma to 0
    assert "sample std" in stdout
