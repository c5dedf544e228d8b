"""Does the learned critic's accuracy decide the pathwise gradient's? Pooled over gradient audits.

Each gradient audit measures, at every checkpoint of an advantage-head run, both the head's own
accuracy (``adv_head_corr``: the correlation of its action differences with the Monte Carlo ones at
the reference states; ``value_rmse_rel``: the value head's error) and the pathwise gradient's quality
against the true gradient (corrected cosine, relative bias, the MSE-optimal weight). One audit has a
dozen checkpoints; this pools several (e.g. the plain, LayerNorm and HL-Gauss heads on one task) to
ask two questions at once: does the critic's accuracy rank the pathwise gradient's quality, and does
any head change the accuracy?

Checkpoints of one run share its training path, so they are not independent: the rank correlations
come with a cluster bootstrap over *runs* (whole runs resampled with their checkpoints), never a
p-value that counts checkpoints as samples. Only checkpoints whose reference is reliable enough for a
cosine (the audit's corrected cosine is finite) are used, so every measure is read on the same set.

    python examples/critic_accuracy.py                     # the Hopper audits (plain, LayerNorm, HL-Gauss)
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Dict, List, Mapping, Sequence, Tuple

import numpy as np

from hybrid_pg.experiments.aggregate import cluster_bootstrap
from hybrid_pg.experiments.gradient_audit_report import (
    fmt_number,
    is_finite,
    median_of_finite,
    own_source,
    read_rows,
    read_signals,
    select_rows,
    spearman_of_finite,
)
from hybrid_pg.online_signals import SIGNAL_KEYS, WINDOW_SIGNAL_KEYS

#: the pathwise gradient's quality measures (CSV column, title, which way is better)
QUALITY = (
    ("cos_single_corrected", "pathwise cosine with the truth"),
    ("rel_bias", "pathwise relative bias"),
    ("lam_mse", "MSE-optimal lam"),
)
#: the critic's accuracy measures (CSV column, title)
ACCURACY = (("adv_head_corr", "advantage head's correlation with Monte Carlo"), ("value_rmse_rel", "value head's relative RMSE"))
#: the online signals a weight rule could read while training (the audit's signals/ files)
ONLINE = tuple((key, f"`{key}`") for key in (*SIGNAL_KEYS, *WINDOW_SIGNAL_KEYS))


def checkpoints(audits: Mapping[str, Path]) -> List[Dict[str, Any]]:
    """One record per reliable advantage-head checkpoint: the head's name (the key of ``audits``),
    its run (audit/run label, the bootstrap's cluster), and the accuracy and quality columns."""
    records: List[Dict[str, Any]] = []
    for head, folder in audits.items():
        signals = read_signals(Path(folder))
        for row in select_rows(read_rows(Path(folder)), estimator="pathwise", group="all", stratum="all"):
            if own_source(row) != "critic" or not is_finite(row.get("cos_single_corrected")):
                continue  # another source's gradient, or a reference too noisy for a cosine there
            online = signals.get((row["run"], int(row["seed"]), int(row["step"])), {})
            record = {"head": head, "cluster": f"{head}/{row['run']}/s{row['seed']}", "seed": row["seed"], "step": row["step"]}
            record.update({key: _number(row.get(key)) for key, _ in QUALITY + ACCURACY})
            record.update({key: _number(online.get(key)) for key, _ in ONLINE})
            records.append(record)
    return records


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rho of the finite pairs (NaN below 4 pairs or with no spread)."""
    return spearman_of_finite(zip(x, y))[0]


def cluster_bootstrap_rho(
    records: Sequence[Mapping[str, Any]], x_key: str, y_key: str, resamples: int = 2000, seed: int = 0
) -> Tuple[float, float, float, int, int]:
    """(rho, 95% CI low, high, checkpoints, runs): Spearman's rho of ``x_key`` against ``y_key``, its
    percentile CI from resampling whole runs with replacement (their checkpoints move together)."""
    usable = [r for r in records if math.isfinite(r[x_key]) and math.isfinite(r[y_key])]
    clusters: Dict[str, List[Mapping[str, Any]]] = {}
    for r in usable:
        clusters.setdefault(r["cluster"], []).append(r)
    rho = spearman([r[x_key] for r in usable], [r[y_key] for r in usable])
    names = sorted(clusters)
    if len(names) < 3 or not math.isfinite(rho):
        return rho, math.nan, math.nan, len(usable), len(names)
    draws = cluster_bootstrap(
        [[clusters[name] for name in names]],
        lambda picked: spearman([r[x_key] for r in picked], [r[y_key] for r in picked]),
        resamples,
        np.random.default_rng(seed),
    )
    if not draws.size:
        return rho, math.nan, math.nan, len(usable), len(names)
    low, high = np.percentile(draws, [2.5, 97.5])
    return rho, float(low), float(high), len(usable), len(names)


def markdown(records: Sequence[Mapping[str, Any]], audits: Mapping[str, Path]) -> str:
    heads = list(audits)
    lines = [
        "# The critic's accuracy and the pathwise gradient's, pooled over audits",
        "",
        "Audits: " + ", ".join(f"{head} (`{Path(folder)}`)" for head, folder in audits.items()) + ". "
        "Each row of the audits is one checkpoint of an advantage-head run whose reference was reliable enough for a "
        "cosine. The critic's accuracy is measured offline on the audit's Monte Carlo returns (not available while "
        "training). Checkpoints of one run are not independent: the CIs resample whole runs.",
        "",
        "## Per head (medians over its checkpoints)",
        "",
        "| head | runs | checkpoints | " + " | ".join(title for _, title in ACCURACY + QUALITY) + " |",
        "|" + "---|" * (3 + len(ACCURACY) + len(QUALITY)),
    ]
    for head in heads:
        mine = [r for r in records if r["head"] == head]
        cells = [head, str(len({r["cluster"] for r in mine})), str(len(mine))]
        cells += [fmt_number(median_of_finite([r[key] for r in mine])) for key, _ in ACCURACY + QUALITY]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "## Does the critic's accuracy rank the pathwise gradient's quality? (all heads pooled)",
        "",
        "Spearman's rho [95% CI, bootstrap over runs], with the checkpoints and runs it uses.",
        "",
        "| critic's accuracy | " + " | ".join(title for _, title in QUALITY) + " |",
        "|" + "---|" * (1 + len(QUALITY)),
    ]
    lines += _rank_rows(records, ACCURACY)
    lines += [
        "",
        "## Can the run see it while training? The online signals (all heads pooled)",
        "",
        "The signals a weight rule can read during training, measured at the same checkpoints from fresh rollouts of "
        "the checkpoint's policy (`hybrid_pg.online_signals`, the window's direction statistics); Spearman's rho as above.",
        "",
        "| online signal | " + " | ".join(title for _, title in QUALITY) + " |",
        "|" + "---|" * (1 + len(QUALITY)),
    ]
    lines += _rank_rows(records, ONLINE)
    lines += [""]
    return "\n".join(lines)


def _rank_rows(records: Sequence[Mapping[str, Any]], predictors: Sequence[Tuple[str, str]]) -> List[str]:
    lines = []
    for a_key, a_title in predictors:
        cells = []
        for q_key, _ in QUALITY:
            rho, low, high, n, runs = cluster_bootstrap_rho(records, a_key, q_key)
            cells.append("—" if not math.isfinite(rho) else f"{rho:+.2f} [{fmt_number(low)}, {fmt_number(high)}] (n {n}, {runs} runs)")
        lines.append(f"| {a_title} | " + " | ".join(cells) + " |")
    return lines


def plot(records: Sequence[Mapping[str, Any]], heads: Sequence[str], path: Path) -> None:
    import matplotlib.pyplot as plt

    from hybrid_pg.experiments.figure_io import save_figure

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, (key, title) in zip(axes, QUALITY[:2]):
        for head in heads:
            mine = [r for r in records if r["head"] == head and math.isfinite(r["adv_head_corr"]) and math.isfinite(r[key])]
            ax.scatter([r["adv_head_corr"] for r in mine], [r[key] for r in mine], label=head, alpha=0.8)
        ax.set_xlabel("advantage head's correlation with Monte Carlo")
        ax.set_ylabel(title)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("Critic accuracy against pathwise gradient quality (one point per audited checkpoint)")
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


def write(audits: Mapping[str, Path], out: Path) -> List[Path]:
    """Write ``out``.md and ``out``.png; returns their paths."""
    from hybrid_pg.experiments.run_files import write_atomically

    for head, folder in audits.items():
        if not (Path(folder) / "audit").is_dir():
            raise FileNotFoundError(f"{head}: {folder} is not an audit's output folder (no audit/ inside)")
    records = checkpoints(audits)
    if not records:
        raise ValueError("no reliable advantage-head checkpoints in these audits")
    md, png = out.with_suffix(".md"), out.with_suffix(".png")
    md.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(md, markdown(records, audits))
    plot(records, list(audits), png)
    return [md, png]


def _number(value: Any) -> float:
    """A CSV or JSON value as a float, NaN where it is missing or not a finite number."""
    return float(value) if is_finite(value) else math.nan
