"""The gradient audit's report: every audited checkpoint of one audit folder, in one table, two
figures and a Markdown page (statistics defined in :mod:`hybrid_pg.experiments.gradient_audit`)."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any, Dict, Iterable, List, Literal, Sequence, Tuple

import numpy as np

from hybrid_pg.experiments.gradient_audit import AUDIT_DIR, AuditConfig
from hybrid_pg.online_signals import SIGNAL_KEYS, WINDOW_SIGNAL_KEYS

#: one line style per audited run in the figures (up to four runs)
RUN_LINE_STYLES: Tuple[Literal["-", "--", ":", "-."], ...] = ("-", "--", ":", "-.")
ESTIMATOR_NAMES = {
    "score": "score (GAE advantages)",
    "pathwise": "pathwise (the run's source)",
    "mix": "applied mix (run's lam)",
    "pathwise_mujoco": "pathwise (MuJoCo derivatives)",
}


def read_rows(out: Path) -> List[Dict[str, Any]]:
    rows: List[Dict[str, Any]] = []
    for path in sorted((out / AUDIT_DIR).glob("*.csv")):
        with open(path, newline="") as f:
            for row in csv.DictReader(f):
                record = {k: _num(v) for k, v in row.items()}
                for key in ("cos_single_corrected", "cos_mean_corrected"):  # as corrected_cosine keeps them
                    if is_finite(record.get(key)):
                        record[key] = max(-1.0, min(1.0, float(record[key])))
                rows.append(record)
    rows.sort(key=lambda r: (r["run"], r["seed"], r["step"], r["stratum"], r["group"], r["estimator"]))
    return rows


def _num(value: str) -> Any:
    try:
        number = float(value)
    except ValueError:
        return value
    return int(number) if number.is_integer() and "." not in value and "e" not in value.lower() else number


def is_finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def fmt_number(value: Any, digits: int = 2) -> str:
    if isinstance(value, float):
        return "—" if math.isnan(value) else f"{value:.{digits}f}"
    return str(value)


def select_rows(rows: List[Dict[str, Any]], **where: Any) -> List[Dict[str, Any]]:
    return [r for r in rows if all(r[k] == v for k, v in where.items())]


def write_table(rows: List[Dict[str, Any]], path: Path) -> None:
    """The rows as one CSV; its columns are every row's keys (checkpoints audited by an older version
    lack newer columns, which stay empty for them)."""
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(dict.fromkeys(k for row in rows for k in row)), restval="")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})


def plot_cosines(rows: List[Dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib.pyplot as plt

    runs = sorted({(r["run"], r["seed"]) for r in rows})
    estimators = [e for e in ESTIMATOR_NAMES if any(r["estimator"] == e for r in rows)]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharex=True)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for (run, seed), style in zip(runs, ["-", "--", ":", "-.", (0, (3, 1, 1, 1)), (0, (5, 2)), (0, (1, 1)), (0, (4, 1, 1, 1, 1, 1))] * 4):
        for c, est in enumerate(estimators):
            sel = select_rows(rows, run=run, seed=seed, estimator=est, group="all", stratum="all")
            if not sel:
                continue
            steps = [r["step"] for r in sel]
            axes[0].plot(
                steps, [r["cos_single_corrected"] for r in sel], linestyle=style, color=colours[c % len(colours)], marker="o", ms=3
            )
            axes[1].plot(steps, [r["rel_bias"] for r in sel], linestyle=style, color=colours[c % len(colours)], marker="o", ms=3)
    axes[0].set_ylabel("cosine with the reference\n(one rollout, corrected for reference noise)")
    axes[1].set_ylabel("relative bias ||E g - g_ref|| / ||g_ref||")
    for ax in axes:
        ax.set_xlabel("training step of the checkpoint")
        ax.grid(alpha=0.3)
    axes[0].axhline(0.0, color="grey", lw=0.8)
    handles = [plt.Line2D([], [], color=colours[c % len(colours)], label=ESTIMATOR_NAMES[e]) for c, e in enumerate(estimators)]
    handles += [
        plt.Line2D([], [], color="black", linestyle=s, label=f"{run.split('__')[1]} seed {seed}")
        for (run, seed), s in zip(runs, RUN_LINE_STYLES)
    ]
    fig.legend(handles=handles, loc="lower center", ncol=4, fontsize=8, frameon=False)
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.12, 1, 0.95))
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_bias_variance(rows: List[Dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib.pyplot as plt

    estimators = [e for e in ESTIMATOR_NAMES if any(r["estimator"] == e for r in rows)]
    fig, ax = plt.subplots(figsize=(9, 5))
    plotted = 0
    for est in estimators:
        # a checkpoint whose reference was too noisy to scale by has NaN statistics: left out
        sel = [
            r
            for r in select_rows(rows, estimator=est, group="all", stratum="all")
            if isinstance(r["rel_var"], float) and math.isfinite(r["rel_var"]) and r["rel_var"] > 0 and math.isfinite(r["rel_bias"])
        ]
        plotted += len(sel)
        ax.scatter([r["rel_var"] for r in sel], [r["rel_bias"] ** 2 for r in sel], label=ESTIMATOR_NAMES[est], s=18)
    if plotted:
        ax.set_xscale("log")
        ax.set_yscale("symlog", linthresh=0.01)
        ax.set_ylim(bottom=0.0)  # a squared bias is never negative
    else:
        ax.text(0.5, 0.5, "no checkpoint with a reference precise enough to scale by", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("variance of one rollout's estimate / ||g_ref||^2")
    ax.set_ylabel("squared bias / ||g_ref||^2")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    if plotted:
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside the axes, never over a point
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def summary_table(rows: List[Dict[str, Any]]) -> List[str]:
    """One line per audited checkpoint: the weight the run applied against the MSE-optimal one, each
    estimator's corrected cosine with the reference, and the log_std push's difference from the
    reference (group all, stratum all)."""
    estimators = [e for e in ESTIMATOR_NAMES if e != "mix" and any(r["estimator"] == e for r in rows)]
    pathwise = [e for e in estimators if e.startswith("pathwise")]
    lines = [
        "## Summary",
        "",
        "Per checkpoint: the weight the run applied and the MSE-optimal weight against the reference for each "
        "pathwise estimator; each estimator's cosine with the reference (one rollout, corrected; — where the reference is "
        "too noisy); the log_std push's difference from the reference [95% CI] (negative: pushes sigma down more than the "
        "true gradient).",
        "",
        "| run | seed | step | std | lam applied | "
        + " | ".join(f"lam_mse {e}" for e in pathwise)
        + " | "
        + " | ".join(f"cos {e}" for e in estimators)
        + " | "
        + " | ".join(f"push diff {e}" for e in estimators)
        + " | ref reliability |",
        "|" + "---|" * (5 + len(pathwise) + 2 * len(estimators) + 1),
    ]
    for run, seed, step in sorted({(r["run"], r["seed"], r["step"]) for r in rows}):
        sel = {r["estimator"]: r for r in select_rows(rows, run=run, seed=seed, step=step, group="all", stratum="all")}
        push = {r["estimator"]: r for r in select_rows(rows, run=run, seed=seed, step=step, group="log_std", stratum="all")}
        if not sel:
            continue
        first = next(iter(sel.values()))
        cells = [run.split("__")[-1], str(seed), str(step), fmt_number(first["std"]), fmt_number(first["lam_mean"])]
        cells += [fmt_number(sel[e]["lam_mse"]) if e in sel else "—" for e in pathwise]
        cells += [fmt_number(sel[e]["cos_single_corrected"]) if e in sel else "—" for e in estimators]
        for e in estimators:
            r = push.get(e)
            if r is not None and is_finite(r.get("push_diff")):
                cells.append(f"{fmt_number(r['push_diff'], 3)} [{fmt_number(r['push_diff_lo'], 3)}, {fmt_number(r['push_diff_hi'], 3)}]")
            else:
                cells.append("—")
        cells.append(fmt_number(first["ref_reliability"]))
        lines.append("| " + " | ".join(cells) + " |")
    return lines + [""]


def markdown(rows: List[Dict[str, Any]], config: AuditConfig) -> str:
    ref = config.reference
    lines = [
        f"# Gradient audit: {config.name}",
        "",
        f"Grid `{config.grid}`; checkpoints at {', '.join(str(c) for c in config.checkpoints)} env steps. At each checkpoint: "
        f"{ref.rollouts} independent rollouts of the run's size; on each, every estimator and the Monte Carlo reference at "
        f"{ref.states_per_rollout} of its states ({ref.actions} actions per state, leave-one-out baseline, unbiased geometric tail "
        f"after gamma^H0 <= {ref.tail_weight}). Reward units (VecNormalize's frozen scaling). CIs: bootstrap over rollouts.",
        "",
        "Columns: cos = cosine of one rollout's estimate with the reference, corrected for the reference's noise; "
        "bias = ||E g - g_ref|| / ||g_ref|| [95% CI]; proj = the error along the reference (-1: none of the true direction); "
        "var = one rollout's variance / ||g_ref||^2; lam_mse = the weight minimising the mix's error against the reference; "
        "ref rel = the reference's reliability (expected squared cosine with the truth). Bias CIs: basic bootstrap of the "
        "debiased squared bias, except checkpoints audited before that change (no `bias_ci` column in their CSV: a percentile "
        "bootstrap, which may not cover its point estimate when the reference is noisy).",
        "",
    ]
    lines += summary_table(rows)
    for run, seed in sorted({(r["run"], r["seed"]) for r in rows}):
        lines += [f"## {run}, seed {seed}", ""]
        lines += [
            "| step | std | lam (mean, log_std) | estimator | group | cos | bias [CI] | proj | var | lam_mse | ref rel |",
            "|" + "---|" * 11,
        ]
        for r in select_rows(rows, run=run, seed=seed, stratum="all"):
            lines.append(
                f"| {r['step']} | {fmt_number(r['std'])} | {fmt_number(r['lam_mean'])}, {fmt_number(r['lam_log_std'])} | {r['estimator']} | {r['group']} | "
                f"{fmt_number(r['cos_single_corrected'])} | {fmt_number(r['rel_bias'])} [{fmt_number(r['rel_bias_lo'])}, {fmt_number(r['rel_bias_hi'])}] | "
                f"{fmt_number(r['proj'])} | {fmt_number(r['rel_var'], 1)} | {fmt_number(r['lam_mse'])} | {fmt_number(r['ref_reliability'])} |"
            )
        lines.append("")
        strata = sorted({r["stratum"] for r in select_rows(rows, run=run, seed=seed)} - {"all"})
        if strata:
            lines += [
                "Contacts (group all): relative bias by stratum",
                "",
                "| step | estimator | " + " | ".join(strata) + " |",
                "|" + "---|" * (2 + len(strata)),
            ]
            for step in sorted({r["step"] for r in select_rows(rows, run=run, seed=seed)}):
                for est in ESTIMATOR_NAMES:
                    cells = []
                    for s in strata:
                        sel = select_rows(rows, run=run, seed=seed, step=step, estimator=est, stratum=s, group="all")
                        cells.append(
                            f"{fmt_number(sel[0]['rel_bias'])} [{fmt_number(sel[0]['rel_bias_lo'])}, {fmt_number(sel[0]['rel_bias_hi'])}]"
                            if sel
                            else "—"
                        )
                    if any(c != "—" for c in cells):
                        lines.append(f"| {step} | {est} | " + " | ".join(cells) + " |")
            lines.append("")
        pushes = [r for r in select_rows(rows, run=run, seed=seed, stratum="all", group="log_std") if "push" in r and is_finite(r["push"])]
        if pushes:
            lines += [
                "The push on the policy's spread: the sum of each estimator's log_std components (negative shrinks sigma), "
                "the reference's, and the estimator's difference from the reference [95% t-interval over rollouts]",
                "",
                "| step | estimator | estimator's push | reference's push | difference [CI] |",
                "|---|---|---|---|---|",
            ]
            for r in pushes:
                lines.append(
                    f"| {r['step']} | {r['estimator']} | {fmt_number(r['push'], 3)} | {fmt_number(r['push_ref'], 3)} [{fmt_number(r['push_ref_lo'], 3)}, "
                    f"{fmt_number(r['push_ref_hi'], 3)}] | {fmt_number(r['push_diff'], 3)} [{fmt_number(r['push_diff_lo'], 3)}, {fmt_number(r['push_diff_hi'], 3)}] |"
                )
            lines.append("")
        checks = select_rows(rows, run=run, seed=seed, stratum="all", group="all", estimator="score")
        if checks:
            lines += [
                "Critics at the reference states (value error relative to the spread of Monte Carlo values; advantage head vs Monte Carlo differences)",
                "",
            ]
            lines += [
                "| step | value RMSE (rel) | value bias (rel) | adv head corr | adv head slope | ref seconds | env steps |",
                "|" + "---|" * 7,
            ]
            for r in checks:
                lines.append(
                    f"| {r['step']} | {fmt_number(r['value_rmse_rel'])} | {fmt_number(r['value_bias_rel'])} | {fmt_number(r.get('adv_head_corr', float('nan')))} | "
                    f"{fmt_number(r.get('adv_head_slope', float('nan')))} | {fmt_number(r['seconds'], 0)} | {r['env_steps']} |"
                )
            lines.append("")
    return "\n".join(lines) + "\n"


def read_signals(out: Path) -> Dict[tuple, Dict[str, float]]:
    """(run, seed, step) -> the online signals measured at that checkpoint."""
    import json

    found = {}
    for path in sorted((out / "signals").glob("*.json")):
        record = json.loads(path.read_text())
        found[(record["run"], int(record["seed"]), int(record["step"]))] = record
    return found


def signal_table(rows: List[Dict[str, Any]], signals: Dict[tuple, Dict[str, float]]) -> List[str]:
    """How well each online signal ranks the audited checkpoints like the reference does: Spearman's
    rank correlation with the MSE-optimal lam and with the pathwise estimator's relative bias; then
    the same for the audit's offline checks of the critic (contacts or the critic?)."""
    lines = []
    targets = [("lam_mse", "MSE-optimal lam"), ("rel_bias", "pathwise relative bias"), ("cos_single_corrected", "pathwise cosine")]
    joined = []
    for r in select_rows(rows, estimator="pathwise", group="all", stratum="all"):
        sig = signals.get((r["run"], int(r["seed"]), int(r["step"])))
        if sig is not None:
            joined.append((r, sig))
    if len(joined) < 4:
        return [f"Online signals: {len(joined)} audited checkpoints with signals so far; a rank correlation needs at least 4.", ""]
    lines += [
        f"Online signals against the reference's verdict ({len(joined)} audited checkpoints; Spearman's rho, its p-value; "
        "checkpoints of one run are not independent, so the p-values are optimistic):",
        "",
        "| signal | " + " | ".join(name for _, name in targets) + " |",
        "|" + "---|" * (1 + len(targets)),
    ]
    for key in (*SIGNAL_KEYS, *WINDOW_SIGNAL_KEYS):
        lines.append(
            f"| {key} | "
            + " | ".join(_rank_cell([(sig.get(key, math.nan), r[target]) for r, sig in joined]) for target, _ in targets)
            + " |"
        )
    lines += [
        "",
        "The critic's own error at the same checkpoints of the advantage-head runs (offline: measured on the audit's Monte "
        "Carlo returns, not available while training): adv_head_corr is the correlation of the advantage head's action differences with the Monte Carlo "
        "ones, value_rmse_rel the value head's RMSE against the Monte Carlo value (relative to its spread).",
        "",
        "| critic check | " + " | ".join(name for _, name in targets) + " |",
        "|" + "---|" * (1 + len(targets)),
    ]
    # the head's checks say something about the pathwise gradient only where the head is its source
    pathwise = [r for r in select_rows(rows, estimator="pathwise", group="all", stratum="all") if own_source(r) == "critic"]
    for key in CRITIC_KEYS:
        lines.append(
            f"| {key} | " + " | ".join(_rank_cell([(r.get(key, math.nan), r[target]) for r in pathwise]) for target, _ in targets) + " |"
        )
    return lines + [""]


