"""Reading a finished run's logged series (its :func:`hybrid_pg.experiments.runner.load_result`).

``result["rows"]`` is SB3's progress.csv, one dict per logger dump. Row semantics (SB3 dumps its
logger *before* ``train()``): row ``i`` holds ``time/total_timesteps`` and the ``rollout/``
statistics after rollout ``i``, and the ``train/`` and ``hybrid/`` values of update ``i - 1``; one
extra row after training holds the last update's values. So the values of a ``train/`` or
``hybrid/`` key, in row order, are exactly one per update: :func:`update_series` pairs each with the
step at which its rollout ended; :func:`learning_curve` gives the training return per rollout.
"""

from __future__ import annotations

import math
from typing import Any, Dict, Tuple

import numpy as np

__all__ = [
    "VARIANCE_RATIO_KEYS",
    "column",
    "learning_curve",
    "median_over_updates",
    "normalized_auc",
    "update_series",
    "variance_ratio",
    "variance_ratio_key",
]

#: Var(applied gradient) / Var(score gradient) per update: the key HybridPG writes, then the name
#: runs logged before the rename used (hybrid_pg.update_log.REMOVED_KEYS)
VARIANCE_RATIO_KEYS = ("hybrid/variance_ratio_vs_reinforce", "hybrid/variance_ratio_vs_score")


def column(result: Dict[str, Any], key: str) -> np.ndarray:
    """One logged scalar over the run's updates (NaN where an update did not log it)."""
    return np.array([row.get(key, math.nan) for row in result["rows"]], dtype=float)


def variance_ratio_key(result: Dict[str, Any]) -> str:
    """The key under which a run logged Var(applied) / Var(score): the first of
    :data:`VARIANCE_RATIO_KEYS` that any of its rows holds (the current name when none does)."""
    for key in VARIANCE_RATIO_KEYS:
        if any(key in row for row in result["rows"]):
            return key
    return VARIANCE_RATIO_KEYS[0]


def variance_ratio(result: Dict[str, Any], skip: int = 0) -> float:
    """Median over updates of Var(applied gradient) / Var(score gradient), both per sample on the
    same rollout: the hybrid's variance next to what REINFORCE would have had on that batch."""
    ratio = column(result, variance_ratio_key(result))[skip:]
    ratio = ratio[np.isfinite(ratio)]
    return float(np.median(ratio)) if ratio.size else math.nan


def update_series(result: Dict[str, Any], key: str) -> Tuple[np.ndarray, np.ndarray]:
    """(steps, values) of a per-update key (``train/``, ``hybrid/``): one value per update, paired
    with the env step at which that update's rollout ended (see the row semantics in the module
    docstring); updates that did not log ``key`` (or logged a non-finite value) are left out."""
    rows = result["rows"]
    steps, values = [], []
    for i in range(1, len(rows)):  # row 0 holds no update's values
        value = rows[i].get(key)
        if value is not None and math.isfinite(value):
            steps.append(rows[i - 1].get("time/total_timesteps", math.nan))
            values.append(value)
    return np.array(steps, dtype=float), np.array(values, dtype=float)


def learning_curve(result: Dict[str, Any], key: str = "rollout/ep_rew_mean") -> Tuple[np.ndarray, np.ndarray]:
    """(steps, training return): ``key`` (SB3's mean return of the last 100 finished episodes)
    after each rollout, at the env step the rollout ended; rollouts before the first finished
    episode are left out."""
    steps, values = [], []
    for row in result["rows"]:
        value, step = row.get(key), row.get("time/total_timesteps")
        if value is not None and step is not None and math.isfinite(value):
            if steps and step == steps[-1]:
                continue  # the extra end-of-training row repeats a step
            steps.append(step)
            values.append(value)
    return np.array(steps, dtype=float), np.array(values, dtype=float)


def normalized_auc(steps: np.ndarray, values: np.ndarray) -> float:
    """Area under a learning curve divided by the steps it spans (trapezoidal rule): the curve's
    average height, in return units, comparable across budgets. One point: its value; none: NaN."""
    steps, values = np.asarray(steps, dtype=float), np.asarray(values, dtype=float)
    if values.size == 0:
        return math.nan
    span = steps[-1] - steps[0]
    if values.size == 1 or span <= 0:
        return float(values.mean())
    area = float(np.sum((values[1:] + values[:-1]) * np.diff(steps)) / 2.0)
    return area / float(span)


def median_over_updates(result: Dict[str, Any], key: str, skip: int = 0) -> float:
    """Median of a per-update key over the run's updates after the first ``skip``; NaN if none."""
    _, values = update_series(result, key)
    values = values[skip:]
    return float(np.median(values)) if values.size else math.nan
