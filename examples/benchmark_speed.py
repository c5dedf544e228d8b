"""Wall time per environment step: HybridPG vs SB3's A2C and PPO, side by side in one run.

Two regimes, each against the SB3 algorithm with the same update shape:

* ``a2c``: n_epochs = 1, full-batch update, no ratio clipping (HybridPG's A2C-shaped update) vs A2C.
* ``ppo``: n_epochs = 10, minibatches of 64, clip 0.2 vs PPO.

Runs alternate (A, B, B, A, ...) so machine load hits both alike; the reported figure is the ratio of
median times, plus the share of HybridPG's update spent on the lambda statistics (per-sample
gradients and moments), read from its ``hybrid/stats_time_fraction`` log, and every run's final
deterministic return. The logic lives in :func:`hybrid_pg.experiments.benchmark.speed_benchmark`, which
``hybrid-pg bench`` runs too.

    python examples/benchmark_speed.py [--steps 8192] [--repeats 3] [--n-envs 4] [--n-steps 256]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from hybrid_pg.experiments.benchmark import SpeedSettings, speed_benchmark, write_speed_report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default="Pendulum-v1")
    parser.add_argument("--steps", type=int, default=8192, help="env steps per timed run")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per algorithm (seeds 0..repeats-1)")
    parser.add_argument("--n-envs", type=int, default=4)
    parser.add_argument("--n-steps", type=int, default=256)
    parser.add_argument("--out", default="results/benchmark_speed")
    args = parser.parse_args()

    settings = SpeedSettings(env_id=args.env, steps=args.steps, seeds=args.repeats, n_envs=args.n_envs, n_steps=args.n_steps)
    for path in write_speed_report(speed_benchmark(settings, runs_dir=Path(args.out) / "runs"), args.out, stem="speed"):
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
