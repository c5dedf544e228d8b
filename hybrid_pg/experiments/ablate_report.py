"""The report of an ablation (:mod:`hybrid_pg.experiments.ablate`), one set of files per environment.

Per run (from what the run engine wrote, :func:`hybrid_pg.experiments.runner.load_result`):

* ``final_return``: mean return of the deterministic evaluation episodes after training;
* ``auc``: area under the training curve (``rollout/ep_rew_mean`` after each rollout, against env
  steps) divided by the steps it spans, i.e. the curve's average height in return units;
* ``var_applied``: median over updates of ``hybrid/var_applied``, the per-sample variance of the
  gradient the update applied;
* ``variance_ratio``: median over updates of ``hybrid/variance_ratio_vs_score``, that variance over
  the score-function (REINFORCE) gradient's variance on the same rollout (1 for reinforce itself).

(The variance medians leave out the first ``skip_updates`` updates.) Per estimator, every metric is
aggregated over seeds as the mean and the IQM, each with a 95% bootstrap CI (the runs of the env
form the single stratum of :func:`hybrid_pg.experiments.aggregate.stratified_bootstrap_ci`; 2000 resamples,
fixed generator seed, so reports are reproducible). Each estimator is compared with the reference
(default reinforce) per metric: the difference of means with its 95% bootstrap CI (the two groups
resampled independently); the difference is called significant when that CI excludes 0. Welch's
t-test p-value is given alongside for reference (with few seeds, read both with care).

Files written into the output folder, ``<env>`` being the env entry's name:

* ``table_<env>.md``: the aggregates and the comparisons, with this legend;
* ``table_<env>.csv``: the same numbers, one row per estimator (column names below);
* ``runs_<env>.csv``: the per-run metrics (one row per estimator and seed);
* ``curves_<env>.png``: training return against env steps, mean over seeds with a 95% CI band;
* ``variance_<env>.png``: Var(applied) and Var(applied)/Var(score) over training (log scale),
  geometric mean over seeds with a 95% CI band.
"""

from __future__ import annotations

import csv
import dataclasses
import math
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from hybrid_pg.experiments.aggregate import Interval, bootstrap_difference_ci, curve_mean_ci, iqm, mean, stratified_bootstrap_ci, welch_p_value
from hybrid_pg.experiments.results import learning_curve, median_over_updates, normalized_auc, update_series

__all__ = ["METRICS", "Metric", "estimator_summary", "markdown_table", "run_metrics", "write_env_report"]

Results = Mapping[str, Sequence[Dict[str, Any]]]  # estimator name -> its runs' results


@dataclasses.dataclass(frozen=True)
class Metric:
    key: str
    title: str
    higher_is_better: bool
    fmt: str


METRICS = (
    Metric("final_return", "final return", True, "{:.1f}"),
    Metric("auc", "AUC (mean training return)", True, "{:.1f}"),
    Metric("var_applied", "Var(applied gradient)", False, "{:.3g}"),
    Metric("variance_ratio", "Var(applied) / Var(score)", False, "{:.3g}"),
)


def run_metrics(result: Dict[str, Any], skip_updates: int = 0) -> Dict[str, float]:
    """The four per-run metrics of the module docstring (NaN where a run did not log them)."""
    return {
        "final_return": float(result["final_return"]),
        "auc": normalized_auc(*learning_curve(result)),
        "var_applied": median_over_updates(result, "hybrid/var_applied", skip_updates),
        "variance_ratio": median_over_updates(result, "hybrid/variance_ratio_vs_score", skip_updates),
    }


def _finite(values: Sequence[float]) -> np.ndarray:
    arr = np.asarray(values, dtype=float)
    return arr[np.isfinite(arr)]


def _nan_interval() -> Interval:
    return Interval(math.nan, math.nan, math.nan)


def _aggregate(values: np.ndarray) -> Tuple[Interval, Interval]:
    if values.size == 0:
        return _nan_interval(), _nan_interval()
    return stratified_bootstrap_ci(values, mean), stratified_bootstrap_ci(values, iqm)


def estimator_summary(
    name: str,
    per_run: Sequence[Dict[str, float]],
    reference_runs: Optional[Sequence[Dict[str, float]]],
) -> Dict[str, Any]:
    """One row of the table: per metric n, mean and IQM with CIs, and (unless ``reference_runs``
    is None) the difference of means vs the reference with its CI, Welch p and verdict."""
    row: Dict[str, Any] = {"estimator": name, "runs": len(per_run)}
    for metric in METRICS:
        values = _finite([r[metric.key] for r in per_run])
        mean_ci, iqm_ci = _aggregate(values)
        row[metric.key] = {"n": int(values.size), "mean": mean_ci, "iqm": iqm_ci}
        if reference_runs is None:
            continue
        ref = _finite([r[metric.key] for r in reference_runs])
        if values.size and ref.size:
            diff = bootstrap_difference_ci(values, ref)
            row[metric.key]["diff"] = diff
            row[metric.key]["welch_p"] = welch_p_value(values, ref)
            row[metric.key]["significant"] = diff.excludes(0.0)
        else:
            row[metric.key].update(diff=_nan_interval(), welch_p=math.nan, significant=False)
    return row