#: the audit's offline checks of the learned critic (columns of every checkpoint CSV)
CRITIC_KEYS = ("adv_head_corr", "value_rmse_rel")


def own_source(row: Dict[str, Any]) -> str:
    """The run's own pathwise source: the CSV's ``source`` column; checkpoints audited before that
    column existed were all of the advantage head ("critic") or, labelled so, MuJoCo's derivatives."""
    source = row.get("source")
    if isinstance(source, str) and source:
        return source
    return "mujoco" if "mujoco" in str(row["run"]) else "critic"


def spearman_of_finite(pairs: Iterable[Tuple[Any, Any]]) -> Tuple[float, float, int]:
    """(Spearman's rho, its p-value, n) over the pairs whose two values are finite floats; rho and p
    are NaN below 4 such pairs, or where one side has no spread (as scipy gives, without its warning)."""
    from scipy import stats

    kept = [(a, b) for a, b in pairs if isinstance(a, float) and isinstance(b, float) and math.isfinite(a) and math.isfinite(b)]
    if len(kept) < 4 or len({a for a, _ in kept}) < 2 or len({b for _, b in kept}) < 2:
        return math.nan, math.nan, len(kept)
    rho, p = stats.spearmanr([a for a, _ in kept], [b for _, b in kept])
    return float(rho), float(p), len(kept)


