"""How well does each lam window track the oracle lam* when the landscape moves?

Runs the grid of ``configs/nonstationary_study.yaml`` (env schedule x window mode x seed) with the
run engine's resumable grids (:func:`hybrid_pg.experiments.runner.run_grid`: an interrupted study
resumes where it stopped; a deterministic evaluation follows the env's clock) and
reports, per env and mode:

* mean |lam applied - lam*_oracle| over the updates after the warm-up
  (``hybrid/oracle_error_applied``), and the mean exact excess variance paid for the wrong weight
  (``hybrid/oracle_excess_variance``);
* the lag of the applied lam behind the oracle: the shift (in updates) that best aligns the two;
* recovery time after each switch of the env parameter: the number of updates on post-switch
  rollouts until the applied lam is within 0.05 of the oracle (and stays there for 3 updates); the
  first post-switch update counts as 1, and its weight necessarily comes from pre-switch rollouts;
* policy drift vs env drift: on the non-stationary envs a second oracle holds the env at its
  starting parameters (``oracle_frozen_clock``): lam* moves there only because the policy moves.
  The table gives the mean |lam*_live - lam*_frozen| (the env drift's share) and the spread of
  lam*_frozen over training (the policy drift's);
* final training return (last 10% of rollouts), mean training return, and the dynamic regret:
  the stationary env's mean training return minus this env's, for the same mode (what the drift
  costs the same agent);
* the policy's standard deviation (``train/std``), median over seeds, at 100k steps and at the end
  (the end only for a budget of 100k steps or less).

Outputs in ``output_dir``: ``table.md``, ``table.csv``, ``summary.json`` and the figures
``lambda_tracking.png`` (applied lam per mode vs the oracle, env parameter overlaid, switches
marked), ``error_per_mode.png``, ``returns.png`` and ``drift_decomposition.png``.

    python examples/nonstationary_study.py configs/nonstationary_study.yaml --workers 2
    python examples/nonstationary_study.py configs/nonstationary_study.yaml --backend ray --address auto   # on a Ray cluster
    python examples/nonstationary_study.py configs/nonstationary_study.yaml --report-only   # the finished runs; trains nothing
"""

from __future__ import annotations

import argparse
import csv
import json
import math
from pathlib import Path
from typing import Any, Dict, List, Tuple

import numpy as np
import yaml

from hybrid_pg.experiments.benchmark import run_config
from hybrid_pg.experiments.nonstationary_analysis import (  # noqa: F401 - re-exported for the tests
    TOLERANCE,
    censored_recovery_mean,
    draw_drift_split,
    post_switch_updates,
    recovery_times,
    switch_steps,
    tracking_lag,
)
from hybrid_pg.experiments.nonstationary_analysis import (
    after_warmup as _after_warmup,
)
from hybrid_pg.experiments.nonstationary_analysis import (
    figure as _figure,
)
from hybrid_pg.experiments.nonstationary_analysis import (
    final_train_return as _final_train_return,
)
from hybrid_pg.experiments.nonstationary_analysis import (
    nanmean as _nanmean,
)
from hybrid_pg.experiments.nonstationary_analysis import (
    save_figure as _save,
)
from hybrid_pg.experiments.ray_backend import RayNotInstalledError, require_ray
from hybrid_pg.experiments.results import PolicyStd, learning_curve, policy_std_note, policy_std_summary, policy_std_titles, update_series
from hybrid_pg.experiments.runner import is_finished, load_result, run_grid, run_key


def _moving_parameter(cfg: Dict[str, Any], env_name: str) -> str:
    """The parameter an env's figures and switch times follow: its first non-constant one."""
    schedules = cfg["envs"][env_name]
    for name, sched in schedules.items():
        if isinstance(sched, dict) and sched.get("kind") != "constant":
            return name
    return next(iter(schedules))


def _schedule(cfg: Dict[str, Any], env_name: str) -> Dict[str, Any]:
    return cfg["envs"][env_name][_moving_parameter(cfg, env_name)]


