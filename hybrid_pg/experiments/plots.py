"""Plots of finished (or running) ``hybrid-pg`` runs, from their ``diagnostics.csv`` and ``evaluations.csv``.

Figures are drawn on :class:`matplotlib.figure.Figure` with the Agg canvas directly, so importing
this module never switches the process-wide pyplot backend. Every function tolerates missing files and
columns (a REINFORCE run logs lam = 0 and no windowed estimate worth plotting, an old run may lack
newer keys): what is absent is left out or marked "not logged".

A directory without those CSV files is read from its tensorboard event files instead (searched
recursively: an SB3 ``tensorboard_log`` folder, an rl-zoo3 ``-tb`` folder, or a ``hybrid-pg`` run's
``tensorboard/``): ``rollout/ep_rew_mean`` and ``hybrid/*`` by step as the diagnostics,
``eval/mean_reward`` (SB3's ``EvalCallback``; no std) as the evaluations. Where several runs' event
folders lie below the directory, the most recently written one is read. A directory with neither
raises :class:`FileNotFoundError` (``hybrid-pg plot`` turns it into a usage error, exit status 2).
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
from matplotlib.artist import Artist
from matplotlib.axes import Axes

from hybrid_pg.experiments.compressed import DAMAGED_FILE_ERRORS, stored
from hybrid_pg.experiments.csv_callbacks import DIAGNOSTICS_FILE, EVALUATIONS_FILE, read_csv_columns
from hybrid_pg.experiments.figure_io import footnote, legend_outside, new_figure, save_figure
from hybrid_pg.experiments.lambda_figure import plot_lambda_columns

__all__ = ["plot_lambda", "plot_returns"]

PathLike = Union[str, Path]
Columns = Dict[str, np.ndarray]


def _read(run_dir: Path, name: str) -> Columns:
    """The file's columns ({} when it is absent); a file that is not a CSV of text raises
    :class:`ValueError` naming it (``hybrid-pg plot`` turns that into a usage error)."""
    path = run_dir / name
    if not path.is_file():
        return {}
    try:
        return read_csv_columns(path)
    except DAMAGED_FILE_ERRORS as exc:
        raise ValueError(f"{path} is not a CSV file this package wrote: {type(exc).__name__}: {exc}") from None


def _tensorboard_columns(run_dir: Path) -> Tuple[Columns, Columns]:
    """(diagnostics-like, evaluations-like) columns from the newest event folder below ``run_dir``;
    two empty dicts when there is none (or tensorboard is not installed)."""
    events = sorted(run_dir.rglob("events.out.tfevents.*"), key=lambda p: p.stat().st_mtime)
    if not events:
        return {}, {}
    try:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    except ImportError:  # pragma: no cover - tensorboard is a dependency
        return {}, {}
    acc = EventAccumulator(str(events[-1].parent), size_guidance={"scalars": 0})
    acc.Reload()
    scalars = {tag: {e.step: e.value for e in acc.Scalars(tag)} for tag in acc.Tags().get("scalars", [])}

    def table(tags: Sequence[str], rename: Dict[str, str]) -> Columns:
        tags = [t for t in tags if t in scalars]
        if not tags:
            return {}
        steps = np.array(sorted({step for t in tags for step in scalars[t]}), dtype=float)
        out: Columns = {"timesteps": steps}
        for t in tags:
            out[rename.get(t, t)] = np.array([scalars[t].get(int(step), np.nan) for step in steps], dtype=float)
        return out

    diag = table(["rollout/ep_rew_mean", *[t for t in scalars if t.startswith("hybrid/")]], {})
    evals = table(["eval/mean_reward"], {"eval/mean_reward": "mean"})
    return diag, evals


def _stored_name(run_dir: Path, name: str) -> str:
    """``name``, or ``name.gz`` where the run keeps only the compressed file (committed results)."""
    found = stored(run_dir / name)
    return found.name if found is not None else name


def _run_columns(run_dir: Path) -> Tuple[Columns, Columns]:
    """(diagnostics, evaluations) of a run directory: its CSV files (plain or ``.csv.gz``), else its
    tensorboard logs."""
    diag, evals = _read(run_dir, _stored_name(run_dir, DIAGNOSTICS_FILE)), _read(run_dir, _stored_name(run_dir, EVALUATIONS_FILE))
    if not diag and not evals:
        diag, evals = _tensorboard_columns(run_dir)
    if not diag and not evals:
        raise FileNotFoundError(
            f"{run_dir}: not a run directory (no {DIAGNOSTICS_FILE}, no {EVALUATIONS_FILE}, no tensorboard event files below it)"
        )
    return diag, evals


def _series(columns: Columns, key: str, x_key: str = "timesteps") -> Optional[Tuple[np.ndarray, np.ndarray]]:
    """(x, y) of ``key`` with NaN rows dropped, or None when the column is absent or all NaN."""
    if key not in columns:
        return None
    y = columns[key]
    x = columns.get(x_key, np.arange(1, len(y) + 1, dtype=float))
    keep = np.isfinite(y) & np.isfinite(x)
    if not keep.any():
        return None
    return x[keep], y[keep]


def _mark_empty(ax: Axes, what: str) -> None:
    ax.text(0.5, 0.5, f"{what}: not logged in this run", ha="center", va="center", transform=ax.transAxes, color="0.4")


#: why the training curve trails the evaluations (printed under returns.png's axes)
LAG_NOTE = (
    "Training: SB3's mean return of the last 100 finished episodes, so it lags the policy by up to 100 episodes "
    "(20k steps for 200-step episodes). Evaluation: the deterministic policy at that step."
)

TRAIN_LABEL = "training (mean of the last 100 episodes)"
EVAL_LABEL = "evaluation (deterministic policy, mean)"
EVAL_BAND_LABEL = "evaluation ± 1 std over episodes"


def plot_returns(
    run_dirs: Sequence[PathLike], out_png: PathLike, labels: Optional[Sequence[str]] = None, title: Optional[str] = None
) -> Path:
    """Training return (``rollout/ep_rew_mean``, solid) and deterministic evaluation return (mean,
    dashed, shaded ± 1 std over the evaluation episodes) against env steps, one colour per run. The
    training curve is SB3's moving mean over the last 100 finished episodes, so it trails the
    evaluations (by up to 100 episodes: 20k steps on Pendulum); a note under the axes says so. The
    legend (beside the axes) keys the line styles once and, for several runs, the colours by run;
    one run's name is the title. Returns the written path (PNG, PDF or SVG by its suffix).

    :param run_dirs: run directories (each with ``diagnostics.csv`` and/or ``evaluations.csv``).
    :param out_png: the figure to write (parent folders are created).
    :param labels: legend label per run (default: the directory names).
    :param title: the figure's title (default: ``Returns: <run name>`` for one run, ``Returns`` for several).
    """
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    dirs = [Path(d) for d in run_dirs]
    if not dirs:
        raise ValueError("plot_returns needs at least one run directory")
    names = list(labels) if labels is not None else [d.name for d in dirs]
    if len(names) != len(dirs):
        raise ValueError(f"got {len(names)} labels for {len(dirs)} run directories")
    fig = new_figure(9.0, 4.8)
    ax = fig.add_subplot()
    drawn = {"train": False, "eval": False, "band": False}
    for i, run_dir in enumerate(dirs):
        diag, evals = _run_columns(run_dir)
        color = f"C{i % 10}"
        train = _series(diag, "rollout/ep_rew_mean")
        if train is not None:
            ax.plot(*train, color=color, lw=1.6)
            drawn["train"] = True
        mean, std = _series(evals, "mean"), _series(evals, "std")
        if mean is not None:
            ax.plot(*mean, color=color, ls="--", marker="o", ms=3.5)
            drawn["eval"] = True
            if std is not None and len(std[1]) == len(mean[1]):
                ax.fill_between(mean[0], mean[1] - std[1], mean[1] + std[1], color=color, alpha=0.15, lw=0)
                drawn["band"] = True
    if not any(drawn.values()):
        _mark_empty(ax, "episode returns")
    else:
        key = "C0" if len(dirs) == 1 else "0.35"  # one run: its colour; several: a neutral key for the styles
        handles: List[Artist] = []
        if drawn["train"]:
            handles.append(Line2D([], [], color=key, lw=1.6, label=TRAIN_LABEL))
        if drawn["eval"]:
            handles.append(Line2D([], [], color=key, ls="--", marker="o", ms=3.5, label=EVAL_LABEL))
        if drawn["band"]:
            handles.append(Patch(color=key, alpha=0.15, lw=0, label=EVAL_BAND_LABEL))
        if len(dirs) > 1:
            handles += [Patch(color=f"C{i % 10}", label=name) for i, name in enumerate(names)]
        legend_outside(ax, handles)
        if drawn["train"]:
            footnote(ax, LAG_NOTE, width=110)
    ax.set_xlabel("environment steps")
    ax.set_ylabel("episode return")
    if title is None:
        title = f"Returns: {names[0]}" if len(dirs) == 1 else "Returns"
    ax.set_title(title, fontsize="medium")
    ax.grid(alpha=0.3)
    return save_figure(fig, out_png)


def plot_lambda(run_dir: PathLike, out_png: PathLike) -> Path:
    """``lambda.png``: the readable headline figure (:mod:`hybrid_pg.experiments.lambda_figure`) of a run
    directory or of an SB3/zoo tensorboard directory."""
    diag, _ = _run_columns(Path(run_dir))
    return plot_lambda_columns(diag, out_png, title=f"The weight λ and the gradient variances: {Path(run_dir).name}")