def _rank_cell(pairs: Sequence[Tuple[Any, Any]]) -> str:
    """Spearman's rho of finite pairs, its p-value and n ("—" below 4 pairs)."""
    rho, p, n = spearman_of_finite(pairs)
    if n < 4:
        return "—"
    return f"{rho:+.2f} (p {p:.2f}, n {n})"


RUN_EVALUATIONS = "run_evaluations.csv"


def collect_run_evaluations(out: Path) -> Path:
    """The audited runs' deterministic evaluations (run folder, step, mean return) in one small file
    beside the report: the run folders (models, checkpoints) are not committed, this file is, so the
    report regenerates from a clone. Rewritten whenever the run folders are there."""
    from hybrid_pg.experiments.compressed import open_text, stored
    from hybrid_pg.experiments.run_files import write_atomically

    path = out / RUN_EVALUATIONS
    runs = sorted(p for p in (out / "runs").glob("*") if p.is_dir()) if (out / "runs").is_dir() else []
    lines = []
    for run_dir in runs:
        if stored(run_dir / "evaluations.csv") is None:
            continue
        with open_text(run_dir / "evaluations.csv") as f:
            for row in csv.DictReader(f):
                lines.append(f"{run_dir.name},{int(float(row['timesteps']))},{float(row['mean']):.1f}")
    if lines:
        write_atomically(path, "run,step,mean_return\n" + "\n".join(lines) + "\n")
    return path


