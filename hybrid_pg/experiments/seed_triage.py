"""Does anything a run logs early tell a good seed from a bad one? Seed triage on a finished grid.

The hybrid's seeds spread widely (on Hopper, 1301 to 3622 in final return over 10 seeds), and a user
who sees a run at 100k steps wants to know whether to keep it or fall back to the score-function
estimator. This reads a finished grid (``hybrid-pg ablate``) and asks, for every hybrid cell and seed:

- **what the run logged up to ``early_step``** (the predictors): the medians over its updates of the
  online agreement signals (:mod:`hybrid_pg.online_signals`, the window's direction statistics), of
  the weight, the critic's explained variance, the applied gradient's variance over the score
  gradient's and the share of pathwise terms the trust region dropped; its policy std and its
  training return at ``early_step``;
- **how it ended** (the outcomes): its final deterministic return, and that minus the floor cell's
  (REINFORCE with the same update) on the same seed: did this seed beat its own fallback?

Tasks differ in scale and cells in level, so raw values pooled over them would mostly rank the groups.
Every correlation is therefore a rank correlation *within* one (task, cell) group (Spearman), averaged
over the groups with at least :data:`MIN_RUNS` runs, weighted by their runs. The "beyond the early
return" column asks what a signal adds to the obvious predictor: both ranks are regressed on the
early training return's rank within the group and the residuals correlated (a partial rank
correlation).

The CIs come from a bootstrap that resamples *seeds* within each task and keeps every cell of a drawn
seed together (the cells of one seed share their floor twin, so they are not independent in the
second outcome). With about ten runs per group and a dozen predictors read at once, about one 95% CI
in twenty excludes 0 by chance: a lone CI that barely excludes 0 is a lead, not a finding.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
from scipy.stats import rankdata

from hybrid_pg.experiments.aggregate import cluster_bootstrap
from hybrid_pg.experiments.results import learning_curve, policy_std, run_seed, update_series, variance_ratio_key
from hybrid_pg.online_signals import SIGNAL_KEYS, WINDOW_SIGNAL_KEYS

__all__ = [
    "EARLY_STEP",
    "MIN_RUNS",
    "OUTCOMES",
    "PREDICTORS",
    "early_median",
    "markdown",
    "pooled_rank_correlation",
    "rank_correlation",
    "seed_bootstrap",
    "triage_records",
    "write",
    "write_report",
]

#: the budget at which the predictors are read (the floor test's budget in the 10-seed benchmark)
EARLY_STEP = 100_000
#: groups with fewer runs than this (finite on both sides) are left out of the pooled correlation
MIN_RUNS = 5
#: the predictor every other one is judged beyond
BASELINE = "return_early"

Reader = Callable[[Mapping[str, Any], float, int], float]


def early_median(result: Mapping[str, Any], key: str, early_step: float, skip: int = 0) -> float:
    """Median of a per-update key over the updates whose rollout ended at or before ``early_step``,
    after the run's first ``skip`` logged values (the warm-up); NaN where none."""
    steps, values = update_series(result, key)
    values = values[skip:][steps[skip:] <= early_step]
    return float(np.median(values)) if values.size else math.nan


def _median_of(key: str) -> Reader:
    return lambda result, early, skip: early_median(result, key, early, skip)


def _variance_ratio(result: Mapping[str, Any], early: float, skip: int) -> float:
    return early_median(result, variance_ratio_key(dict(result)), early, skip)


def _return_early(result: Mapping[str, Any], early: float, skip: int) -> float:
    steps, values = learning_curve(dict(result))
    values = values[steps <= early]
    return float(values[-1]) if values.size else math.nan


def _std_early(result: Mapping[str, Any], early: float, skip: int) -> float:
    return policy_std(result, early)


#: name -> (title, reader(result, early_step, skip_updates)); the names are the CSV columns
PREDICTORS: Dict[str, Tuple[str, Reader]] = {
    BASELINE: ("training return at the early step", _return_early),
    "std_early": ("policy std at the early step", _std_early),
    "lambda": ("`hybrid/lambda`", _median_of("hybrid/lambda")),
    "explained_variance": ("`train/explained_variance`", _median_of("train/explained_variance")),
    "variance_ratio": ("`hybrid/variance_ratio_vs_reinforce`", _variance_ratio),
    "pathwise_dropped_fraction": ("`hybrid/pathwise_dropped_fraction`", _median_of("hybrid/pathwise_dropped_fraction")),
    **{key: (f"`hybrid/{key}`", _median_of(f"hybrid/{key}")) for key in (*SIGNAL_KEYS, *WINDOW_SIGNAL_KEYS)},
}

