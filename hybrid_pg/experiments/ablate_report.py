"""The report of an ablation (:mod:`hybrid_pg.experiments.ablate`), one set of files per environment.

Per run (from what the run engine wrote, :func:`hybrid_pg.experiments.runner.load_result`):

* ``final_return``: mean return of the deterministic evaluation episodes after training;
* ``auc``: area under the training curve (``rollout/ep_rew_mean`` after each rollout, against env
  steps) divided by the steps it spans, i.e. the curve's average height in return units;
* ``var_applied``: median over updates of ``hybrid/var_applied``, the per-sample variance of the
  gradient the update applied;
* ``variance_ratio``: median over updates of ``hybrid/variance_ratio_vs_reinforce``, that variance over
  the score-function (REINFORCE) gradient's variance on the same rollout (1 for reinforce itself).

Beside them, per estimator, the policy's standard deviation (``train/std``) at 100k steps and at the
end of training, each the median over seeds (:func:`hybrid_pg.experiments.results.policy_std_summary`;
the end only where the budget is 100k steps or less): a policy whose std collapses early stops
exploring.

(The variance medians leave out the first ``skip_updates`` updates.) Per estimator, every metric is
aggregated over seeds as the mean with a 95% bootstrap CI (the runs of the env form the single
stratum of :func:`hybrid_pg.experiments.aggregate.stratified_bootstrap_ci`; 2000 resamples, fixed
generator seed, so reports are reproducible), and the IQM with its CI where it is not the mean by
definition (4 runs or more; "—" below). Each estimator is compared with the reference (default
reinforce) per metric by :func:`hybrid_pg.experiments.aggregate.compare`: runs with the same seed
share the env's random numbers, so when both estimators ran the same seeds the comparison is
*paired* (mean of the per-seed differences, paired bootstrap CI, Wilcoxon signed-rank p), else
unpaired (difference of means, independent bootstrap, Welch's p). A difference is called
significant only when the CI excludes 0 *and* p < 0.05 *and* each estimator has at least
:data:`~hybrid_pg.experiments.aggregate.MIN_RUNS_FOR_SIGNIFICANCE` (5) runs; with fewer the verdict
is "too few runs" (see that constant for why).

Across envs (:func:`write_summary`, files ``summary.md``, ``summary.csv``,
``performance_profile.png``): the final return normalised per env by min-max over every run of
every estimator on that env (0 = the worst run there, 1 = the best; relative to the estimators
compared), then per estimator the mean and IQM of the normalised scores (stratified bootstrap, envs
as strata), the probability of improvement over the reference (P(a run of the estimator beats a
run of the reference on the same env), averaged over envs; stratified bootstrap CI; needs no
normalisation), and the performance profile (fraction of runs with normalised score above tau).
rliable computes the last two when it imports (else the numpy fallback of
:mod:`hybrid_pg.experiments.aggregate`).

Files written into the output folder, ``<env>`` being the env entry's name:

* ``table_<env>.md``: the aggregates and the comparisons, with this legend;
* ``table_<env>.csv``: the same numbers, one row per estimator (column names below; the policy std
  as ``std_at_100000_median``, ``std_at_100000_n``, ``std_end_median``, ``std_end_n``);
* ``contrasts_<env>.csv`` (where the file lists ``contrasts``): each pair of estimators compared with
  each other on the seeds both ran, paired by seed, one row per metric (``diff`` = first - second);
  the same table closes ``table_<env>.md``;
* ``runs_<env>.csv``: the per-run metrics (one row per estimator and seed; the policy std as
  ``std_at_100000`` and ``std_end``);
* ``curves_<env>.png``: training return against env steps, mean over seeds with a 95% CI band;
* ``variance_<env>.png``: Var(applied) and Var(applied)/Var(score) over training (log scale),
  geometric mean over seeds with a 95% CI band;
* ``lambda_<env>.png``: the weight applied per update over training, mean over seeds with a 95% CI
  band (estimators whose weight is identically 0 are left out).
"""

from __future__ import annotations