def evaluations_table(out: Path, steps: Sequence[int]) -> List[str]:
    path = out / RUN_EVALUATIONS
    if not path.exists():
        return []
    with open(path, newline="") as f:
        records = list(csv.DictReader(f))
    runs = sorted({r["run"] for r in records})
    wanted = sorted(set(steps))
    lines = [
        "Deterministic evaluations of the audited runs (5 episodes; the last evaluation at or before each checkpoint)",
        "",
        "| run | " + " | ".join(str(s) for s in wanted) + " |",
        "|" + "---|" * (1 + len(wanted)),
    ]
    for run in runs:
        points = sorted((int(r["step"]), float(r["mean_return"])) for r in records if r["run"] == run)
        cells = []
        for step in wanted:
            before = [v for s, v in points if s <= step]
            cells.append(f"{before[-1]:.1f}" if before else "—")
        lines.append(f"| {run} | " + " | ".join(cells) + " |")
    return lines + [""]


def median_of_finite(values: Sequence[Any]) -> float:
    finite = [float(v) for v in values if is_finite(v)]
    return float(np.median(finite)) if finite else math.nan


#: the columns of :func:`contrast_table`: (title, CSV column, group) per estimator row, group all, stratum all
CONTRAST_COLUMNS = (
    ("cos pathwise", "cos_single_corrected", "pathwise"),
    ("bias pathwise", "rel_bias", "pathwise"),
    ("lam_mse", "lam_mse", "pathwise"),
    ("cos score", "cos_single_corrected", "score"),
    ("adv head corr", "adv_head_corr", "score"),
    ("value RMSE (rel)", "value_rmse_rel", "score"),
    ("MSE applied mix", "rel_mse", "mix"),
    ("MSE score", "rel_mse", "score"),
)


