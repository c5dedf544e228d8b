"""Reproducible multi-seed training runs: HybridPG variants next to SB3's PPO and A2C.

One run = one :class:`RunSpec` (label, algorithm, env, seed, budget, keyword arguments). Runs execute
in worker processes (one torch thread each, so N workers use N cores; never more workers than
cores), each writes its own JSON result, and a run whose result file exists is skipped: an
interrupted benchmark resumes where it stopped and a finished one is not re-run. A run is
deterministic given its spec (seeded model and envs, one torch thread, CPU).

Result JSON: ``spec``, ``key``, ``final_return`` (mean of the final deterministic evaluation; a
non-stationary env is evaluated with its parameters held where training left them),
``eval_returns``, ``train_seconds`` and ``rows``: SB3's logger dumps, one per update, as
``{key: float}``. Row semantics (SB3 dumps its logger *before* ``train()``): row ``i`` holds
``time/total_timesteps`` and the ``rollout/`` statistics after rollout ``i``, and the ``train/`` and
``hybrid/`` values of update ``i - 1``; one extra row after training (same step as the last) holds
the last update's values (results written before that row was added lack it). So the values of
a ``train/`` or ``hybrid/`` key, in row order, are exactly one per update: :func:`update_series`
pairs each with the step at which its rollout ended; :func:`learning_curve` gives the training
return per rollout.

Besides the quality runs this module holds the speed comparison (:func:`speed_benchmark`): wall
time per env step of HybridPG vs A2C and PPO with the same env, n_steps and n_envs, runs
interleaved in one process, plus each run's final deterministic return.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import json
import math
import os
import statistics
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

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
    env_kwargs: Dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.algo not in ALGORITHMS:
            raise ValueError(f"RunSpec.algo must be one of {ALGORITHMS}, got {self.algo!r}")
        if self.total_timesteps <= 0 or self.n_envs <= 0 or self.eval_episodes <= 0:
            raise ValueError("RunSpec.total_timesteps, n_envs and eval_episodes must be positive")

    @property
    def key(self) -> str:
        """Stable file name: label, seed and a hash of everything else that changes the result."""
        fields = dataclasses.asdict(self)
        if not fields["env_kwargs"]:
            del fields["env_kwargs"]  # keeps the keys of results written before the field existed
        blob = json.dumps(fields, sort_keys=True, default=str)
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
    if isinstance(out.get("policy_kwargs"), dict):
        from hybrid_pg.config import policy_kwargs_for_model

        # names such as activation_fn: Tanh (a config's notation) become torch.nn classes
        out["policy_kwargs"] = policy_kwargs_for_model(out["policy_kwargs"])
    return out


def _algorithm_class(algo: str):
    if algo == "hybrid_pg":
        from hybrid_pg import HybridPG

        return HybridPG
    from stable_baselines3 import A2C, PPO

    return {"ppo": PPO, "a2c": A2C}[algo]


def _make_env(env_id: str, n_envs: int, seed: int, normalize: bool, training: bool, env_kwargs: Optional[Dict[str, Any]] = None):
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.vec_env import VecNormalize

    try:
        import hybrid_pg_envs  # noqa: F401  (registers the hybrid_pg/ ids)
    except ImportError:  # pragma: no cover - the envs package ships with the distribution
        pass
    env = make_vec_env(env_id, n_envs=n_envs, seed=seed, env_kwargs=env_kwargs or None)
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

    env = _make_env(spec.env_id, spec.n_envs, spec.seed, spec.normalize, training=True, env_kwargs=spec.env_kwargs)
    cls = _algorithm_class(spec.algo)
    model = cls("MlpPolicy", env, seed=spec.seed, device="cpu", **_resolve_kwargs(spec.algo_kwargs))
    rows = Rows()
    model.set_logger(Logger(folder=None, output_formats=[rows]))
    start = time.perf_counter()
    model.learn(spec.total_timesteps)
    train_seconds = time.perf_counter() - start
    # SB3 dumps before train(): dump once more so the last update's train/ and hybrid/ values are kept
    model.logger.dump(model.num_timesteps)

    eval_env = _make_env(spec.env_id, 1, spec.seed + 10_000, spec.normalize, training=False, env_kwargs=spec.env_kwargs)
    if spec.normalize:
        eval_env.obs_rms = env.obs_rms
    if env.has_attr("get_clock") and eval_env.has_attr("set_clock"):
        # a non-stationary env: evaluate on the env as training left it, held there, not as it began
        eval_env.env_method("set_clock", env.env_method("get_clock", indices=[0])[0], steps_per_tick=0)
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
    path = result_path(spec, out_dir)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result))
    os.replace(tmp, path)  # atomic: a killed run never leaves a half-written result behind
    return str(path)


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - macOS, Windows
        return max(1, os.cpu_count() or 1)


def result_path(spec: RunSpec, out_dir: str) -> Path:
    """Where :func:`run_all` writes (and looks for) ``spec``'s result."""
    return Path(out_dir) / f"{spec.key}.json"