def _verdict(metric: Metric, cell: Mapping[str, Any], reference: str) -> str:
    if not cell.get("significant"):
        return "no significant difference"
    higher = cell["diff"].point > 0
    better = higher == metric.higher_is_better
    return f"{'higher' if higher else 'lower'} than {reference} ({'better' if better else 'worse'}), significant"


def _ci_text(interval: Interval, fmt: str) -> str:
    if math.isnan(interval.point):
        return "n/a"
    return f"{fmt.format(interval.point)} [{fmt.format(interval.low)}, {fmt.format(interval.high)}]"


def _p_text(p: float) -> str:
    return "n/a" if math.isnan(p) else f"{p:.3g}"


def markdown_table(title: str, rows: Sequence[Dict[str, Any]], reference: str) -> str:
    """The env's markdown report: aggregates, then comparisons with ``reference``, then a legend."""
    lines = [f"# {title}", "", "Aggregates over seeds (point estimate [95% bootstrap CI]).", ""]
    header = ["estimator", "runs"] + [f"{m.title}: {stat}" for m in METRICS for stat in ("mean", "IQM")]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [row["estimator"], str(row["runs"])]
        for m in METRICS:
            cells += [_ci_text(row[m.key]["mean"], m.fmt), _ci_text(row[m.key]["iqm"], m.fmt)]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        f"## Compared with {reference}",
        "",
        f"Difference of means (estimator - {reference}) with its 95% bootstrap CI; **significant** when the CI excludes 0. "
        "Welch's t-test p-value (two-sided) alongside.",
        "",
        "| estimator | metric | difference of means [95% CI] | Welch p | verdict |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        if "diff" not in row[METRICS[0].key]:
            continue  # the reference itself
        for m in METRICS:
            cell = row[m.key]
            lines.append(f"| {row['estimator']} | {m.title} | {_ci_text(cell['diff'], m.fmt)} | {_p_text(cell['welch_p'])} | {_verdict(m, cell, reference)} |")
    lines += [
        "",
        "Final return: mean of the deterministic evaluation episodes after training. AUC: area under the training-return "
        "curve (rollout/ep_rew_mean against env steps) divided by the steps it spans. Var(applied gradient): median over "
        "updates of hybrid/var_applied. Var(applied) / Var(score): median over updates of hybrid/variance_ratio_vs_score "
        "(the score-function gradient's variance on the same rollout). IQM: mean of the middle 50% of the seeds' values. "
        "CIs: percentile bootstrap over seeds, 2000 resamples.",
    ]
    return "\n".join(lines)


def _csv_rows(env_name: str, env_id: str, rows: Sequence[Dict[str, Any]], reference: str) -> List[Dict[str, Any]]:
    out = []
    for row in rows:
        flat: Dict[str, Any] = {"env": env_name, "env_id": env_id, "estimator": row["estimator"], "runs": row["runs"], "reference": reference}
        for m in METRICS:
            cell = row[m.key]
            flat[f"{m.key}_n"] = cell["n"]
            for stat in ("mean", "iqm"):
                flat[f"{m.key}_{stat}"], flat[f"{m.key}_{stat}_lo"], flat[f"{m.key}_{stat}_hi"] = dataclasses.astuple(cell[stat])
            compared = "diff" in cell  # not for the reference itself
            flat[f"{m.key}_diff_vs_ref"] = cell["diff"].point if compared else ""
            flat[f"{m.key}_diff_lo"] = cell["diff"].low if compared else ""
            flat[f"{m.key}_diff_hi"] = cell["diff"].high if compared else ""
            flat[f"{m.key}_welch_p"] = cell["welch_p"] if compared else ""
            flat[f"{m.key}_significant"] = int(cell["significant"]) if compared else ""
        out.append(flat)
    return out


def _write_csv(path: Path, rows: Sequence[Mapping[str, Any]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


# ------------------------------------------------------------------------------------------------
# figures
# ------------------------------------------------------------------------------------------------


def _on_common_grid(series: Sequence[Tuple[np.ndarray, np.ndarray]]) -> Optional[Tuple[np.ndarray, np.ndarray]]:
    """(grid, runs x grid) by linear interpolation over the step range all runs cover; None if
    no run has a point or the ranges do not overlap."""
    series = [(x, y) for x, y in series if x.size]
    if not series:
        return None
    lo, hi = max(x[0] for x, _ in series), min(x[-1] for x, _ in series)
    grid = np.unique(np.concatenate([x for x, _ in series]))
    grid = grid[(grid >= lo) & (grid <= hi)]
    if grid.size == 0:
        return None
    return grid, np.stack([np.interp(grid, x, y) for x, y in series])


def _figure(n_axes: int):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.5 * n_axes, 4.2))
    return fig, [fig.add_subplot(1, n_axes, i + 1) for i in range(n_axes)]


