"""Draw the new ``lambda.png`` from a short HybridPG run (every logged key captured in memory).

    python examples/lambda_figure_demo.py --env hybrid_pg/Pendulum-v0 --source model --steps 30000 \\
        --out docs/results/weight/lambda_pendulum_model.png
"""

from __future__ import annotations

import argparse
from collections import defaultdict

import numpy as np
import torch as th
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.logger import KVWriter, Logger

import hybrid_pg_envs  # noqa: F401
from hybrid_pg import HybridPG
from hybrid_pg.experiments.lambda_figure import plot_lambda_columns


class _Columns(KVWriter):
    def __init__(self) -> None:
        self.rows: list = []

    def write(self, key_values, key_excluded, step=0) -> None:
        self.rows.append({k: v for k, v in key_values.items() if isinstance(v, (int, float, np.floating))})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="hybrid_pg/Pendulum-v0")
    parser.add_argument("--source", default="model")
    parser.add_argument("--steps", type=int, default=30_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="docs/results/weight/lambda_pendulum_model.png")
    args = parser.parse_args()
    th.set_num_threads(1)
    model = HybridPG(
        "MlpPolicy",
        make_vec_env(args.env, n_envs=4, seed=args.seed),
        n_steps=256,
        batch_size=256,
        n_epochs=10,
        gamma=0.9,
        gae_lambda=0.95,
        learning_rate=1e-3,
        pathwise_source=args.source,
        oracle_freq=2,
        oracle_samples=8192,
        seed=args.seed,
        device="cpu",
    )
    cap = _Columns()
    model.set_logger(Logger(folder=None, output_formats=[cap]))
    model.learn(args.steps)
    keys = set().union(*cap.rows)
    columns = defaultdict(list)
    for row in cap.rows:
        for k in keys:
            columns[k].append(float(row.get(k, np.nan)))
    columns = {k: np.asarray(v) for k, v in columns.items()}
    columns["timesteps"] = columns.pop("time/total_timesteps")
    print("wrote", plot_lambda_columns(columns, args.out, title=f"{args.env}, {args.source}, seed {args.seed}"))


if __name__ == "__main__":
    main()