import csv
import dataclasses
import math
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from hybrid_pg.experiments.aggregate import (
    MIN_RUNS_FOR_SIGNIFICANCE,
    Comparison,
    Interval,
    compare,
    curve_mean_ci,
    iqm,
    iqm_is_informative,
    mean,
    normalise_min_max,
    performance_profile,
    probability_of_improvement,
    stratified_bootstrap_ci,
)
from hybrid_pg.experiments.figure_io import figure_path, legend_outside, new_figure, readable_log_ticks, save_figure
from hybrid_pg.experiments.results import (
    SIGNAL_REPORT_KEYS,
    STD_EARLY_STEP,
    VARIANCE_RATIO_KEYS,
    PolicyStd,
    learning_curve,
    median_over_updates,
    normalized_auc,
    policy_std,
    policy_std_note,
    policy_std_summary,
    policy_std_titles,
    signal_summary,
    update_series,
    variance_ratio_key,
)

__all__ = [
    "METRICS",
    "Contrast",
    "Metric",
    "contrast",
    "estimator_summary",
    "markdown_table",
    "run_metrics",
    "write_env_report",
    "write_summary",
]

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
        "variance_ratio": median_over_updates(result, variance_ratio_key(result), skip_updates),
    }


def _finite(values: Sequence[float], seeds: Optional[Sequence[int]] = None) -> Tuple[np.ndarray, Optional[List[int]]]:
    """The finite values, and the seeds of those values (None if ``seeds`` is None)."""
    arr = np.asarray(values, dtype=float)
    keep = np.isfinite(arr)
    return arr[keep], None if seeds is None else [s for s, k in zip(seeds, keep) if k]


def _nan_interval() -> Interval:
    return Interval(math.nan, math.nan, math.nan)


def _aggregate(values: np.ndarray) -> Tuple[Interval, Interval]:
    """Mean and IQM with CIs; the IQM is NaN where it would only repeat the mean (n < 4)."""
    if values.size == 0:
        return _nan_interval(), _nan_interval()
    iqm_ci = stratified_bootstrap_ci(values, iqm) if iqm_is_informative(values.size) else _nan_interval()
    return stratified_bootstrap_ci(values, mean), iqm_ci


def estimator_summary(
    name: str,
    per_run: Sequence[Dict[str, float]],
    reference_runs: Optional[Sequence[Dict[str, float]]],
    seeds: Optional[Sequence[int]] = None,
    reference_seeds: Optional[Sequence[int]] = None,
) -> Dict[str, Any]:
    """One row of the table: per metric n, mean and IQM with CIs, and (unless ``reference_runs``
    is None) the :class:`~hybrid_pg.experiments.aggregate.Comparison` with the reference under
    ``"comparison"`` (paired by seed when both seed lists are given and match)."""
    row: Dict[str, Any] = {"estimator": name, "runs": len(per_run)}
    for metric in METRICS:
        values, kept = _finite([r[metric.key] for r in per_run], seeds)
        mean_ci, iqm_ci = _aggregate(values)
        row[metric.key] = {"n": int(values.size), "mean": mean_ci, "iqm": iqm_ci}
        if reference_runs is None:
            continue
        ref, ref_kept = _finite([r[metric.key] for r in reference_runs], reference_seeds)
        row[metric.key]["comparison"] = compare(values, ref, kept, ref_kept) if values.size and ref.size else None
    return row


def _verdict(metric: Metric, comparison: Optional[Comparison], reference: str) -> str:
    if comparison is None:
        return "n/a"
    if comparison.verdict == "too few runs":
        return f"too few runs (n = {comparison.n_a} and {comparison.n_b}; a verdict needs >= {MIN_RUNS_FOR_SIGNIFICANCE} each)"
    if not comparison.significant:
        if comparison.paired and comparison.n_a <= 5:
            # the signed-rank test of n pairs cannot go below p = 2 / 2^n: 0.0625 at n = 5
            return "no significant difference (a paired test needs >= 6 seeds to reach p < 0.05)"
        return "no significant difference"
    higher = comparison.diff.point > 0
    better = higher == metric.higher_is_better
    return f"{'higher' if higher else 'lower'} than {reference} ({'better' if better else 'worse'}), significant"