def _save(fig, path: Path) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path


def _band(ax, grid: np.ndarray, curves: np.ndarray, label: str, log: bool = False) -> None:
    values = np.log(curves) if log else curves
    centre, low, high = curve_mean_ci(values)
    if log:
        centre, low, high = np.exp(centre), np.exp(low), np.exp(high)
    (line,) = ax.plot(grid, centre, label=f"{label} (n={curves.shape[0]})")
    ax.fill_between(grid, low, high, color=line.get_color(), alpha=0.2, linewidth=0)


def _mark_empty(ax, what: str) -> None:
    ax.text(0.5, 0.5, f"{what}: not logged", ha="center", va="center", transform=ax.transAxes, color="0.4")


def plot_curves(results: Results, out_png: Path, title: str) -> Path:
    """Training return against env steps per estimator: mean over seeds, 95% CI band."""
    fig, (ax,) = _figure(1)
    drawn = False
    for name, runs in results.items():
        common = _on_common_grid([learning_curve(r) for r in runs])
        if common is not None:
            _band(ax, *common, label=name)
            drawn = True
    if not drawn:
        _mark_empty(ax, "training return")
    ax.set(xlabel="env steps", ylabel="training return (rollout/ep_rew_mean)", title=title)
    if drawn:
        ax.legend(fontsize="small")
    ax.grid(alpha=0.3)
    return _save(fig, out_png)


def _positive(series: Tuple[np.ndarray, np.ndarray], skip: int) -> Tuple[np.ndarray, np.ndarray]:
    x, y = series[0][skip:], series[1][skip:]
    keep = y > 0
    return x[keep], y[keep]


def plot_variance(results: Results, out_png: Path, title: str, skip_updates: int = 0) -> Path:
    """Var(applied gradient) and its ratio to Var(score) per update, log scale: geometric mean over
    seeds with a 95% CI band (bootstrap of the mean log)."""
    fig, axes = _figure(2)
    panels = (("hybrid/var_applied", "Var(applied gradient)"), ("hybrid/variance_ratio_vs_score", "Var(applied) / Var(score), same rollout"))
    for ax, (key, label) in zip(axes, panels):
        drawn = False
        for name, runs in results.items():
            common = _on_common_grid([_positive(update_series(r, key), skip_updates) for r in runs])
            if common is not None:
                _band(ax, *common, label=name, log=True)
                drawn = True
        if drawn:
            ax.set_yscale("log")
            ax.legend(fontsize="small")
        else:
            _mark_empty(ax, label)
        if key.endswith("vs_score") and drawn:
            ax.axhline(1.0, color="0.5", linestyle=":", linewidth=1)
        ax.set(xlabel="env steps (end of the update's rollout)", ylabel=label, title=f"{title}: {label}")
        ax.grid(alpha=0.3, which="both")
    return _save(fig, out_png)


# ------------------------------------------------------------------------------------------------
# one env
# ------------------------------------------------------------------------------------------------


def write_env_report(
    out_dir: Path,
    env_name: str,
    env_id: str,
    results: Results,
    reference: str,
    skip_updates: int = 0,
    total_timesteps: Optional[int] = None,
) -> List[Path]:
    """Write the env's tables and figures (see the module docstring) into ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    per_run = {name: [run_metrics(r, skip_updates) for r in runs] for name, runs in results.items()}
    rows = [estimator_summary(name, metrics, None if name == reference else per_run[reference]) for name, metrics in per_run.items()]
    seeds = sorted({r["spec"]["seed"] for runs in results.values() for r in runs})
    budget = f", {total_timesteps} steps per run" if total_timesteps else ""
    label = env_id if env_name == env_id.replace("/", "-") else f"{env_id} ({env_name})"
    title = f"Ablation on {label}: {len(seeds)} seeds{budget}"
    md = out_dir / f"table_{env_name}.md"
    md.write_text(markdown_table(title, rows, reference) + "\n", encoding="utf-8")
    table_csv = _write_csv(out_dir / f"table_{env_name}.csv", _csv_rows(env_name, env_id, rows, reference))
    run_rows = [
        {"env": env_name, "estimator": name, "seed": r["spec"]["seed"], "key": r["key"], **m}
        for name, runs in results.items()
        for r, m in zip(runs, per_run[name])
    ]
    runs_csv = _write_csv(out_dir / f"runs_{env_name}.csv", run_rows)
    curves = plot_curves(results, out_dir / f"curves_{env_name}.png", label)
    variance = plot_variance(results, out_dir / f"variance_{env_name}.png", env_name, skip_updates)
    return [md, table_csv, runs_csv, curves, variance]
