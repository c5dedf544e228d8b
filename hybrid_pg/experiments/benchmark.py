"""Multi-seed comparisons on the one run engine: summaries of a grid, and the speed benchmark.

Runs are configs trained by :func:`hybrid_pg.experiments.runner.run` (grids through
:func:`~hybrid_pg.experiments.runner.run_grid`); everything here reads what the engine wrote
(:func:`~hybrid_pg.experiments.runner.load_result`). :func:`run_config` builds the config of one
comparison run (HybridPG, or SB3's PPO / A2C with the same env, network and normalisation).

:func:`speed_benchmark` times HybridPG against A2C and PPO with the same env, n_steps and n_envs,
runs interleaved in one process, and records each run's final deterministic return.
"""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from hybrid_pg.experiments.config import resolve_config
from hybrid_pg.experiments.results import column, update_series, variance_ratio
from hybrid_pg.experiments.runner import load_result, run

__all__ = [
    "SpeedSettings",
    "markdown_table",
    "run_config",
    "speed_benchmark",
    "speed_markdown",
    "summarize",
    "write_speed_report",
]


def run_config(
    algorithm: str,
    env_id: str,
    seed: int,
    total_timesteps: int,
    algo: Optional[Mapping[str, Any]] = None,
    n_envs: int = 1,
    normalize: bool = False,
    env_kwargs: Optional[Mapping[str, Any]] = None,
    eval_episodes: int = 10,
    eval_freq: int = 0,
) -> Dict[str, Any]:
    """A resolved run config (the schema of :mod:`hybrid_pg.experiments.config`) from the usual knobs."""
    raw = {
        "env": {"id": env_id, "n_envs": n_envs, "normalize": normalize, "env_kwargs": dict(env_kwargs or {})},
        "algo": {"algorithm": algorithm, **dict(algo or {})},
        "train": {"total_timesteps": total_timesteps, "seed": seed, "eval_episodes": eval_episodes, "eval_freq": eval_freq},
    }
    return resolve_config(raw)


# --------------------------------------------------------------------------------------------------
# summaries
# --------------------------------------------------------------------------------------------------


