"""Wall time per environment step: HybridPG vs SB3's A2C and PPO, side by side in one run.

Two regimes, each against the SB3 algorithm with the same update shape:

* ``a2c``: n_epochs = 1, full-batch update, no ratio clipping (HybridPG's A2C-shaped update) vs A2C.
* ``ppo``: n_epochs = 10, minibatches of 64, clip 0.2 vs PPO.

Runs alternate (A, B, A, B, ...) so machine load hits both alike; the reported figure is the ratio of
median times, plus the share of HybridPG's update spent on the lambda statistics (per-sample
gradients and moments), read from its ``hybrid/stats_time_fraction`` log.

    python examples/benchmark_speed.py [--steps 8192] [--repeats 3] [--n-envs 4] [--n-steps 256]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import numpy as np
import torch as th
from stable_baselines3 import A2C, PPO
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.logger import KVWriter, Logger

from hybrid_pg import HybridPG


class _Collect(KVWriter):
    def __init__(self) -> None:
        self.values: list[float] = []

    def write(self, key_values, key_excluded, step=0):
        if "hybrid/stats_time_fraction" in key_values:
            self.values.append(float(key_values["hybrid/stats_time_fraction"]))


def _time_run(make_model, steps: int) -> tuple[float, list[float]]:
    model = make_model()
    collect = _Collect()
    model.set_logger(Logger(folder=None, output_formats=[collect]))
    start = time.perf_counter()
    model.learn(steps)
    return time.perf_counter() - start, collect.values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default="Pendulum-v1")
    parser.add_argument("--steps", type=int, default=8192, help="env steps per timed run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--n-envs", type=int, default=4)
    parser.add_argument("--n-steps", type=int, default=256)
    parser.add_argument("--out", default="results/benchmark_speed")
    args = parser.parse_args()
    th.set_num_threads(1)  # both algorithms on one core: the comparison is about work, not parallelism

    def env():
        return make_vec_env(args.env, n_envs=args.n_envs, seed=0)

    common = dict(n_steps=args.n_steps, gamma=0.9, seed=0, device="cpu")
    regimes = {
        "a2c": (
            ("A2C", lambda: A2C("MlpPolicy", env(), **common)),
            ("HybridPG", lambda: HybridPG("MlpPolicy", env(), n_epochs=1, batch_size=None, clip_range=None, pathwise_source="critic", lambda_warmup=0, **common)),
        ),
        "ppo": (
            ("PPO", lambda: PPO("MlpPolicy", env(), n_epochs=10, batch_size=64, **common)),
            ("HybridPG", lambda: HybridPG("MlpPolicy", env(), n_epochs=10, batch_size=64, pathwise_source="critic", lambda_warmup=0, **common)),
        ),
    }
    results = {}
    for regime, ((base_name, base), (hyb_name, hyb)) in regimes.items():
        _time_run(base, args.n_steps * args.n_envs)  # warm-up (imports, allocator)
        _time_run(hyb, args.n_steps * args.n_envs)
        t_base, t_hyb, fractions = [], [], []
        for _ in range(args.repeats):
            t, _ = _time_run(base, args.steps)
            t_base.append(t)
            t, frac = _time_run(hyb, args.steps)
            t_hyb.append(t)
            fractions.extend(frac)
        ratio = statistics.median(t_hyb) / statistics.median(t_base)
        results[regime] = {
            "baseline": base_name,
            "baseline_s_per_step": statistics.median(t_base) / args.steps,
            "hybrid_s_per_step": statistics.median(t_hyb) / args.steps,
            "ratio": ratio,
            "stats_share_of_update": float(np.mean(fractions)) if fractions else float("nan"),
        }
        print(
            f"[{regime}] HybridPG / {base_name} wall time per env step = {ratio:.2f}x "
            f"(median of {args.repeats}); lambda statistics = {100 * results[regime]['stats_share_of_update']:.0f}% of HybridPG's update"
        )
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "speed.json"), "w") as fh:
        json.dump({"args": vars(args), "results": results}, fh, indent=2)
    print(f"wrote {os.path.join(args.out, 'speed.json')}")


if __name__ == "__main__":
    main()