def _ci_text(interval: Interval, fmt: str, missing: str = "n/a") -> str:
    if math.isnan(interval.point):
        return missing
    return f"{fmt.format(interval.point)} [{fmt.format(interval.low)}, {fmt.format(interval.high)}]"


def _p_text(comparison: Comparison) -> str:
    name = "Wilcoxon" if comparison.test == "wilcoxon" else "Welch"
    return f"{name} n/a" if math.isnan(comparison.p_value) else f"{name} {comparison.p_value:.3g}"


def _policy_std_section(rows: Sequence[Dict[str, Any]]) -> List[str]:
    """The table of the rows' ``policy_std`` (:class:`~hybrid_pg.experiments.results.PolicyStd`);
    nothing where no row has one."""
    stds: List[Tuple[str, PolicyStd]] = [(row["estimator"], row["policy_std"]) for row in rows if row.get("policy_std") is not None]
    if not stds:
        return []
    early = any(std.at_step is not None for _, std in stds)
    header = ["estimator", *policy_std_titles(early)]
    lines = ["", "## The policy's standard deviation", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join([name, *std.texts()]) + " |" for name, std in stds]
    return lines + ["", policy_std_note(early)]


def _signal_section(rows: Sequence[Dict[str, Any]]) -> List[str]:
    """The table of the rows' ``signals`` (key -> :class:`~hybrid_pg.experiments.results.SeedMedian`);
    nothing where no run of any row logged one (grids trained before the signals existed)."""
    with_signals = [(row["estimator"], row["signals"]) for row in rows if any(m.n for m in row.get("signals", {}).values())]
    if not with_signals:
        return []
    keys = list(with_signals[0][1])
    header = "| estimator | " + " | ".join(f"`{k}`" for k in keys) + " |"
    lines = ["", "## Online agreement signals", "", header, "|" + "---|" * (1 + len(keys))]
    lines += ["| " + " | ".join([name, *(signals[k].text() for k in keys)]) + " |" for name, signals in with_signals]
    return lines + [
        "",
        "Per run the median over its updates, then the median over the seeds that logged it (n). How well each "
        "follows the true gradient is measured by the gradient audit (docs/benchmarks/gradient_audit.md).",
    ]


def _comparison_cells(metric: Metric, c: Optional[Comparison], against: str) -> List[str]:
    """The cells of a comparison table's row: paired?, difference [CI], test p, verdict."""
    if c is None:
        return ["", "n/a", "n/a", "n/a"]
    return ["yes" if c.paired else "no", _ci_text(c.diff, metric.fmt), _p_text(c), _verdict(metric, c, against)]


@dataclasses.dataclass(frozen=True)
class Contrast:
    """Two estimators of one env compared with each other on the seeds both ran (:func:`contrast`)."""

    estimator: str
    against: str
    seeds: Tuple[int, ...]
    #: metric key -> the paired comparison (None where a side has no finite value on those seeds)
    comparisons: Mapping[str, Optional[Comparison]]


def contrast(
    estimator: str, against: str, per_run: Mapping[str, Sequence[Dict[str, float]]], seeds_of: Mapping[str, Sequence[int]]
) -> Contrast:
    """``estimator`` against ``against``, every metric paired by seed on the seeds both ran (a
    candidate's first seeds can be judged against the default while its grid fills in: an unpaired
    comparison would throw away the seed-to-seed correlation that makes a paired one sharp)."""
    common = sorted(set(seeds_of[estimator]) & set(seeds_of[against]))
    comparisons: Dict[str, Optional[Comparison]] = {}
    for m in METRICS:
        mine, theirs = ({s: r[m.key] for s, r in zip(seeds_of[name], per_run[name])} for name in (estimator, against))
        keep = [s for s in common if math.isfinite(mine[s]) and math.isfinite(theirs[s])]
        comparisons[m.key] = compare([mine[s] for s in keep], [theirs[s] for s in keep], keep, keep) if keep else None
    return Contrast(estimator, against, tuple(common), comparisons)