def _median_or_nan(values: Sequence[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return float(np.median(finite)) if finite else math.nan


def summarize(results: Iterable[Dict[str, Any]], warmup_updates: int = 2) -> List[Dict[str, Any]]:
    """One row per label: final return (mean, std, per seed), variance ratio, mean lambda, time."""
    groups: Dict[str, List[Dict[str, Any]]] = {}
    for r in results:
        groups.setdefault(r["spec"]["label"], []).append(r)
    table = []
    for label, runs in groups.items():
        finals = np.array([r["final_return"] for r in runs])
        lam = np.concatenate([column(r, "hybrid/lambda_mean")[warmup_updates:] for r in runs])
        lam = lam[np.isfinite(lam)]
        table.append(
            {
                "label": label,
                "algo": runs[0]["spec"]["algo"],
                "env_id": runs[0]["spec"]["env_id"],
                "seeds": len(runs),
                "final_mean": float(finals.mean()),
                "final_std": float(finals.std(ddof=1)) if len(finals) > 1 else 0.0,
                "finals": [float(f) for f in finals],
                "variance_ratio_vs_score": _median_or_nan([variance_ratio(r, warmup_updates) for r in runs]),
                "mean_lambda": float(lam.mean()) if lam.size else math.nan,
                "train_seconds": float(np.mean([r["train_seconds"] for r in runs])),
            }
        )
    return table


def markdown_table(rows: Sequence[Dict[str, Any]]) -> str:
    lines = [
        "| run | env | seeds | final return (mean ± std) | per seed | Var(applied)/Var(score) | mean lam | s/run |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        per_seed = ", ".join(f"{f:.0f}" for f in r["finals"])
        ratio = "" if math.isnan(r["variance_ratio_vs_score"]) else f"{r['variance_ratio_vs_score']:.3f}"
        lam = "" if math.isnan(r["mean_lambda"]) else f"{r['mean_lambda']:.2f}"
        lines.append(
            f"| {r['label']} | {r['env_id']} | {r['seeds']} | {r['final_mean']:.1f} ± {r['final_std']:.1f} | {per_seed} | {ratio} | {lam} | {r['train_seconds']:.0f} |"
        )
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# speed: HybridPG vs A2C / PPO, side by side
# --------------------------------------------------------------------------------------------------

#: regime -> (baseline algorithm, its extra kwargs, HybridPG's extra kwargs): the same update shape
SPEED_REGIMES: Dict[str, Tuple[str, Dict[str, Any], Dict[str, Any]]] = {
    # one full-batch epoch, no ratio clipping: HybridPG's A2C-shaped update
    "a2c": ("a2c", {}, dict(n_epochs=1, batch_size=None, clip_range=None, lambda_warmup=0)),
    # ten epochs of minibatches of 64 with clip 0.2 (SB3's PPO defaults)
    "ppo": ("ppo", dict(n_epochs=10, batch_size=64), dict(n_epochs=10, batch_size=64, lambda_warmup=0)),
}
BASELINE_NAMES = {"a2c": "A2C", "ppo": "PPO"}
#: untimed rollouts per algorithm and regime before the timed runs
WARMUP_ROLLOUTS = 4


@dataclasses.dataclass(frozen=True)
class SpeedSettings:
    """What :func:`speed_benchmark` compares: every algorithm gets the same env, n_envs, n_steps,
    gamma, step budget and seeds."""

    env_id: str = "Pendulum-v1"
    steps: int = 8192
    seeds: int = 3
    n_envs: int = 4
    n_steps: int = 256
    gamma: float = 0.9
    eval_episodes: int = 5
    pathwise_source: str = "auto"
    regimes: Tuple[str, ...] = ("a2c", "ppo")

    def __post_init__(self) -> None:
        for name in ("steps", "seeds", "n_envs", "n_steps", "eval_episodes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        unknown = [r for r in self.regimes if r not in SPEED_REGIMES]
        if unknown or not self.regimes:
            raise ValueError(f"regimes must be a non-empty subset of {list(SPEED_REGIMES)}, got {list(self.regimes)}")


def speed_configs(settings: SpeedSettings, regime: str, seed: int, steps: Optional[int] = None) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """(baseline, HybridPG) configs of one regime and seed; ``steps`` overrides the budget (warm-up)."""
    baseline, base_kwargs, hybrid_kwargs = SPEED_REGIMES[regime]
    common: Dict[str, Any] = dict(
        env_id=settings.env_id,
        seed=seed,
        total_timesteps=steps or settings.steps,
        n_envs=settings.n_envs,
        eval_episodes=settings.eval_episodes,
    )
    shared = dict(n_steps=settings.n_steps, gamma=settings.gamma)
    return (
        run_config(baseline, algo=dict(shared, **base_kwargs), **common),
        run_config("hybrid_pg", algo=dict(shared, pathwise_source=settings.pathwise_source, **hybrid_kwargs), **common),
    )


def _run_timed(config: Mapping[str, Any], run_dir: Path) -> Dict[str, Any]:
    run(config, run_dir, quiet=True)
    return load_result(run_dir)


def _steps_done(result: Dict[str, Any]) -> float:
    return max((row.get("time/total_timesteps", 0.0) for row in result["rows"]), default=0.0) or float(result["timesteps"])


def _timed(result: Dict[str, Any]) -> Dict[str, Any]:
    """The parts of a :func:`run_spec` result the speed report keeps."""
    steps = _steps_done(result)
    _, fractions = update_series(result, "hybrid/stats_time_fraction")
    return {
        "algo": result["spec"]["algo"],
        "seed": result["spec"]["seed"],
        "steps": steps,
        "train_seconds": result["train_seconds"],
        "s_per_step": result["train_seconds"] / steps,
        "final_return": result["final_return"],
        "stats_time_fraction": float(np.mean(fractions)) if fractions.size else math.nan,
    }


def _return_summary(values: Sequence[float]) -> Dict[str, Any]:
    arr = np.asarray(values, dtype=float)
    return {"mean": float(arr.mean()), "std": float(arr.std(ddof=1)) if arr.size > 1 else 0.0, "per_seed": [float(v) for v in arr]}


def _regime_summary(regime: str, base_runs: List[Dict[str, Any]], hyb_runs: List[Dict[str, Any]]) -> Dict[str, Any]:
    base_t = [r["s_per_step"] for r in base_runs]
    hyb_t = [r["s_per_step"] for r in hyb_runs]
    fractions = [r["stats_time_fraction"] for r in hyb_runs if math.isfinite(r["stats_time_fraction"])]
    baseline = BASELINE_NAMES[SPEED_REGIMES[regime][0]]
    return {
        "baseline": baseline,
        "baseline_s_per_step": statistics.median(base_t),
        "hybrid_s_per_step": statistics.median(hyb_t),
        "ratio": statistics.median(hyb_t) / statistics.median(base_t),
        "pair_ratios": [h / b for h, b in zip(hyb_t, base_t)],
        "stats_share_of_update": float(np.mean(fractions)) if fractions else math.nan,
        "final_return": {
            baseline: _return_summary([r["final_return"] for r in base_runs]),
            "HybridPG": _return_summary([r["final_return"] for r in hyb_runs]),
        },
        "runs": base_runs + hyb_runs,
    }


def speed_benchmark(
    settings: SpeedSettings, log: Optional[Callable[[str], None]] = print, runs_dir: Optional[Path] = None
) -> Dict[str, Any]:
    """Wall time per env step and final deterministic return of HybridPG vs A2C and PPO.

    All runs happen in this process, one after the other, with one torch thread (the configs'
    ``train.torch_threads``), each writing its run directory under ``runs_dir`` (default: a
    temporary folder): first an untimed warm-up of ``WARMUP_ROLLOUTS`` rollouts per algorithm (imports, allocator), then for
    every seed and regime the baseline and HybridPG back to back, the pair's order alternating
    between seeds so that a drift in machine load hits both alike. ``ratio`` is the ratio of
    median times per step (HybridPG / baseline); ``pair_ratios`` the per-seed ratios.
    ``stats_share_of_update`` is HybridPG's mean ``hybrid/stats_time_fraction``: the share of its
    update time spent on the lambda statistics. Training time excludes the final evaluation.
    """
    say = log or (lambda _msg: None)
    with tempfile.TemporaryDirectory(prefix="hybrid-pg-bench-") as tmp:
        root = Path(runs_dir) if runs_dir is not None else Path(tmp)
        timed = _timed_runs(settings, root, say)
    results = {regime: _regime_summary(regime, *timed[regime]) for regime in settings.regimes}
    for regime, r in results.items():
        say(
            f"[{regime}] HybridPG / {r['baseline']} wall time per env step = {r['ratio']:.2f}x (median of {settings.seeds}); "
            f"lambda statistics = {100 * r['stats_share_of_update']:.0f}% of HybridPG's update"
        )
    return {"settings": dataclasses.asdict(settings), "torch_threads": 1, "results": results}


def _timed_runs(
    settings: SpeedSettings, root: Path, say: Callable[[str], None]
) -> Dict[str, Tuple[List[Dict[str, Any]], List[Dict[str, Any]]]]:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    # four rollouts: every code path of an update has run once (the weight's direction check needs
    # three rollouts in its window), so no first-call import lands in a timed run
    warmup_steps = WARMUP_ROLLOUTS * settings.n_steps * settings.n_envs
    for regime in settings.regimes:
        for config in speed_configs(settings, regime, seed=0, steps=warmup_steps):
            run(config, root / f"warmup-{stamp}" / f"{regime}_{config['algo']['algorithm']}", quiet=True)
    timed: Dict[str, Tuple[List[Dict[str, Any]], List[Dict[str, Any]]]] = {r: ([], []) for r in settings.regimes}
    for seed in range(settings.seeds):
        for regime in settings.regimes:
            pair = speed_configs(settings, regime, seed)
            order = (0, 1) if seed % 2 == 0 else (1, 0)
            for index in order:
                algorithm = pair[index]["algo"]["algorithm"]
                timed_run = _timed(_run_timed(pair[index], root / stamp / f"{regime}_{algorithm}_s{seed}"))
                timed[regime][index].append(timed_run)
                say(
                    f"[{regime}] seed {seed} {algorithm}: {1e6 * timed_run['s_per_step']:.0f} us/step, final return {timed_run['final_return']:.1f}"
                )
    return timed


def speed_markdown(report: Dict[str, Any]) -> str:
    """The speed report as a markdown table (one row per regime) with a short legend."""
    s = report["settings"]
    lines = [
        f"Speed and quality on {s['env_id']}: n_envs {s['n_envs']}, n_steps {s['n_steps']}, gamma {s['gamma']}, "
        f"{s['steps']} env steps per run, seeds 0..{s['seeds'] - 1}, runs interleaved in one process, one torch thread.",
        "",
        "| regime | baseline | baseline us/step | HybridPG us/step | HybridPG / baseline (median) | per-seed ratios "
        "| lam statistics share of update | final return baseline (mean ± std) | final return HybridPG (mean ± std) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for regime, r in report["results"].items():
        base_ret, hyb_ret = r["final_return"][r["baseline"]], r["final_return"]["HybridPG"]
        share = "" if math.isnan(r["stats_share_of_update"]) else f"{100 * r['stats_share_of_update']:.0f}%"
        lines.append(
            f"| {regime} | {r['baseline']} | {1e6 * r['baseline_s_per_step']:.0f} | {1e6 * r['hybrid_s_per_step']:.0f} | {r['ratio']:.2f}x "
            f"| {', '.join(f'{x:.2f}' for x in r['pair_ratios'])} | {share} "
            f"| {base_ret['mean']:.1f} ± {base_ret['std']:.1f} | {hyb_ret['mean']:.1f} ± {hyb_ret['std']:.1f} |"
        )
    lines += [
        "",
        "Final return: mean of the deterministic evaluation episodes after training (per seed), then over seeds. "
        "Regime a2c: one full-batch epoch without ratio clipping vs A2C; ppo: 10 epochs of minibatches of 64, clip 0.2 vs PPO.",
    ]
    return "\n".join(lines)


def write_speed_report(report: Dict[str, Any], out_dir: str, stem: str = "bench") -> List[Path]:
    """Write ``{stem}.json`` and ``{stem}.md`` into ``out_dir``; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out / f"{stem}.json", out / f"{stem}.md"
    json_path.write_text(json.dumps(report, indent=2))
    md_path.write_text(speed_markdown(report) + "\n")
    return [json_path, md_path]
