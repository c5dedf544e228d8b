"""SB3 callbacks that write a run's CSV files: per-update diagnostics and deterministic evaluations.

``diagnostics.csv`` (:class:`DiagnosticsCallback`) is *wide*: one row per update, columns
``update, timesteps, time/elapsed, rollout/ep_rew_mean`` followed by every logged key with a
recorded prefix (default ``hybrid/``), named exactly as in the SB3 logger / tensorboard. The column
set is that of the first row plus any key seen later: when a new key appears, the file is rewritten
with the wider header and earlier rows get empty cells for it (likewise a key missing from a row is
an empty cell). ``timesteps`` is the number of env steps collected when the update ran, i.e. the
row's update was trained on the rollout that ended there.

Why a callback rather than an SB3 output format: SB3 dumps its logger *before* ``train()``, so a
dumped row carries the previous update's ``train/``/``hybrid/`` values next to the current
rollout's statistics, and the last update's values are never dumped. The callback reads the
logger's values right after each update (at the next rollout start, or at training end) and pairs
them with the rollout that update was trained on.

``evaluations.csv`` (:class:`EvalCSVCallback`): ``timesteps, mean, std`` of the deterministic
returns of ``n_eval_episodes`` episodes on a separate env, before training, every ``eval_freq``
env steps and once more at the end of training (unless the last evaluation was at that step;
with ``eval_freq=0`` only then). A non-stationary evaluation env follows the training env's clock:
before each evaluation its clock is set to the training env's and held there for the episodes.

:class:`RolloutProgressBar` replaces SB3's ``progress_bar=True``: an on-policy algorithm trains
whole rollouts, so it runs ``ceil(budget / rollout) * rollout`` steps (80,896 for a budget of 80,000
with rollouts of 1,024), and SB3's bar, whose total is the budget, ends at ``80,896/80,000``; with a
budget below one rollout it shows ``1,024/1``. This bar's total is the rollout-rounded budget, its
count never passes it, and its label says so.
"""

from __future__ import annotations

import csv
import math
import os
import time
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.vec_env import VecEnv, sync_envs_normalization

from hybrid_pg.experiments.compressed import open_text
from hybrid_pg.experiments.processes import interrupts_deferred
from hybrid_pg.experiments.results import EVALUATIONS_FILE
from hybrid_pg_envs.clock import env_clock, has_clock, sync_clock

__all__ = [
    "DIAGNOSTICS_FILE",
    "EVALUATIONS_FILE",
    "DiagnosticsCallback",
    "EvalCSVCallback",
    "RolloutProgressBar",
    "WideCSVWriter",
    "rollout_budget",
    "format_progress_line",
    "read_csv_columns",
]

DIAGNOSTICS_FILE = "diagnostics.csv"
BASE_COLUMNS = ("update", "timesteps", "time/elapsed", "rollout/ep_rew_mean")