#: name -> title
OUTCOMES: Dict[str, str] = {
    "final": "final return",
    "final_vs_floor": "final return minus the floor's (same seed)",
}


def triage_records(
    per_env: Mapping[str, Mapping[str, Sequence[Mapping[str, Any]]]],
    cells: Sequence[str],
    floor: Optional[str],
    early_step: float = EARLY_STEP,
    skip_updates: int = 0,
) -> List[Dict[str, Any]]:
    """One record per run of ``cells``: env, cell, seed, every predictor and both outcomes (NaN where
    a run did not log a key, or where the floor cell has no run of that seed).

    ``per_env``: env -> cell -> finished runs, as :func:`hybrid_pg.experiments.ablate.finished_results`
    returns them."""
    records: List[Dict[str, Any]] = []
    for env, by_cell in per_env.items():
        floor_final = {run_seed(r): float(r["final_return"]) for r in by_cell.get(floor, [])} if floor else {}
        for cell in cells:
            for result in by_cell.get(cell, []):
                seed = run_seed(result)
                record: Dict[str, Any] = {"env": env, "cell": cell, "seed": seed}
                for name, (_, read) in PREDICTORS.items():
                    record[name] = read(result, early_step, skip_updates)
                record["final"] = float(result["final_return"])
                record["final_vs_floor"] = record["final"] - floor_final.get(seed, math.nan)
                records.append(record)
    return records


def rank_correlation(x: Sequence[float], y: Sequence[float], given: Optional[Sequence[float]] = None) -> Tuple[float, int]:
    """(Spearman's rho, pairs) of the finite pairs; with ``given``, the partial rank correlation: the
    ranks of ``x`` and ``y`` each regressed on the ranks of ``given`` (least squares) and the
    residuals correlated. NaN below :data:`MIN_RUNS` pairs or where a side has no spread left."""
    columns = [np.asarray(x, dtype=float), np.asarray(y, dtype=float)]
    if given is not None:
        columns.append(np.asarray(given, dtype=float))
    keep = np.all([np.isfinite(c) for c in columns], axis=0)
    n = int(keep.sum())
    if n < MIN_RUNS:
        return math.nan, n
    ranks = [rankdata(c[keep]) - (n + 1) / 2.0 for c in columns]  # centred ranks (ties: average)
    if given is not None:
        z = ranks[2]
        zz = float(z @ z)
        if zz <= 0.0:
            return math.nan, n
        ranks = [r - (float(r @ z) / zz) * z for r in ranks[:2]]
    a, b = ranks[0], ranks[1]
    scale = math.sqrt(float(a @ a) * float(b @ b))
    if scale <= 1e-12 * max(1.0, n**3):  # a side without spread (a constant, or all of it explained by `given`)
        return math.nan, n
    return float(a @ b) / scale, n


def pooled_rank_correlation(records: Sequence[Mapping[str, Any]], x: str, y: str, given: Optional[str] = None) -> Tuple[float, int, int]:
    """(rho, runs, groups): the within-group rank correlations of ``x`` and ``y`` (groups: env and
    cell), averaged over the groups with enough runs, weighted by their runs."""
    groups: Dict[Tuple[str, str], List[Mapping[str, Any]]] = {}
    for r in records:
        groups.setdefault((r["env"], r["cell"]), []).append(r)
    total, weight, used = 0.0, 0, 0
    for members in groups.values():
        rho, n = rank_correlation([m[x] for m in members], [m[y] for m in members], [m[given] for m in members] if given else None)
        if math.isfinite(rho):
            total, weight, used = total + rho * n, weight + n, used + 1
    return (total / weight if weight else math.nan), weight, used


def seed_bootstrap(
    records: Sequence[Mapping[str, Any]],
    x: str,
    y: str,
    given: Optional[str] = None,
    resamples: int = 2000,
    seed: int = 0,
) -> Tuple[float, float, float, int, int]:
    """(rho, 95% CI low, high, runs, groups) of :func:`pooled_rank_correlation`, the percentile CI
    from resampling seeds with replacement within each env, every cell of a drawn seed together."""
    rho, runs, groups = pooled_rank_correlation(records, x, y, given)
    if not math.isfinite(rho):
        return rho, math.nan, math.nan, runs, groups
    by_env_seed: Dict[str, Dict[int, List[Mapping[str, Any]]]] = {}
    for r in records:
        by_env_seed.setdefault(r["env"], {}).setdefault(int(r["seed"]), []).append(r)
    draws = cluster_bootstrap(
        [[seeds[s] for s in sorted(seeds)] for seeds in by_env_seed.values()],
        lambda picked: pooled_rank_correlation(picked, x, y, given)[0],
        resamples,
        np.random.default_rng(seed),
    )
    if draws.size < resamples // 2:  # most resamples lost the groups' spread: no honest interval
        return rho, math.nan, math.nan, runs, groups
    low, high = np.percentile(draws, [2.5, 97.5])
    return rho, float(low), float(high), runs, groups