def _cell(by_estimator: Dict[str, Dict[str, Any]], estimator: str, key: str) -> Any:
    """One value of a checkpoint's rows (NaN where the estimator or the column is missing)."""
    return by_estimator.get(estimator, {}).get(key, math.nan)


def contrast_table(rows: List[Dict[str, Any]], other: List[Dict[str, Any]], other_name: str, other_run: str) -> List[str]:
    """This audit's checkpoints beside another audit's run at the same seed and step (``this / other``
    per column): the same seeds and budgets, so a changed critic's pathwise gradient is judged against
    the old one's where both met the same task at the same point of training. The policies differ (each
    trained with its own critic), so it is a comparison of two training paths, not of two critics on
    one policy; the medians are over the matched checkpoints whose two references are both reliable
    enough for a cosine (the report's "—" otherwise)."""
    lines: List[str] = []
    for run in sorted({r["run"] for r in rows}):
        pairs = []
        for seed, step in sorted({(r["seed"], r["step"]) for r in select_rows(rows, run=run)}):
            mine = {r["estimator"]: r for r in select_rows(rows, run=run, seed=seed, step=step, group="all", stratum="all")}
            theirs = {r["estimator"]: r for r in select_rows(other, run=other_run, seed=seed, step=step, group="all", stratum="all")}
            if "pathwise" in mine and "pathwise" in theirs and "score" in mine and "score" in theirs:
                pairs.append((seed, step, mine, theirs))
        if not pairs:
            continue
        lines += [
            f"## Against {other_name}: {run.split('__')[-1]} / {other_run.split('__')[-1]}",
            "",
            f"Each cell: this audit's run / the run `{other_run}` of `{other_name}` at the same seed and checkpoint (each trained "
            "with its own critic, so two training paths at the same point, not two critics on one policy). bias = "
            "||E g - g_ref|| / ||g_ref||; cos = one rollout's corrected cosine with the reference; adv head corr and value "
            "RMSE: the critic against the Monte Carlo values at the reference states; MSE = one rollout's mean squared error "
            "against the reference / ||g_ref||^2, for the mix the run applied (its own weight) and for the score gradient.",
            "",
            "| seed | step | ref reliability | " + " | ".join(title for title, _, _ in CONTRAST_COLUMNS) + " |",
            "|" + "---|" * (3 + len(CONTRAST_COLUMNS)),
        ]
        for seed, step, mine, theirs in pairs:
            cells = [
                str(seed),
                str(step),
                f"{fmt_number(mine['score']['ref_reliability'])} / {fmt_number(theirs['score']['ref_reliability'])}",
            ]
            cells += [f"{fmt_number(_cell(mine, est, key))} / {fmt_number(_cell(theirs, est, key))}" for _, key, est in CONTRAST_COLUMNS]
            lines.append("| " + " | ".join(cells) + " |")
        both = [
            p for p in pairs if is_finite(p[2]["pathwise"]["cos_single_corrected"]) and is_finite(p[3]["pathwise"]["cos_single_corrected"])
        ]
        medians = [
            f"{title} {fmt_number(median_of_finite([_cell(m, est, key) for _, _, m, _ in both]))} / {fmt_number(median_of_finite([_cell(t, est, key) for _, _, _, t in both]))}"
            for title, key, est in CONTRAST_COLUMNS
        ]
        lower_bias = sum(m["pathwise"]["rel_bias"] < t["pathwise"]["rel_bias"] for _, _, m, t in both)
        lines += [
            "",
            f"Medians over the {len(both)} matched checkpoints with both references reliable enough: " + "; ".join(medians) + ". "
            f"The pathwise bias is the smaller on {lower_bias} of {len(both)} (an ordering over checkpoints that share seeds, not a test).",
            "",
        ]
    return lines