def _is_stationary(schedules: Dict[str, Any]) -> bool:
    return all(isinstance(s, (int, float)) or s.get("kind") == "constant" for s in schedules.values())


def select(entries: Dict[str, Any], names: Any, what: str) -> Dict[str, Any]:
    """The entries of ``entries`` named in ``names`` (all when None), in the config's order."""
    if names is None:
        return entries
    unknown = [n for n in names if n not in entries]
    if unknown:
        raise ValueError(f"unknown {what} {unknown}; the config has {list(entries)}")
    return {k: v for k, v in entries.items() if k in names}


def build_runs(cfg: Dict[str, Any], seeds: List[int]) -> List[Tuple[str, Dict[str, Any]]]:
    """(label, run config) per env schedule, window mode and seed, for the one run engine."""
    runs = []
    for env_name, schedules in cfg["envs"].items():
        for mode_name, mode in cfg["modes"].items():
            algo = {**cfg["algo"], **mode}
            if _is_stationary(schedules):
                algo.pop("oracle_frozen_clock", None)  # the frozen copy would equal the live one
            env_kwargs = {**cfg.get("env_kwargs", {}), "schedules": schedules, "steps_per_tick": int(cfg["n_envs"])}
            for seed in seeds:
                config = run_config(
                    "hybrid_pg",
                    cfg["env_id"],
                    seed,
                    int(cfg["total_timesteps"]),
                    algo=algo,
                    n_envs=int(cfg["n_envs"]),
                    env_kwargs=env_kwargs,
                    eval_episodes=int(cfg.get("eval_episodes", 20)),
                )
                runs.append((f"{env_name}__{mode_name}", config))
    return runs