def _cell(rho: float, low: float, high: float, runs: int, groups: int) -> str:
    if not math.isfinite(rho):
        return "—"
    interval = f" [{low:+.2f}, {high:+.2f}]" if math.isfinite(low) else " [CI n/a]"
    return f"{rho:+.2f}{interval} ({runs} runs, {groups} groups)"


def table(records: Sequence[Mapping[str, Any]], resamples: int = 2000, outcomes: Sequence[str] = tuple(OUTCOMES)) -> List[Dict[str, Any]]:
    """One row per predictor: its pooled rho with each outcome, and beyond the early return."""
    rows = []
    for name, (title, _) in PREDICTORS.items():
        row: Dict[str, Any] = {"predictor": name, "title": title}
        for outcome in outcomes:
            row[outcome] = seed_bootstrap(records, name, outcome, resamples=resamples)
            if name != BASELINE:
                row[f"{outcome}_beyond"] = seed_bootstrap(records, name, outcome, given=BASELINE, resamples=resamples)
        rows.append(row)
    return rows


def _rows_table(rows: Sequence[Mapping[str, Any]], outcomes: Sequence[str]) -> List[str]:
    lines = [
        "| predictor (up to the early step) | "
        + " | ".join(f"{OUTCOMES[o]} | {OUTCOMES[o]}, beyond the early return" for o in outcomes)
        + " |",
        "|" + "---|" * (1 + 2 * len(outcomes)),
    ]
    for row in rows:
        cells = [row["title"]]
        for outcome in outcomes:
            cells.append(_cell(*row[outcome]))
            cells.append(_cell(*row[f"{outcome}_beyond"]) if f"{outcome}_beyond" in row else "(the baseline)")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def markdown(
    records: Sequence[Mapping[str, Any]],
    rows: Sequence[Mapping[str, Any]],
    source: str,
    early_step: float,
    floor: Optional[str],
    control_rows: Sequence[Mapping[str, Any]] = (),
) -> str:
    groups: Dict[Tuple[str, str], List[Mapping[str, Any]]] = {}
    for r in records:
        groups.setdefault((r["env"], r["cell"]), []).append(r)
    early = f"{early_step / 1000:g}k steps"
    lines = [
        f"# Seed triage: does what a run logs by {early} tell how it ends?",
        "",
        f"Grid: `{source}`. Per hybrid cell and seed, the predictors are read from the run's own logs up to {early} "
        f"(medians over its updates after the warm-up; the policy std and training return at {early}); the outcomes are "
        f"its final deterministic return and that minus the {floor or 'floor'} cell's on the same seed. Spearman's rho "
        "within each (task, cell) group, averaged over the groups with at least "
        f"{MIN_RUNS} runs (weighted by runs), with a 95% CI from resampling seeds within each task (every cell of a seed "
        "together). Beyond the early return: the partial rank correlation given the training return at the early step. "
        "Positive: the higher the predictor, the better the seed ends. With this many predictors, about one CI in twenty "
        "excludes 0 by chance.",
        "",
        "## Rank correlation with how the run ends",
        "",
        *_rows_table(rows, tuple(OUTCOMES)),
    ]
    if control_rows:
        lines += [
            "",
            f"## Control: the {floor} cell",
            "",
            f"The same correlations for the {floor} cell's runs (lam = 0: no pathwise term moved these policies; the "
            "signals it logs come from the advantage head it fits beside the update). A predictor that ranks these seeds "
            "as well says how the task's run is going in general, not whether the pathwise term misleads.",
            "",
            *_rows_table(control_rows, ("final",)),
        ]
    lines += [
        "",
        "## Groups",
        "",
        "| task | cell | runs | runs with the online signals | final return: median (range) |",
        "|---|---|---|---|---|",
    ]
    for (env, cell), members in sorted(groups.items()):
        finals = [m["final"] for m in members]
        with_signals = sum(math.isfinite(m["path_score_cos"]) for m in members)
        lines.append(
            f"| {env} | {cell} | {len(members)} | {with_signals} | {np.median(finals):.0f} ({min(finals):.0f} to {max(finals):.0f}) |"
        )
    lines += [""]
    return "\n".join(lines)