def _contrast_section(contrasts: Sequence[Contrast]) -> List[str]:
    """The table of the env's contrasts (nothing where there are none)."""
    if not contrasts:
        return []
    lines = [
        "",
        "## Estimators against each other",
        "",
        "Each pair on the seeds both ran, paired by seed (as above: paired bootstrap CI, Wilcoxon's signed-rank p; the "
        "same rule for **significant**). The difference is the first estimator minus the second.",
        "",
        "| estimator | against | seeds | metric | difference [95% CI] | test p | verdict |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in contrasts:
        for m in METRICS:
            _, *cells = _comparison_cells(m, c.comparisons[m.key], c.against)  # paired: always, here
            lines.append("| " + " | ".join([c.estimator, c.against, str(len(c.seeds)), m.title, *cells]) + " |")
    return lines


def markdown_table(title: str, rows: Sequence[Dict[str, Any]], reference: str, contrasts: Sequence[Contrast] = ()) -> str:
    """The env's markdown report: aggregates, the policy std (rows with a ``policy_std``), then
    comparisons with ``reference`` and the ``contrasts``, then a legend."""
    lines = [
        f"# {title}",
        "",
        "Aggregates over seeds (point estimate [95% bootstrap CI]; IQM — where it would equal the mean: fewer than 4 runs).",
        "",
    ]
    header = ["estimator", "runs"] + [f"{m.title}: {stat}" for m in METRICS for stat in ("mean", "IQM")]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [row["estimator"], str(row["runs"])]
        for m in METRICS:
            cells += [_ci_text(row[m.key]["mean"], m.fmt), _ci_text(row[m.key]["iqm"], m.fmt, missing="—" if row[m.key]["n"] else "n/a")]
        lines.append("| " + " | ".join(cells) + " |")
    lines += _policy_std_section(rows)
    lines += _signal_section(rows)
    lines += [
        "",
        f"## Compared with {reference}",
        "",
        f"Paired by seed where both ran the same seeds: mean of the per-seed differences (estimator - {reference}) with a "
        "paired 95% bootstrap CI and Wilcoxon's signed-rank p; otherwise the difference of means, independent bootstrap, "
        f"Welch's p. **Significant** only when the CI excludes 0, p < 0.05 and both have >= {MIN_RUNS_FOR_SIGNIFICANCE} runs "
        "(below that: too few runs, whatever the numbers say). Wilcoxon's signed-rank p of n pairs cannot go below "
        "2 / 2^n (0.0625 for 5 seeds), so a paired verdict needs 6 seeds or more.",
        "",
        "| estimator | metric | paired | difference [95% CI] | test p | verdict |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        if "comparison" not in row[METRICS[0].key]:
            continue  # the reference itself
        for m in METRICS:
            cells = [row["estimator"], m.title, *_comparison_cells(m, row[m.key]["comparison"], reference)]
            lines.append("| " + " | ".join(cells) + " |")
    lines += _contrast_section(contrasts)
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
        flat: Dict[str, Any] = {
            "env": env_name,
            "env_id": env_id,
            "estimator": row["estimator"],
            "runs": row["runs"],
            "reference": reference,
        }
        for m in METRICS:
            cell = row[m.key]
            flat[f"{m.key}_n"] = cell["n"]
            for stat in ("mean", "iqm"):
                values = dataclasses.astuple(cell[stat])
                if math.isnan(values[0]):
                    values = ("", "", "")  # not computed (no runs, or the IQM would repeat the mean)
                flat[f"{m.key}_{stat}"], flat[f"{m.key}_{stat}_lo"], flat[f"{m.key}_{stat}_hi"] = values
            c = cell.get("comparison")  # absent for the reference itself, None without data
            flat[f"{m.key}_diff_vs_ref"] = c.diff.point if c else ""
            flat[f"{m.key}_diff_lo"] = c.diff.low if c else ""
            flat[f"{m.key}_diff_hi"] = c.diff.high if c else ""
            flat[f"{m.key}_paired"] = int(c.paired) if c else ""
            flat[f"{m.key}_test"] = c.test if c else ""
            flat[f"{m.key}_p"] = c.p_value if c else ""
            flat[f"{m.key}_verdict"] = c.verdict if c else ""
            flat[f"{m.key}_significant"] = int(c.significant) if c else ""
        if row.get("policy_std") is not None:
            flat.update(row["policy_std"].columns())
        out.append(flat)
    return out


def _contrast_csv_rows(env_name: str, contrasts: Sequence[Contrast]) -> List[Dict[str, Any]]:
    """One row per contrast and metric (``diff`` is estimator - against, paired on ``seeds``)."""
    out = []
    for c in contrasts:
        for m in METRICS:
            cmp = c.comparisons[m.key]
            out.append(
                {
                    "env": env_name,
                    "estimator": c.estimator,
                    "against": c.against,
                    "seeds": " ".join(map(str, c.seeds)),
                    "metric": m.key,
                    "diff": cmp.diff.point if cmp else "",
                    "diff_lo": cmp.diff.low if cmp else "",
                    "diff_hi": cmp.diff.high if cmp else "",
                    "test": cmp.test if cmp else "",
                    "p": cmp.p_value if cmp else "",
                    "verdict": cmp.verdict if cmp else "",
                    "significant": int(cmp.significant) if cmp else "",
                }
            )
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


def _figure(n_axes: int, width: float = 6.0):
    fig = new_figure(width * n_axes + 2.2, 4.4)  # + the legend column
    return fig, [fig.add_subplot(1, n_axes, i + 1) for i in range(n_axes)]


#: (linestyle, linewidth) per estimator, in order: the first is solid and widest and lies
#: underneath, later ones are dashed/dotted, thinner and on top, so coinciding curves (the first
#: updates, where every estimator is still at lam = 0) all stay visible
_STYLES = (("-", 2.6), ("--", 1.9), (":", 1.9), ("-.", 1.6), ((0, (5, 1, 1, 1)), 1.4), ((0, (1, 3)), 1.4))

#: what the lines and the shading of the curve figures are (their legend's title)
MEAN_BAND = "estimator (runs)\nline: mean over seeds\nshaded: 95% bootstrap CI"
GEOMETRIC_BAND = "estimator (runs)\nline: geometric mean over seeds\nshaded: 95% bootstrap CI"


def _band(ax, grid: np.ndarray, curves: np.ndarray, label: str, log: bool = False, index: int = 0) -> None:
    values = np.log(curves) if log else curves
    centre, low, high = curve_mean_ci(values)
    if log:
        centre, low, high = np.exp(centre), np.exp(low), np.exp(high)
    style, width = _STYLES[index % len(_STYLES)]
    (line,) = ax.plot(grid, centre, label=f"{label} ({curves.shape[0]})", linestyle=style, linewidth=width, zorder=3 + index)
    ax.fill_between(grid, low, high, color=line.get_color(), alpha=0.15, linewidth=0, zorder=1)


def _mark_empty(ax, what: str) -> None:
    ax.text(0.5, 0.5, f"{what}: not logged", ha="center", va="center", transform=ax.transAxes, color="0.4")


def plot_curves(results: Results, out_png: Path, title: str) -> Path:
    """Training return against env steps per estimator: mean over seeds, 95% CI band."""
    fig, (ax,) = _figure(1)
    drawn = False
    for i, (name, runs) in enumerate(results.items()):
        common = _on_common_grid([learning_curve(r) for r in runs])
        if common is not None:
            _band(ax, *common, label=name, index=i)
            drawn = True
    if not drawn:
        _mark_empty(ax, "training return")
    ax.set(xlabel="environment steps", ylabel="training return\n(mean of the last 100 episodes)", title=f"{title}: learning curves")
    if drawn:
        legend_outside(ax, title=MEAN_BAND)
    ax.grid(alpha=0.3)
    return save_figure(fig, out_png)


def _positive(series: Tuple[np.ndarray, np.ndarray], skip: int) -> Tuple[np.ndarray, np.ndarray]:
    x, y = series[0][skip:], series[1][skip:]
    keep = y > 0
    return x[keep], y[keep]


def plot_variance(results: Results, out_png: Path, title: str, skip_updates: int = 0) -> Path:
    """Var(applied gradient) and its ratio to Var(score) per update, log scale: geometric mean over
    seeds with a 95% CI band (bootstrap of the mean log). One legend, beside the right panel."""
    fig, axes = _figure(2, width=5.2)
    panels = (
        ("hybrid/var_applied", "gradient variance", "Var(applied gradient)\n(log scale)"),
        (VARIANCE_RATIO_KEYS[0], "variance ratio to REINFORCE, same rollout", "Var(applied) / Var(score gradient)\n(log scale)"),
    )
    legend_from = None
    for ax, (key, what, ylabel) in zip(axes, panels):
        drawn = False
        for i, (name, runs) in enumerate(results.items()):
            # runs logged before the ratio's rename hold it under its old name
            keys = [variance_ratio_key(r) if key == VARIANCE_RATIO_KEYS[0] else key for r in runs]
            common = _on_common_grid([_positive(update_series(r, k), skip_updates) for r, k in zip(runs, keys)])
            if common is not None:
                _band(ax, *common, label=name, log=True, index=i)
                drawn = True
        if drawn:
            ax.set_yscale("log")
            low, high = ax.get_ylim()
            readable_log_ticks(ax, low, high)
            legend_from = legend_from or ax
        else:
            _mark_empty(ax, what)
        if key == VARIANCE_RATIO_KEYS[0] and drawn:
            ax.axhline(1.0, color="0.5", linestyle=":", linewidth=1)
        ax.set(xlabel="environment steps (end of the update's rollout)", ylabel=ylabel, title=what)
        ax.grid(alpha=0.3, which="both")
    if legend_from is not None:
        legend_outside(axes[-1], legend_from.get_legend_handles_labels()[0], title=GEOMETRIC_BAND)
    fig.suptitle(title, fontsize="large")
    return save_figure(fig, out_png)


def plot_lambda(results: Results, out_png: Path, title: str) -> Path:
    """The weight applied per update (``hybrid/lambda``) against env steps: mean over seeds with a
    95% CI band, for every estimator whose weight is not identically 0 (REINFORCE's is)."""
    fig, (ax,) = _figure(1)
    drawn = False
    for i, (name, runs) in enumerate(results.items()):
        common = _on_common_grid([update_series(r, "hybrid/lambda") for r in runs])
        if common is not None and np.any(common[1] != 0.0):
            _band(ax, *common, label=name, index=i)
            drawn = True
    if drawn:
        legend_outside(ax, title=MEAN_BAND)
        ax.set_ylim(-0.02, 1.02)
    else:
        _mark_empty(ax, "the weight λ")
    ax.set(
        xlabel="environment steps (end of the update's rollout)",
        ylabel="λ applied\n(weight on the pathwise gradient)",
        title=f"{title}: the weight over training",
    )
    ax.grid(alpha=0.3)
    return save_figure(fig, out_png)


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
    figure_format: str = "png",
    contrasts: Sequence[Tuple[str, str]] = (),
) -> List[Path]:
    """Write the env's tables and figures (see the module docstring) into ``out_dir``; the figures
    as ``figure_format`` (png, pdf or svg). ``contrasts``: (estimator, against) pairs also compared
    with each other (:func:`contrast`), those of which both sides have runs on this env."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    per_run = {name: [run_metrics(r, skip_updates) for r in runs] for name, runs in results.items()}
    seeds_of = {name: [r["spec"]["seed"] for r in runs] for name, runs in results.items()}
    rows = [
        estimator_summary(name, metrics, None if name == reference else per_run[reference], seeds_of[name], seeds_of[reference])
        for name, metrics in per_run.items()
    ]
    for row in rows:
        row["policy_std"] = policy_std_summary(results[row["estimator"]], total_timesteps)
        row["signals"] = {key: signal_summary(results[row["estimator"]], key, skip_updates) for key in SIGNAL_REPORT_KEYS}
    seeds = sorted({r["spec"]["seed"] for runs in results.values() for r in runs})
    budget = f", {total_timesteps} steps per run" if total_timesteps else ""
    label = env_id if env_name == env_id.replace("/", "-") else f"{env_id} ({env_name})"
    title = f"Ablation on {label}: {len(seeds)} seeds{budget}"
    md = out_dir / f"table_{env_name}.md"
    pairs = [contrast(a, b, per_run, seeds_of) for a, b in contrasts if per_run.get(a) and per_run.get(b)]
    pairs = [c for c in pairs if c.seeds]
    md.write_text(markdown_table(title, rows, reference, pairs) + "\n", encoding="utf-8")
    table_csv = _write_csv(out_dir / f"table_{env_name}.csv", _csv_rows(env_name, env_id, rows, reference))
    contrast_csv = [_write_csv(out_dir / f"contrasts_{env_name}.csv", _contrast_csv_rows(env_name, pairs))] if pairs else []
    early = any(row["policy_std"].at_step is not None for row in rows)
    run_rows = [
        {
            "env": env_name,
            "estimator": name,
            "seed": r["spec"]["seed"],
            "key": r["key"],
            **m,
            **({f"std_at_{STD_EARLY_STEP}": policy_std(r, STD_EARLY_STEP)} if early else {}),
            "std_end": policy_std(r),
        }
        for name, runs in results.items()
        for r, m in zip(runs, per_run[name])
    ]
    runs_csv = _write_csv(out_dir / f"runs_{env_name}.csv", run_rows)
    curves = plot_curves(results, figure_path(out_dir, f"curves_{env_name}", figure_format), label)
    variance = plot_variance(results, figure_path(out_dir, f"variance_{env_name}", figure_format), label, skip_updates)
    weight = plot_lambda(results, figure_path(out_dir, f"lambda_{env_name}", figure_format), label)
    return [md, table_csv, *contrast_csv, runs_csv, curves, variance, weight]


# ------------------------------------------------------------------------------------------------
# across envs
# ------------------------------------------------------------------------------------------------

#: metrics aggregated across envs (both higher-is-better returns; see the module docstring)
SUMMARY_METRICS = tuple(m for m in METRICS if m.key in ("final_return", "auc"))
PROFILE_TAUS = np.linspace(0.0, 1.0, 51)


def _per_env_scores(per_env: Mapping[str, Results], estimators: Sequence[str], key: str) -> List[List[np.ndarray]]:
    """scores[env][estimator] of one metric, non-finite values dropped."""
    return [[_finite([run_metrics(r)[key] for r in results[name]])[0] for name in estimators] for results in per_env.values()]


def _plot_profiles(profiles: Mapping[str, Tuple[np.ndarray, np.ndarray, np.ndarray]], n_envs: int, out_png: Path) -> Path:
    fig, (ax,) = _figure(1)
    for name, (point, low, high) in profiles.items():
        (line,) = ax.step(PROFILE_TAUS, point, where="post", label=name)
        ax.fill_between(PROFILE_TAUS, low, high, step="post", color=line.get_color(), alpha=0.2, linewidth=0)
    ax.set(
        xlabel="final return τ, normalised per env\n(0: the env's worst run, 1: its best run of any estimator)",
        ylabel="fraction of runs with a\nnormalised final return above τ",
        title=f"Performance profile over {n_envs} env{'s' if n_envs != 1 else ''}",
        ylim=(-0.02, 1.02),
    )
    legend_outside(ax, title="estimator\nshaded: 95% stratified-\nbootstrap CI")
    ax.grid(alpha=0.3)
    return save_figure(fig, out_png)


def write_summary(out_dir: Path, per_env: Mapping[str, Results], reference: str, figure_format: str = "png") -> List[Path]:
    """The cross-env files of the module docstring (``summary.md``, ``summary.csv``,
    ``performance_profile.png``; the figure as ``figure_format``: png, pdf or svg). ``per_env``: env
    name -> estimator name -> that cell's runs."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # a grid filled over several invocations: compare only estimators with runs on every env
    names = list(dict.fromkeys(name for results in per_env.values() for name in results))
    estimators = [name for name in names if all(results.get(name) for results in per_env.values())]
    left_out = [name for name in names if name not in estimators]
    has_reference = reference in estimators
    lines = [
        f"# Across {len(per_env)} env(s): {', '.join(per_env)}",
        "",
        *(
            [f"Not compared across envs (no finished runs on every env, yet or by the file's envs lists): {', '.join(left_out)}.", ""]
            if left_out
            else []
        ),
        "Scores normalised per env by min-max over every run of every estimator on that env (0 = worst run there, "
        "1 = best; relative to the estimators compared). Mean / IQM of the normalised scores over all runs with a 95% "
        "stratified bootstrap CI (envs as strata; IQM — below 4 runs). P(improvement): probability that a run of the "
        f"estimator beats a run of {reference} on the same env (ties half), averaged over envs, with a 95% stratified "
        f"bootstrap CI; a tendency is named only with >= {MIN_RUNS_FOR_SIGNIFICANCE} runs per estimator and env and a CI "
        "that excludes 0.5.",
        "",
        "| metric | estimator | runs | normalised mean [95% CI] | normalised IQM [95% CI] | P(improvement over "
        f"{reference}) [95% CI] | reading |",
        "|---|---|---|---|---|---|---|",
    ]
    csv_rows: List[Dict[str, Any]] = []
    profiles = {}
    for metric in SUMMARY_METRICS:
        raw = _per_env_scores(per_env, estimators, metric.key)
        if any(s.size == 0 for env in raw for s in env):
            continue
        normalised = normalise_min_max(raw)
        ref_index = estimators.index(reference) if has_reference else None
        for j, name in enumerate(estimators):
            strata = [env[j] for env in normalised]
            n_min = min(s.size for s in strata)
            total = sum(s.size for s in strata)
            mean_ci = stratified_bootstrap_ci(strata, mean)
            iqm_ci = stratified_bootstrap_ci(strata, iqm) if iqm_is_informative(total) else _nan_interval()
            poi = (
                None
                if ref_index is None or name == reference
                else probability_of_improvement([env[j] for env in raw], [env[ref_index] for env in raw])
            )
            min_ref = 0 if ref_index is None else min(env[ref_index].size for env in raw)
            if name == reference:
                reading = "reference"
            elif poi is None:
                reading = f"no {reference} runs on every env yet"
            elif min(n_min, min_ref) < MIN_RUNS_FOR_SIGNIFICANCE:
                reading = "too few runs"
            elif poi.excludes(0.5):
                reading = f"{'better' if poi.point > 0.5 else 'worse'} than {reference}"
            else:
                reading = "no clear tendency"
            lines.append(
                f"| {metric.title} | {name} | {total} | {_ci_text(mean_ci, '{:.3f}')} | {_ci_text(iqm_ci, '{:.3f}', missing='—')} | "
                f"{_ci_text(poi, '{:.3f}') if poi else '—'} | {reading} |"
            )
            csv_rows.append(
                {
                    "metric": metric.key,
                    "estimator": name,
                    "runs": total,
                    "norm_mean": mean_ci.point,
                    "norm_mean_lo": mean_ci.low,
                    "norm_mean_hi": mean_ci.high,
                    "norm_iqm": "" if math.isnan(iqm_ci.point) else iqm_ci.point,
                    "norm_iqm_lo": "" if math.isnan(iqm_ci.point) else iqm_ci.low,
                    "norm_iqm_hi": "" if math.isnan(iqm_ci.point) else iqm_ci.high,
                    "poi_vs_ref": poi.point if poi else "",
                    "poi_lo": poi.low if poi else "",
                    "poi_hi": poi.high if poi else "",
                    "reading": reading,
                }
            )
            if metric.key == "final_return":
                profiles[name] = performance_profile(strata, PROFILE_TAUS)
    written = []
    md = out_dir / "summary.md"
    md.write_text("\n".join(lines) + "\n", encoding="utf-8")
    written.append(md)
    if csv_rows:
        written.append(_write_csv(out_dir / "summary.csv", csv_rows))
    if profiles:
        written.append(_plot_profiles(profiles, len(per_env), figure_path(out_dir, "performance_profile", figure_format)))
    return written