def summarize(cfg: Dict[str, Any], results: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    groups: Dict[str, List[Dict[str, Any]]] = {}
    for r in results:
        groups.setdefault(r["spec"]["label"], []).append(r)
    # the first updates hold lam at 0 (lambda_warmup) and then have only a short window
    warmup = int(cfg["algo"].get("lambda_warmup", 0)) + 1
    train_return = {label: float(np.mean([np.mean(learning_curve(r)[1]) for r in runs])) for label, runs in groups.items()}
    total = int(cfg["total_timesteps"])
    rows = []
    for label, runs in groups.items():
        env_name, mode_name = label.split("__")
        switches = switch_steps(_schedule(cfg, env_name), total)
        recs = [recovery_times(r, switches, noise_z=None) for r in runs]  # the fixed 0.05 the README table used
        flat = [t for rec in recs for t in rec]
        budgets = [b for r in runs for b in post_switch_updates(r, switches)]
        errors = [float(np.nanmean(_after_warmup(r, "hybrid/oracle_error_applied", warmup))) for r in runs]
        live_minus_frozen = [_after_warmup(r, "hybrid/oracle_env_drift_share", warmup) for r in runs]
        frozen = [_after_warmup(r, "hybrid/oracle_lambda_frozen_env", warmup) for r in runs]
        if not any(f.size for f in frozen):  # stationary env: the live oracle is the frozen one
            frozen = [_after_warmup(r, "hybrid/oracle_lambda", warmup) for r in runs]
        rows.append(
            {
                "env": env_name,
                "mode": mode_name,
                "seeds": len(runs),
                "error_to_oracle": float(np.mean(errors)),
                "error_to_oracle_se": float(np.std(errors, ddof=1) / math.sqrt(len(errors))) if len(errors) > 1 else math.nan,
                "error_of_rollout_alone": float(np.mean([np.nanmean(_after_warmup(r, "hybrid/oracle_error_batch", warmup)) for r in runs])),
                "excess_variance": float(np.mean([np.nanmean(_after_warmup(r, "hybrid/oracle_excess_variance", warmup)) for r in runs])),
                "lag_updates": _nanmean([tracking_lag(r, warmup) for r in runs]),
                "recovery_updates": _nanmean(flat) if flat else math.nan,
                "recovered_fraction": float(np.mean([math.isfinite(t) for t in flat])) if flat else math.nan,
                "recovery_updates_censored": censored_recovery_mean(flat, budgets),
                "recovery_per_switch": [[None if math.isnan(t) else t for t in rec] for rec in recs],
                "env_drift_share": float(np.mean([np.nanmean(np.abs(d)) for d in live_minus_frozen if d.size]))
                if any(d.size for d in live_minus_frozen)
                else 0.0,
                "policy_drift_spread": float(np.mean([np.nanstd(f) for f in frozen if f.size])),
                "mean_lambda": float(np.mean([np.nanmean(_after_warmup(r, "hybrid/lambda", warmup)) for r in runs])),
                "final_train_return": float(np.mean([_final_train_return(r) for r in runs])),
                "train_return": train_return[label],
                "dynamic_regret": float(train_return.get(f"{_stationary_env(cfg)}__{mode_name}", math.nan) - train_return[label]),
                **policy_std_summary(runs, total).columns(),
            }
        )
    env_order, mode_order = list(cfg["envs"]), list(cfg["modes"])
    return sorted(rows, key=lambda row: (env_order.index(row["env"]), mode_order.index(row["mode"])))


def _stationary_env(cfg: Dict[str, Any]) -> str:
    return next((name for name, sched in cfg["envs"].items() if _is_stationary(sched)), "")


def _fmt(value: float, spec: str = ".3f") -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def _censored(row: Dict[str, Any]) -> str:
    value = row.get("recovery_updates_censored", math.nan)
    if not math.isfinite(value):
        return ""
    return ("≥ " if row["recovered_fraction"] < 1 else "") + f"{value:.1f}"


def markdown(rows: List[Dict[str, Any]]) -> str:
    stds = [PolicyStd.from_columns(r) for r in rows]
    early = any(std.at_step is not None for std in stds)
    lines = [
        "| env | mode | seeds | mean abs(lam - lam*_oracle) | ... of one rollout alone | mean excess variance | "
        "lag behind the oracle (updates) | recovery after a switch (updates, mean of recovered) | ... unrecovered counted as >= budget + 1 | recovered | env-drift share of lam* | policy-drift spread of lam* | "
        "final train return | mean train return | dynamic regret | " + " | ".join(policy_std_titles(early)) + " |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|" + "---|" * len(policy_std_titles(early)),
    ]
    for r, std in zip(rows, stds):
        err = f"{r['error_to_oracle']:.3f}" + (f" ± {r['error_to_oracle_se']:.3f}" if math.isfinite(r["error_to_oracle_se"]) else "")
        recovered = "" if math.isnan(r["recovered_fraction"]) else f"{100 * r['recovered_fraction']:.0f}%"
        lines.append(
            f"| {r['env']} | {r['mode']} | {r['seeds']} | {err} | {_fmt(r['error_of_rollout_alone'])} | {_fmt(r['excess_variance'], '.3g')} | "
            f"{_fmt(r['lag_updates'], '.1f')} | {_fmt(r['recovery_updates'], '.1f')} | {_censored(r)} | {recovered} | {_fmt(r['env_drift_share'])} | {_fmt(r['policy_drift_spread'])} | "
            f"{_fmt(r['final_train_return'])} | {_fmt(r['train_return'])} | {_fmt(r['dynamic_regret'])} | " + " | ".join(std.texts()) + " |"
        )
    return "\n".join(lines + ["", policy_std_note(early)])


def write_csv(rows: List[Dict[str, Any]], path: Path) -> None:
    fields = [k for k in rows[0] if k != "recovery_per_switch"] + ["recovery_per_switch"]
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        for r in rows:
            writer.writerow({**r, "recovery_per_switch": json.dumps(r["recovery_per_switch"])})


# ---------------------------------------------------------------------------------------------
# figures
# ---------------------------------------------------------------------------------------------


def _seed0(results: List[Dict[str, Any]], label: str) -> Dict[str, Any]:
    runs = sorted((r for r in results if r["spec"]["label"] == label), key=lambda r: r["spec"]["seed"])
    return runs[0] if runs else {}


def _overlay_param(ax: Any, cfg: Dict[str, Any], env_name: str, run: Dict[str, Any]) -> None:
    param = _moving_parameter(cfg, env_name)
    steps, values = update_series(run, f"env/{param}")
    if steps.size:
        twin = ax.twinx()
        twin.plot(steps, values, color="grey", alpha=0.35, lw=3)
        twin.set_ylabel(f"{param} (env)", color="grey")
    _mark_switches(ax, cfg, env_name)


def _mark_switches(ax: Any, cfg: Dict[str, Any], env_name: str) -> None:
    for s in switch_steps(_schedule(cfg, env_name), int(cfg["total_timesteps"])):
        ax.axvline(s, color="red", alpha=0.3)


def plot_tracking(cfg: Dict[str, Any], results: List[Dict[str, Any]], out: Path) -> None:
    envs = list(cfg["envs"])
    fig, axes = _figure(len(envs))
    reference = cfg.get("reference_mode", list(cfg["modes"])[-1])
    for ax, env_name in zip(axes, envs):
        for mode_name in cfg["modes"]:
            run = _seed0(results, f"{env_name}__{mode_name}")
            if run:
                ax.plot(*update_series(run, "hybrid/lambda"), lw=1, label=mode_name)
        run = _seed0(results, f"{env_name}__{reference}")
        if run:
            ax.plot(*update_series(run, "hybrid/oracle_lambda"), "k--", lw=1.5, label=f"oracle lam* ({reference} run)")
            _overlay_param(ax, cfg, env_name, run)
        ax.set_title(f"{env_name}: applied lam per mode vs the oracle lam* (seed 0); grey: env parameter, red: switches")
        ax.set_ylabel("lam")
        ax.legend(fontsize=7, ncol=4, loc="lower left")
    _save(fig, axes, out)


def plot_errors(cfg: Dict[str, Any], rows: List[Dict[str, Any]], out: Path) -> None:
    envs, modes = list(cfg["envs"]), list(cfg["modes"])
    fig, (ax,) = _figure(1, width=10, height=4)
    width = 0.8 / len(modes)
    for j, mode_name in enumerate(modes):
        sel = [next((r for r in rows if r["env"] == e and r["mode"] == mode_name), None) for e in envs]
        means = [r["error_to_oracle"] if r else math.nan for r in sel]
        ses = [r["error_to_oracle_se"] if r and math.isfinite(r["error_to_oracle_se"]) else 0.0 for r in sel]
        ax.bar(np.arange(len(envs)) + (j - (len(modes) - 1) / 2) * width, means, width, yerr=ses, capsize=2, label=mode_name)
    ax.axhline(TOLERANCE, color="red", lw=0.8, ls=":", label=f"tolerance {TOLERANCE}")
    ax.set_xticks(np.arange(len(envs)), envs)
    ax.set_ylabel("mean |lam applied - lam*_oracle|")
    ax.set_title("error to the oracle per mode (mean over seeds, ± SE)")
    ax.legend(fontsize=8, ncol=3)
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def plot_returns(cfg: Dict[str, Any], results: List[Dict[str, Any]], out: Path) -> None:
    envs = list(cfg["envs"])
    fig, axes = _figure(len(envs))
    for ax, env_name in zip(axes, envs):
        for mode_name in cfg["modes"]:
            curves = [learning_curve(r) for r in results if r["spec"]["label"] == f"{env_name}__{mode_name}"]
            if not curves:
                continue
            n = min(len(c[0]) for c in curves)
            ax.plot(curves[0][0][:n], np.mean([c[1][:n] for c in curves], axis=0), lw=1, label=mode_name)
        _mark_switches(ax, cfg, env_name)
        ax.set_title(f"{env_name}: training return (mean over seeds)")
        ax.set_ylabel("return")
        ax.legend(fontsize=7, ncol=5, loc="lower right")
    _save(fig, axes, out)


def plot_drift_decomposition(cfg: Dict[str, Any], results: List[Dict[str, Any]], out: Path) -> None:
    """lam* at the live env vs at the env frozen at its start, along one training path: the
    frozen curve moves only with the policy; the gap between the curves is the env drift's share."""
    envs = list(cfg["envs"])
    reference = cfg.get("reference_mode", list(cfg["modes"])[-1])
    fig, axes = _figure(len(envs))
    for ax, env_name in zip(axes, envs):
        run = _seed0(results, f"{env_name}__{reference}")
        if not run:
            continue
        draw_drift_split(ax, run)
        _overlay_param(ax, cfg, env_name, run)
        ax.set_title(f"{env_name}: policy drift vs env drift of lam* ({reference}, seed 0)")
        ax.set_ylabel("lam*")
        ax.legend(fontsize=7, loc="lower left")
    _save(fig, axes, out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config")
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--backend", choices=("local", "ray"), default="local", help='ray: one Ray task per run (pip install -e ".[ray]")')
    parser.add_argument("--address", default=None, help="--backend ray: the Ray cluster (auto: the one 'ray start' runs here)")
    parser.add_argument("--seeds", type=int, nargs="+", default=None)
    parser.add_argument("--steps", type=int, default=None, help="override total_timesteps (smoke runs)")
    parser.add_argument("--oracle-samples", type=int, default=None, help="override algo.oracle_samples (smoke runs)")
    parser.add_argument("--out", default=None)
    parser.add_argument("--envs", nargs="+", default=None, help="run and report only these envs of the config")
    parser.add_argument("--modes", nargs="+", default=None, help="run and report only these window modes of the config")
    parser.add_argument("--report-only", action="store_true", help="report the finished runs in OUT/runs; train nothing")
    args = parser.parse_args()
    if args.backend == "ray":
        try:
            require_ray()
        except RayNotInstalledError as exc:
            parser.error(str(exc))  # exit 2
    cfg = yaml.safe_load(Path(args.config).read_text())
    if args.steps:
        cfg["total_timesteps"] = args.steps
    if args.oracle_samples:
        cfg["algo"]["oracle_samples"] = args.oracle_samples
    for key, names in (("envs", args.envs), ("modes", args.modes)):
        try:
            cfg[key] = select(cfg[key], names, key)
        except ValueError as exc:
            parser.error(str(exc))  # exit 2
    if args.modes and cfg.get("reference_mode") not in cfg["modes"]:
        cfg["reference_mode"] = list(cfg["modes"])[-1]
    out = Path(args.out or cfg["output_dir"])
    runs = build_runs(cfg, args.seeds or list(cfg["seeds"]))
    if args.report_only:
        found = [(label, out / "runs" / run_key(label, config)) for label, config in runs]
        results = [load_result(path, label=label) for label, path in found if is_finished(path)]
        print(f"{len(results)} of {len(runs)} runs finished")
        if not results:
            parser.error(f"--report-only: no finished run in {out / 'runs'}")  # exit 2
    else:
        results = run_grid(runs, out / "runs", workers=args.workers, backend=args.backend, address=args.address)
    rows = summarize(cfg, results)
    table = markdown(rows)
    print(table)
    (out / "table.md").write_text(table + "\n")
    write_csv(rows, out / "table.csv")
    (out / "summary.json").write_text(json.dumps(rows, indent=1, allow_nan=True) + "\n")
    plot_tracking(cfg, results, out / "lambda_tracking.png")
    plot_errors(cfg, rows, out / "error_per_mode.png")
    plot_returns(cfg, results, out / "returns.png")
    plot_drift_decomposition(cfg, results, out / "drift_decomposition.png")
    print(f"wrote {out}/table.md, table.csv, summary.json and lambda_tracking, error_per_mode, returns, drift_decomposition .png")


if __name__ == "__main__":
    main()
