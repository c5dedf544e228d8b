"""Figures of the weight-tracking results in docs/results/weight/ (from the studies' JSON files).

    python examples/weight_results_figure.py --bandit before=old.json after=new.json \\
        --pendulum docs/results/weight/pendulum --out docs/results/weight

* ``bandit_tracking.png``: per problem (stationary, drifting, biased), seed 0, the applied lam of
  each labelled run against the closed-form reference (``examples/weight_rule_study.py --json``).
* ``pendulum_tracking.png``: per source (critic, model), seed 0, applied lam before/after against
  the oracle's lam (``examples/weight_tracking_pendulum.py``; one subfolder per label).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from matplotlib.figure import Figure

from hybrid_pg.experiments.figure_io import save_figure


def _save(fig: Figure, path: Path) -> None:
    print("wrote", save_figure(fig, path, dpi=110, tight=True))


def bandit_figure(labelled: dict, out: Path, seed_index: int = 0) -> None:
    problems = ("stationary", "drifting", "biased")
    fig = Figure(figsize=(12, 3.6))
    axes = fig.subplots(1, 3, sharey=True)
    for ax, problem in zip(axes, problems):
        ref_drawn = False
        for i, (label, (data, rule)) in enumerate(labelled.items()):
            run = data.get(f"{problem}/{rule}", {}).get("runs", [None])[seed_index]
            if run is None:
                continue
            if not ref_drawn:
                ax.plot(run["reference"], color="k", lw=2, label="closed-form reference")
                ref_drawn = True
            ax.plot(run["applied"], color=f"C{i}", lw=1.2, marker=".", ms=3, label=f"{label} (|err| {run['error']:.3f})")
        ax.axvline(8, color="0.6", lw=0.8, ls=":")
        ax.set_title(f"{problem}", fontsize="medium")
        ax.set_xlabel("update")
        ax.legend(fontsize="x-small")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("lam applied")
    fig.suptitle("coupled bandit: applied lam vs the closed-form reference (seed 0; dotted: end of warm-up)", fontsize="medium")
    _save(fig, out / "bandit_tracking.png")


def pendulum_figure(folder: Path, out: Path, seed: int = 0) -> None:
    fig = Figure(figsize=(11, 3.8))
    axes = fig.subplots(1, 2, sharey=True)
    labels = sorted(p.name for p in folder.iterdir() if p.is_dir())
    for ax, source in zip(axes, ("critic", "model")):
        for i, label in enumerate(labels):
            path = folder / label / f"{source}_seed{seed}.json"
            if not path.is_file():
                continue
            rows = json.loads(path.read_text())["rows"]
            ax.plot([r["timesteps"] for r in rows], [r["lambda"] for r in rows], color=f"C{i}", lw=1.2, label=f"lam applied, {label}")
            oracle = [(r["timesteps"], r["oracle_lambda"]) for r in rows if "oracle_lambda" in r]
            if oracle:
                ax.plot(*zip(*oracle), color=f"C{i}", lw=0, marker="o", ms=3, alpha=0.6, label=f"oracle lam, {label} run")
        ax.set_title(f"Pendulum, {source} (seed {seed})", fontsize="medium")
        ax.set_xlabel("env steps")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="x-small")
    axes[0].set_ylabel("lambda")
    _save(fig, out / "pendulum_tracking.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bandit", nargs="*", default=[], help="label=study.json[:rule] (rule default: the file's only one)")
    parser.add_argument("--pendulum", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=Path("docs/results/weight"))
    args = parser.parse_args()
    if args.bandit:
        labelled = {}
        for item in args.bandit:
            label, _, rest = item.partition("=")
            path, _, rule = rest.partition(":")
            data = json.loads(Path(path).read_text())
            rule = rule or sorted({k.split("/", 1)[1] for k in data})[0]
            labelled[label] = (data, rule)
        bandit_figure(labelled, args.out)
    if args.pendulum is not None:
        pendulum_figure(args.pendulum, args.out)


if __name__ == "__main__":
    main()
