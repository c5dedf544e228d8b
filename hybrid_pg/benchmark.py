"""Reproducible multi-seed training runs: HybridPG variants next to SB3's PPO and A2C.

One run = one :class:`RunSpec` (label, algorithm, env, seed, budget, keyword arguments). Runs execute
in worker processes (one torch thread each, so N workers use N cores), each writes its own JSON
result, and a run whose result file exists is skipped: an interrupted benchmark resumes where it
stopped. Results hold the final deterministic evaluation, the training curve and, for HybridPG,
every ``hybrid/`` scalar per update (the gradient-variance figures come from those).
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
import os
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence

import numpy as np

ALGORITHMS = ("hybrid_pg", "ppo", "a2c")


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """One training run. ``algo_kwargs`` go to the algorithm's constructor unchanged, except that
    learning-rate strings ``"lin_<x>"`` become SB3 linear schedules (the zoo's notation)."""

    label: str
    algo: str
    env_id: str
    seed: int
    total_timesteps: int
    n_envs: int = 1
    algo_kwargs: Dict[str, Any] = dataclasses.field(default_factory=dict)
    normalize: bool = False
    eval_episodes: int = 10

    def __post_init__(self) -> None:
        if self.algo not in ALGORITHMS:
            raise ValueError(f"RunSpec.algo must be one of {ALGORITHMS}, got {self.algo!r}")
        if self.total_timesteps <= 0 or self.n_envs <= 0 or self.eval_episodes <= 0:
            raise ValueError("RunSpec.total_timesteps, n_envs and eval_episodes must be positive")

    @property
    def key(self) -> str:
        """Stable file name: label, seed and a hash of everything else that changes the result."""
        blob = json.dumps(dataclasses.asdict(self), sort_keys=True, default=str)
        digest = hashlib.sha1(blob.encode()).hexdigest()[:8]
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in self.label)
        return f"{safe}_s{self.seed}_{digest}"


def _linear_schedule(initial: float) -> Callable[[float], float]:
    def schedule(progress_remaining: float) -> float:
        return progress_remaining * initial

    return schedule


def _resolve_kwargs(kwargs: Dict[str, Any]) -> Dict[str, Any]:
    # a deep copy: SB3 algorithms write into policy_kwargs (A2C adds its optimizer class), which
    # would otherwise change the spec and make its result unserialisable
    out = copy.deepcopy(dict(kwargs))
    for name in ("learning_rate", "clip_range"):
        value = out.get(name)
        if isinstance(value, str) and value.startswith("lin_"):
            out[name] = _linear_schedule(float(value[4:]))
    return out


def _algorithm_class(algo: str):
    if algo == "hybrid_pg":
        from hybrid_pg import HybridPG

        return HybridPG
    from stable_baselines3 import A2C, PPO

    return {"ppo": PPO, "a2c": A2C}[algo]


def _make_env(env_id: str, n_envs: int, seed: int, normalize: bool, training: bool):
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.vec_env import VecNormalize

    try:
        import hybrid_pg_envs  # noqa: F401  (registers the hybrid_pg/ ids)
    except ImportError:  # pragma: no cover - the envs package ships with the distribution
        pass
    env = make_vec_env(env_id, n_envs=n_envs, seed=seed)
    if normalize:
        env = VecNormalize(env, training=training, norm_reward=training)
    return env


def run_spec(spec: RunSpec) -> Dict[str, Any]:
    """Train one run and evaluate it; returns a JSON-serialisable result."""
    import torch as th
    from stable_baselines3.common.evaluation import evaluate_policy
    from stable_baselines3.common.logger import KVWriter, Logger

    th.set_num_threads(1)

    class Rows(KVWriter):
        def __init__(self) -> None:
            self.rows: List[Dict[str, float]] = []

        def write(self, key_values: Dict[str, Any], key_excluded: Dict[str, Any], step: int = 0) -> None:
            row = {k: float(v) for k, v in key_values.items() if isinstance(v, (int, float, np.floating, np.integer))}
            row["time/total_timesteps"] = float(step)
            self.rows.append(row)

    env = _make_env(spec.env_id, spec.n_envs, spec.seed, spec.normalize, training=True)
    cls = _algorithm_class(spec.algo)
    model = cls("MlpPolicy", env, seed=spec.seed, device="cpu", **_resolve_kwargs(spec.algo_kwargs))
    rows = Rows()
    model.set_logger(Logger(folder=None, output_formats=[rows]))
    start = time.perf_counter()
    model.learn(spec.total_timesteps)
    train_seconds = time.perf_counter() - start

    eval_env = _make_env(spec.env_id, 1, spec.seed + 10_000, spec.normalize, training=False)
    if spec.normalize:
        eval_env.obs_rms = env.obs_rms
    returns, _ = evaluate_policy(model, eval_env, n_eval_episodes=spec.eval_episodes, deterministic=True, return_episode_rewards=True)
    return {
        "spec": dataclasses.asdict(spec),
        "key": spec.key,
        "final_return": float(np.mean(returns)),
        "eval_returns": [float(r) for r in returns],
        "train_seconds": train_seconds,
        "rows": rows.rows,
    }


def _run_and_save(spec: RunSpec, out_dir: str) -> str:
    result = run_spec(spec)
    path = Path(out_dir) / f"{spec.key}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result))
    os.replace(tmp, path)  # atomic: a killed run never leaves a half-written result behind
    return str(path)


def run_all(
    specs: Sequence[RunSpec],
    out_dir: str,
    workers: Optional[int] = None,
    progress: bool = True,
) -> List[Dict[str, Any]]:
    """Run every spec whose result is missing from ``out_dir``; return all results of ``specs``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    keys = [s.key for s in specs]
    if len(set(keys)) != len(keys):
        raise ValueError("two RunSpecs are identical; give them different labels or seeds")
    todo = [s for s in specs if not (out / f"{s.key}.json").exists()]
    workers = max(1, min(workers or (os.cpu_count() or 1), len(todo) or 1))
    if todo:
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(todo), desc=f"runs ({workers} workers)")
        if workers == 1:
            for spec in todo:
                _run_and_save(spec, str(out))
                if bar is not None:
                    bar.update()
        else:
            import multiprocessing as mp

            with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn")) as pool:
                futures = {pool.submit(_run_and_save, spec, str(out)): spec for spec in todo}
                for future in as_completed(futures):
                    future.result()  # re-raise a failed run here, naming nothing silently
                    if bar is not None:
                        bar.update()
        if bar is not None:
            bar.close()
    return [json.loads((out / f"{k}.json").read_text()) for k in keys]


# --------------------------------------------------------------------------------------------------
# summaries
# --------------------------------------------------------------------------------------------------


def column(result: Dict[str, Any], key: str) -> np.ndarray:
    """One logged scalar over the run's updates (NaN where an update did not log it)."""
    return np.array([row.get(key, math.nan) for row in result["rows"]], dtype=float)


def variance_ratio(result: Dict[str, Any], skip: int = 0) -> float:
    """Median over updates of Var(applied gradient) / Var(score gradient), both per sample on the
    same rollout: the hybrid's variance next to what REINFORCE would have had on that batch."""
    ratio = column(result, "hybrid/variance_ratio_vs_score")[skip:]
    ratio = ratio[np.isfinite(ratio)]
    return float(np.median(ratio)) if ratio.size else math.nan


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
                "variance_ratio_vs_score": float(np.nanmedian([variance_ratio(r, warmup_updates) for r in runs])),
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
