"""Reading a finished run's logged series (its :func:`hybrid_pg.experiments.runner.load_result`).

``result["rows"]`` is SB3's progress.csv, one dict per logger dump. Row semantics (SB3 dumps its
logger *before* ``train()``): row ``i`` holds ``time/total_timesteps`` and the ``rollout/``
statistics after rollout ``i``, and the ``train/`` and ``hybrid/`` values of update ``i - 1``; one
extra row after training holds the last update's values. So the values of a ``train/`` or
``hybrid/`` key, in row order, are exactly one per update: :func:`update_series` pairs each with the
step at which its rollout ended; :func:`learning_curve` gives the training return per rollout.

The policy's standard deviation (``train/std``: the mean over action dimensions of the Gaussian
policy's std after each update, which HybridPG and SB3's PPO both log) is read by
:func:`policy_std` at a step or at the end, and summarised per cell by :func:`policy_std_summary`
(median over seeds, at :data:`STD_EARLY_STEP` and at the end): a std that collapses early is the
first thing to look at when a run stops improving.
"""

from __future__ import annotations

import csv
import dataclasses
import math
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from hybrid_pg.experiments.compressed import DAMAGED_FILE_ERRORS, open_text, stored

__all__ = [
    "POLICY_STD_KEY",
    "STD_EARLY_STEP",
    "VARIANCE_RATIO_KEYS",
    "PolicyStd",
    "Results",
    "SeedMedian",
    "column",
    "evaluation_curve",
    "read_evaluations",
    "learning_curve",
    "median_over_updates",
    "normalized_auc",
    "policy_std",
    "policy_std_note",
    "policy_std_summary",
    "policy_std_titles",
    "reads_early",
    "return_at",
    "run_seed",
    "seed_median",
    "update_series",
    "value_at",
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


def update_series(result: Mapping[str, Any], key: str) -> Tuple[np.ndarray, np.ndarray]:
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


def learning_curve(result: Mapping[str, Any], key: str = "rollout/ep_rew_mean") -> Tuple[np.ndarray, np.ndarray]:
    """(steps, training return): ``key`` (SB3's mean return of the last 100 finished episodes)
    after each rollout, at the env step the rollout ended; rollouts before the first finished
    episode are left out."""
    steps: List[float] = []
    values: List[float] = []
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


def median_over_updates(result: Mapping[str, Any], key: str, skip: int = 0) -> float:
    """Median of a per-update key over the run's updates after the first ``skip``; NaN if none."""
    _, values = update_series(result, key)
    values = values[skip:]
    return float(np.median(values)) if values.size else math.nan


# ------------------------------------------------------------------------------------------------
# the policy's standard deviation
# ------------------------------------------------------------------------------------------------

#: the per-update mean standard deviation of the Gaussian policy (HybridPG and SB3's PPO log it)
POLICY_STD_KEY = "train/std"
#: the early budget at which reports read the policy's std besides the end
STD_EARLY_STEP = 100_000


def value_at(result: Mapping[str, Any], key: str, step: Optional[float] = None) -> float:
    """A per-update key's last value logged at or before env step ``step`` (the step at which the
    update's rollout ended, as in :func:`update_series`); ``step=None``: the run's last value. NaN
    when the run never logged ``key`` or logged it only after ``step``."""
    steps, values = update_series(result, key)
    if step is not None:
        values = values[steps <= step]
    return float(values[-1]) if values.size else math.nan


def policy_std(result: Mapping[str, Any], step: Optional[float] = None) -> float:
    """The policy's std (``train/std``) at env step ``step`` (the last value at or before it), or at
    the end (``step=None``); NaN for a run that did not log it (a non-Gaussian policy)."""
    return value_at(result, POLICY_STD_KEY, step)


@dataclasses.dataclass(frozen=True)
class SeedMedian:
    """The median over seeds of a per-run number, and how many seeds had one (NaN when none)."""

    median: float
    n: int

    def text(self, fmt: str = "#.3g", missing: str = "—") -> str:
        """``"0.412 (n=5)"``, or ``missing`` when no seed had a value."""
        return missing if self.n == 0 else f"{self.median:{fmt}} (n={self.n})"


def seed_median(values: Sequence[float]) -> SeedMedian:
    """:class:`SeedMedian` of the finite values (NaNs are runs without the number)."""
    finite = np.asarray(values, dtype=float)
    finite = finite[np.isfinite(finite)]
    return SeedMedian(float(np.median(finite)) if finite.size else math.nan, int(finite.size))


@dataclasses.dataclass(frozen=True)
class PolicyStd:
    """One cell's policy std: the median over seeds at env step ``step`` (None where the runs'
    budget is ``step`` or less: the reading would be the end's) and at the end of training."""

    at_step: Optional[SeedMedian]
    end: SeedMedian
    step: int

    def columns(self) -> Dict[str, Any]:
        """Flat CSV/JSON columns: ``std_at_<step>_median``, ``_n`` (both empty where not read) and
        ``std_end_median``, ``std_end_n`` (an empty median where no seed logged it)."""
        out: Dict[str, Any] = {}
        for name, reading in ((f"std_at_{self.step}", self.at_step), ("std_end", self.end)):
            out[f"{name}_median"] = reading.median if reading is not None and reading.n else ""
            out[f"{name}_n"] = reading.n if reading is not None else ""
        return out

    @classmethod
    def from_columns(cls, columns: Mapping[str, Any], step: int = STD_EARLY_STEP) -> "PolicyStd":
        """The inverse of :meth:`columns` (a report row that holds them)."""

        def reading(name: str) -> Optional[SeedMedian]:
            n = columns[f"{name}_n"]
            if n == "":
                return None
            median = columns[f"{name}_median"]
            return SeedMedian(math.nan if median == "" else float(median), int(n))

        end = reading("std_end")
        if end is None:
            raise ValueError(f"std_end_n is empty in {dict(columns)}")
        return cls(at_step=reading(f"std_at_{step}"), end=end, step=step)

    def texts(self, fmt: str = "#.3g") -> List[str]:
        """The report cells: at :attr:`step` (where read) and at the end (:meth:`SeedMedian.text`)."""
        return ([] if self.at_step is None else [self.at_step.text(fmt)]) + [self.end.text(fmt)]


def _steps_text(step: int) -> str:
    return f"{step // 1000}k" if step % 1000 == 0 else str(step)


def policy_std_titles(early: bool, step: int = STD_EARLY_STEP) -> List[str]:
    """Column titles matching :meth:`PolicyStd.texts` (``early``: the reading at ``step`` is shown)."""
    titles = [f"policy std at {_steps_text(step)} steps (median over seeds)"] if early else []
    return titles + ["policy std at the end (median over seeds)"]


def policy_std_note(early: bool, step: int = STD_EARLY_STEP, end: bool = True) -> str:
    """The sentence a report gives under its policy-std columns (``early``: the reading at ``step``
    is shown, ``end``: the reading at the end is)."""
    read = ([f"its last value at or before {_steps_text(step)} steps"] if early else []) + (
        ["its last value at the end of training"] if end else []
    )
    note = (
        f"Policy std: {POLICY_STD_KEY}, the Gaussian policy's standard deviation (mean over action dimensions) after "
        f"an update; per run {' and '.join(read)}, then the median over the seeds that logged it (n: how many)."
    )
    return note if early else note + f" The runs' budget is {_steps_text(step)} steps or less: the std at the end only."


def _budget(runs: Sequence[Mapping[str, Any]]) -> Optional[float]:
    """The largest ``train.total_timesteps`` in the runs' configs (None when no run has a config)."""
    budgets = [r.get("config", {}).get("train", {}).get("total_timesteps") for r in runs]
    known = [float(b) for b in budgets if b is not None]
    return max(known) if known else None


def reads_early(budget: Optional[float], step: int = STD_EARLY_STEP) -> bool:
    """Whether runs of ``budget`` env steps get a policy-std reading at ``step`` besides the end: only
    when they train past it (an unknown budget, None: yes)."""
    return budget is None or budget > step


def policy_std_summary(runs: Sequence[Mapping[str, Any]], budget: Optional[float] = None, step: int = STD_EARLY_STEP) -> PolicyStd:
    """A cell's :class:`PolicyStd` over its runs (one per seed). ``budget``: the runs' training
    budget in env steps (default: read from their configs); the reading at ``step`` is made only
    for runs that train past it (``budget > step``, or an unknown budget)."""
    budget = _budget(runs) if budget is None else budget
    early = seed_median([policy_std(r, step) for r in runs]) if reads_early(budget, step) else None
    return PolicyStd(at_step=early, end=seed_median([policy_std(r) for r in runs]), step=int(step))


#: the online agreement signals a report summarises per cell (hybrid_pg.online_signals and the direction
#: check's window statistics; the gradient audit ranks them against the true gradient)
SIGNAL_REPORT_KEYS: Tuple[str, ...] = ("hybrid/direction_cos", "hybrid/path_score_cos", "hybrid/sign_agreement")


def signal_summary(runs: Sequence[Mapping[str, Any]], key: str, skip_updates: int = 0) -> SeedMedian:
    """The median over seeds of each run's median ``key`` over its updates (the first
    ``skip_updates`` left out); runs that never logged it do not count."""
    return seed_median([median_over_updates(r, key, skip=skip_updates) for r in runs])


#: estimator -> its finished runs (:func:`hybrid_pg.experiments.runner.load_result` dicts)
Results = Dict[str, List[Dict[str, Any]]]

#: a run's deterministic evaluations, as :class:`~hybrid_pg.experiments.csv_callbacks.EvalCSVCallback` writes them
EVALUATIONS_FILE = "evaluations.csv"


def read_evaluations(path: Path) -> Tuple[np.ndarray, np.ndarray]:
    """(steps, mean return) from a run's ``evaluations.csv`` (or ``.csv.gz``), in step order; empty
    arrays without the file. Raises ValueError naming the file when it is not that CSV (undecodable,
    a truncated gzip, a missing column or a cell that is not a number)."""
    found = stored(path)
    if found is None:
        return np.empty(0), np.empty(0)
    try:
        with open_text(path) as fh:
            rows = [(float(r["timesteps"]), float(r["mean"])) for r in csv.DictReader(fh)]
    except (*DAMAGED_FILE_ERRORS, KeyError, TypeError, ValueError) as exc:  # and a missing column or a non-number
        raise ValueError(f"{found} cannot be read: {type(exc).__name__}: {exc}") from None
    rows.sort()
    return np.array([s for s, _ in rows]), np.array([v for _, v in rows])


def evaluation_curve(result: Mapping[str, Any]) -> Tuple[np.ndarray, np.ndarray]:
    """(steps, mean return) of a run's deterministic evaluations: as :func:`~hybrid_pg.experiments.runner.load_result`
    read them (``evaluations``), else from the run's ``evaluations.csv``; empty arrays when it has none."""
    if "evaluations" in result:
        return result["evaluations"]
    return read_evaluations(Path(result["run_dir"]) / EVALUATIONS_FILE)


def return_at(result: Mapping[str, Any], step: float) -> float:
    """The run's evaluation return at the last evaluation at or before ``step`` (nan if none)."""
    steps, values = evaluation_curve(result)
    keep = steps <= step
    return float(values[keep][-1]) if keep.any() else math.nan


def run_seed(result: Mapping[str, Any]) -> int:
    """The seed a finished run trained with (its ``spec``; a bare ``seed`` key in hand-made results)."""
    return int(result.get("seed", result.get("spec", {}).get("seed", -1)))