class WideCSVWriter:
    """A CSV file of rows whose key set may grow: new keys widen the header (the file is rewritten).

    Rows are kept in memory (one per update: small) so a widening rewrite loses nothing; otherwise
    each row is appended and flushed, so a crashed run keeps every finished update.
    """

    def __init__(self, path: Union[str, Path], columns: Sequence[str] = ()) -> None:
        self.path = Path(path)
        self.columns: List[str] = list(columns)
        self.rows: List[Dict[str, Any]] = []

    def write(self, row: Mapping[str, Any]) -> None:
        with interrupts_deferred():  # a Ctrl-C never leaves the row in memory but not on disk
            new = [k for k in row if k not in self.columns]
            self.rows.append(dict(row))
            if new or len(self.rows) == 1:
                self.columns.extend(new)
                self._rewrite()
            else:
                with self.path.open("a", newline="", encoding="utf-8") as fh:
                    csv.writer(fh).writerow(self._cells(row))

    def _cells(self, row: Mapping[str, Any]) -> List[str]:
        return [_cell(row.get(c)) for c in self.columns]

    def _rewrite(self) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        with tmp.open("w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(self.columns)
            writer.writerows(self._cells(r) for r in self.rows)
        os.replace(tmp, self.path)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (bool, np.bool_)):
        return str(int(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return repr(float(value))  # shortest exact round-trip; 'nan' / 'inf' stay readable
    return str(value)


def read_csv_columns(path: Union[str, Path]) -> Dict[str, np.ndarray]:
    """A CSV of numbers as ``{column: float array}``; empty or non-numeric cells are NaN. ``path``
    may be stored gzip-compressed as ``path.gz`` (:mod:`hybrid_pg.experiments.compressed`)."""
    with open_text(path) as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if header is None:
            return {}
        rows = list(reader)
    columns: Dict[str, np.ndarray] = {}
    for i, name in enumerate(header):
        columns[name] = np.array([_to_float(r[i]) if i < len(r) else math.nan for r in rows], dtype=float)
    return columns


def _to_float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return math.nan


def rollout_budget(total_timesteps: int, rollout_size: Optional[int]) -> int:
    """The env steps an on-policy run with this budget actually takes: whole rollouts of
    ``rollout_size`` (``n_steps * n_envs``) until the budget is reached; the budget itself for an
    algorithm without rollouts (``rollout_size`` None or 0)."""
    if not rollout_size or total_timesteps <= 0:
        return max(int(total_timesteps), 0)
    return int(math.ceil(total_timesteps / rollout_size) * rollout_size)


class RolloutProgressBar(BaseCallback):
    """A progress bar of env steps whose total is the rollout-rounded budget (module docstring).
    tqdm's rich bar like SB3's; the count is clamped to the total."""

    def __init__(self) -> None:
        super().__init__()
        self.pbar: Optional[Any] = None  # tqdm.rich.tqdm, imported when training starts
        self.total = 0
        self.shown = 0

    def _on_training_start(self) -> None:
        import warnings

        from tqdm import TqdmExperimentalWarning

        warnings.filterwarnings("ignore", category=TqdmExperimentalWarning)  # as SB3 does for its bar
        from tqdm.rich import tqdm

        budget = int(self.locals["total_timesteps"]) - int(self.model.num_timesteps)
        rollout = getattr(self.model, "n_steps", 0) * self.training_env.num_envs
        self.total = rollout_budget(budget, rollout)
        self._start = int(self.model.num_timesteps)
        self.pbar = tqdm(total=self.total, desc="env steps")  # short: the bar needs the terminal's width

    def _on_step(self) -> bool:
        done = min(int(self.num_timesteps) - self._start, self.total)
        if done > self.shown and self.pbar is not None:
            self.pbar.update(done - self.shown)
            self.shown = done
        return True

    def _on_training_end(self) -> None:
        if self.pbar is not None:
            self.pbar.refresh()
            self.pbar.close()


#: logger keys the progress line shows besides a diagnostics row's own (they are not written to
#: diagnostics.csv: progress.csv has them)
PROGRESS_EXTRA_KEYS = ("train/std",)


def format_progress_line(row: Mapping[str, Any], total_timesteps: Optional[int] = None) -> str:
    """One short line for a diagnostics row: steps, training return, the policy's std (``train/std``,
    where the row holds it), applied and batch lambda."""
    steps = f"{row['timesteps']:>8d}" + (f"/{total_timesteps}" if total_timesteps else "")
    parts = [f"update {row['update']:>4d}", f"steps {steps}"]
    for label, key, fmt in (
        ("ep_rew_mean", "rollout/ep_rew_mean", "{:9.2f}"),
        ("std", "train/std", "{:.3f}"),
        ("lam", "hybrid/lambda", "{:.3f}"),
        ("lam_batch", "hybrid/lambda_batch", "{:.3f}"),
        ("lam*", "hybrid/oracle_lambda", "{:.3f}"),
        ("var/RF", "hybrid/variance_ratio_vs_reinforce", "{:.3g}"),
    ):
        value = row.get(key)
        if value is not None and not (isinstance(value, float) and math.isnan(value)):
            parts.append(f"{label} {fmt.format(value)}")
    if "time/elapsed" in row:
        parts.append(f"{row['time/elapsed']:.0f}s")
    return " | ".join(parts)


class DiagnosticsCallback(BaseCallback):
    """Writes one ``diagnostics.csv`` row per update (see the module docstring).

    :param path: the CSV file to write (its folder must exist).
    :param prefixes: logger key prefixes copied into each row.
    :param print_progress: print :func:`format_progress_line` of each row.
    :param total_timesteps: shown in the progress line.
    """

    def __init__(
        self,
        path: Union[str, Path],
        prefixes: Tuple[str, ...] = ("hybrid/",),
        print_progress: bool = False,
        total_timesteps: Optional[int] = None,
        verbose: int = 0,
    ) -> None:
        super().__init__(verbose=verbose)
        self.writer = WideCSVWriter(path, BASE_COLUMNS)
        self.prefixes = tuple(prefixes)
        self.print_progress = print_progress
        self.total_timesteps = total_timesteps
        self._pending: Optional[Dict[str, Any]] = None  # the rollout the next update trains on
        self._n_rows = 0
        self._t0 = time.perf_counter()

    def _on_training_start(self) -> None:
        self._t0 = time.perf_counter()
        if self.total_timesteps:  # the steps the run will take: whole rollouts (rollout_budget)
            rollout = getattr(self.model, "n_steps", 0) * self.training_env.num_envs
            self.total_timesteps = int(self.model.num_timesteps) + rollout_budget(
                self.total_timesteps - int(self.model.num_timesteps), rollout
            )

    def _on_step(self) -> bool:
        return True

    def _on_rollout_end(self) -> None:
        # collect_rollouts returned normally, so train() runs next on this rollout
        self._pending = {"timesteps": int(self.num_timesteps), "rollout/ep_rew_mean": self._ep_rew_mean()}

    def _on_rollout_start(self) -> None:
        self._flush()

    def _on_training_end(self) -> None:
        self._flush()

    def _ep_rew_mean(self) -> Optional[float]:
        buffer = getattr(self.model, "ep_info_buffer", None)
        if not buffer:
            return None
        return float(np.mean([info["r"] for info in buffer]))

    def _flush(self) -> None:
        """Write the finished update's row: the pending rollout plus the logger's current values."""
        if self._pending is None:
            return
        self._n_rows += 1
        row: Dict[str, Any] = {"update": self._n_rows, **self._pending, "time/elapsed": time.perf_counter() - self._t0}
        for key, value in self.logger.name_to_value.items():
            if key.startswith(self.prefixes):
                row[key] = value
        self._pending = None
        self.writer.write(row)
        if self.print_progress:
            shown = {k: self.logger.name_to_value[k] for k in PROGRESS_EXTRA_KEYS if k in self.logger.name_to_value}
            print(format_progress_line({**row, **shown}, self.total_timesteps), flush=True)


class EvalCSVCallback(BaseCallback):
    """Deterministic evaluation on a separate env, written to ``evaluations.csv`` (see module docstring).

    :param eval_env: the evaluation VecEnv (Monitor-wrapped; a VecNormalize wrapper is synced
        from the training env before each evaluation and should have ``training=False``).
    :param eval_freq: env steps (summed over the training env's copies) between evaluations; 0:
        only one evaluation, at the end of training.
    :param path: the CSV file to write.
    :param n_eval_episodes: episodes per evaluation.
    :param print_progress: print each evaluation.
    """

    def __init__(
        self,
        eval_env: VecEnv,
        eval_freq: int,
        path: Union[str, Path],
        n_eval_episodes: int = 5,
        print_progress: bool = False,
        verbose: int = 0,
    ) -> None:
        super().__init__(verbose=verbose)
        if eval_freq < 0:
            raise ValueError(f"eval_freq={eval_freq!r}: must be >= 0")
        self.eval_env = eval_env
        self.eval_freq = int(eval_freq)
        self.n_eval_episodes = int(n_eval_episodes)
        self.print_progress = print_progress
        self.writer = WideCSVWriter(path, ("timesteps", "mean", "std"))
        self._next_eval = 0
        self._last_eval_step: Optional[int] = None
        #: the episode returns of the latest evaluation
        self.last_returns: List[float] = []
        #: wall time spent evaluating (the runner leaves it out of the training time)
        self.eval_seconds = 0.0

    def _on_training_start(self) -> None:
        if self.eval_freq:
            self._next_eval = self.num_timesteps + self.eval_freq
            self._evaluate()

    def _on_step(self) -> bool:
        if self.eval_freq and self.num_timesteps >= self._next_eval:
            while self._next_eval <= self.num_timesteps:
                self._next_eval += self.eval_freq
            self._evaluate()
        return True

    def _on_training_end(self) -> None:
        if self._last_eval_step != self.num_timesteps:
            self._evaluate()

    def _evaluate(self) -> None:
        t0 = time.perf_counter()
        if self.model.get_vec_normalize_env() is not None:
            sync_envs_normalization(self.training_env, self.eval_env)
        clock = env_clock(self.training_env)
        if clock is not None and has_clock(self.eval_env):
            # the env as training has moved it, held still for the evaluation episodes
            sync_clock(self.eval_env, clock, steps_per_tick=0)
        returns, _ = evaluate_policy(
            self.model, self.eval_env, n_eval_episodes=self.n_eval_episodes, deterministic=True, return_episode_rewards=True
        )
        self.eval_seconds += time.perf_counter() - t0
        self.last_returns = [float(r) for r in np.atleast_1d(returns)]  # one per episode (return_episode_rewards)
        mean, std = float(np.mean(returns)), float(np.std(returns))
        step = int(self.num_timesteps)
        self._last_eval_step = step
        self.writer.write({"timesteps": step, "mean": mean, "std": std})
        self.logger.record("eval/mean_reward", mean)
        self.logger.record("eval/std_reward", std)
        if self.print_progress:
            print(f"eval   at {step:>8d} steps: return {mean:9.2f} +- {std:.2f} ({self.n_eval_episodes} episodes)", flush=True)
