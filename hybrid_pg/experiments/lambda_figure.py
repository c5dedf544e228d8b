"""``lambda.png``: the weight, what it buys against REINFORCE, and the moments behind it.

Three panels against env steps, from a run's ``diagnostics.csv`` (or any columns dict):

1. lam applied (the window of previous rollouts; per-group runs: both groups' weights) and, when
   the oracle ran, its variance-optimal lam* (and MSE-optimal weight, for learned sources) with a
   +-1 SE band;
2. ``variance_ratio_vs_reinforce`` = Var(applied gradient) / Var(score gradient) on the same rollout,
   on a log axis with a line at 1 (below: the mix is less noisy than REINFORCE); for exact
   sources, also 1 - ``variance_reduction_vs_better`` (the ratio to the better of the two
   estimators), which against a learned (biased) pathwise estimator would not be a fair reference;
3. the moments: Var_P and Var_M on a log axis, and their correlation Cov / sqrt(Var_P Var_M) on a
   [-1, 1] twin axis (instead of the raw Cov, whose sign changes draw a sawtooth over decades
   on a symlog axis).

Runs logged before ``variance_ratio_vs_reinforce`` existed fall back to ``variance_ratio_vs_score``
(the same number). Drawn on a bare :class:`~matplotlib.figure.Figure` (no pyplot backend switch).
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Optional, Sequence, Tuple, Union

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from hybrid_pg.experiments.figure_io import save_figure

__all__ = ["plot_lambda_columns"]

PathLike = Union[str, Path]
Columns = Mapping[str, np.ndarray]


def _series(columns: Columns, key: str, x_key: str = "timesteps", positive: bool = False) -> Optional[Tuple[np.ndarray, np.ndarray]]:
    if key not in columns:
        return None
    y = np.asarray(columns[key], dtype=float)
    x = np.asarray(columns.get(x_key, np.arange(1, len(y) + 1)), dtype=float)
    keep = np.isfinite(y) & np.isfinite(x) & ((y > 0) if positive else True)
    if not keep.any():
        return None
    return x[keep], y[keep]


def _first(columns: Columns, keys: Sequence[str], **kw) -> Optional[Tuple[np.ndarray, np.ndarray]]:
    for key in keys:
        found = _series(columns, key, **kw)
        if found is not None:
            return found
    return None


def _empty(ax: Axes, what: str) -> None:
    ax.text(0.5, 0.5, f"{what}: not logged in this run", ha="center", va="center", transform=ax.transAxes, color="0.4")


def _oracle_band(ax: Axes, columns: Columns, key: str, label: str, color: str) -> bool:
    found = _series(columns, key)
    if found is None:
        return False
    x, y = found
    ax.plot(x, y, color=color, lw=1.0, marker=".", ms=3, label=label)
    se = _series(columns, f"{key}_se")
    if se is not None and len(se[0]) == len(x) and np.allclose(se[0], x):
        ax.fill_between(x, y - se[1], y + se[1], color=color, alpha=0.2, lw=0)
    return True


def plot_lambda_columns(columns: Columns, out_png: PathLike, title: str = "") -> Path:
    """Draw the three panels (module docstring) from diagnostics columns; returns the written path."""
    fig = Figure(figsize=(8, 9))
    ax_lam, ax_ratio, ax_mom = fig.subplots(3, 1, sharex=True)

    # 1. the weight
    drawn = False
    applied = _series(columns, "hybrid/lambda")
    if applied is not None:
        ax_lam.plot(*applied, color="C0", lw=1.8, label="lam applied (window of previous rollouts)")
        drawn = True
    else:
        for key, label, color in (
            ("hybrid/lambda_mean", "lam applied, mean network", "C0"),
            ("hybrid/lambda_log_std", "lam applied, log_std", "C4"),
        ):
            found = _series(columns, key)
            if found is not None:
                ax_lam.plot(*found, color=color, lw=1.8, label=label)
                drawn = True
    is_mse = _series(columns, "hybrid/oracle_lambda_is_mse")
    learned = is_mse is not None and bool(np.nanmax(is_mse[1]) > 0.5)
    if _oracle_band(ax_lam, columns, "hybrid/oracle_lambda_var", "oracle variance-optimal lam* (+-1 SE)", "C1"):
        drawn = True
        if learned:
            _oracle_band(ax_lam, columns, "hybrid/oracle_lambda_mse", "oracle MSE-optimal lam (+-1 SE)", "C2")
    elif _series(columns, "hybrid/oracle_lambda") is not None:  # older runs: the reference only
        ax_lam.plot(*_series(columns, "hybrid/oracle_lambda"), color="C1", lw=1.0, marker=".", ms=3, label="oracle lam*")
        drawn = True
    if drawn:
        ax_lam.legend(fontsize="small", loc="best")
    else:
        _empty(ax_lam, "lambda")
    ax_lam.set_ylabel("lambda")

    # 2. the variance against REINFORCE on the same rollout
    ratio = _first(columns, ("hybrid/variance_ratio_vs_reinforce", "hybrid/variance_ratio_vs_score"), positive=True)
    if ratio is not None:
        ax_ratio.plot(*ratio, color="C0", lw=1.2, label="Var(applied) / Var(REINFORCE), same rollout")
        better = _series(columns, "hybrid/variance_reduction_vs_better")
        if better is not None:
            bx, by = better
            keep = (1.0 - by) > 0
            ax_ratio.plot(
                bx[keep], 1.0 - by[keep], color="C3", lw=1.0, ls="--", label="predicted Var(lam) / min(Var_P, Var_M) (exact source)"
            )
        ax_ratio.axhline(1.0, color="0.4", lw=0.8)
        ax_ratio.set_yscale("log")
        # at least a decade around 1, so a flat ratio (e.g. lam = 0 during warm-up) reads as flat
        lo, hi = float(np.min(ratio[1])), float(np.max(ratio[1]))
        ax_ratio.set_ylim(min(lo / 1.5, 0.3), max(hi * 1.5, 3.0))
        median = float(np.median(ratio[1]))
        ax_ratio.set_title(f"median ratio vs REINFORCE {median:.3g} (below 1: less gradient noise)", fontsize="small")
        ax_ratio.legend(fontsize="small", loc="best")
    else:
        _empty(ax_ratio, "variance ratio vs REINFORCE")
    ax_ratio.set_ylabel("variance ratio")

    # 3. the moments: variances on a log axis, the correlation on [-1, 1]
    any_var = False
    for key, label, color in (("hybrid/var_path", "Var_P (pathwise)", "C0"), ("hybrid/var_score", "Var_M (score)", "C1")):
        found = _series(columns, key, positive=True)
        if found is not None:
            ax_mom.plot(*found, color=color, lw=1.0, label=label)
            any_var = True
    if any_var:
        ax_mom.set_yscale("log")
        ax_mom.legend(fontsize="small", loc="upper left")
    else:
        _empty(ax_mom, "gradient variances")
    ax_mom.set_ylabel("per-sample trace variance")
    corr = _series(columns, "hybrid/corr")
    if corr is not None:
        ax_corr = ax_mom.twinx()
        ax_corr.plot(*corr, color="C2", lw=1.0, ls="--", label="corr = Cov / sqrt(Var_P Var_M)")
        ax_corr.set_ylim(-1.05, 1.05)
        ax_corr.axhline(0.0, color="C2", lw=0.5, alpha=0.5)
        ax_corr.set_ylabel("correlation", color="C2")
        ax_corr.legend(fontsize="small", loc="upper right")
    ax_mom.set_xlabel("env steps")

    for ax in (ax_lam, ax_ratio, ax_mom):
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title, fontsize="medium")
    fig.tight_layout()

    return save_figure(fig, out_png)
