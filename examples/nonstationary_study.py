"""How well does each lam window track the oracle lam* when the landscape moves?

Runs the grid of ``configs/nonstationary_study.yaml`` (env schedule x window mode x seed) with the
resumable runner of :mod:`hybrid_pg.benchmark` and reports, per env and mode:

* mean |lam applied - lam*_oracle| over updates (``hybrid/oracle_error_applied``) and the mean
  exact excess variance paid for the wrong weight (``hybrid/oracle_excess_variance``);
* recovery time after each switch of the env parameter: updates until the applied lam is within
  0.05 of the oracle again (and stays there for 3 updates);
* final return, and the dynamic regret: the stationary env's mean training return minus this env's,
  for the same mode (what the drift costs the same agent).

Figures: lam applied / windowed / per rollout and the oracle over training, the env parameter
overlaid and switch times marked (one panel per env, seed 0), and the error to the oracle per mode.

    python examples/nonstationary_study.py configs/nonstationary_study.yaml --workers 2
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any, Dict, List

import numpy as np
import yaml

from hybrid_pg.benchmark import RunSpec, column, run_all

TOLERANCE, HOLD = 0.05, 3


def build_specs(cfg: Dict[str, Any], seeds: List[int]) -> List[RunSpec]:
    specs = []
    for env_name, schedules in cfg["envs"].items():
        for mode_name, mode in cfg["modes"].items():
            for seed in seeds:
                specs.append(
                    RunSpec(
                        label=f"{env_name}__{mode_name}",
                        algo="hybrid_pg",
                        env_id=cfg["env_id"],
                        seed=seed,
                        total_timesteps=int(cfg["total_timesteps"]),
                        n_envs=int(cfg["n_envs"]),
                        algo_kwargs={**cfg["algo"], **mode},
                        env_kwargs={"schedules": schedules, "steps_per_tick": int(cfg["n_envs"])},
                        eval_episodes=20,
                    )
                )
    return specs


def recovery_times(result: Dict[str, Any], switch_steps: List[float]) -> List[float]:
    """Updates after each switch until |lam applied - oracle| <= TOLERANCE for HOLD updates."""
    steps = column(result, "time/total_timesteps")
    error = column(result, "hybrid/oracle_error_applied")
    out = []
    for switch in switch_steps:
        after = [e for s, e in zip(steps, error) if s > switch and math.isfinite(e)]
        rec = math.nan
        for i in range(len(after) - HOLD + 1):
            if all(e <= TOLERANCE for e in after[i : i + HOLD]):
                rec = float(i + 1)
                break
        out.append(rec)
    return out


def switch_steps(schedule: Dict[str, Any], total: int) -> List[float]:
    if schedule.get("kind") != "switch":
        return []
    if "every" in schedule:
        return [float(s) for s in range(int(schedule["every"]), total, int(schedule["every"]))]
    return [float(s) for s in schedule.get("at", [])]


def summarize(cfg: Dict[str, Any], results: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    groups: Dict[str, List[Dict[str, Any]]] = {}
    for r in results:
        groups.setdefault(r["spec"]["label"], []).append(r)
    train_return = {label: np.mean([np.nanmean(column(r, "rollout/ep_rew_mean")) for r in runs]) for label, runs in groups.items()}
    rows = []
    for label, runs in groups.items():
        env_name, mode_name = label.split("__")
        schedule = cfg["envs"][env_name]["m"]
        recs = [t for r in runs for t in recovery_times(r, switch_steps(schedule, int(cfg["total_timesteps"])))]
        rows.append(
            {
                "env": env_name,
                "mode": mode_name,
                "seeds": len(runs),
                "error_to_oracle": float(np.mean([np.nanmean(column(r, "hybrid/oracle_error_applied")) for r in runs])),
                "excess_variance": float(np.mean([np.nanmean(column(r, "hybrid/oracle_excess_variance")) for r in runs])),
                "recovery_updates": float(np.nanmean(recs)) if recs and not all(math.isnan(x) for x in recs) else math.nan,
                "final_return": float(np.mean([r["final_return"] for r in runs])),
                "dynamic_regret": float(train_return.get(f"stationary__{mode_name}", math.nan) - train_return[label]),
            }
        )
    return sorted(rows, key=lambda row: (list(cfg["envs"]).index(row["env"]), list(cfg["modes"]).index(row["mode"])))


def markdown(rows: List[Dict[str, Any]]) -> str:
    lines = [
        "| env | mode | seeds | mean abs(lam - lam*_oracle) | mean excess variance | recovery after a switch (updates) | final return | dynamic regret |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        rec = "" if math.isnan(r["recovery_updates"]) else f"{r['recovery_updates']:.1f}"
        lines.append(
            f"| {r['env']} | {r['mode']} | {r['seeds']} | {r['error_to_oracle']:.3f} | {r['excess_variance']:.3g} | {rec} | "
            f"{r['final_return']:.3f} | {r['dynamic_regret']:.3f} |"
        )
    return "\n".join(lines)


def plot(cfg: Dict[str, Any], results: List[Dict[str, Any]], out: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    envs = list(cfg["envs"])
    fig = Figure(figsize=(12, 3.2 * len(envs)))
    FigureCanvasAgg(fig)
    for row, env_name in enumerate(envs):
        ax = fig.add_subplot(len(envs), 1, row + 1)
        for r in results:
            label = r["spec"]["label"]
            if r["spec"]["seed"] != 0 or not label.startswith(env_name + "__"):
                continue
            steps = column(r, "time/total_timesteps")
            ax.plot(steps, column(r, "hybrid/lambda"), lw=1, label=label.split("__")[1])
            if label.endswith("sliding_16"):
                ax.plot(steps, column(r, "hybrid/oracle_lambda"), "k--", lw=1.5, label="oracle lam*")
                twin = ax.twinx()
                twin.plot(steps, column(r, "env/m"), color="grey", alpha=0.4, lw=3)
                twin.set_ylabel("m (env)", color="grey")
        for s in switch_steps(cfg["envs"][env_name]["m"], int(cfg["total_timesteps"])):
            ax.axvline(s, color="red", alpha=0.3)
        ax.set_title(f"{env_name}: applied lam per mode vs the oracle (seed 0)")
        ax.set_ylabel("lam")
        ax.legend(fontsize=7, ncol=3, loc="lower left")
    ax.set_xlabel("env steps")
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config")
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--seeds", type=int, nargs="+", default=None)
    parser.add_argument("--steps", type=int, default=None, help="override total_timesteps (smoke runs)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    cfg = yaml.safe_load(Path(args.config).read_text())
    if args.steps:
        cfg["total_timesteps"] = args.steps
    out = Path(args.out or cfg["output_dir"])
    specs = build_specs(cfg, args.seeds or list(cfg["seeds"]))
    results = run_all(specs, str(out / "runs"), workers=args.workers)
    rows = summarize(cfg, results)
    table = markdown(rows)
    print(table)
    (out / "table.md").write_text(table + "\n")
    plot(cfg, results, out / "lambda_tracking.png")
    print(f"wrote {out / 'table.md'} and {out / 'lambda_tracking.png'}")


if __name__ == "__main__":
    main()
