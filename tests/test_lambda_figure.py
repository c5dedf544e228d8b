"""lambda.png (hybrid_pg.experiments.lambda_figure): draws from whatever columns a run logged."""

import numpy as np
import pytest

from hybrid_pg.experiments.lambda_figure import plot_lambda_columns
from hybrid_pg.experiments.plots import plot_lambda


def _columns(n=30, oracle=True, old=False):
    rng = np.random.default_rng(0)
    t = np.arange(1, n + 1) * 1024.0
    cols = {
        "timesteps": t,
        "hybrid/lambda": np.clip(np.linspace(0.3, 0.8, n) + 0.02 * rng.normal(size=n), 0, 1),
        "hybrid/var_path": np.exp(rng.normal(size=n)),
        "hybrid/var_score": 10 * np.exp(rng.normal(size=n)),
        "hybrid/corr": np.tanh(rng.normal(size=n)),
        ("hybrid/variance_ratio_vs_score" if old else "hybrid/variance_ratio_vs_reinforce"): np.exp(-1 + 0.1 * rng.normal(size=n)),
    }
    if oracle:
        cols["hybrid/oracle_lambda_var"] = np.where(np.arange(n) % 2 == 0, np.linspace(0.3, 0.85, n), np.nan)
        cols["hybrid/oracle_lambda_var_se"] = np.full(n, 0.02)
        cols["hybrid/oracle_lambda_is_mse"] = np.zeros(n)
        cols["hybrid/variance_reduction_vs_better"] = np.full(n, 0.3)
    return cols


@pytest.mark.parametrize("kw", [dict(), dict(oracle=False), dict(oracle=False, old=True)])
def test_lambda_figure_draws_every_variant(tmp_path, kw):
    out = plot_lambda_columns(_columns(**kw), tmp_path / "lambda.png", title="t")
    assert out.stat().st_size > 10_000


def test_lambda_figure_marks_what_is_missing_and_needs_a_run(tmp_path):
    assert plot_lambda_columns({"timesteps": np.arange(3.0)}, tmp_path / "empty.png").stat().st_size > 0
    with pytest.raises(FileNotFoundError):
        plot_lambda(tmp_path / "nothing", tmp_path / "x.png")
