"""How closely the applied weight tracks the oracle's lam* on Pendulum (learned critic and exact model).

For each (source, seed), HybridPG trains with an oracle (a fresh large batch at the current policy
every ``--oracle-freq`` updates) and records, per update, the lam applied and the oracle's lam
(for the exact model the variance-optimal lam*; for the critic the MSE-optimal weight, and both
with jackknife SEs when the code logs them). Each run is written to ``<out>/<source>_seed<k>.json``
as soon as it finishes, and runs already there are skipped (resumable). The summary reports, after
the window's warm-up, per source over seeds (mean [min, max]):

* ``|lam - oracle|``: mean absolute distance of the applied lam to the oracle's lam;
* ``sd(dlam)``: the update-to-update standard deviation of the applied lam (sd of its first
  differences: the weight's jitter);
* ``lam - oracle``: the mean signed distance (the lag of a window shows as a sign).

The script runs unchanged on the pre-refactor code (``--label pre-refactor`` from its checkout), which
logs ``hybrid/oracle_lambda`` only.

    python examples/weight_tracking_pendulum.py --out docs/results/weight/pendulum --label v0.3
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch as th
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.env_util import make_vec_env

import hybrid_pg_envs  # noqa: F401  (registers hybrid_pg/Pendulum-v0)
from hybrid_pg import HybridPG

SOURCES = {"critic": ("Pendulum-v1", "critic"), "model": ("hybrid_pg/Pendulum-v0", "model")}
KEYS = ("oracle_lambda", "oracle_lambda_var", "oracle_lambda_var_se", "oracle_lambda_mse", "oracle_lambda_mse_se")
#: updates left out of the summary: lambda_warmup (2) plus a window's worth of rollouts (8)
SKIP_UPDATES = 10


class _Record(BaseCallback):
    """Each update's applied lam and, when the oracle ran, its lam (read before SB3 dumps the logs)."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list = []

    def _grab(self) -> None:
        values = self.model.logger.name_to_value
        if "hybrid/lambda" not in values:
            return
        row = {
            "update": self.model.n_rollouts_trained if hasattr(self.model, "n_rollouts_trained") else len(self.rows) + 1,
            "timesteps": int(self.model.num_timesteps),
            "lambda": float(values["hybrid/lambda"]),
        }
        for key in KEYS:
            if f"hybrid/{key}" in values:
                row[key] = float(values[f"hybrid/{key}"])
        self.rows.append(row)

    def _on_rollout_start(self) -> None:
        self._grab()

    def _on_training_end(self) -> None:
        self._grab()

    def _on_step(self) -> bool:
        return True


def run_one(source: str, seed: int, args: argparse.Namespace) -> dict:
    th.set_num_threads(1)
    env_id, pathwise = SOURCES[source]
    env = make_vec_env(env_id, n_envs=args.n_envs, seed=seed)
    model = HybridPG(
        "MlpPolicy",
        env,
        n_steps=args.n_steps,
        batch_size=args.n_steps,
        n_epochs=10,
        gamma=0.9,
        gae_lambda=0.95,
        learning_rate=1e-3,
        clip_range=0.2,
        pathwise_source=pathwise,
        lambda_warmup=2,
        policy_kwargs=dict(net_arch=[64, 64]),
        oracle_freq=args.oracle_freq,
        oracle_samples=args.oracle_samples,
        seed=seed,
        device="cpu",
    )
    if args.trend != "default":
        for window in model.lambda_windows.values():
            window.trend = args.trend == "on"
    rec = _Record()
    start = time.perf_counter()
    model.learn(args.steps, callback=rec)
    return {
        "source": source,
        "seed": seed,
        "steps": args.steps,
        "n_envs": args.n_envs,
        "n_steps": args.n_steps,
        "oracle_freq": args.oracle_freq,
        "oracle_samples": args.oracle_samples,
        "label": args.label,
        "seconds": time.perf_counter() - start,
        "rows": rec.rows,
    }


def summarise(run: dict) -> dict:
    rows = [r for r in run["rows"] if r["update"] > SKIP_UPDATES]
    lam = np.array([r["lambda"] for r in rows])
    paired = [(r["lambda"], r["oracle_lambda"]) for r in rows if math.isfinite(r.get("oracle_lambda", math.nan))]
    diff = np.array([a - o for a, o in paired]) if paired else np.array([math.nan])
    return {
        "abs_error": float(np.mean(np.abs(diff))),
        "signed_error": float(np.mean(diff)),
        "jitter": float(np.std(np.diff(lam), ddof=1)) if len(lam) > 2 else math.nan,
        "oracle_points": len(paired),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/results/weight/pendulum"))
    parser.add_argument("--label", default="v0.3", help="subfolder of --out (e.g. pre-refactor / v0.3)")
    parser.add_argument("--sources", nargs="+", default=list(SOURCES), choices=list(SOURCES))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=40_000)
    parser.add_argument("--n-envs", type=int, default=4)
    parser.add_argument("--n-steps", type=int, default=256)
    parser.add_argument("--oracle-freq", type=int, default=2)
    parser.add_argument("--oracle-samples", type=int, default=8192)
    parser.add_argument("--trend", choices=("default", "on", "off"), default="default", help="the windows' trend extrapolation")
    args = parser.parse_args()
    folder = args.out / args.label
    folder.mkdir(parents=True, exist_ok=True)
    for source in args.sources:
        stats = []
        for seed in args.seeds:
            path = folder / f"{source}_seed{seed}.json"
            if path.is_file():
                run = json.loads(path.read_text())
            else:
                run = run_one(source, seed, args)
                path.write_text(json.dumps(run))
            stats.append(summarise(run))
        cells = []
        for key, fmt in (("abs_error", "{:.3f}"), ("jitter", "{:.3f}"), ("signed_error", "{:+.3f}")):
            v = [s[key] for s in stats]
            cells.append(f"{key} {fmt.format(np.mean(v))} [{fmt.format(min(v))}, {fmt.format(max(v))}]")
        print(f"{args.label:>7} {source:<7} seeds {args.seeds}: " + "  ".join(cells), flush=True)


if __name__ == "__main__":
    main()