def plot(rows: Sequence[Mapping[str, Any]], path: Path) -> None:
    """A forest plot: each predictor's pooled rho with the final return, alone and beyond the early return."""
    import matplotlib.pyplot as plt

    from hybrid_pg.experiments.figure_io import save_figure

    fig, axes = plt.subplots(1, len(OUTCOMES), figsize=(6 * len(OUTCOMES), 0.45 * len(rows) + 1.5), sharey=True)
    labels = [row["title"].strip("`") for row in rows]
    y = np.arange(len(rows))[::-1]
    for ax, (outcome, title) in zip(np.atleast_1d(axes), OUTCOMES.items()):
        for offset, suffix, label in ((0.15, "", "alone"), (-0.15, "_beyond", "beyond the early return")):
            for yi, row in zip(y, rows):
                values = row.get(outcome + suffix)
                if values is None or not math.isfinite(values[0]):
                    continue
                rho, low, high = values[:3]
                ax.errorbar(
                    rho,
                    yi + offset,
                    xerr=[[rho - low], [high - rho]] if math.isfinite(low) else None,
                    fmt="o" if suffix == "" else "s",
                    color="C0" if suffix == "" else "C1",
                    label=label if yi == y[0] or (suffix and yi == y[1]) else None,
                )
        ax.axvline(0.0, color="grey", lw=0.8)
        ax.set_xlim(-1, 1)
        ax.set_title(title)
        ax.set_xlabel("Spearman's rho within groups (95% CI)")
        ax.grid(alpha=0.3)
    axes_list = np.atleast_1d(axes)
    axes_list[0].set_yticks(y)
    axes_list[0].set_yticklabels(labels, fontsize=8)
    handles, names = axes_list[0].get_legend_handles_labels()
    unique = dict(zip(names, handles))
    axes_list[0].legend(unique.values(), unique.keys(), fontsize=8, loc="lower left")
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


def write_csv(records: Sequence[Mapping[str, Any]], path: Path) -> None:
    from hybrid_pg.experiments.run_files import write_atomically

    columns = ["env", "cell", "seed", *PREDICTORS, *OUTCOMES]
    lines = [",".join(columns)]
    for r in records:
        lines.append(",".join(_csv_value(r[c]) for c in columns))
    write_atomically(path, "\n".join(lines) + "\n")


def _csv_value(value: Any) -> str:
    if isinstance(value, float):
        return "" if not math.isfinite(value) else f"{value:.6g}"
    return str(value)


def write_report(
    per_env: Mapping[str, Mapping[str, Sequence[Mapping[str, Any]]]],
    cells: Sequence[str],
    floor: Optional[str],
    out: Path,
    source: str,
    early_step: float = EARLY_STEP,
    skip_updates: int = 0,
    resamples: int = 2000,
) -> List[Path]:
    """Write ``out``.md, .csv (one row per run, the floor's runs last) and .png from finished runs
    (``per_env``: env -> cell -> runs); returns their paths."""
    from hybrid_pg.experiments.run_files import write_atomically

    records = triage_records(per_env, cells, floor, early_step, skip_updates)
    if not records:
        raise ValueError(f"{source}: no finished runs of the hybrid cells ({', '.join(cells)})")
    rows = table(records, resamples=resamples)
    control = triage_records(per_env, [floor], None, early_step, skip_updates) if floor else []
    control_rows = table(control, resamples=resamples, outcomes=("final",)) if control else []
    md, csv_path, png = out.with_suffix(".md"), out.with_suffix(".csv"), out.with_suffix(".png")
    md.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(md, markdown(records, rows, source, early_step, floor, control_rows))
    write_csv([*records, *control], csv_path)
    plot(rows, png)
    return [md, csv_path, png]


def write(config: Path, out: Path, runs_dir: Optional[Path] = None, early_step: float = EARLY_STEP, resamples: int = 2000) -> List[Path]:
    """Read the finished runs of the grid ``config`` (every estimator but its reference, floor and
    baseline is a hybrid cell) and write the report (:func:`write_report`)."""
    from hybrid_pg.experiments.ablate import finished_results, load_ablation, runs_folder

    ablation = load_ablation(config)
    runs_dir = runs_folder(ablation, runs_dir)
    if not runs_dir.is_dir():
        raise FileNotFoundError(f"{runs_dir}: no such runs folder (run the grid first: hybrid-pg ablate {config})")
    floor = ablation.baseline.floor if ablation.baseline is not None else None
    excluded = {ablation.reference, floor, ablation.baseline.name if ablation.baseline is not None else None}
    cells = [e.name for e in ablation.estimators if e.name not in excluded]
    per_env = finished_results(ablation, runs_dir)
    return write_report(per_env, cells, floor, out, f"{config}", early_step, ablation.skip_updates, resamples)