def pending(specs: Sequence[RunSpec], out_dir: str) -> List[RunSpec]:
    """The specs whose result is not in ``out_dir`` yet (what :func:`run_all` would train)."""
    return [s for s in specs if not result_path(s, out_dir).exists()]


def worker_count(requested: Optional[int], n_runs: int) -> int:
    """Worker processes for ``n_runs`` runs: ``requested`` (default: all cores), never more than
    the cores or the runs, at least 1."""
    if requested is not None and requested < 1:
        raise ValueError(f"workers must be >= 1, got {requested}")
    return max(1, min(requested or available_cores(), available_cores(), n_runs))


@contextlib.contextmanager
def _naming_failures(spec: RunSpec) -> Iterator[None]:
    """Re-raise a run's exception as a RuntimeError that names the run."""
    try:
        yield
    except Exception as exc:
        raise RuntimeError(f"run {spec.key} ({spec.label}, seed {spec.seed}) failed: {exc!r}") from exc


def run_all(
    specs: Sequence[RunSpec],
    out_dir: str,
    workers: Optional[int] = None,
    progress: bool = True,
) -> List[Dict[str, Any]]:
    """Run every spec whose result is missing from ``out_dir`` (in up to ``workers`` processes,
    bounded by the cores, see :func:`worker_count`); return all results of ``specs`` in order."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    keys = [s.key for s in specs]
    if len(set(keys)) != len(keys):
        raise ValueError("two RunSpecs are identical; give them different labels or seeds")
    todo = pending(specs, str(out))
    workers = worker_count(workers, len(todo))
    if todo:
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(todo), desc=f"runs ({workers} workers)")
        if workers == 1:
            for spec in todo:
                with _naming_failures(spec):
                    _run_and_save(spec, str(out))
                if bar is not None:
                    bar.update()
        else:
            import multiprocessing as mp

            with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn")) as pool:
                futures = {pool.submit(_run_and_save, spec, str(out)): spec for spec in todo}
                for future in as_completed(futures):
                    # on a failure the pool still finishes (and saves) the other runs, then this raises
                    with _naming_failures(futures[future]):
                        future.result()
                    if bar is not None:
                        bar.update()
        if bar is not None:
            bar.close()
    return [json.loads(result_path(s, str(out)).read_text()) for s in specs]


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


def update_series(result: Dict[str, Any], key: str) -> Tuple[np.ndarray, np.ndarray]:
    """(steps, values) of a per-update key (``train/``, ``hybrid/``): one value per update, paired
    with the env step at which that update's rollout ended (see the row semantics in the module
    docstring); updates that did not log ``key`` (or logged a non-finite value) are left out."""
    rows = result["rows"]
    steps, values = [], []
    for i in range(1, len(rows)):  # row 0 holds no update's values
        value = rows[i].get(key)
        if value is not None and math.isfinite(value):
            steps.append(rows[i - 1].get("time/total_timesteps", math.nan))
            values.append(value)
    return np.array(steps, dtype=float), np.array(values, dtype=float)


def learning_curve(result: Dict[str, Any], key: str = "rollout/ep_rew_mean") -> Tuple[np.ndarray, np.ndarray]:
    """(steps, training return): ``key`` (SB3's mean return of the last 100 finished episodes)
    after each rollout, at the env step the rollout ended; rollouts before the first finished
    episode are left out."""
    steps, values = [], []
    for row in result["rows"]:
        value, step = row.get(key), row.get("time/total_timesteps")
        if value is not None and step is not None and math.isfinite(value):
            if steps and step == steps[-1]:
                continue  # the extra end-of-training row repeats a step
            steps.append(step)
            values.append(value)
    return np.array(steps, dtype=float), np.array(values, dtype=float)


def normalized_auc(steps: np.ndarray, values: np.ndarray) -> float:
    """Area under a learning curve divided by the steps it spans (trapezoidal rule): the curve's
    average height, in return units, comparable across budgets. One point: its value; none: NaN."""
    steps, values = np.asarray(steps, dtype=float), np.asarray(values, dtype=float)
    if values.size == 0:
        return math.nan
    span = steps[-1] - steps[0]
    if values.size == 1 or span <= 0:
        return float(values.mean())
    area = float(np.sum((values[1:] + values[:-1]) * np.diff(steps)) / 2.0)
    return area / float(span)


def median_over_updates(result: Dict[str, Any], key: str, skip: int = 0) -> float:
    """Median of a per-update key over the run's updates after the first ``skip``; NaN if none."""
    _, values = update_series(result, key)
    values = values[skip:]
    return float(np.median(values)) if values.size else math.nan


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


def speed_specs(settings: SpeedSettings, regime: str, seed: int, steps: Optional[int] = None) -> Tuple[RunSpec, RunSpec]:
    """(baseline, HybridPG) specs of one regime and seed; ``steps`` overrides the budget (warm-up)."""
    baseline, base_kwargs, hybrid_kwargs = SPEED_REGIMES[regime]
    common = dict(env_id=settings.env_id, seed=seed, total_timesteps=steps or settings.steps, n_envs=settings.n_envs, eval_episodes=settings.eval_episodes)
    shared = dict(n_steps=settings.n_steps, gamma=settings.gamma)
    return (
        RunSpec(label=f"{regime}_{baseline}", algo=baseline, algo_kwargs=dict(shared, **base_kwargs), **common),
        RunSpec(
            label=f"{regime}_hybrid_pg",
            algo="hybrid_pg",
            algo_kwargs=dict(shared, pathwise_source=settings.pathwise_source, **hybrid_kwargs),
            **common,
        ),
    )


def _steps_done(result: Dict[str, Any]) -> float:
    return max((row.get("time/total_timesteps", 0.0) for row in result["rows"]), default=0.0) or float(result["spec"]["total_timesteps"])


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
        "final_return": {baseline: _return_summary([r["final_return"] for r in base_runs]), "HybridPG": _return_summary([r["final_return"] for r in hyb_runs])},
        "runs": base_runs + hyb_runs,
    }


