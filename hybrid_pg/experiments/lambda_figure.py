"""``lambda.png``: the weight, what it buys against REINFORCE, and the moments behind it.

Four panels against env steps, from a run's ``diagnostics.csv`` (or any columns dict):

1. lambda applied (the window of previous rollouts; per-group runs: both groups' weights) and, when
   the oracle ran, its variance-optimal lambda* (and MSE-optimal weight, for learned sources) with a
   shaded +-1 SE band;
2. ``variance_ratio_vs_reinforce`` = Var(applied gradient) / Var(score gradient) on the same rollout,
   on a log axis with a line at 1 (below: the mix is less noisy than REINFORCE) and plain-number
   ticks (0.05, 0.1, 0.2, ...); for exact sources, also 1 - ``variance_reduction_vs_better`` (the
   ratio to the better of the two estimators), which against a learned (biased) pathwise estimator
   would not be a fair reference;
3. the moments: Var_P and Var_M on a log axis;
4. their correlation Cov / sqrt(Var_P Var_M) on [-1, 1] (instead of the raw Cov, whose sign
   changes draw a sawtooth over decades on a symlog axis).

Runs logged before ``variance_ratio_vs_reinforce`` existed fall back to ``variance_ratio_vs_score``
(the same number). Legends sit beside the panels (:func:`~hybrid_pg.experiments.figure_io.legend_outside`).
Drawn on a bare :class:`~matplotlib.figure.Figure` (no pyplot backend switch).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
from matplotlib.axes import Axes

from hybrid_pg.experiments.figure_io import legend_outside, new_figure, readable_log_ticks, save_figure

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


def _first(columns: Columns, keys: Sequence[str], **kw: Any) -> Optional[Tuple[np.ndarray, np.ndarray]]:
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
    se = _series(columns, f"{key}_se")
    banded = se is not None and len(se[0]) == len(x) and np.allclose(se[0], x)
    ax.plot(x, y, color=color, lw=1.0, marker=".", ms=3, label=f"{label} (shaded: ± 1 SE)" if banded else label)
    if banded and se is not None:
        ax.fill_between(x, y - se[1], y + se[1], color=color, alpha=0.2, lw=0)
    return True


def plot_lambda_columns(columns: Columns, out_png: PathLike, title: str = "") -> Path:
    """Draw the four panels (module docstring) from diagnostics columns; returns the written path
    (PNG, PDF or SVG by its suffix)."""
    fig = new_figure(9.0, 10.5)
    ax_lam, ax_ratio, ax_var, ax_corr = fig.subplots(4, 1, sharex=True, height_ratios=(1.0, 1.0, 1.0, 0.7))

    # 1. the weight
    drawn = False
    applied = _series(columns, "hybrid/lambda")
    if applied is not None:
        ax_lam.plot(*applied, color="C0", lw=1.8, label="λ applied\n(window of previous rollouts)")
        drawn = True
    else:
        for key, label, color in (
            ("hybrid/lambda_mean", "λ applied, mean network", "C0"),
            ("hybrid/lambda_log_std", "λ applied, log std", "C4"),
        ):
            found = _series(columns, key)
            if found is not None:
                ax_lam.plot(*found, color=color, lw=1.8, label=label)
                drawn = True
    is_mse = _series(columns, "hybrid/oracle_lambda_is_mse")
    learned = is_mse is not None and bool(np.nanmax(is_mse[1]) > 0.5)
    if _oracle_band(ax_lam, columns, "hybrid/oracle_lambda_var", "oracle: variance-optimal λ*", "C1"):
        drawn = True
        if learned:
            _oracle_band(ax_lam, columns, "hybrid/oracle_lambda_mse", "oracle: MSE-optimal λ", "C2")
    else:
        reference = _series(columns, "hybrid/oracle_lambda")  # older runs: the reference only
        if reference is not None:
            ax_lam.plot(*reference, color="C1", lw=1.0, marker=".", ms=3, label="oracle: λ*")
            drawn = True
    if drawn:
        legend_outside(ax_lam)
    else:
        _empty(ax_lam, "lambda")
    ax_lam.set_ylabel("λ, the weight on\nthe pathwise gradient")

    # 2. the variance against REINFORCE on the same rollout
    ratio = _first(columns, ("hybrid/variance_ratio_vs_reinforce", "hybrid/variance_ratio_vs_score"), positive=True)
    if ratio is not None:
        ax_ratio.plot(*ratio, color="C0", lw=1.2, label="Var(applied) / Var(REINFORCE),\nsame rollout")
        better = _series(columns, "hybrid/variance_reduction_vs_better")
        if better is not None:
            bx, by = better
            keep = (1.0 - by) > 0
            ax_ratio.plot(
                bx[keep], 1.0 - by[keep], color="C3", lw=1.0, ls="--", label="predicted Var(λ) / min(Var_P, Var_M)\n(exact source)"
            )
        ax_ratio.axhline(1.0, color="0.4", lw=0.8)
        ax_ratio.set_yscale("log")
        # at least a decade around 1, so a flat ratio (e.g. lambda = 0 during warm-up) reads as flat
        lo, hi = float(np.min(ratio[1])), float(np.max(ratio[1]))
        low, high = min(lo / 1.5, 0.3), max(hi * 1.5, 3.0)
        ax_ratio.set_ylim(low, high)
        readable_log_ticks(ax_ratio, low, high)
        median = float(np.median(ratio[1]))
        ax_ratio.set_title(f"median ratio to REINFORCE {median:.3g} (below 1: less gradient noise)", fontsize="small")
        legend_outside(ax_ratio)
    else:
        _empty(ax_ratio, "variance ratio vs REINFORCE")
    ax_ratio.set_ylabel("variance ratio\n(log scale)")

    # 3. the moments: variances on a log axis
    found_var = [
        (found, label, color)
        for key, label, color in (("hybrid/var_path", "Var_P (pathwise)", "C0"), ("hybrid/var_score", "Var_M (score)", "C1"))
        if (found := _series(columns, key, positive=True)) is not None
    ]
    if found_var:
        for (x, y), label, color in found_var:
            ax_var.plot(x, y, color=color, lw=1.0, label=label)
        ax_var.set_yscale("log")
        values = np.concatenate([y for (_, y), _, _ in found_var])
        readable_log_ticks(ax_var, float(values.min()), float(values.max()))
        legend_outside(ax_var)
    else:
        _empty(ax_var, "gradient variances")
    ax_var.set_ylabel("per-sample trace\nvariance (log scale)")

    # 4. their correlation on [-1, 1]
    corr = _series(columns, "hybrid/corr")
    if corr is not None:
        ax_corr.plot(*corr, color="C2", lw=1.0, label="Cov / sqrt(Var_P Var_M)")
        ax_corr.axhline(0.0, color="0.4", lw=0.8)
        legend_outside(ax_corr)
    else:
        _empty(ax_corr, "correlation")
    ax_corr.set_ylim(-1.05, 1.05)
    ax_corr.set_ylabel("correlation of\nthe two gradients")
    ax_corr.set_xlabel("environment steps")

    for ax in (ax_lam, ax_ratio, ax_var, ax_corr):
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title, fontsize="medium")
    return save_figure(fig, out_png)