def write_report(config: AuditConfig) -> List[Path]:
    out = Path(config.output_dir)
    collect_run_evaluations(out)
    rows = read_rows(out)
    if not rows:
        return []
    written = [out / "audit.csv", out / "report.md", out / "cosine_vs_step.png", out / "bias_vs_variance.png"]
    write_table(rows, written[0])
    contrast: List[str] = []
    if config.compare_with is not None:
        folder, other_run = config.compare_with
        other = read_rows(Path(folder))
        if not any(r["run"] == other_run for r in other):
            raise ValueError(f"compare_with: {folder} has no audited run {other_run!r} (runs: {sorted({r['run'] for r in other})})")
        contrast = contrast_table(rows, other, folder, other_run)
    text = markdown(rows, config) + "\n".join(contrast + evaluations_table(out, config.checkpoints) + signal_table(rows, read_signals(out)))
    written[1].write_text(text)
    ref = config.reference
    budget = f"reference: {ref.rollouts} rollouts x {ref.states_per_rollout} states x {ref.actions} actions per checkpoint"
    plot_cosines(rows, written[2], f"{config.name}: each estimator against the true gradient\n{budget}")
    plot_bias_variance(rows, written[3], f"{config.name}: bias and variance against the reference (group all)\n{budget}")
    return written


def lam_mse_table(rows: List[Dict[str, Any]]) -> Dict[str, float]:
    """Median MSE-optimal lam per estimator (group all, stratum all): a one-line summary."""
    out = {}
    for est in ESTIMATOR_NAMES:
        values = [r["lam_mse"] for r in select_rows(rows, estimator=est, group="all", stratum="all") if not math.isnan(r["lam_mse"])]
        if values:
            out[est] = float(np.median(values))
    return out