def speed_benchmark(settings: SpeedSettings, log: Optional[Callable[[str], None]] = print) -> Dict[str, Any]:
    """Wall time per env step and final deterministic return of HybridPG vs A2C and PPO.

    All runs happen in this process, one after the other, with one torch thread (``run_spec``
    sets it): first an untimed warm-up of one rollout per algorithm (imports, allocator), then for
    every seed and regime the baseline and HybridPG back to back, the pair's order alternating
    between seeds so that a drift in machine load hits both alike. ``ratio`` is the ratio of
    median times per step (HybridPG / baseline); ``pair_ratios`` the per-seed ratios.
    ``stats_share_of_update`` is HybridPG's mean ``hybrid/stats_time_fraction``: the share of its
    update time spent on the lambda statistics. Training time excludes the final evaluation.
    """
    say = log or (lambda _msg: None)
    rollout = settings.n_steps * settings.n_envs
    for regime in settings.regimes:
        for spec in speed_specs(settings, regime, seed=0, steps=rollout):
            run_spec(spec)
    timed: Dict[str, Tuple[List[Dict[str, Any]], List[Dict[str, Any]]]] = {r: ([], []) for r in settings.regimes}
    for seed in range(settings.seeds):
        for regime in settings.regimes:
            pair = speed_specs(settings, regime, seed)
            order = (0, 1) if seed % 2 == 0 else (1, 0)
            for index in order:
                run = _timed(run_spec(pair[index]))
                timed[regime][index].append(run)
                say(f"[{regime}] seed {seed} {pair[index].algo}: {1e6 * run['s_per_step']:.0f} us/step, final return {run['final_return']:.1f}")
    results = {regime: _regime_summary(regime, *timed[regime]) for regime in settings.regimes}
    for regime, r in results.items():
        say(
            f"[{regime}] HybridPG / {r['baseline']} wall time per env step = {r['ratio']:.2f}x (median of {settings.seeds}); "
            f"lambda statistics = {100 * r['stats_share_of_update']:.0f}% of HybridPG's update"
        )
    return {"settings": dataclasses.asdict(settings), "torch_threads": 1, "results": results}


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
